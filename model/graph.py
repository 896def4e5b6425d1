"""Lowering a mesh-tensorflow graph onto devices, opening its session, and
moving weights between checkpoints and that session.

The one place each of these happens for the trainer, the TPU driver, Forward
and Decoder; a mismatch between a checkpoint and parameters.json, or a damaged
checkpoint file, becomes one clear UserError here instead of a TensorFlow
stack trace.
"""
import os

from model import mesh as meshlib
from model.compat import mtf, tf
from model.errors import UserError


def lower(mtf_graph, mesh, devices):
    """The mesh-tensorflow graph laid out on `devices` (a devices.Devices)."""
    return mtf.Lowering(mtf_graph, {mesh: meshlib.placement(devices.shape, devices.devices)})


def session(graph, devices):
    return tf.Session(devices.target, graph=graph, config=devices.config)


def master_variables(graph=None):
    graph = graph or tf.get_default_graph()
    return graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)


def expected_variables(graph=None):
    """{name: shape} of the master variables of a graph, global_step aside."""
    return {v.op.name: v.shape.as_list() for v in master_variables(graph)
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


def checkpoint_path(model_dir_or_path):
    """A checkpoint prefix: the path itself, or a model directory's latest."""
    if os.path.isdir(model_dir_or_path):
        return latest_checkpoint(model_dir_or_path)
    return model_dir_or_path


def check_checkpoint(path, expected):
    """{name: shape} stored in `path`; UserError naming the first variable of
    `expected` that is missing or has another shape."""
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


def restore(sess, model_dir_or_path, variables):
    """Load every one of `variables` from a checkpoint after checking names and
    shapes. Variables of a lower precision than the stored float32 are cast one
    at a time, so memory never holds a float32 copy of the whole model."""
    path = checkpoint_path(model_dir_or_path)
    check_checkpoint(path, {v.op.name: v.shape.as_list() for v in variables})
    try:
        with sess.graph.as_default():
            if all(v.dtype.base_dtype == tf.float32 for v in variables):
                tf.train.Saver(var_list=variables, sharded=True).restore(sess, path)
            else:
                _restore_cast(sess, path, variables)
    except (tf.errors.OpError, IndexError) as e:  # a truncated or empty data shard
        raise UserError("checkpoint %s is damaged (%s); copy it again"
                        % (path, (str(e).strip() or type(e).__name__).splitlines()[0]))
    return path


def save(sess, path, variables):
    """Write `variables` as a sharded checkpoint with prefix `path`."""
    with sess.graph.as_default():
        return tf.train.Saver(var_list=variables, sharded=True).save(sess, path)


def _restore_cast(sess, path, variables):
    prefix = tf.placeholder(tf.string, [])
    for var in variables:
        stored = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[var.op.name],
                                      shape_and_slices=[""], dtypes=[tf.float32])[0]
        sess.run(tf.assign(var, tf.cast(stored, var.dtype.base_dtype)), {prefix: path})


ADAM_SLOTS = ("/adam_m", "/adam_v")


def is_optimizer_state(name):
    """Adam slots, loss scale and step: training state, not model weights."""
    return name.endswith(ADAM_SLOTS) or name.startswith("loss_scale") or name == "global_step"


def model_weights(model_dir_or_path, variables):
    """(checkpoint prefix, the `variables` that it stores and that are model
    weights): what a partial load (fine-tuning a converted or released model)
    takes; optimizer state and layers the checkpoint lacks keep their initial
    values. Shapes are checked."""
    path = checkpoint_path(model_dir_or_path)
    stored = dict(tf.train.list_variables(path))
    wanted = [v for v in variables if v.op.name in stored and not is_optimizer_state(v.op.name)]
    check_checkpoint(path, {v.op.name: v.shape.as_list() for v in wanted})
    return path, wanted
