"""Foundation: parameters.json validation, the mesh-tensorflow compat import,
and command-line hygiene of every script."""
import copy
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest

from model import params as params_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "run_*.py")) +
                 [p for p in glob.glob(os.path.join(REPO, "tools", "*.py"))
                  if not os.path.basename(p).startswith("_")] +
                 [os.path.join(REPO, "encode_swe.py")])

RELEASED_2_8B = {
    "train_params": {"output_dir": "GPTSAN-2.8B", "batch_size": 32, "base_lr": 1e-4,
                     "num_warmup_steps": 1000, "max_to_keep_save": 3,
                     "checkpoint_per_hours": 1.0, "checkpoint_per_steps": 1000},
    "model_params": {"num_contexts": 1280, "num_switch_layers": 10, "num_ext_layers": 0,
                     "num_hidden": 1024, "num_header": 16, "num_experts": 16,
                     "num_vocabulary": 36000, "num_pallarelizm": 1},
}


def write(tmp_path, obj):
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def test_good_parameters_load_and_round_trip(tmp_path):
    path = write(tmp_path, RELEASED_2_8B)
    assert params_lib.load(path).to_json() == RELEASED_2_8B
    assert params_lib.load(str(tmp_path)).to_json() == RELEASED_2_8B  # a model directory too
    with_spout = copy.deepcopy(RELEASED_2_8B)
    with_spout["model_params"]["num_spout"] = 128
    params_lib.save(params_lib.Params.from_json(with_spout), str(tmp_path / "out.json"))
    assert params_lib.load(str(tmp_path / "out.json")).to_json() == with_spout


