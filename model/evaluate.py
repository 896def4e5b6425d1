"""Held-out loss of a trained model on TFRecord shards (the same loss as
training: cross-entropy over positions with a target, without z-loss)."""
import numpy as np

from model import params as params_lib, runtime
from model.compat import tf


def read_records(pattern, num_context, limit):
    """Up to `limit` examples as numpy arrays (x, y, num_input)."""
    xs, ys, ns = [], [], []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for raw in tf.io.tf_record_iterator(path):
            f = tf.train.Example.FromString(raw).features.feature
            x = list(f["x"].int64_list.value)
            if len(x) != num_context:
                raise ValueError("%s holds records of length %d; the model has num_contexts %d"
                                 % (path, len(x), num_context))
            xs.append(x)
            ys.append(list(f["y"].int64_list.value))
            ns.append(f["num_input"].int64_list.value[0])
            if len(xs) == limit:
                return np.array(xs), np.array(ys), np.array(ns)
    return np.array(xs), np.array(ys), np.array(ns)


def cross_entropy(logits, targets):
    """Mean over positions with target >= 0."""
    valid = targets >= 0
    z = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - z).sum(-1)) + z[..., 0]
    picked = np.take_along_axis(logits, np.maximum(targets, 0)[..., None], -1)[..., 0]
    return float(((log_z - picked) * valid).sum() / max(valid.sum(), 1)), int(valid.sum())


def heldout_loss(model_dir, pattern, max_examples=64, batch_size=4):
    model_params = params_lib.load(model_dir)["model_params"]
    x, y, n = read_records(pattern, model_params["num_contexts"], max_examples)
    if not len(x):
        raise ValueError("no records match %s" % pattern)
    forward = runtime.Forward(model_params, batch_size, model_params["num_contexts"]).restore(model_dir)
    total, count = 0.0, 0
    for start in range(0, len(x) - batch_size + 1, batch_size):
        sl = slice(start, start + batch_size)
        logits = forward(x[sl], num_precontext=n[sl])["logits"]
        loss, positions = cross_entropy(logits, y[sl])
        total, count = total + loss * positions, count + positions
    forward.close()
    return total / max(count, 1)
