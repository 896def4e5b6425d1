"""tools/make_tfrecord.py with tools/_layouts.py, model/tfrecord.py and model/inputs.py:
layout rules, reading, writing, CLI.

Most tests use CharEncoder, a one-token-per-character stand-in for encode_swe, so the
expected layouts can be written out by hand. The CLI tests at the end use the real
encoder with the released vocabulary from shared/reference when they are available.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from model.errors import UserError
from model import tfrecord
from tools import _documents as documents
from tools import _layouts as layouts
from tools import make_tfrecord as mt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "make_tfrecord.py")
SPECIALS = ("startoftext", "inputmask", "separator", "nottoken", "bagoftoken", "segmenter",
            "endoftext")


class CharEncoder:
    """Stand-in for encode_swe.SWEEncoder: one token per character, "\\n" is <BR>;
    like the real one, <...> tokens (including <BR>) are special."""

    ALPHABET = "abcdefghijklmnopqrstuvwxyz。.!?、あいう"

    def __init__(self):
        self.tokens = list(self.ALPHABET) + ["<BR>", "<UNK>"] + ["<|%s|>" % n for n in SPECIALS]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        for name in SPECIALS:
            setattr(self, name, self.ids["<|%s|>" % name])

    def __len__(self):
        return len(self.tokens)

    def clean_text(self, text):
        """Stands in for the real cleaning, which turns URLs etc. into tags."""
        return text.replace("z", "<UNK>")

    def encode(self, text, clean=False):
        if clean:
            text = self.clean_text(text)
        return [self.ids["<BR>"] if c == "\n" else self.ids.get(c, self.ids["<UNK>"])
                for c in text]

    def encode_batch(self, texts, clean=False):
        return [self.encode(t, clean) for t in texts]

    def token_to_id(self, s):
        return self.ids.get(s)

    def is_special(self, i):
        return self.tokens[i].startswith("<")


def char_encoder():
    """Encoder factory for Job (module level, so spawned workers can unpickle it)."""
    return CharEncoder()


def broken_encoder():
    raise ValueError("no vocabulary here")


ENC = CharEncoder()
TABLE = layouts.TokenTable(ENC)
SOT, MASK, SEP, NOT, BAG, SEG, EOT = (getattr(ENC, n) for n in SPECIALS)
LETTERS = [ENC.ids[c] for c in "abcdefghijklmnopqrstuvwxyz"]


def ids(text):
    return ENC.encode(text)


def layout(tokens, rng_seed=0, pool=None, **options):
    """All examples of one document, plus the stats."""
    opts = layouts.LayoutOptions(**options)
    rng = np.random.default_rng(rng_seed)
    stats = Counter()
    doc = layouts.Document(np.asarray(tokens), TABLE)
    pool = pool if pool is not None else layouts.SentencePool(rng)
    return list(layouts.examples_from_document(doc, TABLE, opts, rng, pool, stats)), stats


def lm_length(example):
    """Number of LM-part tokens (between the segmenter and <|endoftext|>/padding)."""
    after = example.x[example.num_input + 1:]
    return int(np.count_nonzero((after != EOT) & (after != NOT)))


def parts(example):
    """(prefix x tokens, LM stream as the targets hold it) of an example without a
    next-sentence part."""
    n, m = example.num_input, lm_length(example)
    return example.x[1:n], example.y[n:n + m]


def random_text_tokens(rng, n, alphabet=LETTERS):
    """Ordinary tokens with no run of 3 identical ones (so no <|bagoftoken|>)."""
    out = list(rng.choice(alphabet, n))
    for k in range(2, n):
        while out[k] == out[k - 1] == out[k - 2]:
            out[k] = rng.choice(alphabet)
    return out


# ---------------------------------------------------------------- layout rules
def test_lm_layout_written_out_by_hand():
    [ex], _ = layout(ids("ab。c"), mode="lm", num_context=16)
    pad = 16 - 7
    assert ex.num_input == 1
    assert list(ex.x) == [SOT, SEG] + ids("ab") + [SEP] + ids("c") + [EOT] + [NOT] * pad
    assert list(ex.y) == [-1] + ids("ab。c") + [EOT] + [-1] * (pad + 1)


class PunctuationEncoder(CharEncoder):
    ALPHABET = CharEncoder.ALPHABET + "｡．？！:：;；"


def test_every_sentence_end_becomes_separator_in_input_only():
    enc = PunctuationEncoder()
    table = layouts.TokenTable(enc)
    tokens = enc.encode("a。b｡c．d.e？f！g?h!i:j：k;l；m、n")
    doc = layouts.Document(np.asarray(tokens), table)
    [ex] = layouts.examples_from_document(doc, table, layouts.LayoutOptions("lm", 64),
                                     np.random.default_rng(0), None, Counter())
    stream_x = ex.x[2:2 + len(tokens)]
    kept = set(enc.encode("abcdefghijklmn、"))
    assert [x != enc.separator for x in stream_x] == [t in kept for t in tokens]
    assert list(ex.y[1:1 + len(tokens)]) == tokens


def test_bag_of_token_in_input_and_target():
    [ex], stats = layout(ids("xaaaay!!!!z"), mode="lm", num_context=20)
    stream = ids("xa") + [BAG] + ids("y!") + [BAG] + ids("z")
    assert list(ex.y[1:1 + len(stream) + 1]) == stream + [EOT]
    assert list(ex.x[2:2 + len(stream) + 1]) == ids("xa") + [BAG, ids("y")[0], SEP, BAG] + \
        ids("z") + [EOT]
    assert stats["bag_runs"] == 2


def test_runs_shorter_than_three_and_special_runs_stay():
    assert list(layouts.compress_runs(ids("aabbb"), TABLE)) == ids("aab") + [BAG]
    assert list(layouts.compress_runs(ids("a\n\n\nb"), TABLE)) == ids("a\n\n\nb")  # <BR> special
    assert list(layouts.compress_runs(ids("ab"), TABLE)) == ids("ab")


def test_long_document_split_into_full_examples_in_order():
    rng = np.random.default_rng(1)
    tokens = random_text_tokens(rng, 100)
    examples, _ = layout(tokens, mode="lm", num_context=16)
    covered = []
    for ex in examples[:-1]:
        _, stream = parts(ex)
        assert len(stream) == 14 and EOT not in ex.x and NOT not in ex.x
        covered += list(stream)
        assert ex.y[-1] == tokens[len(covered)]  # the last position predicts what follows
    _, stream = parts(examples[-1])
    covered += list(stream)
    assert covered == tokens
    assert list(examples[-1].x).count(EOT) == 1


@pytest.mark.parametrize("mode", ["lm", "mlm", "hybrid"])
def test_examples_cover_the_document_exactly_once(mode):
    rng = np.random.default_rng(2)
    for trial in range(30):
        tokens = random_text_tokens(rng, int(rng.integers(1, 120)))
        examples, _ = layout(tokens, rng_seed=trial, mode=mode, num_context=24, num_mask=0.0)
        covered = []
        for ex in examples:
            prefix, stream = parts(ex)
            covered += list(prefix) + list(stream)
            assert ex.x[0] == SOT and ex.x[ex.num_input] == SEG
        assert covered == tokens
        assert [list(ex.x).count(EOT) for ex in examples] == [0] * (len(examples) - 1) + [1]


def test_mlm_prefix_fills_the_context():
    tokens = random_text_tokens(np.random.default_rng(3), 200)
    examples, _ = layout(tokens, mode="mlm", num_context=32, num_mask=0.0)
    start = 0
    # released: the segmenter at num_context - 2, then one LM token, whose successor is
    # the last target (shared/reference records/mlm: num_input is 62 of 64 in every record)
    for ex in examples[:-1]:
        assert ex.num_input == 30 and ex.x[30] == SEG
        assert list(ex.x[1:30]) == tokens[start:start + 29]
        assert ex.x[31] == tokens[start + 29] and ex.y[30] == tokens[start + 29]
        assert ex.y[31] == tokens[start + 30]
        assert np.all(ex.y[:30] == -1)  # no masks: no loss in the prefix
        start += 30
    last = examples[-1]
    assert last.x[last.num_input + 1] == EOT and last.y[last.num_input] == EOT


def test_prefix_keeps_punctuation_and_has_no_loss_without_masks():
    [ex], _ = layout(ids("ab。cd"), mode="mlm", num_context=16, num_mask=0.0)
    assert list(ex.x[:8]) == [SOT] + ids("ab。cd") + [SEG, EOT]
    assert list(ex.y[:8]) == [-1] * 6 + [EOT, -1]


def test_masking_rates_and_targets():
    rng = np.random.default_rng(4)
    tokens = random_text_tokens(rng, 40000)
    examples, stats = layout(tokens, rng_seed=5, mode="mlm", num_context=64, num_mask=0.15,
                             max_mask=1000)
    kinds, start, prefix_total = Counter(), 0, 0
    for ex in examples:
        n = ex.num_input
        original = np.asarray(tokens[start:start + n - 1])
        start += n - 1 + lm_length(ex)
        prefix_total += n - 1
        targets = ex.y[:n - 1]
        masked = np.flatnonzero(targets >= 0) + 1  # y[p-1] holds the target of position p
        assert np.array_equal(targets[masked - 1], original[masked - 1])
        unmasked = np.setdiff1d(np.arange(1, n), masked)
        assert np.array_equal(ex.x[unmasked], original[unmasked - 1])
        for p in masked:
            x = ex.x[p]
            kinds["mask" if x == MASK else "same" if x == original[p - 1] else "random"] += 1
            assert x == MASK or not ENC.is_special(int(x))
    total = sum(kinds.values())
    assert total == stats["masked_tokens"]
    assert abs(total / prefix_total - 0.15) < 0.01
    assert abs(kinds["mask"] / total - 0.8) < 0.03
    assert abs(kinds["random"] / total - 0.1) < 0.03
    assert abs(kinds["same"] / total - 0.1) < 0.03


def test_max_mask_caps_each_example():
    tokens = random_text_tokens(np.random.default_rng(6), 3000)
    examples, _ = layout(tokens, mode="mlm", num_context=64, num_mask=0.5, max_mask=3)
    counts = [int(np.count_nonzero(ex.y[:ex.num_input] >= 0)) for ex in examples[:-1]]
    assert max(counts) == 3 and min(counts) == 3  # 62 * 0.5 masked expected: always capped


def test_lm_mode_has_no_prefix_and_no_masks():
    tokens = random_text_tokens(np.random.default_rng(7), 500)
    examples, stats = layout(tokens, mode="lm", num_context=32, num_mask=0.5)
    assert all(ex.num_input == 1 for ex in examples)
    assert stats["masked_tokens"] == 0 and MASK not in np.concatenate([e.x for e in examples])


def test_hybrid_share_and_uniform_prefix_length():
    tokens = random_text_tokens(np.random.default_rng(8), 60000)
    examples, _ = layout(tokens, rng_seed=9, mode="hybrid", num_context=64, hybrid_rate=0.3)
    lengths = np.array([ex.num_input - 1 for ex in examples[:-1]])
    with_prefix = lengths[lengths > 0]
    # a hybrid example draws 0 with probability 1/62; 0.3 * 61/62 carry a prefix
    assert abs(len(with_prefix) / len(lengths) - 0.3 * 61 / 62) < 0.05
    assert with_prefix.max() <= 61  # uniform in [0, num_context - 2)
    assert abs(with_prefix.mean() - 31) < 4  # mean of 1..61
    assert abs(np.mean(with_prefix <= 31) - 0.5) < 0.1


def test_next_sentence_part():
    rng = np.random.default_rng(10)
    sentences = ["".join(rng.choice(list("abcdefgh"), int(rng.integers(2, 6)), replace=False))
                 + "。" for _ in range(800)]  # no repeated letters: no <|bagoftoken|>
    tokens = ids("".join(sentences))
    examples, stats = layout(tokens, rng_seed=11, mode="lm", num_context=32, use_nextsent=True)
    labels, pos = Counter(), 0
    for ex in examples:
        if SEP not in ex.x[:ex.num_input]:  # the document's tail: nothing left to follow
            continue
        q = list(ex.x).index(SEP)
        sentence, label = list(ex.x[1:q]), ex.y[q - 1]
        assert sentence[-1] == ids("。")[0] and np.all(ex.y[:q - 1] == -1)
        assert ex.num_input == q + 1  # lm mode: the segmenter follows the separator
        true_sentence = list(tokens[pos:pos + len(sentence)])
        if label == SEP:
            labels["true"] += 1
            assert sentence == true_sentence
        else:
            assert label == EOT
            labels["false"] += 1
            assert sentence != true_sentence
        pos = tokens.index(ids("。")[0], pos) + 1  # the taken sentence is consumed
        stream = list(ex.y[ex.num_input:ex.num_input + lm_length(ex)])
        assert stream == list(tokens[pos:pos + len(stream)])
        pos += len(stream)
    assert labels["true"] == stats["nextsent_true"] and labels["false"] == stats["nextsent_false"]
    assert abs(labels["true"] / sum(labels.values()) - 0.5) < 0.12


def test_nextsent_is_capped_keeping_its_end():
    long_sentence = ids("abcdefghij" * 4 + "。")
    [ex, *_], _ = layout(long_sentence + ids("xy"), mode="lm", num_context=16,
                         use_nextsent=True)
    cap = (16 - 4) // 4
    assert list(ex.x[1:1 + cap]) == long_sentence[-cap:] and ex.x[1 + cap] == SEP


def test_fractional_weight_schedule():
    assert mt.pass_keep_rates(1) == [1.0]
    assert mt.pass_keep_rates(2) == [1.0, 1.0]
    assert mt.pass_keep_rates(2.5) == [1.0, 1.0, 0.5]
    assert mt.pass_keep_rates(0.25) == [0.25]
    assert mt.pass_keep_rates(0) == []


# ---------------------------------------------------------------- reading text
def reference_documents(text):
    """Documents by the rule: two or more blank lines separate them."""
    docs = []
    for chunk in re.split(r"\n(?:[ \t\r\f\v]*\n){2,}", text):
        lines = ["" if not line.strip() else line for line in chunk.split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            docs.append(lines)
    return docs


def read_all(path, block_bytes):
    size, docs, stats = os.path.getsize(path), [], Counter()
    for start in range(0, max(size, 1), block_bytes):
        end = min(size, start + block_bytes)
        docs += [lines for lines, _ in documents.read_block_documents(path, start, end, stats)]
    return docs, stats


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["a", "あ", "\n", " ", "bc"]), max_size=60))
def test_blocks_split_documents_like_one_pass(pieces):
    text = "".join(pieces)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        expected = reference_documents(text)
        for block in (1, 2, 3, 5, 8, 1000):
            assert read_all(path, block)[0] == expected, block


def test_undecodable_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xef\xbb\xbfgood\r\n\xff\xfe bad\r\nmore\n\n\nsecond\n")
    docs, stats = read_all(str(path), 1 << 20)
    assert docs == [["good", "more"], ["second"]]
    assert stats["undecodable_lines"] == 1


# ---------------------------------------------------------------- TFRecord bytes
def test_crc32c_check_value():
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    rng = np.random.default_rng(12)
    messages = [rng.integers(0, 256, int(rng.integers(4, 3000)), dtype=np.uint8).tobytes()
                for _ in range(20)] + [b"123456789"]
    assert tfrecord.crc32c_many(messages) == [tfrecord.crc32c(m) for m in messages]


@pytest.fixture(scope="module")
def tf():
    from model.compat import tf
    return tf


def test_examples_serialize_exactly_like_tensorflow(tf):
    rng = np.random.default_rng(13)
    rows = {"x": rng.integers(0, 70000, (3, 40)), "y": rng.integers(-1, 300, (3, 40)),
            "num_input": [[5], [0], [2 ** 40]], "i": [[-7], [1], [3]]}
    ours = tfrecord.serialize_examples(rows)
    for r, data in enumerate(ours):
        feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(v) for v in np.ravel(rows[name][r])])) for name in rows}
        reference = tf.train.Example(features=tf.train.Features(feature=feature))
        assert data == reference.SerializeToString()


def read_records(tf, path):
    out = []
    for data in tf.io.tf_record_iterator(path):  # checks both CRCs of every record
        feature = tf.train.Example.FromString(data).features.feature
        out.append({k: list(feature[k].int64_list.value) for k in ("x", "y", "num_input", "i")})
    return out


def make_examples(rng, n, num_context):
    return [layouts.Example(rng.integers(0, 36000, num_context),
                            rng.integers(-1, 36000, num_context),
                            int(rng.integers(1, num_context))) for _ in range(n)]


def test_records_read_back_identically(tf, tmp_path):
    examples = make_examples(np.random.default_rng(14), 5, 12)
    writer = tfrecord.ShardWriter(str(tmp_path / "a-00000-00000.tfrecord"), class_id=9)
    for ex in examples:
        writer.write(ex)
    writer.commit()
    assert not glob.glob(str(tmp_path / "*.tmp"))
    from model import inputs
    ds = inputs.read_dataset(str(tmp_path / "a-*.tfrecord"), 2, 12, shuffle=False,
                             repeat=False)
    batches = []
    get = tf.data.make_one_shot_iterator(ds).get_next()
    with tf.Session() as sess:
        while True:
            try:
                batches.append(sess.run(get))
            except tf.errors.OutOfRangeError:
                break
    assert len(batches) == 2  # 5 records in batches of 2: the incomplete third is dropped
    for b, batch in enumerate(batches):
        assert batch["x"].shape == (2, 12) and batch["num_input"].shape == (2,)
        assert all(v.dtype == np.int32 for v in batch.values())
        for j in range(2):
            ex = examples[2 * b + j]
            assert np.array_equal(batch["x"][j], ex.x) and np.array_equal(batch["y"][j], ex.y)
            assert batch["num_input"][j] == ex.num_input and batch["i"][j] == 9
    assert tfrecord.count_records([str(tmp_path / "a-00000-00000.tfrecord")]) == 5


def test_read_dataset_errors(tf, tmp_path):
    from model import inputs
    with pytest.raises(UserError, match="nothing-here"):
        inputs.read_dataset(str(tmp_path / "nothing-here*"), 2, 12)
    writer = tfrecord.ShardWriter(str(tmp_path / "b-00000-00000.tfrecord"), class_id=0)
    writer.write(make_examples(np.random.default_rng(15), 1, 12)[0])
    writer.commit()
    with pytest.raises(UserError, match="num_context"):
        inputs.read_dataset(str(tmp_path / "b-*"), 1, 16)
    both = "%s,%s" % (tmp_path / "nothing-here*", tmp_path / "b-*")
    assert inputs.list_record_files(both) == [str(tmp_path / "b-00000-00000.tfrecord")]


# ---------------------------------------------------------------- whole runs
def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def run(files, tmp_path, out="out", num_process=1, block_bytes=1 << 20, seed=0, stats=None,
        factory=char_encoder, cleaning="released", **layout_options):
    """convert() with CharEncoder; returns (stats, shards, output folder)."""
    options = dict(mode="lm", num_context=32)
    options.update(layout_options)
    output = None if out is None else str(tmp_path / out)
    if output:
        os.makedirs(output, exist_ok=True)
    job = mt.Job(layouts.LayoutOptions(**options), factory, seed, cleaning, output, "t")
    stats, shards = mt.convert(files, job, num_process, block_bytes, stats, progress=False)
    return stats, shards, output


def shard_bytes(output):
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(output, "*.tfrecord")))}


DOCS = "\n\n\n".join("abc。de\nfg" * (k % 7 + 1) for k in range(300))


def test_csv_classes_and_weights(tf, tmp_path):
    write(tmp_path / "a.txt", DOCS)
    write(tmp_path / "b.txt", DOCS)
    write(tmp_path / "c.txt", DOCS)
    csv_path = write(tmp_path / "list.csv", "filename,fileid,weight\n"
                     "a.txt,7,1\nb.txt,3,2\nc.txt,5,0.5\n")
    files = mt.files_from_csv(csv_path, mt.RunStats())
    stats, shards, out = run(files, tmp_path)
    per_class = Counter()
    for name in shards:
        for record in read_records(tf, os.path.join(out, name)):
            per_class[record["i"][0]] += 1
    assert set(per_class) == {7, 3, 5}
    assert per_class[3] == 2 * per_class[7]
    # 0.5: each example kept with probability 1/2 (binomial, 5 sigma)
    n = per_class[7]
    assert abs(per_class[5] - n / 2) < 5 * np.sqrt(n / 4)
    assert stats["records"] == sum(per_class.values()) == sum(shards.values())


def test_reruns_are_byte_identical_whatever_the_process_count(tmp_path):
    # "z" lines make the default cleaning read lines two ways (LineText)
    text = DOCS.replace("fg", "fz", 40)
    files = [mt.InputFile(k, write(tmp_path / ("%d.txt" % k), text[k * 100:]), k)
             for k in range(3)]
    options = dict(mode="hybrid", num_context=32, use_nextsent=True, block_bytes=1500)
    _, shards, out1 = run(files, tmp_path, "one", **options)
    _, _, out2 = run(files, tmp_path, "again", **options)
    _, _, out3 = run(files, tmp_path, "two", num_process=2, **options)
    _, _, out4 = run(files, tmp_path, "seed", seed=1, **options)
    assert len(shards) > 3  # several blocks per file, so both workers get work
    assert shard_bytes(out1) == shard_bytes(out2) == shard_bytes(out3)
    assert shard_bytes(out1) != shard_bytes(out4)


def test_a_failing_worker_stops_the_run_instead_of_hanging(tmp_path):
    files = [mt.InputFile(k, write(tmp_path / ("%d.txt" % k), DOCS), k) for k in range(2)]
    with pytest.raises(ValueError, match="no vocabulary"):
        run(files, tmp_path, num_process=2, factory=broken_encoder)
    assert not glob.glob(str(tmp_path / "out" / "*"))


def test_a_write_error_leaves_no_partial_shard(tmp_path, monkeypatch):
    def disk_full(features):
        raise OSError("No space left on device")
    monkeypatch.setattr(tfrecord, "serialize_examples", disk_full)
    files = [mt.InputFile(0, write(tmp_path / "a.txt", DOCS), 0)]
    with pytest.raises(OSError, match="No space"):
        run(files, tmp_path)
    assert os.listdir(tmp_path / "out") == []


def test_bad_input_is_counted_not_fatal(tf, tmp_path):
    write(tmp_path / "good.txt", DOCS)
    write(tmp_path / "empty.txt", "\n\n  \n")
    (tmp_path / "broken.txt").write_bytes(b"ab\xff\xfe\ncd\n\xc3\n")
    csv_path = write(tmp_path / "list.csv", "filename,fileid\n"
                     "good.txt,0\nmissing.txt,1\nempty.txt,2\nbroken.txt,3\n"
                     "good.txt,x\ngood.txt,-2\n")
    stats = mt.RunStats()
    files = mt.files_from_csv(csv_path, stats)
    stats, shards, out = run(files, tmp_path, stats=stats)
    assert stats["bad_csv_rows"] == 2 and stats["missing_files"] == 1
    assert stats["empty_files"] == 1 and stats["undecodable_lines"] == 2
    assert stats["files"] == 4
    assert not glob.glob(os.path.join(out, "*.tmp"))
    classes = {r["i"][0] for name in shards for r in read_records(tf, os.path.join(out, name))}
    assert classes == {0, 3}
    summary = mt.format_summary(stats, 1.0)
    assert "missing files" in summary and "missing.txt" in summary


def test_dry_run_counts_like_a_real_run_and_writes_nothing(tmp_path):
    files = [mt.InputFile(0, write(tmp_path / "a.txt", DOCS), 0)]
    real, shards, _ = run(files, tmp_path, mode="hybrid")
    dry, dry_shards, _ = run(files, tmp_path, out=None, mode="hybrid")
    assert dry_shards == {} and sorted(os.listdir(tmp_path)) == ["a.txt", "out"]
    assert dry == real - Counter(shards=real["shards"])


def test_clean_text_reaches_the_encoder(tf, tmp_path):
    files = [mt.InputFile(0, write(tmp_path / "a.txt", "zebra"), 0)]
    _, shards, out = run(files, tmp_path, cleaning="all")
    [record] = read_records(tf, os.path.join(out, *shards))
    assert record["x"][2] == ENC.ids["<UNK>"] and ids("z")[0] not in record["x"]


def test_input_list_glob_and_csv_header(tmp_path):
    a, b = write(tmp_path / "a.txt", "a"), write(tmp_path / "b.txt", "b")
    listing = write(tmp_path / "files.lst", "# corpus\na.txt\n\n%s\nnone.txt\n" % b)
    files = mt.files_from_list(listing)
    assert [(f.index, f.path, f.class_id) for f in files] == [
        (0, a, 0), (1, b, 1), (2, str(tmp_path / "none.txt"), 2)]
    both = mt.files_from_globs("%s,%s" % (tmp_path / "b.*", tmp_path / "*.txt"))
    assert [f.path for f in both] == [b, a]  # pattern order, then sorted; no repeats
    with pytest.raises(UserError, match="matched no files"):
        mt.files_from_globs(str(tmp_path / "*.md"))
    bad_header = write(tmp_path / "x.csv", "file,id\na.txt,1\n")
    with pytest.raises(UserError, match="filename,fileid"):
        mt.files_from_csv(bad_header, mt.RunStats())


# ---------------------------------------------------------------- command line
def cli(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_is_fast_and_bad_flags_exit_2():
    began = time.time()
    shown = cli("--help")
    assert shown.returncode == 0 and "--num_context" in shown.stdout
    assert time.time() - began < 10
    bad = cli("--input_files", "x", "--no_such_flag")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    wrong = cli("--input_files", "x", "--dry_run", "--mode", "bert")
    assert wrong.returncode == 2


def test_user_mistakes_are_one_line_errors(tmp_path):
    missing = cli("--input_files", str(tmp_path / "none*.txt"), "--dry_run")
    assert missing.returncode == 2 and "matched no files" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    write(tmp_path / "a.txt", "abc")
    no_output = cli("--input_files", str(tmp_path / "a.txt"))
    assert no_output.returncode == 2 and "--output_dir" in no_output.stderr
    bad_rate = cli("--input_files", str(tmp_path / "a.txt"), "--dry_run", "--num_mask", "2")
    assert bad_rate.returncode == 2 and "--num_mask" in bad_rate.stderr


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    write(tmp_path / "a.txt", "abc")
    out = tmp_path / "out"
    out.mkdir()
    keep = write(out / "precious.txt", "mine")
    refused = cli("--input_files", str(tmp_path / "a.txt"), "--output_dir", str(out))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert os.listdir(out) == ["precious.txt"] and open(keep).read() == "mine"


@pytest.fixture(scope="module")
def released_vocabulary():
    shared = os.path.join(os.path.dirname(REPO), "shared", "reference")
    vocab, emoji = os.path.join(shared, "ja-swe36k.txt"), os.path.join(shared, "emoji.json")
    if not os.path.isfile(vocab):
        pytest.skip("reference vocabulary not found: %s (CI puts shared/ beside the repo)"
                    % vocab)
    pytest.importorskip("encode_swe", reason="encode_swe.py is not in the repository yet")
    return ["--vocabulary", vocab, "--emoji", emoji]


def test_cli_with_the_real_encoder(released_vocabulary, tf, tmp_path):
    text = "今日は晴れです。明日は雨でしょう！\nあああああ\n\n\n二つ目の文書です。"
    write(tmp_path / "a.txt", text)
    common = ["--input_files", str(tmp_path / "*.txt"), "--num_context", "32", "--mode", "lm",
              "--no_progress", *released_vocabulary]
    dry = cli(*common, "--dry_run")
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"documents\s+2\b", dry.stdout) and os.listdir(tmp_path) == ["a.txt"]
    out = str(tmp_path / "out")
    first = cli(*common, "--output_dir", out, "--use_nextsent")
    assert first.returncode == 0, first.stderr
    written = shard_bytes(out)
    assert list(written) == ["train-00000-00000.tfrecord"]
    import encode_swe
    enc = encode_swe.load_encoder(*released_vocabulary[1::2])
    full_stop, stops = enc.token_to_id("。"), 0
    for record in read_records(tf, os.path.join(out, "train-00000-00000.tfrecord")):
        x, y, n = record["x"], record["y"], record["num_input"][0]
        assert x[0] == enc.startoftext and x[n] == enc.segmenter and len(x) == 32
        lm_stops = [t for t in range(n, 31) if y[t] == full_stop]
        assert all(x[t + 1] == enc.separator for t in lm_stops)
        stops += len(lm_stops)
    assert stops >= 1  # "二つ目の文書です。" has nothing to follow, so it stays LM text
    again = cli(*common, "--output_dir", out, "--use_nextsent")
    assert again.returncode == 2
    stale = write(tmp_path / "out" / "train-00007-00000.tfrecord", "an earlier run's shard")
    mine = write(tmp_path / "out" / "notes.txt", "not a shard")
    forced = cli(*common, "--output_dir", out, "--use_nextsent", "--force")
    assert forced.returncode == 0 and shard_bytes(out) == written
    assert not os.path.exists(stale) and os.path.exists(mine)


# ---------------------------------------------------------------- packing
def text_of(record):
    """(prefix tokens, LM targets) of a record without masks: the LM targets are
    y[num_input:num_input + m] for the m LM tokens in x after the segmenter; in a full
    example the one target after them is the next example's first token."""
    x, y, n = np.asarray(record["x"]), np.asarray(record["y"]), record["num_input"][0]
    m = int(np.count_nonzero(x[n + 1:] != NOT))
    return [int(t) for t in x[1:n]], [int(t) for t in y[n:n + m]]


