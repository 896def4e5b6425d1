"""Logits of exported models in transformers' GPTSanJapanese vs this project's.

Runs only in .venv-interop (`make test-interop`): torch and transformers 4.57.x.
Our side is the library forward pass (model.runtime.Forward), which routes every
token at inference; transformers routes every token when expert_capacity >= the
sequence length, which the exported config guarantees."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (make test-interop)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from tests import tiny_model  # noqa: E402
from tools import convert_hf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 1e-4
LENGTH = 12
PREFIXES = (0, 5)  # plain causal, and a bidirectional prefix of 5 tokens


def ours(model_dir, model_params, tokens, prefix, spout):
    from model import runtime
    from model import devices as devicelib
    forward = runtime.Forward(model_params, batch_size=tokens.shape[0], length=tokens.shape[1],
                              with_spout=spout is not None, devices=devicelib.local())
    forward.restore(model_dir)
    inputs = {"num_precontext": np.full([tokens.shape[0]], prefix, np.int32)}
    if spout is not None:
        inputs["spout"] = spout
    logits = forward(tokens, **inputs)["logits"]
    forward.close()
    return logits


def theirs(model, tokens, prefix, spout):
    B, L = tokens.shape
    # With a spout, transformers' token_type_ids covers the spout slot too (it comes first);
    # its attention_mask stays the tokens' length (4.57 prepends the spout slot itself).
    extra = 1 if spout is not None else 0
    token_type = np.zeros([B, L + extra], np.int64)
    token_type[:, :prefix + (extra if prefix else 0)] = 1
    kwargs = dict(input_ids=torch.tensor(tokens, dtype=torch.long),
                  attention_mask=torch.ones([B, L], dtype=torch.long),
                  token_type_ids=torch.tensor(token_type))
    if spout is not None:
        kwargs["spout"] = torch.tensor(spout, dtype=torch.float32)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


@pytest.mark.parametrize("experts", [16, 4])
def test_exported_logits_match(experts, tmp_path, capsys):
    params = tiny_model.tiny_params(num_switch_layers=2, num_ext_layers=1, num_experts=experts,
                                    num_spout=8)
    mp = params.model
    model_dir = tiny_model.make_model_dir(str(tmp_path / "ours"), params, seed=experts)
    hub = str(tmp_path / "hub")
    convert_hf.export_hf(model_dir, hub)
    model, info = transformers.GPTSanJapaneseForConditionalGeneration.from_pretrained(
        hub, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    rng = np.random.default_rng(experts)
    tokens = rng.integers(0, 35990, size=[2, LENGTH]).astype(np.int32)
    worst, seen = {}, []
    for prefix in PREFIXES:
        for spout in (None, rng.standard_normal([2, 8]).astype(np.float32)):
            a = ours(model_dir, mp, tokens, prefix, spout)
            b = theirs(model, tokens, prefix, spout)
            diff = float(np.max(np.abs(a - b)))
            worst["prefix%d_%s" % (prefix, "spout" if spout is not None else "nospout")] = diff
            seen.append(a)
    # the four inputs must give different logits, or the comparison would test less than it says
    for i in range(len(seen)):
        for j in range(i):
            assert np.max(np.abs(seen[i] - seen[j])) > 1e-2
    with capsys.disabled():
        print("\nE=%d max |logit difference|: %s" % (experts, worst))
    assert max(worst.values()) <= TOLERANCE, worst


def transformers_model_imported(tmp_path, seed, spout, ext, safe):
    """A randomly initialised tiny transformers model, written with save_pretrained
    (with the vocabulary files a Hub directory carries) and imported by us."""
    torch.manual_seed(seed)
    config = transformers.GPTSanJapaneseConfig(
        vocab_size=36000, max_position_embeddings=32, d_model=16, d_ff=128, d_ext=64,
        d_spout=spout, num_switch_layers=2, num_ext_layers=ext, num_heads=2, num_experts=4,
        expert_capacity=32, initializer_factor=1.0)
    model = transformers.GPTSanJapaneseForConditionalGeneration(config).eval()
    hub = str(tmp_path / "hub")
    model.save_pretrained(hub, safe_serialization=safe)
    for name, target in (("ja-swe36k.txt", "vocab.txt"), ("emoji.json", "emoji.json")):
        shutil.copyfile(os.path.join(ROOT, name), os.path.join(hub, target))
    out = str(tmp_path / "ours")
    convert_hf.import_hf(hub, out, progress=False)
    return model, out


@pytest.mark.parametrize("safe", [True, False])
def test_import_of_transformers_save_pretrained(safe, tmp_path, capsys):
    model, out = transformers_model_imported(tmp_path, seed=0, spout=8, ext=1, safe=safe)
    from model import params as params_lib
    mp = params_lib.load(out).model
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 35990, size=[1, LENGTH]).astype(np.int32)
    worst = {}
    for prefix in PREFIXES:
        for spout in (None, rng.standard_normal([1, 8]).astype(np.float32)):
            a = ours(out, mp, tokens, prefix, spout)
            b = theirs(model, tokens, prefix, spout)
            worst["prefix%d_%s" % (prefix, "spout" if spout is not None else "nospout")] = \
                float(np.max(np.abs(a - b)))
    with capsys.disabled():
        print("\nsave_pretrained(safe_serialization=%s) import, max |diff|: %s" % (safe, worst))
    assert max(worst.values()) <= TOLERANCE, worst


def test_run_languagemodel_scores_equal_transformers_logits(tmp_path):
    """The script itself, on a directory transformers wrote: its released-format scores
    (the raw logit of each next input token, the whole context as a bidirectional
    prefix) must equal transformers' logits for the same tokens."""
    model, out = transformers_model_imported(tmp_path, seed=3, spout=0, ext=0, safe=True)
    result = str(tmp_path / "lm.json")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_languagemodel.py"), "--model", out,
         "--context", "武田信玄は、戦国時代の武将である。", "--no_token_drop",
         "--output", result], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with open(result, encoding="utf-8") as f:
        got = json.load(f)
    ids = np.array([got["input_tokens"]], np.int32)
    n = ids.shape[1]
    assert n > 5
    # released semantics: every position but the last is prefix (num_precontext = n - 1)
    logits = theirs(model, ids, n - 1, None)[0]
    expected = [float(logits[i, ids[0, i + 1]]) for i in range(n - 1)]
    diff = float(np.max(np.abs(np.array(got["output_scores"]) - np.array(expected))))
    print("\nrun_languagemodel scores vs transformers logits, max |diff|: %s" % diff)
    assert diff <= TOLERANCE
