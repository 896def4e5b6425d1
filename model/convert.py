"""Preparing a trained model for fine-tuning: add extension layers (and a spout).

GPTSAN's fine-tuning recipe keeps the pretrained Switch layers frozen and trains
a few ordinary Transformer layers added on top of them ("extension stages"),
plus the spout projection that turns a class vector into one cached key/value
position per layer. `convert` writes such a model directory:

  DST/model.ckpt-0      every model weight of SRC (bit for bit), the new layers,
                        `model/ete` if SRC had none, and the spout weights.
                        global_step is reset to 0 so the fine-tuning schedule
                        (warm-up) starts fresh; Adam slots are dropped unless
                        asked for (they triple the size and the frozen weights
                        will never use them).
  DST/parameters.json   SRC's, with num_ext_layers (and num_spout) increased.
  DST/ignore-params.json  the frozen set: every model variable copied from SRC
                        except the spout projection `pasts/*` (it trains with
                        the extension layers, so that a spout the source never
                        learnt can adapt; pass freeze_spout to freeze SRC's
                        spout too).

New layer i continues SRC's layer numbering (att{i}, an{i}, mlp{i}, ln{i}).
Variable names and shapes come from network.py itself (the mtf graph of the
converted configuration), never from a second list here.

What `init="identity"` guarantees (the default):
- New layers' LayerNorm gains and biases (an{i}, ln{i}) are zero, so both
  residual branches of a new layer add exactly 0.0 and `model/ete` is zero:
  without a spout, the converted model's logits equal SRC's bit for bit.
- SRC with a spout, given the same spout vector: also exact. The spout's
  key/value for the existing layers are SRC's columns of `pasts/out/kernel`
  (the [L, 2, A, K] axis is layer-major, so they are the first L_old*2*H
  columns); the new layers' columns start at zero and whatever a new layer
  attends to is discarded by its zero LayerNorm gain.
- SRC without a spout (num_spout added): exact when no spout is given. With a
  spout, `pasts/out/kernel` starts at zero, so every layer sees one extra key
  of 0 with value 0; its softmax weight exp(0) still dilutes the real keys'
  weights, and the spout takes past slot 0, so every token's position (wpe)
  moves up by one. The logits then differ from SRC's (no initialisation can
  avoid either); fine-tuning with a spout learns around both, but a source
  pretrained with a spout (like the released spout_is_uniform model) fits the
  recipe better.
`init="random"` is the released behaviour: LayerNorm g = 1, b = 0.

Other new weights: kernels normal(0, 0.02), biases zero, seeded per variable
by (seed, name) so the result does not depend on the variable order. New spout
projection layers `pasts/mlp{k}/kernel` start at identity + normal(0, 0.02):
with the pretraining initialisation (normal 0.01) a one-hot spout shrinks by
~100x in each of the eight tanh layers and would receive no gradient at all.

Memory: SRC is read one variable at a time and the checkpoint is written in
shards of at most SHARD_BYTES, merged at the end, so converting the 2.8B model
needs about one shard of RAM, not the model's size.
"""
import os
import re
import shutil
import tempfile
import zlib

import numpy as np

from model import mesh as meshlib
from model import graph as graphlib
from model import network, params as params_lib
from model.graph import ADAM_SLOTS, is_optimizer_state
from model.errors import UserError
from model.compat import mtf, tf

INITS = ("identity", "random")
CHECKPOINT_NAME = "model.ckpt-0"
IGNORE_FILE = "ignore-params.json"
# Written as the released converter names them, so its instructions work on
# this converter's output: the weights to keep frozen, and every variable.
TRANSFORMER_FILE = "transformer-params.json"
ALL_FILE = "all-params.json"
SPOUT_SCOPE = "pasts/"
SPOUT_OUT = "pasts/out/kernel"
SHARD_BYTES = 256 << 20
LAYER_NORM = re.compile(r"model/(an|ln)\d+/(g|b)$")
SPOUT_LAYER = re.compile(r"pasts/mlp\d+/kernel$")


# ---- configuration ---------------------------------------------------------
def find_source(path):
    """(checkpoint prefix, model directory) for a model directory or a prefix."""
    if os.path.isdir(path):
        return graphlib.latest_checkpoint(path), path
    if os.path.isfile(path + ".index"):
        return path, os.path.dirname(os.path.abspath(path))
    raise UserError("source %s is neither a model directory nor a checkpoint "
                    "prefix (no %s.index)" % (path, path))


