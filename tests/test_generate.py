"""Cached in-graph decoding (model/decoding.py) and run_generate.py.

Expected values come from the recompute-everything path (a plain forward pass
over the whole sequence, bench/baseline_decoding.py), from sampling rules
checked against those full-sequence logits, or from forced output biases
whose effect can be predicted by hand. The model is tiny (hidden 16,
num_contexts 32) with the released vocabulary size.
"""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tiny_model as tm
from bench import baseline_decoding
from model import decoding, runtime, text
from model import devices as devicelib
from model import params as paramslib
from model.errors import UserError

C = 32
BANNED = (tm.NOTTOKEN, tm.SEPARATOR)
# Two prompts of equal length: plain causal context, and the same words as
# the bidirectional prefix ([SOT] + words + [SEG], num_precontext = 1 + 4).
WORDS = [668, 30646, 4486, 100]
PROMPTS = [[tm.STARTOFTEXT, tm.SEGMENTER] + WORDS, [tm.STARTOFTEXT] + WORDS + [tm.SEGMENTER]]
NUM_PRECONTEXT = [0, 5]
SPOUTS = np.array([[0, 1, 0, 0], [0.3, 0.9, 0.1, 0.5]], np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tm.make_model_dir(str(tmp_path_factory.mktemp("gen_model")))


@pytest.fixture(scope="module")
def model_params(model_dir):
    return paramslib.load(model_dir).model


@pytest.fixture(scope="module")
def greedy(model_dir, model_params):
    """A greedy decoder with spout: batch 2, long enough to slide the window."""
    max_generate = 45
    dec = decoding.Decoder(model_params, 2, decoding.prompt_buffer_length(6, max_generate, C),
                           C + 1, decoding.Sampling(top_k=1, banned=BANNED), with_spout=True)
    return dec.restore(model_dir)


@pytest.fixture(scope="module")
def forward_one(model_dir, model_params):
    """Batch-1 forward pass over a whole window, no spout (for logit checks)."""
    return runtime.Forward(model_params, 1, C).restore(model_dir)


def test_cached_greedy_decoding_equals_recomputing_every_token(greedy, model_dir, model_params):
    max_generate = 45  # 6 prompt tokens + 45 > 32 positions: the window slides
    cached = decoding.generate(greedy, PROMPTS, NUM_PRECONTEXT, max_generate, spout=SPOUTS)
    base = baseline_decoding.RecomputeDecoder(model_params, 2, C, with_spout=True)
    expected = base.restore(model_dir).generate(PROMPTS, NUM_PRECONTEXT, max_generate,
                                                banned=BANNED, spout=SPOUTS)
    base.close()
    for got, want in zip(cached, expected):
        assert len(got.tokens) == max_generate
        assert got.tokens == want.tokens
        assert got.sum_logprob == pytest.approx(want.sum_logprob, rel=1e-4)
        assert not set(got.tokens) & set(BANNED)
    # The prefix row and the causal row really are different inputs.
    assert cached[0].tokens != cached[1].tokens


def test_end_token_stops_each_row_where_it_first_appears(greedy):
    full = decoding.generate(greedy, PROMPTS, NUM_PRECONTEXT, 20, spout=SPOUTS)
    end = full[0].tokens[3]
    stopped = decoding.generate(greedy, PROMPTS, NUM_PRECONTEXT, 20, spout=SPOUTS, end_id=end)
    for before, after in zip(full, stopped):
        cut = before.tokens.index(end) + 1 if end in before.tokens else len(before.tokens)
        assert after.tokens == before.tokens[:cut]
        assert after.ended == (end in before.tokens)


@pytest.fixture(scope="module")
def sampling():
    return decoding.Sampling(top_k=5, top_p=0.8, temperature=0.7, banned=BANNED)


@pytest.fixture(scope="module")
def sampler(model_dir, model_params, sampling):
    return decoding.Decoder(model_params, 4, 8, 20, sampling).restore(model_dir)


def sample(decoder, seed):
    results = decoding.generate(decoder, [PROMPTS[0]] * 4, [0] * 4, 20, seed=seed)
    return [r.tokens for r in results], [r.sum_logprob for r in results]


def log_softmax(x):
    x = x.astype(np.float64)
    return x - np.logaddexp.reduce(x)


def test_sampled_tokens_obey_top_k_top_p_and_report_their_logprob(sampler, forward_one, sampling):
    tokens, sums = sample(sampler, seed=11)
    assert len({tuple(t) for t in tokens}) > 1, "four samples should not all coincide"
    n = len(PROMPTS[0])
    for row, sum_logprob in zip(tokens, sums):
        window = np.zeros([1, C], np.int32)
        window[0, :n + len(row)] = PROMPTS[0] + row
        logits = forward_one(window)["logits"][0]
        total = 0.0
        for t, token in enumerate(row):
            step = logits[n - 1 + t].astype(np.float64)
            step[list(BANNED)] = -np.inf
            order = np.argsort(-step, kind="stable")[:sampling.top_k]
            assert token in order, "token outside the top %d" % sampling.top_k
            probs = np.exp(log_softmax(step[order] / sampling.temperature))
            mass_before = probs[:list(order).index(token)].sum()
            assert mass_before < sampling.top_p + 1e-4, "token outside the nucleus"
            total += log_softmax(step)[token]
        assert sum_logprob == pytest.approx(total, rel=1e-4)


def test_same_seed_same_tokens(sampler):
    first, _ = sample(sampler, seed=5)
    assert sample(sampler, seed=5)[0] == first
    assert sample(sampler, seed=6)[0] != first


@pytest.mark.slow  # a 2x2 mesh lowers four copies of every op: ~30 s to build here
def test_same_seed_same_tokens_on_a_2x2_mesh(sampler, model_dir, model_params, sampling):
    first, _ = sample(sampler, seed=5)
    devices = devicelib.local(mesh_shape="2x2")
    mesh_2x2 = decoding.Decoder(model_params, 4, 8, 20, sampling, devices=devices)
    assert sample(mesh_2x2.restore(model_dir), seed=5)[0] == first
    mesh_2x2.close()


def test_stream_sees_every_token_once_and_prints_the_final_text(model_dir, model_params,
                                                                 encoder):
    from model import cli_infer
    out = io.StringIO()
    previous = WORDS[-1]
    printer = cli_infer.StreamPrinter(encoder, previous, out=out)
    seen = []

    def on_emit(step, tokens, active):
        seen.append(int(tokens[0]))
        printer(step, tokens, active)

    dec = decoding.Decoder(model_params, 2, 8, 20, decoding.Sampling(top_k=3, banned=BANNED),
                           devices=devicelib.local(mesh_shape="2x1"), on_emit=on_emit)
    result = decoding.generate(dec.restore(model_dir), [PROMPTS[0]] * 2, [0, 0], 20, seed=3)[0]
    dec.close()
    printer.finish()
    assert seen == result.tokens
    assert out.getvalue() == text.ids_to_text(result.tokens, encoder, previous) + "\n"


def test_text_rules_for_special_tokens(encoder):
    e = encoder
    word, other = 4486, 668  # 天気, 今日
    ids = [word, e.bagoftoken, e.segmenter, other, e.bagoftoken, e.startoftext, e.endoftext, word]
    # <|bagoftoken|> adds the previous kept token twice more (released rule).
    assert text.visible_ids(ids, e) == [word] * 3 + [other] * 3
    assert text.visible_ids([e.bagoftoken, word], e, previous=other) == [other] * 2 + [word]
    assert text.ids_to_text(ids, e) == "天気" * 3 + "今日" * 3


def test_windows_keep_recent_tokens_and_the_surviving_prefix():
    long_prompt = decoding.Windows([list(range(40))], [5], num_contexts=32, prompt_length=32)
    assert long_prompt.rows[0] == (list(range(8, 40)), 0)
    windows = decoding.Windows([list(range(10))], [6], num_contexts=32, prompt_length=16)
    windows.extend(0, range(10, 16))
    assert windows.rows[0] == (list(range(16)), 6)  # fits the buffer: nothing dropped
    windows.extend(0, [16])  # 17 > 16: re-encode the most recent half (C // 2 = 16)
    assert windows.rows[0] == (list(range(1, 17)), 5)


def test_prompt_buffer_covers_the_recent_half_only_when_sliding():
    assert decoding.prompt_buffer_length(5, 10, 32) == 8
    assert decoding.prompt_buffer_length(5, 40, 32) == 16
    assert decoding.prompt_buffer_length(70, 1, 32) == 32
    assert decoding.bucket(1, 32) == 1 and decoding.bucket(17, 32) == 32


# ----------------------------------------------------------------- scripts

def run_script(repo_root, *args):
    return subprocess.run([sys.executable, os.path.join(repo_root, "run_generate.py")] + list(args),
                          capture_output=True, text=True, timeout=300)


def blocks(stdout):
    """The texts between the start/end markers."""
    lines = stdout.split("\n")
    found = []
    while "=====[start generate]=====" in lines:
        start = lines.index("=====[start generate]=====")
        end = lines.index("=====[end generate]=====", start)
        found.append("\n".join(lines[start + 1:end]))
        lines = lines[end + 1:]
    return found


@pytest.fixture(scope="module")
def biased_dir(tmp_path_factory):
    """Output biases make the banned tokens the most likely, then
    <|bagoftoken|>: greedy decoding must emit <|bagoftoken|> every step."""
    return tm.make_model_dir(str(tmp_path_factory.mktemp("gen_biased")), output_bias={
        tm.NOTTOKEN: 60.0, tm.SEPARATOR: 60.0, tm.BAGOFTOKEN: 40.0})


def test_cli_bag_repeats_banned_never_appear_past_num_contexts(repo_root, biased_dir,
                                                                 vocab_flags):
    # "今日の天気" is 今日 / の / 天気: every <|bagoftoken|> adds 天気 twice.
    proc = run_script(repo_root, "--model", biased_dir, "--context", "今日の天気",
                      "--top_k", "1", "--beam_width", "2", "--num_generate", "2", "--max_generate", "40",
                      "--spout", "1", "--use_bfloat16", *vocab_flags)
    assert proc.returncode == 0, proc.stderr
    assert blocks(proc.stdout) == ["天気" * 80] * 2


def test_cli_input_file_writes_json_lines_and_never_overwrites(repo_root, model_dir, vocab_flags,
                                                               tmp_path, encoder):
    contexts = ["今日の天気は", "", "吾輩は猫である"]
    inputs = tmp_path / "contexts.txt"
    inputs.write_text("\n".join(contexts) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    args = ["--model", model_dir, "--input_file", str(inputs), "--output", str(output),
            "--max_generate", "12", "--seed", "7", "--top_k", "8", "--prefix", "--batch_size", "2",
            "--spout", "uniform", *vocab_flags]
    proc = run_script(repo_root, *args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["context"] for r in rows] == contexts
    for r in rows:
        assert set(r) == {"context", "text", "tokens", "mean_logprob"}
        assert 1 <= len(r["tokens"]) <= 12
        assert r["mean_logprob"] < 0
        assert not set(r["tokens"]) & set(BANNED)
        assert r["text"] == text.ids_to_text(r["tokens"], encoder, text.last_visible(
            encoder.encode(r["context"]), encoder))
    before = output.read_bytes()
    again = run_script(repo_root, *args)
    assert again.returncode == 2
    assert "exists" in again.stderr and "Traceback" not in again.stderr
    assert output.read_bytes() == before


def test_cli_vocabulary_mismatch_is_one_line(repo_root, model_dir, shared_dir, tmp_path):
    released, emoji = tm.reference_paths(shared_dir)
    vocab = tmp_path / "vocab.txt"
    with open(released, encoding="utf-8") as f:
        vocab.write_text("ｘｙｚｚｙ\n" + f.read(), encoding="utf-8")
    proc = run_script(repo_root, "--model", model_dir, "--vocabulary", str(vocab),
                      "--emoji", emoji)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "36001" in proc.stderr and "36000" in proc.stderr


def run_main(*argv):
    import run_generate
    args = run_generate.build_parser().parse_args(list(argv))
    return run_generate.main(args)


def copy_model(src, dst, **model_overrides):
    shutil.copytree(src, dst)
    paramslib.save(paramslib.load(dst).with_model(**model_overrides), dst)
    return str(dst)


def test_user_errors_name_the_problem(model_dir, vocab_flags, tmp_path):
    base = ["--model", model_dir, *vocab_flags, "--max_generate", "2"]
    empty = tmp_path / "empty"
    empty.mkdir()
    paramslib.save(paramslib.load(model_dir), str(empty))
    no_spout = copy_model(model_dir, tmp_path / "no_spout", num_spout=0)
    wrong_shape = copy_model(model_dir, tmp_path / "wide", num_hidden=32)
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(3, np.float32))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    cases = [
        (base + ["--input_file", str(latin)], "input file %s is not UTF-8 text" % latin),
        (["--model", str(tmp_path / "missing"), *vocab_flags], "model directory not found"),
        (["--model", str(empty), *vocab_flags], "no 'checkpoint' file"),
        (["--model", no_spout, *vocab_flags, "--spout", "2"], "no spout weights"),
        (base + ["--spout", "4"], "outside 0..3"),
        (base + ["--spout", str(short)], "holds 3 values but the model's num_spout is 4"),
        (base + ["--spout", "sideways"], "--spout must be"),
        (base + ["--top_p", "0"], "--top_p"),
        (base + ["--temperature", "-1"], "--temperature"),
        (base + ["--max_generate", "0"], "--max_generate"),
        (base + ["--tpu_nodes", "node-1"], "TPU inference needs cloud-tpu-client"),
        (["--model", model_dir, "--vocabulary", str(tmp_path / "nope.txt")], "vocabulary file not"),
        (["--model", wrong_shape, *vocab_flags], "shape"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=message.replace(".", r"\.")):
            run_main(*argv)


@pytest.mark.slow  # builds the 2.8B configuration: ~12 GB of memory, minutes
def test_released_size_generates_within_one_and_a_half_times_its_weights():
    from bench import bench_decoding
    result = bench_decoding.scale_in_subprocess()
    assert result["generated"] == 8
    assert result["ratio"] <= 1.5, result