@pytest.mark.parametrize("mode", ["lm", "hybrid", "mlm"])
def test_packing_loses_no_token_and_pads_only_at_the_file_end(tf, tmp_path, mode):
    # letters without runs of three (no <|bagoftoken|>) and no sentence ends, encoded
    # as written, so the records' text must be the documents joined with <|endoftext|>,
    # one to one (the default's cleaning is test_packing_mixes_..._loses_no_token's)
    rng = np.random.default_rng(5)
    docs = ["".join(ENC.tokens[t] for t in random_text_tokens(rng, int(rng.integers(1, 50))))
            for _ in range(25)]
    write(tmp_path / "a.txt", "\n\n\n".join(docs))
    _, shards, out = run(mt.files_from_globs(str(tmp_path / "a.txt")), tmp_path, mode=mode,
                         num_context=16, layout="pack", num_mask=0.0, cleaning="none")
    records = read_records(tf, os.path.join(out, *shards))
    text = []
    for r in records:
        prefix, targets = text_of(r)
        text += prefix + targets
    assert text == [t for d in docs for t in ids(d) + [EOT]]
    pads = [r["x"].count(NOT) for r in records]
    assert pads[:-1] == [0] * (len(records) - 1)
    assert sum(r["x"].count(EOT) for r in records) == len(docs)


