"""An independent eager-TensorFlow re-implementation of one released GPTSAN
training step (forward, autodiff, AdamWeightDecay), written from the released
architecture and optimizer as shared/reference/released/README.md describes
them, never from model/. Used to test what the released train_op's update race
does to its recorded numbers.

race: names of weights whose backward pass, to propagate the gradient further
down, reads the weight after its own update (released TF1 ref variables can
be updated as soon as their gradient exists, before every op that reads them
has run). Empty: every gradient sees the old weights (this project's step).

Eager TensorFlow 2, so it runs as its own process (model.compat turns eager
off): python tests/released_step.py ROOT SCENARIO [RACING_WEIGHT ...] prints
JSON, per state: loss, extra_loss, global_step and the values of the
variables train_step.json records.
"""
import json
import os

import sys

import numpy as np
import tensorflow as tf

NUM_SPOUT_LAYERS = 8


def decays(name):
    return not any(k in name for k in ("LayerNorm", "layer_norm", "bias"))


def released_lr(step, base, warm):
    return base * step / warm if step < warm else 1.0 / np.sqrt(max(step, (1.0 / base) ** 2))


class _Step:
    def __init__(self, weights, m, v, lr, race):
        self.w, self.m, self.v, self.lr, self.race = weights, m, v, lr, race

    def updated(self, name, grad):
        m = 0.9 * self.m[name] + 0.1 * grad
        v = 0.999 * self.v[name] + 0.001 * grad * grad
        u = m / (tf.sqrt(v) + 1e-8) + (0.01 * self.w[name] if decays(name) else 0.0)
        return self.w[name] - self.lr * u

    def use(self, name, x, fn):
        """fn(x, weight): the weight's only use; its input gradient reads the
        updated weight when name races."""
        step = self

        @tf.custom_gradient
        def op(x, w):
            def grad(dy):
                with tf.GradientTape() as tape:
                    tape.watch([x, w])
                    y = fn(x, w)
                dx, dw = tape.gradient(y, [x, w], dy)
                if name in step.race:
                    new = step.updated(name, dw)
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = fn(x, new)
                    dx = tape.gradient(y, x, dy)
                return dx, dw
            return fn(x, w), grad
        return op(x, self.w[name])


def _objective(s, mp, batch):
    """Masked CE + z-loss 1e-4 over y >= 0 (/(count + 1e-5)) and the MoE
    load-balancing loss (coefficient 1e-2, one group of all the batch's
    tokens) summed over the switch layers; no token dropped, no jitter."""
    w = s.w
    E, H, A = mp["num_experts"], mp["num_hidden"], mp["num_header"]
    L, C, K = mp["num_switch_layers"], mp["num_contexts"], H // A
    x_ids, y = np.asarray(batch["x"]), np.asarray(batch["y"])
    n_in = np.asarray(batch["num_input"]).reshape(-1)
    B, T = x_ids.shape
    sp = tf.constant(np.asarray(batch["spout"], np.float32))
    for k in range(NUM_SPOUT_LAYERS):
        sp = tf.tanh(s.use("pasts/mlp%d/kernel" % k, sp, lambda a, k_: a @ k_))
    past = tf.reshape(s.use("pasts/out/kernel", sp, lambda a, k_: a @ k_), [B, L, 2, A, 1, K])
    pos = np.minimum(np.arange(T) + 1, C - 1)  # the spout is position 0
    q, key = 1 + np.arange(T)[:, None], np.arange(T + 1)[None]
    mask = ((key <= q)[None] | (key[None] < (1 + n_in)[:, None, None])).astype(np.float32)
    mask = tf.constant(mask[:, None])
    h = tf.gather(w["model/wte"], x_ids) + tf.gather(w["model/wpe"], pos)[None]
    aux = 0.0

    def norm(x, name):
        c = x - tf.reduce_mean(x, -1, keepdims=True)
        z = c * tf.math.rsqrt(tf.reduce_mean(c * c, -1, keepdims=True) + 1e-5)
        return s.use(name + "/g", z, lambda a, g: a * g) + w[name + "/b"]

    for i in range(L):
        qkv = s.use("model/att%d/qkv/kernel" % i, h,
                    lambda a, k_: tf.einsum("bth,hcak->cbatk", a, k_))
        kk = tf.concat([past[:, i, 0], qkv[1]], 2)
        vv = tf.concat([past[:, i, 1], qkv[2]], 2)
        sc = tf.einsum("batk,bamk->batm", qkv[0], kk) * K ** -0.5
        att = tf.einsum("batm,bamk->batk", tf.nn.softmax(sc * mask - (1 - mask) * 1e4), vv)
        att = s.use("model/att%d/o/kernel" % i, att, lambda a, k_: tf.einsum("batk,akh->bth", a, k_))
        h = norm(att, "model/an%d" % i) + h
        pre = "model/moe%d/" % i
        probs = tf.nn.softmax(s.use(pre + "switch_gating/kernel", h, lambda a, k_: a @ k_))
        onehot = tf.one_hot(tf.argmax(probs, -1), E)
        gate = tf.reduce_sum(probs * onehot, -1, keepdims=True)
        hid = s.use(pre + "wi/kernel", h,
                    lambda a, k_: tf.nn.relu(tf.einsum("bth,ehf->btef", a, k_))) * onehot[..., None]
        expert = s.use(pre + "wo/kernel", hid, lambda a, k_: tf.einsum("btef,efh->bth", a, k_))
        soft = tf.tanh(s.use(pre + "softmlp/kernel", h, lambda a, k_: a @ k_))
        density = tf.reduce_mean(tf.reshape(onehot, [-1, E]), 0)
        proxy = tf.reduce_mean(tf.reshape(probs, [-1, E]), 0)
        aux += tf.reduce_mean(density * proxy) * E * E * 1e-2
        h = norm(gate * expert + soft, "model/ln%d" % i) + h
    o = s.use("model/dense/kernel", h, lambda a, k_: a @ k_) + w["model/dense_1/bias"]
    o = o * tf.sigmoid(o)
    logits = tf.einsum("bth,vh->btv", o, w["model/wte"]) + w["model/wob"]
    log_z = tf.reduce_logsumexp(logits, -1)
    target = tf.reduce_sum(logits * tf.one_hot(np.maximum(y, 0), logits.shape[-1]), -1)
    valid = tf.constant((y >= 0).astype(np.float32))
    loss = tf.reduce_sum((log_z - target + 1e-4 * log_z ** 2) * valid) / (tf.reduce_sum(valid) + 1e-5)
    return loss, aux


