"""parameters.json: {"train_params": {...}, "model_params": {...}}.

Key names follow the released GPTSAN models (including the spelling
`num_pallarelizm`), so a released model directory loads unchanged. The released
training script also writes `model_params.train_mode` ("lm" or "hybrid"), and other
tools may add keys of their own: every key this project does not use is accepted and
kept as it is when the file is written back.
"""
import json
import os

from model.atomic import write_json_atomic
from model.errors import UserError

MODEL_KEYS = ("num_contexts", "num_switch_layers", "num_ext_layers", "num_hidden",
              "num_header", "num_experts", "num_vocabulary", "num_pallarelizm")
OPTIONAL_MODEL_KEYS = ("num_spout", "train_mode")
# "mlm" records also have a bidirectional prefix, so such a model fills masks like "hybrid".
TRAIN_MODES = ("lm", "hybrid", "mlm")
TRAIN_KEYS = ("output_dir", "batch_size", "base_lr", "num_warmup_steps",
              "max_to_keep_save", "checkpoint_per_hours", "checkpoint_per_steps")

# Sizes that may be zero: a model without extension layers, or without a spout.
ZERO_OK = {"num_ext_layers", "num_spout", "num_warmup_steps"}


class ParameterError(ValueError):
    """parameters.json is malformed; the message names the key and the file."""


def _check_section(section, values, required, where):
    if not isinstance(values, dict):
        raise ParameterError("%s: '%s' must be an object" % (where, section))
    missing = [k for k in required if k not in values]
    if missing:
        raise ParameterError("%s: %s is missing key '%s'" % (where, section, missing[0]))


def _check_number(key, value, where, integer=True):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ParameterError("%s: '%s' must be a%s number, got %r"
                             % (where, key, "n integer" if integer else "", value))
    if value < 0 or (value == 0 and key not in ZERO_OK):
        raise ParameterError("%s: '%s' must be positive, got %r" % (where, key, value))


def validate(params, where="parameters.json"):
    """Check a parameters dict; return it with optional keys filled in."""
    if not isinstance(params, dict):
        raise ParameterError("%s: top level must be an object" % where)
    _check_section("top level", params, ("train_params", "model_params"), where)
    model = params["model_params"]
    _check_section("model_params", model, MODEL_KEYS, where)
    train = params["train_params"]
    _check_section("train_params", train, TRAIN_KEYS, where)
    for key in MODEL_KEYS + ("num_spout",):
        if key in model:
            _check_number(key, model[key], where)
    if "train_mode" in model and model["train_mode"] not in TRAIN_MODES:
        raise ParameterError("%s: 'train_mode' must be one of %s, got %r"
                             % (where, ", ".join(TRAIN_MODES), model["train_mode"]))
    if model["num_hidden"] % model["num_header"]:
        raise ParameterError("%s: 'num_hidden' (%d) must be divisible by 'num_header' (%d)"
                             % (where, model["num_hidden"], model["num_header"]))
    for key in TRAIN_KEYS:
        if key == "output_dir":
            if not isinstance(train[key], str):
                raise ParameterError("%s: 'output_dir' must be a string" % where)
        else:
            _check_number(key, train[key], where,
                          integer=key not in ("base_lr", "checkpoint_per_hours"))
    return params


def load(path):
    """Read and validate parameters.json (a file, or a model directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "parameters.json")
    if not os.path.isfile(path):
        raise ParameterError("%s: no such parameters file" % path)
    try:
        with open(path, encoding="utf-8") as f:
            params = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ParameterError("%s: not valid JSON (%s)" % (path, e))
    return validate(params, path)


def load_model_dir(model_dir):
    """parameters.json of a model directory; a missing directory or a malformed
    file is a UserError naming it."""
    if not os.path.isdir(model_dir):
        raise UserError("model directory not found: %s" % model_dir)
    try:
        return load(model_dir)
    except ParameterError as e:
        raise UserError(str(e))


def save(params, path):
    """Validate then write atomically: temp file in the same folder, then rename."""
    if os.path.isdir(path):
        path = os.path.join(path, "parameters.json")
    validate(params, path)
    write_json_atomic(params, path)


def fills_masks(model_params):
    """True when the model was trained with a bidirectional prefix ("hybrid" or "mlm").

    A file without `train_mode` was written by this project before it recorded the
    mode; this project has always trained hybrid records by default, so such a model
    is taken to fill masks."""
    return model_params.get("train_mode", "hybrid") in ("hybrid", "mlm")


def num_layers(model_params):
    return model_params["num_switch_layers"] + model_params["num_ext_layers"]


def default_params(**model_overrides):
    """A small configuration, handy for tests and the demo."""
    model = dict(num_contexts=64, num_switch_layers=2, num_ext_layers=0, num_hidden=32,
                 num_header=4, num_experts=4, num_vocabulary=36000, num_pallarelizm=1)
    model.update(model_overrides)
    train = dict(output_dir="", batch_size=8, base_lr=1e-3, num_warmup_steps=10,
                 max_to_keep_save=3, checkpoint_per_hours=1.0, checkpoint_per_steps=1000)
    return {"train_params": train, "model_params": model}