def test_document_layout_pads_each_document(tf, tmp_path):
    write(tmp_path / "a.txt", "abc\n\n\ndefg\n")
    _, shards, out = run(mt.files_from_globs(str(tmp_path / "a.txt")), tmp_path, mode="lm",
                         num_context=16, layout="document")
    records = read_records(tf, os.path.join(out, *shards))
    assert len(records) == 2
    assert [r["x"].count(NOT) for r in records] == [16 - 6, 16 - 7]


# ---------------------------------------------------------------- summary and failures
def test_summary_is_complete_and_records_the_vocabulary(released_vocabulary, tmp_path):
    import hashlib
    import json
    write(tmp_path / "a.txt", "今日は晴れです。明日は雨でしょう。\n\n\n二つ目の文書です。")
    out = str(tmp_path / "out")
    done = cli("--input_files", str(tmp_path / "a.txt"), "--output_dir", out,
               "--num_context", "32", "--no_progress", *released_vocabulary)
    assert done.returncode == 0, done.stderr
    summary = json.load(open(os.path.join(out, "train-summary.json"), encoding="utf-8"))
    vocab, emoji = released_vocabulary[1], released_vocabulary[3]
    assert summary["complete"] is True
    assert summary["vocabulary"] == {
        "size": len(open(vocab, encoding="utf-8").read().split("\n")),
        "sha256": hashlib.sha256(open(vocab, "rb").read()).hexdigest(),
        "emoji_sha256": hashlib.sha256(open(emoji, "rb").read()).hexdigest()}


