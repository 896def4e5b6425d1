"""Held-out loss of a trained model on TFRecord shards (the same loss as
training: cross-entropy over positions with a target, without z-loss),
optionally with a spout vector, and the character-type shares of text."""
import unicodedata

import numpy as np

from model import inputs, params as params_lib, runtime
from model import spout as spoutlib
from model.compat import tf


def read_records(pattern, num_context, limit):
    """Up to `limit` examples as numpy arrays (x, y, num_input)."""
    xs, ys, ns = [], [], []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for example in inputs.iter_examples(path):
            x = example["x"]
            if len(x) != num_context:
                raise ValueError("%s holds records of length %d; the model has num_contexts %d"
                                 % (path, len(x), num_context))
            xs.append(x)
            ys.append(example["y"])
            ns.append(example["num_input"][0])
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


def _batches(x, y, n, batch_size):
    """Every example exactly once; the last batch is filled with copies whose
    targets are all -1, so they add no positions to the loss."""
    for start in range(0, len(x), batch_size):
        xs, ys, ns = x[start:start + batch_size], y[start:start + batch_size], n[start:start + batch_size]
        short = batch_size - len(xs)
        if short:
            xs = np.concatenate([xs, np.repeat(xs[:1], short, 0)])
            ys = np.concatenate([ys, np.full((short, ys.shape[1]), -1, ys.dtype)])
            ns = np.concatenate([ns, np.repeat(ns[:1], short, 0)])
        yield xs, ys, ns


def _mean_loss(forward, data, batch_size, spout=None, first_positions=None):
    x, y, n = data
    if first_positions is not None:  # only the first positions of each example count
        y = np.where(np.arange(y.shape[1])[None] < first_positions, y, -1)
    total, count = 0.0, 0
    for xs, ys, ns in _batches(x, y, n, batch_size):
        inputs = {"num_precontext": ns}
        if spout is not None:
            inputs["spout"] = np.repeat(spout[None], batch_size, 0)
        logits = forward(xs, **inputs)["logits"]
        loss, positions = cross_entropy(logits, ys)
        total, count = total + loss * positions, count + positions
    return total / max(count, 1)


def _load(pattern, model_params, max_examples):
    data = read_records(pattern, model_params.num_contexts, max_examples)
    if not len(data[0]):
        raise ValueError("no records match %s" % pattern)
    return data


def heldout_loss(model_dir, pattern, max_examples=64, batch_size=4, spout=None,
                 first_positions=None):
    """Mean cross-entropy per target position over the first `max_examples`
    records matching `pattern`.

    spout: None (the model without a spout input), a class number (one-hot) or a
    vector of num_spout values, given to every example as in run_generate.py.
    first_positions: count only targets at positions < this (where an example's
    own text says least about its class, so a spout matters most).
    """
    model_params = params_lib.load(model_dir).model
    vector = spoutlib.vector(spout, model_params.num_spout)
    data = _load(pattern, model_params, max_examples)
    forward = runtime.Forward(model_params, batch_size, model_params.num_contexts,
                              with_spout=vector is not None).restore(model_dir)
    try:
        return _mean_loss(forward, data, batch_size, vector, first_positions)
    finally:
        forward.close()


def spout_loss_table(model_dir, patterns, spouts, max_examples=64, batch_size=4,
                     first_positions=None):
    """table[r][c] = heldout_loss(model_dir, patterns[r], spout=spouts[c]), with
    one graph for the whole table (spouts must not be None)."""
    model_params = params_lib.load(model_dir).model
    vectors = [spoutlib.vector(s, model_params.num_spout) for s in spouts]
    if any(v is None for v in vectors):
        raise ValueError("spout_loss_table needs a spout for every column")
    datasets = [_load(p, model_params, max_examples) for p in patterns]
    forward = runtime.Forward(model_params, batch_size, model_params.num_contexts,
                              with_spout=True).restore(model_dir)
    try:
        return [[_mean_loss(forward, data, batch_size, v, first_positions) for v in vectors]
                for data in datasets]
    finally:
        forward.close()


CHAR_TYPES = ("ascii", "hiragana", "katakana", "kanji", "other")


def char_type(ch):
    """ascii, hiragana, katakana, kanji or other (for one character)."""
    o = ord(ch)
    if o < 0x80:
        return "ascii"
    if 0x3041 <= o <= 0x309F:
        return "hiragana"
    if 0x30A0 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9D:
        return "katakana"
    if (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x3FFFF or ch == "々"):
        return "kanji"
    return "other"


def char_type_shares(texts):
    """Share of each character type among the non-whitespace characters of a
    text (or of several texts together). Full-width ASCII (Ａ, １, －) is
    folded to ASCII first, so a full-width option counts as ASCII. Returns
    {type: share} over CHAR_TYPES plus "chars" (the number counted); all
    shares are 0.0 when nothing is counted."""
    if isinstance(texts, str):
        texts = [texts]
    counts = dict.fromkeys(CHAR_TYPES, 0)
    for text in texts:
        for ch in text:
            if ch.isspace():
                continue
            if 0xFF01 <= ord(ch) <= 0xFF5E:
                ch = unicodedata.normalize("NFKC", ch)
            counts[char_type(ch)] += 1
    total = sum(counts.values())
    shares = {k: (v / total if total else 0.0) for k, v in counts.items()}
    shares["chars"] = total
    return shares
