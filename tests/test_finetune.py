"""Fine-tuning: tools/run_modelconvert.py (add extension layers / a spout),
run_finetune.py (train only what was added) and spout class control.

Expected values come from the architecture (a zero LayerNorm gain and bias make
a residual branch add exactly 0), from the independent NumPy forward pass and
variable list in tests/numpy_gptsan.py, from the source checkpoints themselves
(frozen tensors must be bit-identical), and from data whose class is
unmistakable (class 0 writes hiragana, class 1 katakana, in a tiny vocabulary).
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import numpy_gptsan as ref
from tests import records as record_files
import tiny_model
from model import convert, network, params as paramslib, runtime
from model import devices as devicelib
from model.errors import UserError
from model.compat import tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CONVERT = os.path.join(REPO, "tools", "run_modelconvert.py")
FINETUNE = os.path.join(REPO, "run_finetune.py")

SLOTS = ("/adam_m", "/adam_v")

# A tiny vocabulary in the released format, so run_generate.py can decode too:
# class 0 writes hiragana, class 1 katakana; then the tags and byte tokens the
# encoder requires, and the seven special tokens last (ids V-7 .. V-1).
HIRAGANA, KATAKANA = "あいうえおかきくけこ", "アイウエオカキクケコ"
SPECIAL_TOKENS = ["<|startoftext|>", "<|inputmask|>", "<|separator|>", "<|nottoken|>",
                  "<|bagoftoken|>", "<|segmenter|>", "<|endoftext|>"]
VOCABULARY = (list(HIRAGANA) + list(KATAKANA)
              + ["<BR>", "<SP>", "<TAB>", "<URL>", "<EMAIL>", "<TEL>", "<DATE>", "<PRICE>",
                 "<BLOCK>", "<KIGOU>", "<U2000U2BFF>"]
              + ["<|byte%d|>" % b for b in range(255)] + SPECIAL_TOKENS)
C, V = 16, len(VOCABULARY)
STARTOFTEXT, SEGMENTER = V - 7, V - 2
CLASS_TOKENS = {0: np.arange(0, 10), 1: np.arange(10, 20)}
PROMPT = [STARTOFTEXT, SEGMENTER]  # run_generate.py's prompt for an empty context


# ---- helpers -------------------------------------------------------------------
def small_params(output_dir="", hidden=16, **model):
    model = dict(dict(num_contexts=C, num_switch_layers=2, num_ext_layers=0, num_hidden=hidden,
                      num_header=2, num_experts=2, num_vocabulary=V), **model)
    p = paramslib.default_params(**model)
    return p.with_train(output_dir=output_dir, batch_size=4, base_lr=1e-2,
                        num_warmup_steps=5, checkpoint_per_steps=1000)


def class_sequence(cls, length):
    """Class cls's text: its tokens in order, cycling (あいうえお... or アイウエオ...)."""
    tokens = CLASS_TOKENS[cls]
    return tokens[np.arange(length) % len(tokens)]


def write_class_records(path, n):
    """Records in make_tfrecord.py's layout, alternating the two classes:
    [<|startoftext|>, <|segmenter|>] + the class's sequence, class id in i.
    A bigram rule fixes everything after the first token, so the first token
    is the only thing that depends on the class, and only a spout can tell it."""
    rows = []
    for k in range(n):
        cls = k % 2
        seq = np.concatenate([PROMPT, class_sequence(cls, C + 1 - len(PROMPT))])
        y = seq[1:].copy()
        y[:len(PROMPT) - 1] = -1  # no loss before the segmenter
        rows.append((seq[:C], y, len(PROMPT) - 1, cls))
    return record_files.write_records(path, rows)


def write_source(folder, params, seed, with_slots=False):
    """A model directory whose checkpoint holds the reference's random weights
    (LayerNorm gains near 1, every bias nonzero), optionally with Adam slots,
    and global_step 7 -- written by a plain Saver, as another tool would."""
    rng = np.random.default_rng(seed)
    tensors = dict(ref.random_weights(params.model, seed))
    if with_slots:
        for name, value in list(tensors.items()):
            tensors[name + "/adam_m"] = rng.normal(0, 1e-3, value.shape).astype(np.float32)
            tensors[name + "/adam_v"] = rng.uniform(0, 1e-6, value.shape).astype(np.float32)
    tensors["global_step"] = np.int64(7)
    tiny_model.save_checkpoint(tensors, folder, global_step=7)
    paramslib.save(params, folder)
    return folder


