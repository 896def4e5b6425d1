"""Tiny GPTSAN model directories for the inference tests.

A random model with the released vocabulary size (36,000) but a hidden size
of 16, so a forward pass costs milliseconds. Weights are scaled up from the
training initialisation so the logits are far from flat (argmax gaps are
many orders of magnitude above float rounding), and chosen output biases can
be set to force a token, which makes "never emits X" tests meaningful.
"""
import os

from model import params as paramslib

# Ids of the released vocabulary's control tokens (ja-swe36k.txt, last 7 lines).
STARTOFTEXT, INPUTMASK, SEPARATOR, NOTTOKEN, BAGOFTOKEN, SEGMENTER, ENDOFTEXT = range(35993, 36000)

WEIGHT_SCALE = 10.0


def tiny_params(**overrides):
    model = dict(num_contexts=32, num_switch_layers=2, num_ext_layers=1, num_hidden=16,
                 num_header=2, num_experts=2, num_vocabulary=36000, num_pallarelizm=1,
                 num_spout=4)
    model.update(overrides)
    if not model.get("num_spout"):
        model.pop("num_spout", None)
    return paramslib.default_params(**model)


def make_model_dir(path, params=None, seed=0, output_bias=None):
    """Write parameters.json and a random checkpoint into `path`; return it.

    output_bias: {token id: value} added to the vocabulary bias `model/wob`.
    """
    from model import runtime
    from model import devices as devicelib
    from model.compat import tf

    params = params or tiny_params()
    model_params = params.model
    os.makedirs(path, exist_ok=True)
    forward = runtime.Forward(model_params, batch_size=1, length=1, seed=seed,
                              with_spout=bool(model_params.num_spout),
                              devices=devicelib.local())
    forward.init_random()
    with forward.graph.as_default():
        for var in forward.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES):
            if var.shape.ndims >= 2:
                forward.session.run(var.assign(var * WEIGHT_SCALE))
        if output_bias:
            wob = [v for v in forward.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
                   if v.op.name == "model/wob"][0]
            ids = sorted(output_bias)
            forward.session.run(tf.scatter_update(wob, ids, [float(output_bias[i]) for i in ids]))
        forward.save(os.path.join(path, "model.ckpt"))
    forward.close()
    paramslib.save(params, path)
    return path


def save_checkpoint(tensors, folder, global_step=None):
    """Write {variable name: array} as a TensorFlow checkpoint in `folder`."""
    from model.compat import tf

    os.makedirs(folder, exist_ok=True)
    with tf.Graph().as_default():
        variables = {name: tf.Variable(value, name="v%d" % k)
                     for k, (name, value) in enumerate(tensors.items())}
        saver = tf.train.Saver(variables)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            saver.save(session, os.path.join(folder, "model.ckpt"), global_step=global_step)


def reference_paths(shared_dir):
    """The released vocabulary and emoji table in the shared reference data."""
    ref = os.path.join(shared_dir, "reference")
    return os.path.join(ref, "ja-swe36k.txt"), os.path.join(ref, "emoji.json")


def reference_encoder(shared_dir):
    import pytest
    pytest.importorskip("encode_swe", reason="encode_swe.py (the encoder) is not in the tree")
    import encode_swe
    return encode_swe.load_encoder(*reference_paths(shared_dir))


def vocabulary_flags(shared_dir):
    vocab, emoji = reference_paths(shared_dir)
    return ["--vocabulary", vocab, "--emoji", emoji]
