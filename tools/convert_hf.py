"""Convert between this project's model directories and the Hugging Face Hub format.

  import --from HF_DIR --output MODEL_DIR   Hub directory (config.json + model.safetensors,
                                            or pytorch_model.bin / sharded pytorch_model-*.bin)
                                            -> TF checkpoint with the released variable names,
                                            parameters.json, ja-swe36k.txt and emoji.json.
  export --from MODEL_DIR --output HF_DIR   any model directory of ours -> config.json,
                                            model.safetensors, vocab.txt, emoji.json and
                                            tokenizer_config.json that transformers'
                                            GPTSanJapaneseForConditionalGeneration loads.

The layout is transformers' GPTSanJapanese port (K = H / heads, E experts, layer i).
PyTorch Linear weights are [out, in], our kernels [in, out]: every kernel is transposed.
Safetensors are read and written through the safetensors package's NumPy API, so
neither direction needs torch; only reading pytorch_model*.bin does.

Memory: import reads one tensor at a time (safetensors are memory-mapped) and writes
the checkpoint in shards (model.convert.write_checkpoint), so the peak stays near one
shard plus the largest variable, not the model.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import cli  # noqa: E402
from model.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from model.errors import UserError  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_NAME, EMOJI_NAME = "ja-swe36k.txt", "emoji.json"
HF_VOCAB, HF_EMOJI = "vocab.txt", "emoji.json"
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
SPOUT_NAMES = ("model.spout.", "model.sqout.")  # transformers' converter wrote "sqout"
NUM_SPOUT_LAYERS = 8
DTYPES = {"float32": np.float32, "float16": np.float16}


# ---- the name mapping ----------------------------------------------------------
# Each rule: our variable -> list of (hf name, to_hf(array) -> array); from_hf joins back.
def _t(x):
    return np.ascontiguousarray(np.transpose(x))


def mapping(model_params):
    """[(our name, [hf names], to_hf(ours) -> [hf arrays], from_hf([hf arrays]) -> ours)]."""
    p = model_params
    H, A = p.num_hidden, p.num_header
    K = H // A
    E = p.num_experts
    S, X = p.num_switch_layers, p.num_ext_layers
    rules = []

    def one(ours, hf, to=lambda x: x, back=lambda x: x):
        rules.append((ours, [hf], lambda x: [to(x)], lambda xs: back(xs[0])))

    one("model/wte", "model.embed_tokens.weight")
    one("model/wpe", "model.position_embeddings.weight")
    if X:
        one("model/ete", "model.extra_position_embeddings.weight")
    one("model/wob", "final_logits_bias", lambda x: x.reshape(1, -1), lambda x: x.reshape(-1))
    one("model/dense/kernel", "model.last_project.weight", _t, _t)
    one("model/dense_1/bias", "model.last_project.bias")
    for i in range(S + X):
        b = "model.blocks.%d." % i
        att = b + "self_attn.self_attn."
        rules.append(("model/att%d/qkv/kernel" % i,
                      [att + "%s_proj.weight" % n for n in "qkv"],
                      lambda x: [_t(x[:, j].reshape(H, A * K)) for j in range(3)],
                      lambda xs: np.stack([np.transpose(w).reshape(H, A, K) for w in xs], 1)))
        one("model/att%d/o/kernel" % i, att + "out_proj.weight",
            lambda x: _t(x.reshape(A * K, H)), lambda x: _t(x).reshape(A, K, H))
        for g, t in (("g", "weight"), ("b", "bias")):
            one("model/an%d/%s" % (i, g), b + "self_attn.norm.%s" % t)
            one("model/ln%d/%s" % (i, g), b + "feed_forward.norm.%s" % t)
        ff = b + "feed_forward."
        if i < S:
            one("model/moe%d/switch_gating/kernel" % i, ff + "mlp.router.classifier.weight",
                _t, _t)
            for w in ("wi", "wo"):
                rules.append(("model/moe%d/%s/kernel" % (i, w),
                              [ff + "mlp.experts.expert_%d.%s.weight" % (e, w) for e in range(E)],
                              lambda x: [_t(x[e]) for e in range(E)],
                              lambda xs: np.stack([np.transpose(w) for w in xs], 0)))
            one("model/moe%d/softmlp/kernel" % i, ff + "soft_bypass_mlp.weight", _t, _t)
        else:
            for ours, hf in (("p1", "wi"), ("p2", "wo")):
                one("model/mlp%d/%s/kernel" % (i, ours), ff + "mlp.%s.weight" % hf, _t, _t)
                one("model/mlp%d/%s/bias" % (i, ours), ff + "mlp.%s.bias" % hf)
    if p.num_spout:
        for k in range(NUM_SPOUT_LAYERS):
            one("pasts/mlp%d/kernel" % k, "model.spout.%d.weight" % (2 * k), _t, _t)
        one("pasts/out/kernel", "model.spout.%d.weight" % (2 * NUM_SPOUT_LAYERS), _t, _t)
    return rules


# ---- config.json <-> parameters.json --------------------------------------------
def hf_config(model_params):
    p = model_params
    H, V = p.num_hidden, p.num_vocabulary
    return {
        "architectures": ["GPTSanJapaneseForConditionalGeneration"],
        "model_type": "gptsan-japanese",
        "vocab_size": V,
        "max_position_embeddings": p.num_contexts,
        "d_model": H,
        "d_ff": 8 * H,
        "d_ext": 4 * H,
        "d_spout": p.num_spout,
        "num_switch_layers": p.num_switch_layers,
        "num_ext_layers": p.num_ext_layers,
        "num_heads": p.num_header,
        "num_experts": p.num_experts,
        # transformers drops a token once more than expert_capacity tokens of a sequence
        # chose its expert; at the context length every token is routed.
        "expert_capacity": p.num_contexts,
        "layer_norm_epsilon": 1e-5,
        "router_bias": False,
        "router_jitter_noise": 0.0,
        "router_dtype": "float32",
        "router_ignore_padding_tokens": False,
        "output_hidden_states": False,
        "output_attentions": False,
        "initializer_factor": 0.002,
        "output_router_logits": False,
        "use_cache": True,
        "separator_token_id": V - 2,
        "pad_token_id": V - 5,
        "eos_token_id": V - 1,
        "torch_dtype": "float32",
    }


def model_params_from_config(config, has_spout, path):
    """The model_params keys of a Hub config.json, as default_params arguments."""
    def need(key):
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise UserError("%s: '%s' is missing or not an integer" % (path, key))
        return config[key]
    if config.get("model_type") not in (None, "gptsan-japanese"):
        raise UserError("%s: model_type is %r, not 'gptsan-japanese'"
                        % (path, config.get("model_type")))
    H = need("d_model")
    for key, factor in (("d_ff", 8), ("d_ext", 4)):
        if key in config and config[key] != factor * H:
            raise UserError("%s: %s is %r but this project's network needs %d x d_model = %d"
                            % (path, key, config[key], factor, factor * H))
    params = dict(num_contexts=need("max_position_embeddings"),
                  num_switch_layers=need("num_switch_layers"),
                  num_ext_layers=need("num_ext_layers"), num_hidden=H,
                  num_header=need("num_heads"), num_experts=need("num_experts"),
                  num_vocabulary=need("vocab_size"), num_pallarelizm=1, train_mode="hybrid")
    if has_spout:
        params["num_spout"] = need("d_spout")
    return params


# ---- reading a Hub directory -------------------------------------------------------
class HubTensors:
    """name -> numpy array from model.safetensors or pytorch_model*.bin, one at a time."""

    def __init__(self, folder):
        self.folder = folder
        self.files = {}  # name -> file
        self._open = {}
        st = os.path.join(folder, SAFETENSORS)
        index = os.path.join(folder, TORCH_INDEX)
        if os.path.isfile(st):
            self.kind = "safetensors"
            self._add_safetensors(st)
        elif os.path.isfile(index) or os.path.isfile(os.path.join(folder, TORCH_BIN)):
            self.kind = "torch"
            self.torch = _import_torch()
            if os.path.isfile(index):
                try:
                    with open(index, encoding="utf-8") as f:
                        weight_map = json.load(f)["weight_map"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise UserError("%s is not a valid index (%s)" % (index, e))
                self.files = {n: os.path.join(folder, f) for n, f in weight_map.items()}
            else:
                path = os.path.join(folder, TORCH_BIN)
                self.files = {n: path for n in self._torch_file(path)}
        else:
            raise UserError("%s holds no %s, %s or %s; download the Hub repository's "
                            "files there first" % (folder, SAFETENSORS, TORCH_BIN, TORCH_INDEX))
        self.names = {self._canonical(n): n for n in self.files}

    @staticmethod
    def _canonical(name):
        return name.replace("model.sqout.", "model.spout.")

    def _add_safetensors(self, path):
        from safetensors import safe_open
        try:
            handle = safe_open(path, framework="numpy")
        except Exception as e:  # a truncated or foreign file
            raise UserError("cannot read %s (%s)" % (path, str(e).splitlines()[0]))
        self._open[path] = handle
        for name in handle.keys():
            self.files[name] = path

    def _torch_file(self, path):
        # Only one .bin file is held at a time: a sharded model streams shard by shard.
        if path not in self._open:
            self._open.clear()
            try:
                try:
                    state = self.torch.load(path, map_location="cpu", weights_only=True,
                                            mmap=True)
                except (RuntimeError, TypeError):  # old zip/legacy formats refuse mmap
                    state = self.torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise UserError("cannot read %s (%s)" % (path, str(e).splitlines()[0]))
            self._open[path] = state
        return self._open[path]

    def has(self, name):
        return name in self.names

    def get(self, name):
        real = self.names[name]
        path = self.files[real]
        if self.kind == "safetensors":
            return self._open[path].get_tensor(real)
        tensor = self._torch_file(path)[real]
        return tensor.float().numpy() if str(tensor.dtype) == "torch.bfloat16" \
            else tensor.numpy()

    def has_spout(self):
        return any(n.startswith(SPOUT_NAMES) for n in self.files)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise UserError("reading pytorch_model*.bin needs torch (pip install torch), "
                        "or convert the Hub directory's model.safetensors instead")
    return torch


def read_vocabulary(path, size):
    """The vocabulary text in the released format (no trailing newline), checked."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError("cannot read vocabulary %s (%s)" % (path, e))
    if text.endswith("\n"):  # the Hub's vocab.txt may end with one; the released file does not
        text = text[:-1]
    count = len(text.split("\n"))
    if count != size:
        raise UserError("vocabulary %s has %d tokens but vocab_size is %d" % (path, count, size))
    return text


