"""parameters.json: {"train_params": {...}, "model_params": {...}}.

Key names follow the released GPTSAN models (including the spelling
`num_pallarelizm`), so a released model directory loads unchanged. The released
training script also writes `model_params.train_mode` ("lm" or "hybrid"), and other
tools may add keys of their own: every key this project does not use is accepted and
kept as it is when the file is written back.

In memory the file is a `Params` holding a `ModelParams` and a `TrainParams`, all
frozen: a change is a `dataclasses.replace` (or `Params.with_model` /
`Params.with_train`), so no caller can alter parameters another one holds.
"""
import copy
import dataclasses
import json
import os
from typing import Optional

from model.atomic import write_json_atomic
from model.errors import UserError

MODEL_KEYS = ("num_contexts", "num_switch_layers", "num_ext_layers", "num_hidden",
              "num_header", "num_experts", "num_vocabulary", "num_pallarelizm")
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
    """Check the JSON object of a parameters file; return it unchanged."""
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


# Every section keeps the keys this project does not use in `extra`, and in `key_order`
# the order its keys had in the file (or in default_params' arguments): writing back
# puts them in that order, and keys added since after them, so a file read and saved
# again is unchanged byte for byte.
def _extra_field():
    return dataclasses.field(default_factory=dict, hash=False)


def _order_field():
    return dataclasses.field(default=(), repr=False, compare=False)


def _known(cls):
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "key_order")]


def _split(cls, values):
    """(known keys, extra keys, key order) of one section's JSON object."""
    names = _known(cls)
    known = {k: v for k, v in values.items() if k in names}
    extra = {k: copy.deepcopy(v) for k, v in values.items() if k not in names}
    return known, extra, tuple(values)


def _ordered(values, extra, key_order):
    values = dict(values, **copy.deepcopy(extra))
    order = [k for k in key_order if k in values] + [k for k in values if k not in key_order]
    return {k: values[k] for k in order}


class _Section:
    @classmethod
    def from_json(cls, values):
        """The section of a parameters file's JSON object that `validate` has checked."""
        known, extra, order = _split(cls, values)
        return cls(**known, extra=extra, key_order=order)


@dataclasses.dataclass(frozen=True)
class ModelParams(_Section):
    """model_params: the sizes of the network (`num_spout` 0: no spout)."""

    num_contexts: int
    num_switch_layers: int
    num_ext_layers: int
    num_hidden: int
    num_header: int
    num_experts: int
    num_vocabulary: int
    num_pallarelizm: int
    num_spout: int = 0
    train_mode: Optional[str] = None        # None: the file has no train_mode
    extra: dict = _extra_field()
    key_order: tuple = _order_field()

    @property
    def num_layers(self):
        return self.num_switch_layers + self.num_ext_layers

    @property
    def fills_masks(self):
        """True when the model was trained with a bidirectional prefix ("hybrid" or "mlm").

        A file without `train_mode` was written by this project before it recorded the
        mode; this project has always trained hybrid records by default, so such a model
        is taken to fill masks."""
        return (self.train_mode is None) or self.train_mode in ("hybrid", "mlm")

    def to_json(self):
        values = {k: getattr(self, k) for k in MODEL_KEYS}
        # An absent num_spout means 0, and stays absent unless set to a size.
        if self.num_spout or "num_spout" in self.key_order:
            values["num_spout"] = self.num_spout
        if self.train_mode is not None:
            values["train_mode"] = self.train_mode
        return _ordered(values, self.extra, self.key_order)


@dataclasses.dataclass(frozen=True)
class TrainParams(_Section):
    """train_params: where and how run_training.py trains."""

    output_dir: str
    batch_size: int
    base_lr: float
    num_warmup_steps: int
    max_to_keep_save: int
    checkpoint_per_hours: float
    checkpoint_per_steps: int
    extra: dict = _extra_field()
    key_order: tuple = _order_field()

    def to_json(self):
        return _ordered({k: getattr(self, k) for k in TRAIN_KEYS}, self.extra, self.key_order)


@dataclasses.dataclass(frozen=True)
class Params:
    """A whole parameters.json."""

    model: ModelParams
    train: TrainParams
    extra: dict = _extra_field()        # top-level keys besides the two sections
    key_order: tuple = _order_field()

    @classmethod
    def from_json(cls, values, where="parameters.json"):
        """Params of a parameters file's JSON object, checked by `validate`."""
        validate(values, where)
        extra = {k: copy.deepcopy(v) for k, v in values.items()
                 if k not in ("train_params", "model_params")}
        return cls(ModelParams.from_json(values["model_params"]),
                   TrainParams.from_json(values["train_params"]), extra, tuple(values))

    def to_json(self):
        return _ordered({"train_params": self.train.to_json(),
                         "model_params": self.model.to_json()}, self.extra, self.key_order)

    def checked(self, where):
        """These parameters, raising ParameterError (naming `where`) if a value is out
        of range: a replaced value is not checked until this or `save`."""
        validate(self.to_json(), where)
        return self

    def with_model(self, **changes):
        return dataclasses.replace(self, model=dataclasses.replace(self.model, **changes))

    def with_train(self, **changes):
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))


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
    return Params.from_json(params, path)


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
    values = params.to_json()
    validate(values, path)
    write_json_atomic(values, path)


def default_params(**model_overrides):
    """A small configuration, handy for tests and the demo."""
    model = dict(num_contexts=64, num_switch_layers=2, num_ext_layers=0, num_hidden=32,
                 num_header=4, num_experts=4, num_vocabulary=36000, num_pallarelizm=1)
    model.update(model_overrides)
    train = dict(output_dir="", batch_size=8, base_lr=1e-3, num_warmup_steps=10,
                 max_to_keep_save=3, checkpoint_per_hours=1.0, checkpoint_per_steps=1000)
    return Params(ModelParams(**model, key_order=tuple(model)), TrainParams(**train))
