"""Optimizers over mesh-tensorflow variables.

Adam is written out here rather than taken from mtf.optimize so that (a)
frozen variables get no slots at all, (b) a step whose gradients hold inf/nan
under float16 loss scaling is skipped instead of poisoning the moments, and
(c) the slot names are exactly the released checkpoints' `<var>/adam_m`,
`<var>/adam_v`.

The Adam variant is the released GPTSAN's AdamWeightDecay (no bias
correction, epsilon 1e-8, decoupled weight decay 0.01), so continued
pretraining of a released checkpoint follows the recipe it was trained with.
"""
import re

from model.compat import mtf, tf

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
WEIGHT_DECAY = 0.01
# The released exclusion list. GPTSAN's norm gains are named an*/g and ln*/g,
# so they match none of these and ARE decayed, exactly as in released training.
NO_DECAY = re.compile("LayerNorm|layer_norm|bias")
LR_SCHEDULES = ("released", "rsqrt")


def decays(name):
    return NO_DECAY.search(name) is None


def learning_rate(step, base_lr, warmup_steps, schedule="released"):
    """The learning rate used by the update made at global step `step`.

    released: linear warm-up base_lr*step/warmup, then 1/sqrt(max(step, (1/base_lr)^2)),
      i.e. constant base_lr until step (1/base_lr)^2 (10^6 steps at 1e-3), as released.
    rsqrt: base_lr * min(step/warmup, sqrt(warmup/step)), an inverse square-root decay
      from the end of warm-up that keeps long runs stable without a fixed horizon.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError("lr_schedule must be one of %s" % ", ".join(LR_SCHEDULES))
    if schedule == "rsqrt":
        step = tf.cast(tf.maximum(step, 1), tf.float32)
        warmup = float(max(warmup_steps, 1))
        return base_lr * tf.minimum(step / warmup, tf.sqrt(warmup / step))
    step = tf.cast(step, tf.float32)
    decayed = tf.math.rsqrt(tf.maximum(step, (1.0 / base_lr) ** 2))
    if warmup_steps <= 0:
        return decayed
    warm = base_lr * step / float(warmup_steps)
    return tf.where(step < float(warmup_steps), warm, decayed)


def _slicewise(fn, x, dtype):
    return mtf.slicewise(fn, [x], output_shape=x.shape, output_dtype=dtype,
                         splittable_dims=x.shape.dims)


def finite_flag(grads):
    """1.0 when every gradient element is finite, else 0.0 (an mtf scalar)."""
    flags = [mtf.reduce_min(_slicewise(lambda t: tf.cast(tf.math.is_finite(t), tf.float32),
                                       g, tf.float32)) for g in grads]
    out = flags[0]
    for f in flags[1:]:
        out = mtf.minimum(out, f)
    return out


def zero_nonfinite(g):
    # mtf.where multiplies by the mask, and nan * 0 is nan: select in TF instead.
    return _slicewise(lambda t: tf.where(tf.math.is_finite(t), t, tf.zeros_like(t)), g, g.dtype)


def clip_by_global_norm(grads, clip_norm):
    norm = mtf.sqrt(mtf.add_n([mtf.reduce_sum(mtf.square(g)) for g in grads]))
    scale = clip_norm / mtf.maximum(norm, clip_norm)
    return [g * scale for g in grads], norm


def _slot(var, suffix):
    with tf.variable_scope("", reuse=tf.AUTO_REUSE):
        return mtf.get_variable(var.mesh, var.name + suffix, var.shape,
                                initializer=tf.zeros_initializer(), trainable=False,
                                dtype=mtf.VariableDType(tf.float32, tf.float32, tf.float32))


def blend(old, new, keep_new):
    """new where keep_new == 1.0, old where it is 0.0 (keep_new is a scalar)."""
    if keep_new is None:
        return new
    return old + (new - old) * keep_new


def adam_updates(variables, grads, lr, apply=None, weight_decay=WEIGHT_DECAY):
    """Assign operations for one AdamWeightDecay step:
    w -= lr * (m / (sqrt(v) + eps) + weight_decay * w) (decay only where decays(name)).
    `apply` (mtf scalar 0/1) skips the step."""
    updates = []
    for var, g in zip(variables, grads):
        m, v = _slot(var, "/adam_m"), _slot(var, "/adam_v")
        g = mtf.cast(g, tf.float32)
        new_m = ADAM_BETA1 * m + (1.0 - ADAM_BETA1) * g
        new_v = ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * mtf.square(g)
        update = new_m / (mtf.sqrt(new_v) + ADAM_EPSILON)
        if weight_decay and decays(var.name):
            update += weight_decay * mtf.cast(var.outputs[0], tf.float32)
        step = lr * update
        if apply is not None:
            step *= apply
        # assign_sub works on the float32 slices, whatever the activation dtype.
        updates += [mtf.assign_sub(var, step),
                    mtf.assign(m, blend(m, new_m, apply)),
                    mtf.assign(v, blend(v, new_v, apply))]
    return updates


def adafactor_updates(variables, grads, lr):
    opt = mtf.optimize.AdafactorOptimizer(learning_rate=lr)
    return opt.apply_grads(grads, variables)