def test_a_failed_run_cleans_up_so_the_retry_is_not_refused(released_vocabulary, tmp_path):
    write(tmp_path / "empty.txt", "\n\n")
    out = tmp_path / "out"
    failed = cli("--input_files", str(tmp_path / "empty.txt"), "--output_dir", str(out),
                 "--no_progress", *released_vocabulary)
    assert failed.returncode == 2 and "no examples" in failed.stderr
    assert not out.exists() or os.listdir(out) == []
    write(tmp_path / "a.txt", "文書です。")
    retry = cli("--input_files", str(tmp_path / "a.txt"), "--output_dir", str(out),
                "--no_progress", *released_vocabulary)
    assert retry.returncode == 0, retry.stderr


def test_an_incomplete_output_of_ours_is_replaced_but_nothing_else(tmp_path):
    import json
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-summary.json").write_text(json.dumps({"complete": False}))
    (out / "train-00000-00000.tfrecord").write_bytes(b"partial")
    assert mt.prepare_output_dir(str(out), False, "train") is True
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match="not empty"):
        mt.prepare_output_dir(str(out), False, "train")
    (out / "notes.txt").unlink()
    (out / "train-summary.json").write_text(json.dumps({"complete": True}))
    with pytest.raises(UserError, match="not empty"):
        mt.prepare_output_dir(str(out), False, "train")