def converted_params(src_params, add_layers, num_spout, output_dir):
    """SRC's parameters.json with the extension layers and spout added."""
    have = src_params.model.num_spout
    if num_spout and have and num_spout != have:
        raise UserError("the source already has a spout of size %d; num_spout %d would "
                        "replace it (leave num_spout at 0 to keep it)" % (have, num_spout))
    params = src_params.with_model(num_ext_layers=src_params.model.num_ext_layers + add_layers,
                                   num_spout=num_spout or have)
    return params.with_train(output_dir=output_dir).checked("converted parameters")


def model_variable_shapes(model_params):
    """{name: shape} of every weight network.model creates for this configuration
    (the mtf graph is built, never lowered, so no memory is allocated)."""
    mtf_graph, mesh = meshlib.new_mesh()
    cfg = network.Config(model_params)
    batch, length = mtf.Dimension("batch", 1), mtf.Dimension("length", 1)
    with tf.Graph().as_default():
        tokens = mtf.zeros(mesh, [batch, length], tf.int32)
        spout = mtf.zeros(mesh, [batch, cfg.dims.spout]) if cfg.dims.num_spout else None
        network.model(tokens, cfg, spout=spout)
    return {v.name: v.shape.to_integer_list for v in mtf_graph.all_variables}


# ---- initial values ----------------------------------------------------------
def _normal(name, shape, stddev, seed):
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return (rng.standard_normal(shape, dtype=np.float32) * stddev).astype(np.float32)


def initial_value(name, shape, init, seed):
    """The starting value of a weight SRC does not have (see the module doc)."""
    match = LAYER_NORM.match(name)
    if match:
        gain = 1.0 if (match.group(2) == "g" and init == "random") else 0.0
        return np.full(shape, gain, np.float32)
    if name.endswith("/bias") or name == "model/ete":
        return np.zeros(shape, np.float32)
    if SPOUT_LAYER.match(name):
        return np.eye(shape[0], shape[1], dtype=np.float32) + _normal(
            name, shape, network.INIT_STDDEV, seed)
    if name == SPOUT_OUT:
        if init == "identity":
            return np.zeros(shape, np.float32)
        return _normal(name, shape, network.SOFTMLP_STDDEV, seed)
    return _normal(name, shape, network.INIT_STDDEV, seed)


def widen_columns(old, fresh):
    """`fresh` with its first columns replaced by `old` (the existing layers' block
    of the layer-major spout projection)."""
    fresh[:, :old.shape[1]] = old
    return fresh


# ---- the plan: one entry per variable of DST -----------------------------------
class Entry:
    """A variable of the converted checkpoint and how to produce its value."""

    def __init__(self, name, shape, dtype, produce, origin):
        self.name, self.shape, self.dtype = name, list(shape), dtype
        self.produce = produce  # () -> numpy array, called when its shard is written
        self.origin = origin    # "copied", "widened", "new" or "reset"

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan(reader, stored, dst_shapes, init, seed, keep_optimizer_state):
    """Entries for every DST variable: model weights, kept slots, global_step."""
    dtypes = reader.get_variable_to_dtype_map()

    def copy(name):
        return lambda: reader.get_tensor(name)

    def widen(name, shape, fill):
        return lambda: widen_columns(reader.get_tensor(name), fill(shape))

    entries = []
    for name, shape in sorted(dst_shapes.items()):
        if name not in stored:
            entries.append(Entry(name, shape, np.float32,
                                 lambda n=name, s=shape: initial_value(n, s, init, seed), "new"))
        elif list(stored[name]) == list(shape):
            entries.append(Entry(name, shape, dtypes[name].as_numpy_dtype, copy(name), "copied"))
        elif name == SPOUT_OUT and _widens(stored[name], shape):
            entries.append(Entry(name, shape, np.float32, widen(
                name, shape, lambda s: initial_value(SPOUT_OUT, s, init, seed)), "widened"))
        else:
            raise UserError("source variable %s has shape %s, the converted model needs %s"
                            % (name, list(stored[name]), list(shape)))
    if keep_optimizer_state:
        entries += _kept_slots(reader, stored, dst_shapes, dtypes, copy, widen)
    entries.append(Entry("global_step", [], np.int64, lambda: np.int64(0), "reset"))
    return entries


