"""tools/convert_hf.py: export to the Hub layout and import back, without torch.

Expected Hub tensors are computed here from the checkpoint with plain NumPy index
arithmetic written from the layout description (PyTorch Linear weight = kernel
transposed; q/k/v = slice j of the [H, 3, A, K] kernel), not with the tool's own
mapping functions."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import tiny_model

safetensors_numpy = pytest.importorskip("safetensors.numpy",
                                        reason="the safetensors package is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_hf.py")

CONFIGS = {
    "ext_spout_e2": dict(num_experts=2, num_ext_layers=1, num_spout=4),
    "noext_nospout_e4": dict(num_experts=4, num_ext_layers=0, num_spout=0),
    "ext_nospout_e3": dict(num_experts=3, num_ext_layers=2, num_spout=0),
    "noext_spout_e1": dict(num_experts=1, num_ext_layers=0, num_spout=8),
}


def checkpoint_tensors(model_dir):
    from model.compat import tf
    prefix = tf.train.latest_checkpoint(model_dir)
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)
            if name != "global_step"}


def expected_hub(ours, mp):
    """The Hub tensors for our variables, by the documented layout."""
    H, A = mp.num_hidden, mp.num_header
    S, X, E = mp.num_switch_layers, mp.num_ext_layers, mp.num_experts
    out = {"model.embed_tokens.weight": ours["model/wte"],
           "lm_head.weight": ours["model/wte"],
           "model.position_embeddings.weight": ours["model/wpe"],
           "final_logits_bias": ours["model/wob"][None, :],
           "model.last_project.weight": ours["model/dense/kernel"].T,
           "model.last_project.bias": ours["model/dense_1/bias"]}
    if X:
        out["model.extra_position_embeddings.weight"] = ours["model/ete"]
    for i in range(S + X):
        b = "model.blocks.%d." % i
        qkv = ours["model/att%d/qkv/kernel" % i]
        for j, n in enumerate("qkv"):
            w = np.empty((H, H), np.float32)
            for a in range(A):  # head a owns output columns a*K .. a*K+K-1
                w[:, a * (H // A):(a + 1) * (H // A)] = qkv[:, j, a, :]
            out[b + "self_attn.self_attn.%s_proj.weight" % n] = w.T
        o = ours["model/att%d/o/kernel" % i]
        out[b + "self_attn.self_attn.out_proj.weight"] = np.concatenate(list(o), 0).T
        for g, t in (("g", "weight"), ("b", "bias")):
            out[b + "self_attn.norm." + t] = ours["model/an%d/%s" % (i, g)]
            out[b + "feed_forward.norm." + t] = ours["model/ln%d/%s" % (i, g)]
        if i < S:
            out[b + "feed_forward.mlp.router.classifier.weight"] = \
                ours["model/moe%d/switch_gating/kernel" % i].T
            out[b + "feed_forward.soft_bypass_mlp.weight"] = \
                ours["model/moe%d/softmlp/kernel" % i].T
            for e in range(E):
                for w in ("wi", "wo"):
                    out[b + "feed_forward.mlp.experts.expert_%d.%s.weight" % (e, w)] = \
                        ours["model/moe%d/%s/kernel" % (i, w)][e].T
        else:
            for p, w in (("p1", "wi"), ("p2", "wo")):
                out[b + "feed_forward.mlp.%s.weight" % w] = ours["model/mlp%d/%s/kernel" % (i, p)].T
                out[b + "feed_forward.mlp.%s.bias" % w] = ours["model/mlp%d/%s/bias" % (i, p)]
    if mp.num_spout:
        for k in range(8):
            out["model.spout.%d.weight" % (2 * k)] = ours["pasts/mlp%d/kernel" % k].T
        out["model.spout.16.weight"] = ours["pasts/out/kernel"].T
    return out


def run_tool(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, TOOL] + list(args), capture_output=True, text=True,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{config name: (model dir, hub dir, model_params)} written by the tool."""
    from tools import convert_hf
    base = tmp_path_factory.mktemp("hf")
    result = {}
    for k, (name, overrides) in enumerate(CONFIGS.items()):
        params = tiny_model.tiny_params(**overrides)
        model_dir = tiny_model.make_model_dir(str(base / name / "ours"), params, seed=k)
        hub = str(base / name / "hub")
        convert_hf.export_hf(model_dir, hub)
        result[name] = (model_dir, hub, params.model)
    return result


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_tensors_follow_the_layout(exported, name):
    model_dir, hub, mp = exported[name]
    got = safetensors_numpy.load_file(os.path.join(hub, "model.safetensors"))
    want = expected_hub(checkpoint_tensors(model_dir), mp)
    assert sorted(got) == sorted(want)
    for n, w in want.items():
        assert got[n].dtype == np.float32, n
        np.testing.assert_array_equal(got[n], w, err_msg=n)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_config(exported, name):
    model_dir, hub, mp = exported[name]
    with open(os.path.join(hub, "config.json")) as f:
        c = json.load(f)
    H, V = mp.num_hidden, mp.num_vocabulary
    assert c["model_type"] == "gptsan-japanese"
    assert (c["vocab_size"], c["max_position_embeddings"], c["d_model"], c["d_ff"], c["d_ext"]) \
        == (V, mp.num_contexts, H, 8 * H, 4 * H)
    assert c["d_spout"] == mp.num_spout
    assert (c["num_switch_layers"], c["num_ext_layers"], c["num_heads"], c["num_experts"]) == \
        (mp.num_switch_layers, mp.num_ext_layers, mp.num_header, mp.num_experts)
    assert (c["separator_token_id"], c["pad_token_id"], c["eos_token_id"]) == (V - 2, V - 5, V - 1)
    with open(os.path.join(hub, "tokenizer_config.json")) as f:
        assert json.load(f)["tokenizer_class"] == "GPTSanJapaneseTokenizer"
    with open(os.path.join(hub, "vocab.txt"), "rb") as a, \
            open(os.path.join(ROOT, "ja-swe36k.txt"), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_bit_identical(exported, name, tmp_path):
    from model import params as params_lib
    from tools import convert_hf
    model_dir, hub, mp = exported[name]
    back = str(tmp_path / "back")
    convert_hf.import_hf(hub, back, progress=False)
    a, b = checkpoint_tensors(model_dir), checkpoint_tensors(back)
    assert sorted(a) == sorted(b)
    for n in a:
        assert b[n].dtype == np.float32
        assert a[n].tobytes() == b[n].tobytes(), n
    p = params_lib.load(back).model
    assert p.train_mode == "hybrid"
    for key in ("num_contexts", "num_switch_layers", "num_ext_layers", "num_hidden",
                "num_header", "num_experts", "num_vocabulary"):
        assert getattr(p, key) == getattr(mp, key), key
    assert p.num_spout == mp.num_spout
    # import then export gives the same Hub tensors back
    hub2 = str(tmp_path / "hub2")
    convert_hf.export_hf(back, hub2)
    x = safetensors_numpy.load_file(os.path.join(hub, "model.safetensors"))
    y = safetensors_numpy.load_file(os.path.join(hub2, "model.safetensors"))
    assert sorted(x) == sorted(y)
    for n in x:
        assert x[n].tobytes() == y[n].tobytes(), n


def _hub_copy(src, dst, rename=None, vocab_suffix=b"", cast=None):
    os.makedirs(dst)
    tensors = safetensors_numpy.load_file(os.path.join(src, "model.safetensors"))
    if rename:
        tensors = {rename(n): v for n, v in tensors.items()}
    if cast:
        tensors = {n: v.astype(cast) for n, v in tensors.items()}
    safetensors_numpy.save_file(tensors, os.path.join(dst, "model.safetensors"))
    for f in ("config.json", "emoji.json"):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    with open(os.path.join(src, "vocab.txt"), "rb") as a, \
            open(os.path.join(dst, "vocab.txt"), "wb") as b:
        b.write(a.read() + vocab_suffix)


def test_import_accepts_sqout_names_and_trailing_newline(exported, tmp_path):
    from tools import convert_hf
    model_dir, hub, _ = exported["ext_spout_e2"]
    typo = str(tmp_path / "typo")
    _hub_copy(hub, typo, rename=lambda n: n.replace("model.spout.", "model.sqout."),
              vocab_suffix=b"\n")
    back = str(tmp_path / "back")
    convert_hf.import_hf(typo, back, progress=False)
    a, b = checkpoint_tensors(model_dir), checkpoint_tensors(back)
    for n in a:
        assert a[n].tobytes() == b[n].tobytes(), n
    with open(os.path.join(back, "ja-swe36k.txt"), "rb") as f:
        assert not f.read().endswith(b"\n")  # the released format


def test_import_float16_hub_as_float32_and_float16(exported, tmp_path):
    from tools import convert_hf
    model_dir, hub, _ = exported["noext_nospout_e4"]
    half = str(tmp_path / "half")
    _hub_copy(hub, half, cast=np.float16)
    ours = checkpoint_tensors(model_dir)
    for dtype, np_dtype in (("float32", np.float32), ("float16", np.float16)):
        out = str(tmp_path / dtype)
        convert_hf.import_hf(half, out, dtype=dtype, progress=False)
        got = checkpoint_tensors(out)
        for n, v in ours.items():
            assert got[n].dtype == np_dtype
            # float16 -> float32 is exact, so the values are the float16 rounding of ours
            np.testing.assert_array_equal(got[n], v.astype(np.float16).astype(np_dtype), n)


def test_cli_refuses_to_overwrite_and_bad_input(exported, tmp_path):
    model_dir, hub, _ = exported["noext_nospout_e4"]
    out = tmp_path / "exists"
    out.mkdir()
    r = run_tool("export", "--from", model_dir, "--output", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--force" in r.stderr
    r = run_tool("import", "--from", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    r = run_tool("import", "--from", str(empty), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    r = run_tool("export", "--from", model_dir, "--output", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file()


def test_import_refuses_wrong_vocabulary_size(exported, tmp_path):
    from model.errors import UserError
    from tools import convert_hf
    _, hub, _ = exported["noext_nospout_e4"]
    bad = str(tmp_path / "bad")
    _hub_copy(hub, bad, vocab_suffix=b"\nextra")
    with pytest.raises(UserError, match="vocab_size"):
        convert_hf.import_hf(bad, str(tmp_path / "o"), progress=False)


def test_import_pytorch_bin_without_torch_says_so(exported, tmp_path, monkeypatch):
    from model.errors import UserError
    from tools import convert_hf
    _, hub, _ = exported["noext_nospout_e4"]
    d = tmp_path / "bin"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(UserError, match="needs torch"):
        convert_hf.HubTensors(str(d))