def pretrain(params, records, output_dir, steps, clip_gradients=1.0):
    """A source model written by the shared training loop (so it has Adam slots)."""
    from model import train
    params = params.with_train(output_dir=output_dir)
    opts = train.TrainOptions(params=params, input_files=records, output_dir=output_dir,
                              max_training_step=steps, progress=False, log_every=0,
                              clip_gradients=clip_gradients, devices=devicelib.local())
    trainer = train.Trainer(opts).start()
    summary = trainer.run()
    trainer.close()
    return summary


def run_finetune_inprocess(*argv):
    """run_finetune.py's main in this process; returns (summary dict, stderr text)."""
    import run_finetune
    args = run_finetune.build_parser().parse_args(list(argv) + ["--no_progress"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert run_finetune.main(args) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1]), err.getvalue()


def checkpoint_tensors(path):
    if os.path.isdir(path):
        path = tf.train.latest_checkpoint(path)
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def logits(model_dir, tokens, spout=None):
    mp = paramslib.load(model_dir).model
    forward = runtime.Forward(mp, tokens.shape[0], tokens.shape[1], with_spout=spout is not None,
                              devices=devicelib.local())
    try:
        return forward.restore(model_dir)(tokens, spout=spout)["logits"]
    finally:
        forward.close()


def run_script(*argv, timeout=60):
    return subprocess.run([PY] + list(argv), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


# ---- fixtures ------------------------------------------------------------------
@pytest.fixture(scope="module")
def spout_source(tmp_path_factory):
    """A model with a spout and one extension layer already."""
    return write_source(str(tmp_path_factory.mktemp("spout_source") / "model"),
                        small_params(num_ext_layers=1, num_spout=4), seed=3)


@pytest.fixture(scope="module")
def plain_source(tmp_path_factory):
    """A model without spout or extension layers."""
    return write_source(str(tmp_path_factory.mktemp("plain_source") / "model"),
                        small_params(), seed=4)


@pytest.fixture(scope="module")
def spout_converted(spout_source, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("spout_converted") / "model")
    convert.convert(spout_source, dst, add_layers=2, seed=5, progress=False)
    return dst


@pytest.fixture(scope="module")
def plain_converted(plain_source, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("plain_converted") / "model")
    convert.convert(plain_source, dst, add_layers=2, num_spout=3, seed=6, progress=False)
    return dst


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(7).integers(0, V, (2, 10)).astype(np.int32)


# ---- command line --------------------------------------------------------------
def test_help_is_fast_and_bad_flags_exit_2():
    for script in (CONVERT, FINETUNE):
        start = time.time()
        done = run_script(script, "--help")
        assert done.returncode == 0 and "--verbose" in done.stdout
        assert time.time() - start < 10
        bad = run_script(script, "--no_such_flag")
        assert bad.returncode == 2
        assert len(bad.stderr.strip().splitlines()) == 1
    assert "--add_extra_stage" in run_script(CONVERT, "--help").stdout


def test_conversion_refuses_to_overwrite_without_force(plain_source, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("user data")
    done = run_script(CONVERT, "--checkpoint", plain_source, "--output", str(dst),
                      "--add_extra_stage", "1")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--force" in done.stderr
    assert sorted(os.listdir(dst)) == ["keep.txt"]
    with pytest.raises(UserError):
        convert.convert(plain_source, str(dst), add_layers=1, progress=False)

    # --force replaces only an earlier converted model, never files it did not write.
    with pytest.raises(UserError, match="keep.txt"):
        convert.convert(plain_source, str(dst), add_layers=1, force=True, progress=False)
    assert sorted(os.listdir(dst)) == ["keep.txt"]
    os.remove(dst / "keep.txt")
    convert.convert(plain_source, str(dst), add_layers=1, force=True, progress=False)
    convert.convert(plain_source, str(dst), add_layers=1, force=True, progress=False)
    assert paramslib.load(str(dst)).model.num_ext_layers == 1
    # Nothing but the result is left beside it (the temporary directory is gone).
    assert os.listdir(tmp_path) == ["dst"]


def test_conversion_never_overwrites_its_source(plain_source):
    with pytest.raises(UserError, match="source"):
        convert.convert(plain_source, plain_source, add_layers=1, force=True, progress=False)


def test_nothing_to_add_and_missing_source_are_user_errors(tmp_path):
    done = run_script(CONVERT, "--checkpoint", str(tmp_path), "--output", str(tmp_path / "x"))
    assert done.returncode == 2 and "nothing to add" in done.stderr
    done = run_script(CONVERT, "--checkpoint", str(tmp_path / "missing"),
                      "--output", str(tmp_path / "x"), "--add_extra_stage", "1")
    assert done.returncode == 2 and "not found" in done.stderr


# ---- conversion ------------------------------------------------------------------
def reference_logits(model_dir, tokens, spout=None):
    """The independent NumPy forward pass (float64) on a model directory."""
    mp = paramslib.load(model_dir).model
    weights = ref.load_weights(tf.train.latest_checkpoint(model_dir), mp)
    return ref.forward(weights, mp, tokens, spout=spout)["logits"]


def test_identity_conversion_reproduces_source_logits_with_and_without_spout(
        spout_source, spout_converted, plain_source, plain_converted, tokens):
    """Zero LayerNorm gains and biases make each new layer add exactly 0.0, so
    the reference computes bit-identical logits before and after."""
    spout = np.random.default_rng(8).uniform(size=(2, 4))
    cases = [(spout_source, spout_converted, None), (spout_source, spout_converted, spout),
             (plain_source, plain_converted, None)]
    for source, converted, given in cases:
        before = reference_logits(source, tokens, given)
        assert np.abs(before).max() > 1.0  # not a degenerate all-zero comparison
        np.testing.assert_array_equal(reference_logits(converted, tokens, given), before)


def test_converted_model_runs_the_source_logits_in_tensorflow(
        spout_source, spout_converted, tokens):
    """End to end through the mesh-tensorflow network, with a spout given."""
    spout = np.random.default_rng(9).uniform(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(logits(spout_converted, tokens, spout),
                               logits(spout_source, tokens, spout), rtol=0, atol=1e-6)


def test_spout_added_by_conversion_changes_logits_only_when_given(
        plain_source, plain_converted, tokens):
    """Its zero key still takes softmax weight exp(0) from the real keys and its
    zero value dilutes them (documented in model/convert.py)."""
    before = reference_logits(plain_source, tokens)
    with_spout = reference_logits(plain_converted, tokens, np.eye(3)[:2])
    assert np.isfinite(with_spout).all() and not np.array_equal(with_spout, before)


def test_converted_checkpoint_holds_exactly_the_model_variables(spout_source, spout_converted):
    src_params = paramslib.load(spout_source).model
    dst_params = paramslib.load(spout_converted).model
    assert dst_params.num_ext_layers == src_params.num_ext_layers + 2
    assert dst_params.num_spout == src_params.num_spout
    dst = checkpoint_tensors(spout_converted)
    expected = ref.variable_shapes(dst_params)
    assert sorted(dst) == sorted(list(expected) + ["global_step"])
    for name, shape in expected.items():
        assert dst[name].shape == tuple(shape), name
    assert int(dst["global_step"]) == 0
    assert sum(dst[n].size for n in expected) == network.count_parameters(dst_params)


def test_source_weights_are_copied_bit_for_bit_and_new_layers_start_as_no_ops(
        spout_source, spout_converted):
    src, dst = checkpoint_tensors(spout_source), checkpoint_tensors(spout_converted)
    src_params = paramslib.load(spout_source).model
    old_layers = src_params.num_layers
    for name, value in src.items():
        if name not in ("pasts/out/kernel", "global_step"):
            assert np.array_equal(dst[name], value), name
    # The spout projection's layer-major [L, 2, A, K] axis: the old layers' block first.
    block = old_layers * 2 * src_params.num_hidden
    assert np.array_equal(dst["pasts/out/kernel"][:, :block], src["pasts/out/kernel"])
    assert not dst["pasts/out/kernel"][:, block:].any()
    for i in (old_layers, old_layers + 1):
        for norm in ("an", "ln"):
            assert not dst["model/%s%d/g" % (norm, i)].any()
            assert not dst["model/%s%d/b" % (norm, i)].any()
        kernel = dst["model/mlp%d/p1/kernel" % i]
        assert 0.01 < kernel.std() < 0.03  # normal(0, 0.02)


def test_ignore_params_lists_every_source_weight_but_the_spout(
        spout_source, spout_converted, tmp_path):
    src_params = paramslib.load(spout_source).model
    with open(os.path.join(spout_converted, "ignore-params.json")) as f:
        frozen = json.load(f)
    src_weights = set(ref.variable_shapes(src_params))
    assert frozen == sorted(n for n in src_weights if not n.startswith("pasts/"))
    # The released converter's file names: the frozen weights and every variable.
    with open(os.path.join(spout_converted, "transformer-params.json")) as f:
        assert json.load(f) == frozen
    with open(os.path.join(spout_converted, "all-params.json")) as f:
        assert json.load(f) == sorted(checkpoint_tensors(spout_converted))
    # --freeze_spout freezes the source's spout projection as well.
    dst = str(tmp_path / "frozen_spout")
    convert.convert(spout_source, dst, add_layers=1, freeze_spout=True, progress=False)
    with open(os.path.join(dst, "ignore-params.json")) as f:
        assert json.load(f) == sorted(src_weights)


def test_added_spout_weights_are_new_and_trainable(plain_converted):
    dst = checkpoint_tensors(plain_converted)
    with open(os.path.join(plain_converted, "ignore-params.json")) as f:
        frozen = set(json.load(f))
    assert not any(n.startswith("pasts/") or n == "model/ete" for n in frozen)
    assert not dst["model/ete"].any() and not dst["pasts/out/kernel"].any()
    # Projection layers start near identity so a one-hot spout reaches the output.
    for k in range(network.NUM_SPOUT_LAYERS):
        assert np.abs(dst["pasts/mlp%d/kernel" % k] - np.eye(3)).max() < 0.15


def test_random_init_uses_unit_layernorm_gains(plain_source, tmp_path):
    dst = str(tmp_path / "random")
    convert.convert(plain_source, dst, add_layers=1, init="random", progress=False)
    tensors = checkpoint_tensors(dst)
    assert (tensors["model/an2/g"] == 1).all() and (tensors["model/ln2/g"] == 1).all()
    assert not tensors["model/an2/b"].any() and not tensors["model/ln2/b"].any()


def test_shards_never_exceed_the_limit_unless_one_variable_does():
    entries = [convert.Entry(str(k), [n], np.float32, None, "new")
               for k, n in enumerate([10, 20, 5, 100, 1, 1])]
    groups = list(convert.shards(entries, max_bytes=4 * 30))
    assert [[e.name for e in g] for g in groups] == [["0", "1"], ["2"], ["3"], ["4", "5"]]


def test_released_model_plus_14_stages_parameter_count():
    released = paramslib.default_params(
        num_contexts=1280, num_switch_layers=10, num_ext_layers=14, num_hidden=1024,
        num_header=16, num_experts=16, num_vocabulary=36000).model
    h, c = 1024, 1280
    # One extension layer: qkv + o (4H^2), two LayerNorms (4H), H->4H->H MLP with biases.
    per_stage = 4 * h * h + 4 * h + (h * 4 * h + 4 * h) + (4 * h * h + h)
    base = 2776248480  # the released 2.8B (tests/test_network.py)
    expected = base + 14 * per_stage + c * h  # plus the extension position table ete
    assert expected == 2953848992
    assert network.count_parameters(released) == expected
    assert ref.parameter_count(released) == expected


# ---- fine-tuning and class control -------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Pretrain on both classes mixed (the model learns each class's bigram rule,
    but nothing tells it which class follows the prompt: a coin flip); convert
    (+2 extension layers, a new 2-way spout, the Adam slots kept); fine-tune
    with one-hot spouts in the model directory itself."""
    root = tmp_path_factory.mktemp("finetune")
    records = write_class_records(str(root / "classes.tfrecord"), 32)
    params = small_params(hidden=64, num_header=4, num_switch_layers=1,
                          num_experts=1).with_train(batch_size=8)
    src, dst = str(root / "src"), str(root / "dst")
    pretrained = pretrain(params, records, src, steps=200)
    convert.convert(src, dst, add_layers=2, num_spout=2, keep_optimizer_state=True,
                    progress=False)
    converted = checkpoint_tensors(dst)
    first_before = greedy_generate(dst, np.eye(2), steps=1)[0][:, 0]
    summary, log = run_finetune_inprocess("--model", dst, "--input_files", records,
                                          "--spout_vector", "onehot", "--base_lr", "5e-3",
                                          "--num_warmup_steps", "5", "--clip_gradients", "1.0",
                                          "--max_training_step", "200", "--seed", "1")
    return dict(src=src, dst=dst, records=records, pretrained=pretrained, converted=converted,
                first_before=first_before, summary=summary, log=log,
                source=checkpoint_tensors(src), trained=checkpoint_tensors(dst))


def greedy_generate(model_dir, spouts, steps):
    """Greedy continuation of PROMPT for each spout row, one Forward call per token
    (causal attention: the zero padding after position t cannot change its logits).
    Returns the generated tokens and the first step's next-token probabilities."""
    mp = paramslib.load(model_dir).model
    rows, start = len(spouts), len(PROMPT)
    forward = runtime.Forward(mp, rows, start + steps, with_spout=True,
                              devices=devicelib.local()).restore(model_dir)
    tokens = np.zeros((rows, start + steps), np.int32)
    tokens[:, :start] = PROMPT
    try:
        for t in range(start - 1, start - 1 + steps):
            step_logits = forward(tokens, spout=np.asarray(spouts, np.float32))["logits"]
            tokens[:, t + 1] = step_logits[:, t].argmax(-1)
            if t == start - 1:
                first = ref.softmax(step_logits[:, t].astype(np.float64))
    finally:
        forward.close()
    return tokens[:, start:], first


def class_share(generated, cls):
    return float(np.isin(generated, CLASS_TOKENS[cls]).mean())


def frozen_list(model_dir):
    with open(os.path.join(model_dir, "ignore-params.json")) as f:
        return json.load(f)


def test_keep_optimizer_state_copies_the_source_slots(finetuned):
    source, converted = finetuned["source"], finetuned["converted"]
    slots = [n for n in source if n.endswith(SLOTS)]
    assert slots
    for name in slots:
        assert np.array_equal(converted[name], source[name]), name
    assert int(converted["global_step"]) == 0  # the fine-tuning schedule starts afresh


def test_finetune_keeps_frozen_variables_bit_identical(finetuned):
    assert finetuned["summary"]["step"] == 200
    trained, frozen = finetuned["trained"], frozen_list(finetuned["dst"])
    assert frozen
    for name in frozen:
        assert np.array_equal(trained[name], finetuned["converted"][name]), name
        assert np.array_equal(trained[name], finetuned["source"][name]), name
    # What was added did train: a new LayerNorm gain and the spout output.
    assert trained["model/ln2/g"].any() and trained["pasts/out/kernel"].any()


def test_finetune_allocates_no_optimizer_slots_for_frozen_variables(finetuned):
    trained = finetuned["trained"]
    frozen = set(frozen_list(finetuned["dst"]))
    # The converted checkpoint kept the source's slots; the fine-tuned one must not.
    assert any(n + "/adam_m" in finetuned["converted"] for n in frozen)
    weights = set(ref.variable_shapes(paramslib.load(finetuned["dst"]).model))
    for name in weights:
        has_slots = [name + s in trained for s in SLOTS]
        assert has_slots == [name not in frozen] * 2, name


def test_finetune_reports_parameter_counts_at_start(finetuned):
    params = paramslib.load(finetuned["dst"]).model
    shapes = ref.variable_shapes(params)
    frozen = sum(int(np.prod(shapes[n])) for n in frozen_list(finetuned["dst"]))
    trainable = ref.parameter_count(params) - frozen
    log = finetuned["log"]
    assert "trainable_parameters: %s" % format(trainable, ",") in log
    assert "frozen_parameters: %s" % format(frozen, ",") in log
    assert "optimizer_state_bytes: %s" % format(2 * 4 * trainable, ",") in log
    assert "estimated_accelerator_bytes" in log


def test_finetune_needs_ignore_params_or_the_flag(tmp_path):
    import run_finetune
    folder = tmp_path / "plain"
    folder.mkdir()
    paramslib.save(small_params(), str(folder))
    args = run_finetune.build_parser().parse_args(
        ["--model", str(folder), "--input_files", str(tmp_path / "unused.tfrecord")])
    with pytest.raises(UserError, match="ignore-params.json"):
        run_finetune.main(args)


@pytest.mark.slow
def test_finetune_to_another_directory_then_resume(finetuned, tmp_path):
    out = str(tmp_path / "run")
    common = ["--model", finetuned["dst"], "--input_files", finetuned["records"],
              "--spout_vector", "onehot", "--batch_size", "2", "--output_dir", out]
    first, _ = run_finetune_inprocess(*common, "--max_training_step", "2")
    assert first["steps_run"] == 2
    second, log = run_finetune_inprocess(*common, "--max_training_step", "4")
    assert second["step"] == 4 and second["steps_run"] == 2 and "resuming" in log
    trained = checkpoint_tensors(out)
    for name in frozen_list(finetuned["dst"]):
        assert np.array_equal(trained[name], finetuned["source"][name]), name


def test_onehot_spout_steers_generation_towards_its_class(finetuned):
    """The spout alone must now choose the class of a continuation of the
    class-neutral prompt."""
    # Mean loss ln(2)/14 = 0.05 once the rule is learned (only the first token is
    # uncertain); ln(20) = 3.0 knowing the classes' tokens only.
    assert finetuned["pretrained"]["mean_loss_last_10"] < 0.5
    # A spout added with zero output starts without any effect on the logits.
    assert finetuned["first_before"][0] == finetuned["first_before"][1]
    generated, first = greedy_generate(finetuned["dst"], np.eye(2), steps=8)
    for cls in (0, 1):
        # Without the spout the first token is a coin flip between the classes.
        assert first[cls, CLASS_TOKENS[cls]].sum() > 0.75, first
        assert generated[cls, 0] == class_sequence(cls, 1)[0], generated
        assert class_share(generated[cls], cls) >= 0.8, generated


def script_text(output):
    """The text run_generate.py prints between its start and end markers."""
    lines = output.splitlines()
    start = lines.index("=====[start generate]=====")
    return "\n".join(lines[start + 1:lines.index("=====[end generate]=====", start)])


@pytest.mark.slow
def test_run_generate_writes_each_class_in_its_script(finetuned, tmp_path):
    """End to end, what fine-tuning is for: run_generate.py --spout K on the fine-tuned
    model writes class K's characters (hiragana for 0, katakana for 1)."""
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("\n".join(VOCABULARY), encoding="utf-8")
    emoji = tmp_path / "emoji.json"
    emoji.write_text(json.dumps({"emoji": {}, "emoji_inv": {}}), encoding="utf-8")
    for cls, (mine, other) in enumerate([(HIRAGANA, KATAKANA), (KATAKANA, HIRAGANA)]):
        done = run_script(os.path.join(REPO, "run_generate.py"), "--model", finetuned["dst"],
                          "--vocabulary", str(vocabulary), "--emoji", str(emoji),
                          "--spout", str(cls), "--top_k", "1", "--beam_width", "1",
                          "--max_generate", "8", "--seed", "0", timeout=300)
        assert done.returncode == 0, done.stderr
        text = script_text(done.stdout)
        assert len(text) == 8, text
        assert sum(ch in mine for ch in text) >= 0.8 * len(text) > sum(ch in other for ch in text)