def _widens(old_shape, new_shape):
    return len(old_shape) == 2 and old_shape[0] == new_shape[0] and old_shape[1] < new_shape[1]


def _kept_slots(reader, stored, dst_shapes, dtypes, copy, widen):
    """SRC's Adam slots (widened with zeros where their variable grew) and loss scale."""
    entries = []
    for name, shape in sorted(stored.items()):
        if name == "global_step" or not is_optimizer_state(name):
            continue
        owner = name[:-len(ADAM_SLOTS[0])] if name.endswith(ADAM_SLOTS) else None
        if owner in dst_shapes and list(dst_shapes[owner]) != list(shape):
            entries.append(Entry(name, dst_shapes[owner], np.float32,
                                 widen(name, dst_shapes[owner],
                                       lambda s: np.zeros(s, np.float32)), "widened"))
        else:
            entries.append(Entry(name, shape, dtypes[name].as_numpy_dtype, copy(name), "copied"))
    return entries


def frozen_names(entries, dst_shapes, freeze_spout):
    """The model weights that came from SRC: ignore-params.json."""
    return sorted(e.name for e in entries
                  if e.origin in ("copied", "widened") and e.name in dst_shapes
                  and (freeze_spout or not e.name.startswith(SPOUT_SCOPE)))


# ---- writing -------------------------------------------------------------------
def shards(entries, max_bytes=SHARD_BYTES):
    """Consecutive groups of entries of at most max_bytes each (a bigger
    variable gets a shard of its own)."""
    group, size = [], 0
    for entry in entries:
        if group and size + entry.nbytes > max_bytes:
            yield group
            group, size = [], 0
        group.append(entry)
        size += entry.nbytes
    if group:
        yield group


def write_checkpoint(folder, entries, progress=True, max_bytes=SHARD_BYTES):
    """Write entries to folder/CHECKPOINT_NAME and its `checkpoint` file.

    Each shard's values are produced, saved (SaveV2) and released before the
    next; MergeV2Checkpoints then joins the shards into one checkpoint, as a
    sharded tf.train.Saver does."""
    from tqdm import tqdm
    prefix = os.path.join(folder, CHECKPOINT_NAME)
    parts = []
    total = sum(e.nbytes for e in entries)
    with tf.Graph().as_default(), tf.Session() as session, \
            tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                 desc="writing") as bar:
        for k, group in enumerate(shards(entries, max_bytes)):
            part = os.path.join(folder, ".shards", "part-%05d" % k)
            values = [np.asarray(e.produce(), dtype=e.dtype).reshape(e.shape) for e in group]
            holders = [tf.placeholder(tf.as_dtype(v.dtype), v.shape) for v in values]
            save = tf.raw_ops.SaveV2(prefix=part, tensor_names=[e.name for e in group],
                                     shape_and_slices=[""] * len(group), tensors=holders)
            session.run(save, dict(zip(holders, values)))
            del values
            parts.append(part)
            bar.update(sum(e.nbytes for e in group))
        session.run(tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts,
                                                  destination_prefix=prefix,
                                                  delete_old_dirs=True))
    shutil.rmtree(os.path.join(folder, ".shards"), ignore_errors=True)
    tf.train.update_checkpoint_state(folder, CHECKPOINT_NAME)
    return prefix


# What convert writes into its output directory; --force replaces only such a directory.
_WRITTEN = re.compile(r"^(parameters\.json|checkpoint|%s|model\.ckpt.*|\.shards)$"
                      % "|".join(re.escape(f) for f in (IGNORE_FILE, TRANSFORMER_FILE, ALL_FILE)))


