"""The demo's measurements and caches: model/evaluate.py's spout-aware held-out
loss and character-type shares, and tools/demo.py's vocabulary-keyed caches
and class files.

Expected losses come from the independent NumPy forward pass in
tests/numpy_gptsan.py and a cross-entropy written out here; the identity
conversion (new layers add exactly 0) and a zero spout projection (a spout
then cannot tell classes apart) give equalities that must hold exactly.
"""
import os

import numpy as np
import pytest

import numpy_gptsan as ref
from tests import records as record_files
import tiny_model
from model import convert, evaluate, params as paramslib
from model.compat import tf
from tools import demo

C = 16
NUM_RECORDS = 6  # not a multiple of the batch size (4): the last batch is partial


# ---- helpers -------------------------------------------------------------------
def write_records(path, seed):
    """Records in make_tfrecord.py's layout with random tokens, a few
    positions without a target and varied bidirectional prefixes."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(NUM_RECORDS):
        x = rng.integers(0, 35993, C)
        y = np.concatenate([x[1:], rng.integers(0, 35993, 1)])
        y[rng.random(C) < 0.2] = -1
        rows.append((x, y, int(rng.integers(0, 4)), k % 2))
    record_files.write_records(path, rows)
    return [row[:3] for row in rows]


def reference_loss(model_dir, rows, spout=None):
    """Mean cross-entropy over every target position of every row (float64 NumPy)."""
    mp = paramslib.load(model_dir).model
    weights = ref.load_weights(tf.train.latest_checkpoint(model_dir), mp)
    x = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    n = np.array([r[2] for r in rows])
    given = None if spout is None else np.repeat(np.asarray(spout, np.float64)[None], len(rows), 0)
    logits = ref.forward(weights, mp, x, num_precontext=n, spout=given)["logits"]
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.maximum(y, 0)[..., None], -1)[..., 0]
    valid = y >= 0
    return float(-(picked * valid).sum() / valid.sum())


def rewrite_checkpoint(src, dst, changes):
    """A copy of model directory src whose checkpoint has `changes` applied."""
    os.makedirs(dst)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(src))
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    tensors.update(changes)
    tiny_model.save_checkpoint(tensors, dst)
    paramslib.save(paramslib.load(src), dst)
    return dst


# ---- fixtures ------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """source: no spout; converted: + 1 identity extension layer and a 2-class
    spout whose projection is still zero; trained: the same with a random
    projection (as fine-tuning would leave it)."""
    root = tmp_path_factory.mktemp("demo_models")
    source = tiny_model.make_model_dir(
        str(root / "source"), tiny_model.tiny_params(num_contexts=C, num_ext_layers=0, num_spout=0),
        seed=11)
    converted = str(root / "converted")
    convert.convert(source, converted, add_layers=1, num_spout=2, seed=12, progress=False)
    kernel = tf.train.load_checkpoint(tf.train.latest_checkpoint(converted)).get_tensor(
        "pasts/out/kernel")
    assert not kernel.any()
    projection = np.random.default_rng(13).normal(0, 1.0, kernel.shape).astype(np.float32)
    trained = rewrite_checkpoint(converted, str(root / "trained"), {"pasts/out/kernel": projection})
    return {"source": source, "converted": converted, "trained": trained}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_records")
    rows = write_records(str(folder / "a-00000-00000.tfrecord"), seed=21)
    other = write_records(str(folder / "b-00000-00000.tfrecord"), seed=22)
    return {"a": (str(folder / "a-*.tfrecord"), rows), "b": (str(folder / "b-*.tfrecord"), other)}


# ---- the spout-aware held-out loss ----------------------------------------------
def test_loss_without_spout_matches_reference_and_survives_identity_conversion(models, records):
    pattern, rows = records["a"]
    expected = reference_loss(models["source"], rows)
    source = evaluate.heldout_loss(models["source"], pattern)
    # Every record counts, the partial last batch included (6 records, batch 4).
    assert source == pytest.approx(expected, rel=1e-5)
    assert evaluate.heldout_loss(models["source"], pattern, max_examples=4) != pytest.approx(
        source, rel=1e-4)
    # The converted model without a spout input is the source model exactly.
    assert evaluate.heldout_loss(models["converted"], pattern) == pytest.approx(source, abs=1e-6)


def test_spout_loss_matches_reference_and_depends_on_the_class(models, records):
    pattern, rows = records["a"]
    losses = [evaluate.heldout_loss(models["trained"], pattern, spout=k) for k in (0, 1)]
    for k in (0, 1):
        assert losses[k] == pytest.approx(reference_loss(models["trained"], rows, np.eye(2)[k]),
                                          rel=1e-5)
    assert abs(losses[0] - losses[1]) > 1e-3
    # A vector is taken as given: one-hot [0, 1] is class 1.
    assert evaluate.heldout_loss(models["trained"], pattern, spout=[0.0, 1.0]) == \
        pytest.approx(losses[1], abs=1e-6)
    # No spout is a different input (no extra cached position) from any class.
    none = evaluate.heldout_loss(models["trained"], pattern)
    assert none == pytest.approx(reference_loss(models["trained"], rows), rel=1e-5)
    assert min(abs(none - v) for v in losses) > 1e-4


def test_first_positions_count_only_the_start_of_each_example(models, records):
    pattern, rows = records["a"]
    early = [(x, np.where(np.arange(C) < 5, y, -1), n) for x, y, n in rows]
    got = evaluate.heldout_loss(models["trained"], pattern, spout=1, first_positions=5)
    assert got == pytest.approx(reference_loss(models["trained"], early, np.eye(2)[1]), rel=1e-5)
    assert got != pytest.approx(evaluate.heldout_loss(models["trained"], pattern, spout=1),
                                rel=1e-4)
    table = evaluate.spout_loss_table(models["trained"], [pattern], [1], first_positions=5)
    assert table[0][0] == pytest.approx(got, abs=1e-6)


def test_zero_spout_projection_cannot_tell_classes_apart(models, records):
    """Right after conversion the projection is zero: both classes get the same
    (zero) key and value, so the losses are equal, though not the no-spout loss."""
    pattern, _ = records["a"]
    zero, one = (evaluate.heldout_loss(models["converted"], pattern, spout=k) for k in (0, 1))
    assert zero == one
    assert zero != pytest.approx(evaluate.heldout_loss(models["converted"], pattern), abs=1e-6)


def test_spout_loss_table_equals_single_losses(models, records):
    patterns = [records["a"][0], records["b"][0]]
    table = evaluate.spout_loss_table(models["trained"], patterns, [0, 1])
    for r, pattern in enumerate(patterns):
        for c in (0, 1):
            assert table[r][c] == pytest.approx(
                evaluate.heldout_loss(models["trained"], pattern, spout=c), abs=1e-6)


def test_spout_errors(models, records):
    pattern, _ = records["a"]
    with pytest.raises(ValueError, match="outside"):
        evaluate.heldout_loss(models["trained"], pattern, spout=2)
    with pytest.raises(ValueError, match="num_spout"):
        evaluate.heldout_loss(models["trained"], pattern, spout=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="no spout"):
        evaluate.heldout_loss(models["source"], pattern, spout=0)
    with pytest.raises(ValueError, match="no records"):
        evaluate.heldout_loss(models["trained"], pattern + ".missing", spout=0)


# ---- character-type shares -------------------------------------------------------
def test_char_type_shares_on_hand_made_text():
    shares = evaluate.char_type_shares("ls -l\tあいう カタカナ 漢字々。")
    # 4 ASCII (l s - l), 3 hiragana, 4 katakana, 3 kanji (々 included), 1 other (。)
    assert shares["chars"] == 15
    expected = {"ascii": 4, "hiragana": 3, "katakana": 4, "kanji": 3, "other": 1}
    for name, count in expected.items():
        assert shares[name] == pytest.approx(count / 15), name
    # Full-width Latin letters and digits count as ASCII; the long vowel mark as katakana.
    assert evaluate.char_type_shares("ＡＢ１ー") == pytest.approx(
        {"ascii": 0.75, "hiragana": 0.0, "katakana": 0.25, "kanji": 0.0, "other": 0.0, "chars": 4})
    # Several texts are pooled by characters, not averaged per text.
    pooled = evaluate.char_type_shares(["a", "あいう"])
    assert pooled["ascii"] == pytest.approx(0.25) and pooled["hiragana"] == pytest.approx(0.75)
    empty = evaluate.char_type_shares(" \n")
    assert empty["chars"] == 0 and all(empty[k] == 0.0 for k in evaluate.CHAR_TYPES)


# ---- the demo's caches -----------------------------------------------------------
KEY = {"vocabulary_sha256": "a" * 64, "emoji_sha256": "b" * 64, "num_contexts": 128}


def make_cache(folder, stamp):
    os.makedirs(folder)
    with open(os.path.join(folder, "train-00000-00000.tfrecord"), "wb") as f:
        f.write(b"x")
    if stamp is not None:
        demo.write_stamp(folder, stamp)
    return folder


def test_stale_reason_names_what_changed():
    assert demo.stale_reason(dict(KEY), dict(KEY)) is None
    assert "no %s" % demo.STAMP in demo.stale_reason(None, KEY)
    reason = demo.stale_reason(dict(KEY, vocabulary_sha256="c" * 64), KEY)
    assert "vocabulary_sha256" in reason and "cccccccccccc" in reason and "aaaaaaaaaaaa" in reason
    assert "emoji" not in reason
    assert "num_contexts 256 -> 128" in demo.stale_reason(dict(KEY, num_contexts=256), KEY)


def test_cache_with_the_same_key_is_reused(tmp_path, capsys):
    folder = make_cache(str(tmp_path / "records"), KEY)
    assert demo.check_cache(folder, dict(KEY), demo.records_complete)
    assert os.path.isfile(os.path.join(folder, "train-00000-00000.tfrecord"))
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize("stamp, why", [
    (dict(KEY, vocabulary_sha256="0" * 64), "vocabulary_sha256"),
    (None, "no " + demo.STAMP),
])
def test_stale_or_unstamped_cache_is_removed_with_a_reason(tmp_path, capsys, stamp, why):
    folder = make_cache(str(tmp_path / "records"), stamp)
    assert not demo.check_cache(folder, dict(KEY), demo.records_complete)
    assert not os.path.exists(folder)
    out = capsys.readouterr().out
    assert "rebuilding" in out and why in out


def test_incomplete_cache_is_rebuilt(tmp_path, capsys):
    folder = str(tmp_path / "model")
    os.makedirs(folder)
    demo.write_stamp(folder, KEY)
    assert not demo.check_cache(folder, dict(KEY), demo.model_complete)
    assert not os.path.exists(folder) and "incomplete" in capsys.readouterr().out


def test_make_records_rebuilds_only_when_the_vocabulary_changed(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, capture=False):
        calls.append(cmd)
        out = cmd[cmd.index("--output_dir") + 1]
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "new-00000-00000.tfrecord"), "wb").close()

    monkeypatch.setattr(demo, "run", fake_run)
    folder = str(tmp_path / "records")
    args = ("--input_files", "corpus/*.txt", "lm", 128, "train", [])
    demo.make_records(dict(KEY), folder, *args)
    assert len(calls) == 1 and demo.read_stamp(folder) == KEY
    demo.make_records(dict(KEY), folder, *args)
    assert len(calls) == 1  # reused
    new_key = dict(KEY, vocabulary_sha256="d" * 64)
    demo.make_records(new_key, folder, *args)
    assert len(calls) == 2 and demo.read_stamp(folder) == new_key


def test_vocabulary_key_follows_the_file_contents(tmp_path, monkeypatch):
    import encode_swe
    vocab, emoji = tmp_path / "ja-swe36k.txt", tmp_path / "emoji.json"
    vocab.write_text("a\nb\n", encoding="utf-8")
    emoji.write_text("{}", encoding="utf-8")
    monkeypatch.setattr(encode_swe, "DEFAULT_VOCAB", str(vocab))
    monkeypatch.setattr(encode_swe, "DEFAULT_EMOJI", str(emoji))
    work = str(tmp_path / "work")
    copy, _, key = demo.snapshot_vocabulary(work)
    assert open(copy, encoding="utf-8").read() == "a\nb\n"
    assert key["vocabulary_sha256"] == demo.file_sha256(str(vocab))
    vocab.write_text("a\nc\n", encoding="utf-8")
    copy2, _, key2 = demo.snapshot_vocabulary(work)
    assert copy2 == copy and open(copy2, encoding="utf-8").read() == "a\nc\n"
    assert key2["vocabulary_sha256"] != key["vocabulary_sha256"]
    assert key2["emoji_sha256"] == key["emoji_sha256"]


def test_file_sha256_is_sha256():
    import hashlib
    path = os.path.join(os.path.dirname(__file__), "conftest.py")
    with open(path, "rb") as f:
        assert demo.file_sha256(path) == hashlib.sha256(f.read()).hexdigest()


# ---- the demo's class files --------------------------------------------------------
def test_class_files_select_documents_by_ascii_share_and_hold_some_out(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    options = ["ls -l --all -a %d\nファイルを表示する。" % k for k in range(20)]
    prose = ["画像を編集するには、ツールを選びます。%d" % k for k in range(20)]
    mixed_in = ["これは説明です。" * 3]  # a man page with no ASCII: not class 0
    (corpus / "man.txt").write_text("\n\n\n".join(options + mixed_in) + "\n", encoding="utf-8")
    (corpus / "help.txt").write_text("\n\n\n".join(prose + ["--verbose --help -x -y -z"]) + "\n",
                                     encoding="utf-8")
    monkeypatch.setattr(demo, "CLASSES", [
        {"name": "options", "source": "man.txt", "min_ascii": 0.30, "max_ascii": 1.0, "about": ""},
        {"name": "prose", "source": "help.txt", "min_ascii": 0.0, "max_ascii": 0.10, "about": ""}])
    files, shares = demo.write_class_files(str(corpus), str(tmp_path / "classes"))
    texts = {part: [open(p, encoding="utf-8").read() for p in paths] for part, paths in files.items()}
    # 20 documents each; every 10th is held out (2), the rest trains (18).
    for k in (0, 1):
        assert len(demo.read_documents(files["train"][k])) == 18
        assert len(demo.read_documents(files["heldout"][k])) == 2
    assert "ls -l --all -a 9\n" in texts["heldout"][0] and "ls -l --all -a 9\n" not in texts["train"][0]
    assert "これは説明です" not in texts["train"][0] + texts["heldout"][0]
    assert "--verbose" not in texts["train"][1] + texts["heldout"][1]
    assert shares[0]["ascii"] > 0.3 and shares[1]["ascii"] < 0.1
    # Too few documents for a held-out part is a user error, not an empty class.
    (corpus / "help.txt").write_text("画像を編集する。\n", encoding="utf-8")
    with pytest.raises(demo.cli.UserError, match="class 1"):
        demo.write_class_files(str(corpus), str(tmp_path / "classes"))


def test_write_csv(tmp_path):
    path = demo.write_csv(str(tmp_path / "c.csv"), ["/x/a.txt", "/x/b.txt"])
    assert open(path, encoding="utf-8").read() == "filename,fileid\n/x/a.txt,0\n/x/b.txt,1\n"


def test_per_character_sums_the_loss_over_targets_and_divides_by_characters(records, tmp_path):
    pattern, rows = records["a"]
    targets = sum(int((y >= 0).sum()) for _, y, _ in rows)
    assert 0 < targets < NUM_RECORDS * C  # some positions have no target
    text = tmp_path / "heldout.txt"
    text.write_text("日本語の文章\nです。\n\n\nabc\n", encoding="utf-8")  # 17 characters
    per_char, tokens_per_char = demo.per_character(2.5, pattern, [str(text)], C)
    assert tokens_per_char == pytest.approx(targets / 17)
    assert per_char == pytest.approx(2.5 * targets / 17)
