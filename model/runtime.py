"""Building, lowering and running a mesh-tensorflow graph; loading checkpoints.

Shared by every script: one way to restore weights,
one way to turn a mismatch between a checkpoint and parameters.json into a
clear message instead of a TensorFlow stack trace.
"""
import os

import numpy as np

from model import devices as devicelib
from model import mesh as meshlib
from model import network
from model import spout as spoutlib
from model.errors import UserError
from model.compat import mtf, tf


def import_tensor(mesh, tensor, dims):
    return mtf.import_tf_tensor(mesh, tensor, mtf.Shape(dims))


def expected_variables(graph=None):
    """{name: shape} of the master variables of the current graph."""
    graph = graph or tf.get_default_graph()
    return {v.op.name: v.shape.as_list() for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
            if v.op.name != "global_step"}


def latest_checkpoint(model_dir):
    if not os.path.isdir(model_dir):
        raise UserError("model directory not found: %s" % model_dir)
    if not os.path.isfile(os.path.join(model_dir, "checkpoint")):
        raise UserError("no 'checkpoint' file in %s: not a trained model directory "
                        "(train one with run_training.py or download GPTSAN-2.8B)" % model_dir)
    path = tf.train.latest_checkpoint(model_dir)
    if path is None:
        raise UserError("%s/checkpoint names no readable checkpoint" % model_dir)
    return path


def check_checkpoint(path, expected):
    """Raise UserError naming the first variable that is missing or has another shape."""
    try:
        stored = dict(tf.train.list_variables(path))
    except Exception as e:  # a truncated or foreign file
        raise UserError("cannot read checkpoint %s (%s)" % (path, str(e).splitlines()[0]))
    for name, shape in sorted(expected.items()):
        if name not in stored:
            raise UserError("checkpoint %s has no variable %s (shape %s) that parameters.json "
                            "implies; is this the right model directory?" % (path, name, shape))
        if list(stored[name]) != list(shape):
            raise UserError("checkpoint variable %s has shape %s but parameters.json implies %s"
                            % (name, list(stored[name]), shape))
    return stored


class Forward:
    """A lowered inference graph for one batch size and length.

    Inputs are numpy arrays; outputs are numpy arrays. Used by
    run_languagemodel.py, the decoders and the tests.
    """

    def __init__(self, model_params, batch_size, length, devices=None, with_spout=False,
                 with_pos_vector=False, past_length=0, activation_dtype=tf.float32, seed=None,
                 token_drop=False):
        self.params = model_params
        self.devices = devices or devicelib.local(model_params["num_pallarelizm"])
        self.graph = tf.Graph()
        with self.graph.as_default():
            if seed is not None:
                tf.set_random_seed(seed)
            mtf_graph, mesh = meshlib.new_mesh()
            cfg = network.Config(model_params, activation_dtype=activation_dtype,
                                 layout=meshlib.LAYOUT, mesh_shape=self.devices.shape,
                                 seed=seed or 0, no_token_drop=not token_drop)
            d = cfg.dims
            batch = mtf.Dimension("batch", batch_size)
            length_dim = mtf.Dimension("length", length)
            self.feeds = {"tokens": tf.placeholder(tf.int32, [batch_size, length], "tokens"),
                          "num_precontext": tf.placeholder_with_default(
                              tf.zeros([batch_size], tf.int32), [batch_size], "num_precontext")}
            kwargs = {"num_precontext": import_tensor(mesh, self.feeds["num_precontext"], [batch])}
            if with_spout:
                spoutlib.require(d.num_spout)
                self.feeds["spout"] = tf.placeholder(tf.float32, [batch_size, d.num_spout], "spout")
                kwargs["spout"] = import_tensor(mesh, self.feeds["spout"], [batch, d.spout])
            if with_pos_vector:
                self.feeds["pos_index"] = tf.placeholder(tf.int32, [batch_size], "pos_index")
                kwargs["pos_index"] = import_tensor(mesh, self.feeds["pos_index"], [batch])
            if past_length:
                shape = [batch_size, d.layers.size, 2, d.header.size, past_length, d.kv.size]
                self.feeds["pasts"] = tf.placeholder(tf.float32, shape, "pasts")
                kwargs["pasts"] = import_tensor(mesh, self.feeds["pasts"], [
                    batch, d.layers, d.two, d.header, mtf.Dimension("memory", past_length), d.kv])
            tokens = import_tensor(mesh, self.feeds["tokens"], [batch, length_dim])
            out = network.model(tokens, cfg, **kwargs)
            impl = meshlib.placement(self.devices.shape, self.devices.devices)
            self.lowering = mtf.Lowering(mtf_graph, {mesh: impl})
            self.fetches = {k: self.lowering.export_to_tf_tensor(v)
                            for k, v in out.items() if v is not None and k != "aux_loss"}
            self.fetches["presents"] = tf.cast(self.fetches["presents"], tf.float32)
            self.expected = expected_variables(self.graph)
            self.saver = tf.train.Saver(var_list=_master_variables(self.graph), sharded=True)
            self._init = tf.global_variables_initializer()
            self._init_local = tf.local_variables_initializer()
            self._copy = self.lowering.copy_masters_to_slices()
            self.session = tf.Session(self.devices.target, graph=self.graph,
                                      config=self.devices.config)

    def init_random(self):
        self.session.run(self._init)
        self.session.run(self._copy)
        return self

    def restore(self, model_dir_or_path):
        path = model_dir_or_path
        if os.path.isdir(path):
            path = latest_checkpoint(path)
        check_checkpoint(path, self.expected)
        self.session.run(self._init_local)
        try:
            self.saver.restore(self.session, path)
        except (tf.errors.OpError, IndexError) as e:  # a truncated or empty data shard
            raise UserError("checkpoint %s is damaged (%s); copy it again"
                            % (path, (str(e).strip() or type(e).__name__).splitlines()[0]))
        self.session.run(self._copy)
        return self

    def __call__(self, tokens, **inputs):
        feed = {self.feeds["tokens"]: np.asarray(tokens, np.int32)}
        for name, value in inputs.items():
            if value is None:
                continue
            if name not in self.feeds:
                raise ValueError("this graph was built without input %r" % name)
            feed[self.feeds[name]] = np.asarray(value)
        return self.session.run(self.fetches, feed)

    def close(self):
        self.session.close()


def _master_variables(graph):
    return graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
