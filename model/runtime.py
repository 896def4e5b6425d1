"""The network's forward pass as a lowered graph: numpy in, numpy out."""
import numpy as np

from model import devices as devicelib
from model import graph as graphlib
from model import mesh as meshlib
from model import network
from model import spout as spoutlib
from model.compat import mtf, tf


def import_tensor(mesh, tensor, dims):
    return mtf.import_tf_tensor(mesh, tensor, mtf.Shape(dims))


class Forward:
    """A lowered inference graph for one batch size and length.

    Inputs are numpy arrays; outputs are numpy arrays. Used by
    run_languagemodel.py, the decoders and the tests.
    """

    def __init__(self, model_params, batch_size, length, devices=None, with_spout=False,
                 with_pos_vector=False, past_length=0, activation_dtype=tf.float32, seed=None,
                 token_drop=False):
        self.params = model_params
        self.devices = devices or devicelib.local(model_params.num_pallarelizm)
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
            self.lowering = graphlib.lower(mtf_graph, mesh, self.devices)
            self.fetches = {k: self.lowering.export_to_tf_tensor(v)
                            for k, v in out.items() if v is not None and k != "aux_loss"}
            self.fetches["presents"] = tf.cast(self.fetches["presents"], tf.float32)
            self.variables = graphlib.master_variables(self.graph)
            self._init = tf.global_variables_initializer()
            self._init_local = tf.local_variables_initializer()
            self._copy = self.lowering.copy_masters_to_slices()
            self.session = graphlib.session(self.graph, self.devices)

    def init_random(self):
        self.session.run(self._init)
        self.session.run(self._copy)
        return self

    def restore(self, model_dir_or_path):
        self.session.run(self._init_local)
        graphlib.restore(self.session, model_dir_or_path, self.variables)
        self.session.run(self._copy)
        return self

    def save(self, path):
        return graphlib.save(self.session, path, self.variables)

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