def check_destination(dst, force, src_dir=None):
    """Refuse to overwrite DST without force, and never overwrite the source.

    With force, DST may only be a file or an earlier converted model: a directory
    holding the source, or anything this tool does not write, is refused."""
    if src_dir and os.path.exists(dst) and os.path.samefile(dst, src_dir):
        raise UserError("destination %s is the source model; write the converted model "
                        "to another directory" % dst)
    if os.path.exists(dst) and not force:
        raise UserError("%s already exists; pass force to replace it" % dst)
    if os.path.isdir(dst):
        if src_dir:
            real_src, real_dst = os.path.realpath(src_dir), os.path.realpath(dst)
            if os.path.commonpath([real_src, real_dst]) == real_dst:
                raise UserError("destination %s contains the source model %s; force will not "
                                "delete it: choose another destination" % (dst, src_dir))
        foreign = sorted(n for n in os.listdir(dst) if not _WRITTEN.match(n))
        if foreign:
            raise UserError("destination %s holds %s, which the converter did not write; "
                            "force only replaces an earlier converted model: choose "
                            "another destination" % (dst, foreign[0]))


def replace_path(tmp, dst):
    """Move the finished tmp directory to dst, replacing what is there."""
    old = None
    if os.path.lexists(dst):
        old = tempfile.mkdtemp(prefix=".%s.old-" % os.path.basename(dst),
                               dir=os.path.dirname(dst))
        os.replace(dst, os.path.join(old, "previous"))
    os.replace(tmp, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def convert(src, dst, add_layers=0, num_spout=0, init="identity", seed=0,
            keep_optimizer_state=False, freeze_spout=False, force=False, progress=True):
    """Write the converted model directory dst; returns a summary dict."""
    if init not in INITS:
        raise UserError("init must be one of %s, not %r" % (", ".join(INITS), init))
    if add_layers < 0 or num_spout < 0:
        raise UserError("add_layers and num_spout must be >= 0, not %d and %d"
                        % (add_layers, num_spout))
    dst = os.path.abspath(dst)
    prefix, src_dir = find_source(src)
    check_destination(dst, force, src_dir)
    try:
        src_params = params_lib.load(src_dir)
    except params_lib.ParameterError as e:
        raise UserError(str(e))
    dst_params = converted_params(src_params, add_layers, num_spout, dst)
    stored = graphlib.check_checkpoint(prefix, model_variable_shapes(src_params.model))
    dst_shapes = model_variable_shapes(dst_params.model)
    reader = tf.train.load_checkpoint(prefix)
    entries = plan(reader, stored, dst_shapes, init, seed, keep_optimizer_state)
    frozen = frozen_names(entries, dst_shapes, freeze_spout)

    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".%s.tmp-" % os.path.basename(dst), dir=parent)
    # mkdtemp makes 0700; the finished directory follows the umask like any other output.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        try:
            write_checkpoint(tmp, entries, progress)  # reads the source tensors lazily
        except (tf.errors.OpError, IndexError) as e:  # a truncated or empty data shard
            raise UserError("checkpoint %s is damaged (%s); copy it again"
                            % (prefix, (str(e).strip() or type(e).__name__).splitlines()[0]))
        params_lib.save(dst_params, tmp)
        params_lib.write_json_atomic(frozen, os.path.join(tmp, IGNORE_FILE))
        # The frozen set (not every copied weight): run_finetune.py reads this
        # file first, and this converter leaves an added spout trainable.
        params_lib.write_json_atomic(frozen, os.path.join(tmp, TRANSFORMER_FILE))
        params_lib.write_json_atomic(sorted(e.name for e in entries), os.path.join(tmp, ALL_FILE))
        check_destination(dst, force, src_dir)  # someone may have created it meanwhile
        replace_path(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary(prefix, dst, entries, dst_shapes, frozen, dst_params)


def summary(prefix, dst, entries, dst_shapes, frozen, dst_params):
    size = {name: int(np.prod(shape, dtype=np.int64)) for name, shape in dst_shapes.items()}
    frozen_count = sum(size[n] for n in frozen)
    by_origin = {}
    for e in entries:
        by_origin[e.origin] = by_origin.get(e.origin, 0) + 1
    return {"source": prefix, "output": dst,
            "checkpoint": os.path.join(dst, CHECKPOINT_NAME),
            "num_layers": dst_params.model.num_layers,
            "num_spout": dst_params.model.num_spout,
            "parameters": sum(size.values()),
            "frozen_parameters": frozen_count,
            "trainable_parameters": sum(size.values()) - frozen_count,
            "variables": by_origin,
            "checkpoint_bytes": sum(e.nbytes for e in entries)}
