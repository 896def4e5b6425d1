"""Optimizers over mesh-tensorflow variables.

Adam is written out here rather than taken from mtf.optimize so that (a)
frozen variables get no slots at all, (b) a step whose gradients hold inf/nan
under float16 loss scaling is skipped instead of poisoning the moments, and
(c) the slot names are exactly the released checkpoints' `<var>/adam_m`,
`<var>/adam_v`.
"""
from model.compat import mtf, tf

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-6


def learning_rate(step, base_lr, warmup_steps):
    """Linear warm-up to base_lr, then inverse square-root decay:
    lr = base_lr * min(step / warmup, sqrt(warmup / step)).
    The decay keeps long pretraining runs stable without a fixed horizon."""
    step = tf.cast(tf.maximum(step, 1), tf.float32)
    warmup = float(max(warmup_steps, 1))
    return base_lr * tf.minimum(step / warmup, tf.sqrt(warmup / step))


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


def adam_updates(variables, grads, lr, apply=None):
    """Assign operations for one Adam step. `apply` (mtf scalar 0/1) skips the step."""
    updates = []
    for var, g in zip(variables, grads):
        m, v = _slot(var, "/adam_m"), _slot(var, "/adam_v")
        g = mtf.cast(g, tf.float32)
        new_m = ADAM_BETA1 * m + (1.0 - ADAM_BETA1) * g
        new_v = ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * mtf.square(g)
        step = lr * new_m / (mtf.sqrt(new_v) + ADAM_EPSILON)
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