def run(root, golden, scenario, race=(), updates=2):
    """States (loss, extra_loss, step, weights, adam_m, adam_v) before and
    after each of `updates` released updates of a train_step.json scenario."""
    ckpt = os.path.join(root, "model")
    with open(os.path.join(ckpt, "parameters.json")) as f:
        mp = json.load(f)["model_params"]
    tp = golden["train_params"]
    reader = tf.train.load_checkpoint(ckpt)
    names = [n for n, _ in tf.train.list_variables(ckpt)
             if not n.endswith(("adam_m", "adam_v")) and n != "global_step"]
    resume = scenario.startswith("resume")
    w = {n: tf.constant(reader.get_tensor(n).astype(np.float32)) for n in names}
    slot = lambda n, s: (tf.constant(reader.get_tensor(n + "/" + s)) if resume
                         else tf.zeros_like(w[n]))
    m = {n: slot(n, "adam_m") for n in names}
    v = {n: slot(n, "adam_v") for n in names}
    step = int(reader.get_tensor("global_step")) if resume else 0
    states = []
    for k in range(updates + 1):
        lr = np.float32(released_lr(step, tp["base_lr"], tp["num_warmup_steps"]))
        s = _Step(w, m, v, lr, frozenset(race))
        with tf.GradientTape() as tape:
            tape.watch(list(w.values()))
            loss, aux = _objective(s, mp, golden["batch"])
            objective = loss + aux
        states.append(dict(loss=float(loss), extra_loss=float(aux), global_step=step,
                           weights=w, adam_m=m, adam_v=v))
        if k == updates:
            break
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, [w[n] for n in names])]
        if scenario.endswith("_clip"):
            norm = tf.linalg.global_norm(grads)
            grads = [g * 0.01 / tf.maximum(norm, 0.01) for g in grads]
        g = dict(zip(names, grads))
        m = {n: 0.9 * m[n] + 0.1 * g[n] for n in names}
        v = {n: 0.999 * v[n] + 0.001 * g[n] ** 2 for n in names}
        w = {n: w[n] - lr * (m[n] / (tf.sqrt(v[n]) + 1e-8) + (0.01 * w[n] if decays(n) else 0.0))
             for n in names}
        step += 1
    return states


def value(state, name):
    """A recorded variable name's value in a state (flattened, float64)."""
    if name.endswith(("/adam_m", "/adam_v")):
        base, slot = name.rsplit("/", 1)
        return np.asarray(state[slot][base], np.float64).ravel()
    return np.asarray(state["weights"][name], np.float64).ravel()


def main(argv):
    root, scenario, race = argv[0], argv[1], argv[2:]
    with open(os.path.join(root, "train_step.json")) as f:
        golden = json.load(f)
    recorded = list(golden["scenarios"][scenario]["states"][0]["variables"])
    out = []
    for st in run(root, golden, scenario, race):
        out.append(dict(loss=st["loss"], extra_loss=st["extra_loss"], global_step=st["global_step"],
                        variables={n: value(st, n).tolist() for n in recorded if n != "global_step"}))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