def test_parameters_read_as_attributes():
    p = params_lib.Params.from_json(RELEASED_2_8B)
    assert (p.model.num_contexts, p.model.num_hidden, p.model.num_pallarelizm) == (1280, 1024, 1)
    assert (p.model.num_spout, p.model.train_mode, p.model.num_layers) == (0, None, 10)
    assert (p.train.output_dir, p.train.batch_size, p.train.base_lr) == ("GPTSAN-2.8B", 32, 1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.model.num_hidden = 8
    wider = p.with_model(num_hidden=2048).with_train(batch_size=8)
    assert (wider.model.num_hidden, wider.train.batch_size) == (2048, 8)
    assert (p.model.num_hidden, p.train.batch_size) == (1024, 32)


def test_released_files_written_back_keep_their_key_order(tmp_path, shared_dir):
    # Read and written back, a released file differs only in its indentation: the keys
    # stay in the released order (num_vocabulary last).
    paths = sorted(glob.glob(os.path.join(shared_dir, "reference", "released", "**",
                                          "parameters.json"), recursive=True))
    assert len(paths) >= 3
    for path in paths:
        with open(path, encoding="utf-8") as f:
            released = json.load(f)
        params_lib.save(params_lib.load(path), str(tmp_path / "back.json"))
        assert (tmp_path / "back.json").read_text(encoding="utf-8") == \
            json.dumps(released, indent=2, ensure_ascii=False) + "\n", path


def test_absent_optional_keys_stay_absent_and_added_keys_come_last():
    absent = params_lib.Params.from_json(RELEASED_2_8B)
    assert absent.to_json() == RELEASED_2_8B    # no num_spout or train_mode written
    assert list(absent.with_model(num_spout=4, train_mode="lm").to_json()["model_params"])[-2:] \
        == ["num_spout", "train_mode"]
    zero = copy.deepcopy(RELEASED_2_8B)
    zero["model_params"] = dict(num_spout=0, **zero["model_params"])
    assert params_lib.Params.from_json(zero).to_json() == zero   # an explicit 0 is kept
    assert list(params_lib.Params.from_json(zero).to_json()["model_params"])[0] == "num_spout"


def test_released_keys_and_unknown_keys_are_kept(tmp_path):
    # The released run_training.py writes train_mode and num_vocabulary; other tools may
    # add keys of their own. Loading must accept them and writing back must keep them.
    released = copy.deepcopy(RELEASED_2_8B)
    released["model_params"]["train_mode"] = "hybrid"
    released["model_params"]["made_by"] = {"tool": "x", "n": [1, 2]}
    released["train_params"]["extra_flag"] = True
    released["notes"] = "kept"
    loaded = params_lib.load(write(tmp_path, released))
    assert loaded.to_json() == released
    assert loaded.model.extra == {"made_by": {"tool": "x", "n": [1, 2]}}
    assert loaded.train.extra == {"extra_flag": True} and loaded.extra == {"notes": "kept"}
    params_lib.save(loaded, str(tmp_path / "back.json"))
    assert json.loads((tmp_path / "back.json").read_text()) == released
    assert loaded.model.fills_masks
    assert not dataclasses.replace(loaded.model, train_mode="lm").fills_masks
    assert dataclasses.replace(loaded.model, train_mode="mlm").fills_masks
    # A file without train_mode predates its recording: this project trained hybrid.
    assert params_lib.Params.from_json(RELEASED_2_8B).model.fills_masks


def test_a_misspelt_required_key_is_reported_missing(tmp_path):
    bad = copy.deepcopy(RELEASED_2_8B)
    bad["model_params"]["num_hiden"] = bad["model_params"].pop("num_hidden")
    with pytest.raises(params_lib.ParameterError, match="missing key 'num_hidden'"):
        params_lib.load(write(tmp_path, bad))


@pytest.mark.parametrize("section,key,value,message", [
    ("model_params", "num_hidden", None, "missing key 'num_hidden'"),
    ("train_params", "base_lr", None, "missing key 'base_lr'"),
    ("model_params", "train_mode", "causal", "'train_mode' must be one of lm, hybrid, mlm"),
    ("model_params", "num_header", 0, "'num_header' must be positive"),
    ("model_params", "num_experts", -2, "'num_experts' must be positive"),
    ("model_params", "num_header", 7, "divisible by 'num_header'"),
    ("model_params", "num_contexts", "1280", "'num_contexts' must be an integer"),
    ("train_params", "batch_size", 0, "'batch_size' must be positive"),
])
def test_bad_parameters_name_the_key_and_file(tmp_path, section, key, value, message):
    bad = copy.deepcopy(RELEASED_2_8B)
    if value is None:
        del bad[section][key]
    else:
        bad[section][key] = value
    path = write(tmp_path, bad)
    with pytest.raises(params_lib.ParameterError) as e:
        params_lib.load(path)
    assert message in str(e.value) and path in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(params_lib.ParameterError, match="not valid JSON"):
        params_lib.load(write(tmp_path, "{oops"))
    with pytest.raises(params_lib.ParameterError, match="no such parameters file"):
        params_lib.load(str(tmp_path / "missing.json"))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "parameters.json"
    params_lib.save(params_lib.Params.from_json(RELEASED_2_8B), str(path))
    original = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    changed = copy.deepcopy(RELEASED_2_8B)
    changed["model_params"]["num_experts"] = 8
    with pytest.raises(OSError):
        params_lib.save(params_lib.Params.from_json(changed), str(path))
    assert path.read_text() == original
    assert sorted(os.listdir(tmp_path)) == ["parameters.json"]


def test_mesh_tensorflow_imports_through_the_compat_alias():
    code = ("from model.compat import tf, mtf, mtf_moe\n"
            "from tensorflow.python.framework import ops, tensor_conversion_registry as r\n"
            "assert ops.register_tensor_conversion_function is r.register_tensor_conversion_function\n"
            "assert tf.__version__ == '2.15.1', tf.__version__\n"
            "assert hasattr(mtf_moe, 'transformer_moe_layer_v1')\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    # ... and nothing else in the tree imports mesh_tensorflow directly.
    offenders = []
    for path in glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True):
        if ".venv" in path or path.endswith(os.path.join("model", "compat.py")):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if re.search(r"^\s*(import|from) mesh_tensorflow", text, re.M):
            offenders.append(os.path.relpath(path, REPO))
    assert offenders == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_script_has_fast_quiet_help_and_exits_2_on_a_bad_flag(script):
    t = time.time()
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                         timeout=60)
    elapsed = time.time() - t
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-1000:]
    assert elapsed < 10, elapsed
    for noise in ("oneDNN", "deprecat", "WARNING", "Traceback (most recent call last)"):
        assert noise.lower() not in out.stderr.lower()
    bad = subprocess.run([sys.executable, script, "--no_such_flag_xyz"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if "error" in line]) == 1