def import_hf(src, dst, dtype="float32", force=False, progress=True):
    from model import convert
    from model import params as params_lib
    from model.compat import tf  # noqa: F401  (TensorFlow must load before the checkpoint)

    if dtype not in DTYPES:
        raise UserError("--dtype must be one of %s" % ", ".join(DTYPES))
    if not os.path.isdir(src):
        raise UserError("--from %s is not a directory" % src)
    dst = os.path.abspath(dst)
    convert.check_destination(dst, force, src)
    config_path = os.path.join(src, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError("cannot read %s (%s)" % (config_path, e))
    hub = HubTensors(src)
    params = params_lib.default_params(
        **model_params_from_config(config, hub.has_spout(), config_path)).with_train(output_dir=dst)
    try:
        params.checked(config_path)
    except params_lib.ParameterError as e:
        raise UserError(str(e))
    model_params = params.model
    vocab = read_vocabulary(os.path.join(src, HF_VOCAB), model_params.num_vocabulary)
    emoji = os.path.join(src, HF_EMOJI)
    if not os.path.isfile(emoji):
        raise UserError("%s not found; the Hub repository has one beside vocab.txt" % emoji)

    shapes = convert.model_variable_shapes(model_params)
    rules = mapping(model_params)
    missing = sorted(set(shapes) - {r[0] for r in rules})
    if missing:
        raise UserError("internal: no Hub name for %s" % missing[0])
    used = set()
    entries = []
    for ours, hf_names, _, from_hf in rules:
        for n in hf_names:
            if not hub.has(n):
                raise UserError("%s has no tensor %s (needed for %s)" % (src, n, ours))
        used.update(hf_names)

        def produce(hf_names=hf_names, from_hf=from_hf, ours=ours):
            value = from_hf([hub.get(n) for n in hf_names])
            if list(value.shape) != list(shapes[ours]):
                raise UserError("%s: %s has shape %s, config.json implies %s"
                                % (src, ours, list(value.shape), shapes[ours]))
            return value.astype(DTYPES[dtype])
        entries.append(convert.Entry(ours, shapes[ours], DTYPES[dtype], produce, "copied"))
    entries.append(convert.Entry("global_step", [], np.int64, lambda: np.int64(0), "reset"))
    # lm_head.weight is tied to the embedding; any other leftover is a layout we do not know.
    extra = sorted(set(hub.names) - used - {"lm_head.weight"})
    if extra:
        raise UserError("%s has tensor %s that this configuration does not use" % (src, extra[0]))

    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".%s.tmp-" % os.path.basename(dst), dir=parent)
    try:
        convert.write_checkpoint(tmp, entries, progress)
        params_lib.save(params, tmp)
        write_text_atomic(os.path.join(tmp, VOCAB_NAME), vocab)
        shutil.copyfile(emoji, os.path.join(tmp, EMOJI_NAME))
        convert.check_destination(dst, force, src)
        convert.replace_path(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"output": dst, "source": hub.kind, "variables": len(entries) - 1,
            "dtype": dtype, "num_spout": model_params.num_spout}