def test_sigterm_leaves_an_incomplete_summary_and_no_partial_shard(released_vocabulary,
                                                                    tmp_path):
    import json
    import signal as signal_lib
    rng = np.random.default_rng(0)
    lines = ["".join(rng.choice(list("今日は晴れです明日雨でしょう"), 60)) + "。"
             for _ in range(30000)]
    for k in range(8):   # enough work that the run is still going when the signal comes
        write(tmp_path / ("a%d.txt" % k), "\n".join(lines))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, SCRIPT, "--input_files", str(tmp_path / "a*.txt"),
                             "--output_dir", str(out), "--no_progress", "--block_mb", "0.5",
                             *released_vocabulary], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    summary = out / "train-summary.json"
    deadline = time.time() + 60
    while not summary.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert summary.exists(), "no incomplete summary before the first shard"
    assert json.loads(summary.read_text())["complete"] is False
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal_lib.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal_lib.SIGTERM, err
    assert len(err.strip().splitlines()) == 1 and "incomplete" in err
    assert json.loads(summary.read_text())["complete"] is False
    assert not glob.glob(str(out / "*.tmp"))
    retry = cli("--input_files", str(tmp_path / "a0.txt"), "--output_dir", str(out),
                "--no_progress", *released_vocabulary, timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert json.loads(summary.read_text())["complete"] is True


def test_running_record_ids_without_a_csv(tf, tmp_path):
    write(tmp_path / "a.txt", "abcdefghij" * 20)
    write(tmp_path / "b.txt", "abcdefghij" * 20)
    files = mt.files_from_globs(str(tmp_path / "*.txt"))
    options = layouts.LayoutOptions(mode="lm", num_context=16)
    out = str(tmp_path / "out")
    os.makedirs(out)
    job = mt.Job(options, char_encoder, 0, False, out, "t", running_ids=True)
    _, shards = mt.convert(files, job, 1, 1 << 20, progress=False)
    ids_a = [r["i"][0] for r in read_records(tf, os.path.join(out, "t-00000-00000.tfrecord"))]
    ids_b = [r["i"][0] for r in read_records(tf, os.path.join(out, "t-00001-00000.tfrecord"))]
    # released: num_written * num_process + process, with two blocks as the two "processes"
    assert ids_a == [2 * k for k in range(len(ids_a))]
    assert ids_b == [2 * k + 1 for k in range(len(ids_b))]


# ---------------------------------------------------------------- released records
def released_records_dir():
    path = os.path.join(os.path.dirname(REPO), "shared", "reference", "released", "records")
    if not os.path.isdir(path):
        pytest.skip("released records not found: %s" % path)
    return path


def test_released_records_read_by_model_inputs(tf):
    import json
    from model import inputs
    path = os.path.join(released_records_dir(), "hybrid")
    golden = [json.loads(line) for line in open(os.path.join(path, "hybrid_0000.jsonl"))]
    ds = inputs.read_dataset(os.path.join(path, "hybrid_0000.tfrecord"), 5, 64,
                             shuffle=False, repeat=False)
    get = tf.data.make_one_shot_iterator(ds).get_next()
    seen = []
    with tf.Session() as sess:
        while True:
            try:
                batch = sess.run(get)
            except tf.errors.OutOfRangeError:
                break
            for j in range(len(batch["x"])):
                seen.append((list(batch["x"][j]), list(batch["y"][j]),
                             int(batch["num_input"][j]), int(batch["i"][j])))
    assert len(seen) == len(golden) == 75
    for got, want in zip(seen, golden):
        assert got == (want["x"], want["y"], want["num_input"], want["i"])


def test_our_records_match_the_released_feature_spec(tf, tmp_path):
    write(tmp_path / "a.txt", "abc。def\n\n\nghi")
    _, shards, out = run(mt.files_from_globs(str(tmp_path / "a.txt")), tmp_path,
                         mode="hybrid", num_context=16)
    # the released input_fn's parse spec
    spec = {"x": tf.io.FixedLenFeature([16], tf.int64), "y": tf.io.FixedLenFeature([16], tf.int64),
            "i": tf.io.FixedLenFeature([1], tf.int64),
            "num_input": tf.io.FixedLenFeature([1], tf.int64)}
    count = 0
    for data in tf.io.tf_record_iterator(os.path.join(out, *shards)):
        with tf.Session() as sess:
            parsed = sess.run(tf.io.parse_single_example(data, spec))
        assert parsed["x"].shape == (16,) and parsed["i"].shape == (1,)
        count += 1
    assert count >= 1


# (variant folder, mode, input: the single 300-line file or the CSV, extra options) as the
# released tool was run for the golden records (released/README.md, "records/")
RELEASED_VARIANTS = {
    "lm": ("lm", "single", {}), "mlm": ("mlm", "single", {}),
    "hybrid": ("hybrid", "single", {}), "hybrid_np8": ("hybrid", "single", {"num_process": 8}),
    "hybrid_csv": ("hybrid", "csv", {}),
    "hybrid_nextsent_csv": ("hybrid", "csv", {"use_nextsent": True}),
    "mlm_nextsent_csv": ("mlm", "csv", {"use_nextsent": True}),
}


@pytest.fixture(scope="module")
def project_encoder():
    encode_swe = pytest.importorskip("encode_swe")
    enc = encode_swe.load_encoder(encode_swe.DEFAULT_VOCAB, encode_swe.DEFAULT_EMOJI)
    return enc, layouts.TokenTable(enc)


def released_run(variant, enc, table):
    """Our --layout released on the golden inputs: {process: [(x, y, i, num_input)]}."""
    path = released_records_dir()
    mode, source, extra = RELEASED_VARIANTS[variant]
    num_process = extra.get("num_process", 1)
    if source == "csv":
        files = mt.files_from_csv(os.path.join(path, "input_long.csv"), mt.RunStats())
        present = [(f.path, f.class_id) for f in files]
    else:
        present = [(f.path, None) for f in
                   mt.files_from_globs(os.path.join(path, "input", "single", "*.txt"))]
    order = layouts.released_file_order(present, 0)
    opts = layouts.LayoutOptions(mode, 64, use_nextsent=extra.get("use_nextsent", False),
                            layout="released")
    out = {}
    for k in range(num_process):
        out[k] = [(list(ex.x), list(ex.y), int(i), int(ex.num_input)) for ex, i in
                  layouts.released_examples(order[k::num_process], k, num_process, opts, enc,
                                       table, (False, True), 0, Counter())]
    return out


def golden_records(variant, process):
    import json
    mode = RELEASED_VARIANTS[variant][0]
    name = os.path.join(released_records_dir(), variant, "%s_%04d.jsonl" % (mode, process))
    return [(r["x"], r["y"], r["i"], r["num_input"]) for r in map(json.loads, open(name))]


@pytest.mark.parametrize("variant", list(RELEASED_VARIANTS))  # about 0.1 s each
def test_released_layout_reproduces_the_golden_records(project_encoder, variant):
    """Same inputs, same seeding (numpy seeded with the process index): the same records,
    value for value, in the same order, in every process (np8: 7 of them write nothing)."""
    ours = released_run(variant, *project_encoder)
    for process, records in ours.items():
        golden = golden_records(variant, process)
        assert len(records) == len(golden), (variant, process)
        for k, (got, want) in enumerate(zip(records, golden)):
            assert got == want, (variant, process, k)


def test_released_layout_rules_in_the_golden_records():
    """Layout rules read off the golden records themselves (independent of our code): the
    positions of the special tokens, the mlm segmenter, the masking rate in the prefix."""
    SOT_, SEP_, BAG_, SEG_, EOT_ = 35993, 35995, 35997, 35998, 35999
    for variant, (mode, source, extra) in RELEASED_VARIANTS.items():
        nextsent = extra.get("use_nextsent", False)
        masked = prefix_positions = 0
        for x, y, i, n in golden_records(variant, 0):
            assert x[0] == SOT_ and x[n] == SEG_ and x.count(SEG_) == 1
            if nextsent and SEP_ in x[:n]:
                s = x.index(SEP_)
                assert s == 32 and y[s - 1] in (SEP_, EOT_)  # sentence of (64-2)//2 tokens
                first = s + 1
            else:
                first = 1
            if mode == "mlm":
                assert n == 62  # the segmenter at num_context - 2
            if mode == "lm":
                assert n == 1
            if EOT_ in x:  # a file's end: <|endoftext|> targets itself, the one before none
                e = x.index(EOT_)
                assert y[e] == EOT_ and y[e - 1] == -1 and all(t == 35996 for t in x[e + 1:])
            for t in range(n + 1, 64):  # <|bagoftoken|> stands in x and y alike
                if x[t] == BAG_:
                    assert y[t - 1] == BAG_ and x[t - 1] not in (BAG_, SEG_)
            prefix = n - first
            hits = sum(y[p - 1] >= 0 for p in range(first, n))
            rate = 0.04 if first > 1 else 0.08  # with a next sentence the rate is halved
            assert hits == min(int(prefix * rate), 100), (variant, x)
            masked += hits
            prefix_positions += prefix
        if mode != "lm":
            assert masked > 0 and prefix_positions > 0


def test_released_layout_from_the_command_line(tf, tmp_path):
    """The script path: 8 released processes, only process 0 has a file; its shard holds
    the golden records with i = num_written * 8 + 0."""
    path = released_records_dir()
    pytest.importorskip("encode_swe")
    out = str(tmp_path / "out")
    done = cli("--input_files", os.path.join(path, "input", "single", "*.txt"),
               "--mode", "hybrid", "--num_context", "64", "--layout", "released",
               "--num_process", "8", "--output_dir", out, "--no_progress")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["train-00000-00000.tfrecord", "train-summary.json"]
    ours = [(r["x"], r["y"], r["i"][0], r["num_input"][0])
            for r in read_records(tf, os.path.join(out, "train-00000-00000.tfrecord"))]
    assert ours == golden_records("hybrid_np8", 0)


# ---------------------------------------------------------------- which text is cleaned
def mixed_reference(lines, lengths):
    """The text the default cleaning must give, by its rule written out independently:
    a line is read in the encoding of the part that reaches its first token (prefix:
    as written, LM part: cleaned) and keeps it. `lines`: (text, separator ids) pairs;
    `lengths`: per example (prefix tokens, LM tokens), in order."""
    out, k, line, at = [], 0, None, 0
    for n_prefix, n_lm in lengths:
        for cleaned, n in ((False, n_prefix), (True, n_lm)):
            for _ in range(n):
                if line is None or at == len(line):
                    text, separator = lines[k]
                    line, at, k = ENC.encode(text, clean=cleaned) + separator, 0, k + 1
                out.append(line[at])
                at += 1
    return out


@pytest.mark.parametrize("mode", ["lm", "hybrid", "mlm"])
def test_packing_mixes_raw_prefixes_and_cleaned_lm_text_and_loses_no_token(tf, tmp_path,
                                                                            mode):
    # "z" is what CharEncoder's cleaning changes (into five <UNK>): lines hold it often
    rng = np.random.default_rng(7)
    docs = [["".join(ENC.tokens[t] for t in random_text_tokens(rng, int(rng.integers(1, 30))))
             for _ in range(int(rng.integers(1, 4)))] for _ in range(30)]
    write(tmp_path / "a.txt", "\n\n\n".join("\n".join(d) for d in docs))
    files = mt.files_from_globs(str(tmp_path / "a.txt"))
    results = {}
    for cleaning in ("released", "all", "none"):
        _, shards, out = run(files, tmp_path, out=cleaning, mode=mode, num_context=16,
                             layout="pack", num_mask=0.0, cleaning=cleaning)
        records = read_records(tf, os.path.join(out, *shards))
        parts_of = [text_of(r) for r in records]
        text = [t for prefix, targets in parts_of for t in prefix + targets]
        lengths = [(len(p), len(t)) for p, t in parts_of]
        pads = [r["x"].count(NOT) for r in records]
        assert pads[:-2] == [0] * (len(records) - 2)  # padding only as the file ends
        results[cleaning] = text, lengths
    lines = [(line, [ENC.ids["<BR>"]] if j + 1 < len(d) else [EOT])
             for d in docs for j, line in enumerate(d)]
    text, lengths = results["released"]
    assert text == mixed_reference(lines, lengths)
    z, unk = ENC.ids["z"], ENC.ids["<UNK>"]
    prefixes = [n for n, _ in lengths if n]
    if mode != "lm":  # the default really mixes: raw "z" in prefixes, <UNK> in LM text
        assert z in text and unk in text
    else:
        assert z not in text and unk in text and not prefixes
    assert results["all"][0] == [t for text, sep in lines for t in ENC.encode(text, True) + sep]
    assert results["none"][0] == [t for text, sep in lines for t in ENC.encode(text) + sep]


def test_a_url_is_raw_in_the_prefix_and_cleaned_in_the_lm_part(project_encoder):
    enc, table = project_encoder
    url = enc.token_to_id("<URL>")
    lines = ["詳しくは http://example.com/a を見てください", "http://example.org/b にもあります"]
    first = enc.encode(lines[0])
    assert url not in first and url in enc.encode(lines[0], clean=True)
    # mlm: the prefix is num_context - 3 tokens, the LM part one: here the prefix is
    # exactly the first line and its <BR>, so the LM part enters the second line
    opts = layouts.LayoutOptions(mode="mlm", num_context=len(first) + 4, num_mask=0.0)
    text = mt.line_text([documents.encode_lines_both_ways(lines, enc)], table)
    rng = np.random.default_rng(0)
    examples = list(layouts.examples_from_document(text, table, opts, rng,
                                                   layouts.SentencePool(rng), Counter()))
    one, two = examples[0], examples[1]
    assert list(one.x[1:one.num_input]) == first + [table.br]
    assert one.y[one.num_input] == url  # the second line, entered by the LM part, cleaned
    # ... and keeps that encoding in the next example's prefix
    second = enc.encode(lines[1], clean=True)
    assert list(two.x[1:two.num_input]) == second[1:]
    assert len(examples) == 2 and two.x[two.num_input + 1] == table.eot


def test_lines_cleaning_leaves_alone_are_encoded_once(project_encoder):
    # encode_lines_both_ways cleans the text first and encodes only the lines that
    # changed a second time; the others must encode the same cleaned or not
    enc, _ = project_encoder
    path = os.path.join(os.path.dirname(REPO), "shared", "corpus", "ja-docs-train",
                        "debian-history.txt")
    if not os.path.isfile(path):
        pytest.skip("shared corpus not found: %s" % path)
    changed = 0
    for lines, _ in documents.read_block_documents(path, 0, os.path.getsize(path), Counter()):
        raw, cleaned = documents.encode_lines_both_ways(lines, enc)
        for line, r, c in zip(lines, raw, cleaned):
            assert r == enc.encode(line) and c == enc.encode(line, clean=True)
            changed += r != c
    assert changed  # the file has dates and URLs