# ---- export --------------------------------------------------------------------
def export_hf(src, dst, vocabulary=None, emoji=None, dtype="float32", force=False):
    from model import convert, graph as graphlib
    from model import params as params_lib
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise UserError("--dtype must be one of %s" % ", ".join(DTYPES))
    dst = os.path.abspath(dst)
    prefix, src_dir = convert.find_source(src)
    convert.check_destination(dst, force, src_dir)
    try:
        params = params_lib.load(src_dir)
    except params_lib.ParameterError as e:
        raise UserError(str(e))
    model_params = params.model
    vocabulary = vocabulary or _beside(src_dir, VOCAB_NAME)
    emoji = emoji or _beside(src_dir, EMOJI_NAME)
    vocab = read_vocabulary(vocabulary, model_params.num_vocabulary)
    cli.require_file(emoji, "emoji file", "pass --emoji")

    shapes = convert.model_variable_shapes(model_params)
    graphlib.check_checkpoint(prefix, shapes)
    from model.compat import tf
    reader = tf.train.load_checkpoint(prefix)
    tensors = {}
    for ours, hf_names, to_hf, _ in mapping(model_params):
        for n, value in zip(hf_names, to_hf(reader.get_tensor(ours))):
            tensors[n] = np.ascontiguousarray(value, dtype=DTYPES[dtype])
    # The tied head is stored, as transformers' own files do, so loading reports no missing key.
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    config = hf_config(model_params)
    config["torch_dtype"] = dtype

    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".%s.tmp-" % os.path.basename(dst), dir=parent)
    try:
        # safetensors refuses shared memory between two names: give the head its own copy.
        tensors["lm_head.weight"] = tensors["lm_head.weight"].copy()
        save_file(tensors, os.path.join(tmp, SAFETENSORS), metadata={"format": "pt"})
        write_json_atomic(config, os.path.join(tmp, "config.json"))
        write_text_atomic(os.path.join(tmp, HF_VOCAB), vocab)
        shutil.copyfile(emoji, os.path.join(tmp, HF_EMOJI))
        write_json_atomic({"tokenizer_class": "GPTSanJapaneseTokenizer",
                           "model_max_length": model_params.num_contexts,
                           "do_clean_text": False},
                          os.path.join(tmp, "tokenizer_config.json"))
        convert.check_destination(dst, force, src_dir)
        convert.replace_path(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"output": dst, "tensors": len(tensors), "dtype": dtype,
            "num_spout": model_params.num_spout}


def _beside(model_dir, name):
    """The file in the model directory, else the repository's released copy."""
    path = os.path.join(model_dir, name)
    return path if os.path.isfile(path) else os.path.join(HERE, name)


# ---- command line ------------------------------------------------------------------
def parser():
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hub directory -> model directory",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    imp.add_argument("--from", dest="src", required=True,
                     help="local Hub-format directory (config.json, model.safetensors or "
                          "pytorch_model*.bin, vocab.txt, emoji.json)")
    imp.add_argument("--output", required=True, help="model directory to write")
    imp.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                     help="dtype of the written checkpoint")
    imp.add_argument("--force", action="store_true", help="replace --output if it exists")
    imp.add_argument("--no_progress", action="store_true", help="no progress bar")
    exp = sub.add_parser("export", help="model directory -> Hub directory",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    exp.add_argument("--from", dest="src", required=True,
                     help="model directory (or checkpoint prefix) of this project")
    exp.add_argument("--output", required=True, help="Hub-format directory to write")
    exp.add_argument("--vocabulary", default=None,
                     help="vocabulary file (default: ja-swe36k.txt in the model directory, "
                          "else the repository's)")
    exp.add_argument("--emoji", default=None,
                     help="emoji file (default: emoji.json in the model directory, else the "
                          "repository's)")
    exp.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                     help="dtype of model.safetensors")
    exp.add_argument("--force", action="store_true", help="replace --output if it exists")
    return p


def main(args):
    if os.path.exists(args.output) and not args.force:
        cli.fail("%s already exists; pass --force to replace it" % args.output)
    if args.command == "import":
        result = import_hf(args.src, args.output, args.dtype, args.force,
                           progress=not args.no_progress)
    else:
        result = export_hf(args.src, args.output, args.vocabulary, args.emoji, args.dtype,
                           args.force)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    cli.run(main, parser())
