"""run_languagemodel.py: MASK filling, scores, hidden-state vectors, errors.

Expected outputs are assembled here from the released script's rules — input
[<|startoftext|>] + tokens + [<|endoftext|>], every context token in the
prefix, argmax at masks, copy elsewhere, score = logit of the next input
token — over logits from a plain runtime.Forward pass.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny_model as tm
from model import params as paramslib
from model import runtime
from model.errors import UserError

CONTEXT = "今日の[MASK]は晴れ[MASK]"
# Same as CONTEXT except the last word: a bidirectional prefix lets the first
# positions see it.
OTHER = "今日の[MASK]は晴れ[MASK]雨"
LAYERS_TIMES_HIDDEN = 3 * 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tm.make_model_dir(str(tmp_path_factory.mktemp("lm_model")), seed=3)


def run_main(*argv):
    import run_languagemodel
    return run_languagemodel.main(run_languagemodel.build_parser().parse_args(list(argv)))


def model_input(text, enc):
    tokens = []
    for k, piece in enumerate(text.split("[MASK]")):
        tokens += ([enc.inputmask] if k else []) + enc.encode(piece)
    return tokens, [enc.startoftext] + tokens


@pytest.fixture(scope="module")
def reference(model_dir, encoder):
    """Logits and per-position vectors of CONTEXT from a plain forward pass."""
    tokens, ids = model_input(CONTEXT, encoder)
    params = paramslib.load(model_dir).model
    # run_languagemodel drops tokens over an expert's capacity by default, as released.
    forward = runtime.Forward(params, 1, len(ids), with_pos_vector=True,
                              token_drop=True).restore(model_dir)

    def at(pos):
        return forward([ids], num_precontext=[len(tokens)], pos_index=[pos])

    out = at(len(ids) - 1)
    return {"tokens": tokens, "ids": ids, "logits": out["logits"][0], "vector": out["pos_vector"][0],
            "vector_at": lambda pos: at(pos)["pos_vector"][0]}


def expected_output(reference, enc):
    # Position i predicts input token i + 1 (the released rule).
    tokens, logits = reference["tokens"], reference["logits"]
    ids = [int(logits[i].argmax()) if t == enc.inputmask else t for i, t in enumerate(tokens)]
    return ids, [float(logits[i, t]) for i, t in enumerate(tokens)]


def test_mask_filling_scores_vector_and_json_layout(model_dir, vocab_flags, encoder, reference,
                                                    tmp_path, capsys):
    output = tmp_path / "result.json"
    run_main("--model", model_dir, "--context", CONTEXT, "--output", str(output), *vocab_flags)
    result = json.loads(output.read_text(encoding="utf-8"))
    assert set(result) == {"output_text", "output_tokens", "output_scores", "output_vector",
                           "input_text", "input_tokens", "output_spellings"}
    assert result["input_tokens"] == reference["ids"] and result["input_text"] == CONTEXT
    tokens, scores = expected_output(reference, encoder)
    assert encoder.inputmask in reference["tokens"]
    assert result["output_tokens"] == tokens
    np.testing.assert_allclose(result["output_scores"], scores, rtol=1e-5, atol=1e-5)
    assert len(result["output_vector"]) == LAYERS_TIMES_HIDDEN
    np.testing.assert_allclose(result["output_vector"], reference["vector"], rtol=1e-5, atol=1e-5)
    printed = capsys.readouterr().out.split("\n")
    sections = ["{OUTPUT TEXTS}", "{OUTPUT TOKENS}", "{OUTPUT SCORES}", "{OUTPUT VECTOR SHAPE}"]
    assert [line for line in printed if line in sections] == sections
    assert printed[printed.index("{OUTPUT TEXTS}") + 1] == result["output_text"]
    assert printed[printed.index("{OUTPUT VECTOR SHAPE}") + 1] == "(%d,)" % LAYERS_TIMES_HIDDEN


def test_input_file_batches_match_single_runs_and_see_both_sides(model_dir, vocab_flags, encoder,
                                                                 reference, tmp_path):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("\n".join([CONTEXT, OTHER, "吾輩は猫である"]) + "\n", encoding="utf-8")
    output = tmp_path / "vectors.jsonl"
    run_main("--model", model_dir, "--input_file", str(inputs), "--output", str(output),
             "--batch_size", "2", "--pos_vector", "1", "--no_progress", *vocab_flags)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["input_text"] for r in rows] == [CONTEXT, OTHER, "吾輩は猫である"]
    tokens, scores = expected_output(reference, encoder)
    assert rows[0]["output_tokens"] == tokens
    np.testing.assert_allclose(rows[0]["output_scores"], scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows[0]["output_vector"], reference["vector_at"](1),
                               rtol=1e-5, atol=1e-5)
    # Position 0 predicts the first word from <|startoftext|>: with every
    # context token in the prefix it depends on the last word too.
    assert abs(rows[0]["output_scores"][0] - rows[1]["output_scores"][0]) > 1e-4
    assert all(len(r["output_vector"]) == LAYERS_TIMES_HIDDEN for r in rows)


def test_pos_vector_counts_positions_of_the_full_input(encoder):
    import argparse
    from model import cli_infer, text
    tokens, ids = model_input(CONTEXT, encoder)
    n = len(ids)

    def index(pos):
        return text.Query(CONTEXT, encoder, "[MASK]", pos, 32).pos_index

    assert index(-1) == n - 1 and ids[n - 1] == tokens[-1]
    assert index(0) == 0 and index(-n) == 0 and index(n - 1) == n - 1
    for outside in (n, -n - 1):
        with pytest.raises(ValueError, match="outside the input"):
            index(outside)
        # The command-line layer names the flag.
        args = argparse.Namespace(mask="[MASK]", pos_vector=outside)
        with pytest.raises(UserError, match="^--pos_vector .* outside the input"):
            cli_infer.make_queries(args, paramslib.default_params(num_contexts=32).model,
                                   encoder, [CONTEXT])


def test_user_errors_name_the_problem(model_dir, vocab_flags, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    paramslib.save(paramslib.load(model_dir), str(empty))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join("t%d" % i for i in range(100)), encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    base = ["--model", model_dir, *vocab_flags]
    cases = [
        (base + ["--input_file", str(latin)], "input file %s is not UTF-8 text" % latin),
        (base + ["--context", "あ", "--pos_vector", "3"], "outside the input"),
        (base + ["--context", "あ", "--mask", ""], "--mask must not be empty"),
        (base, "exactly one of --context and --input_file"),
        (base + ["--input_file", str(tmp_path / "none.txt")], "input file not found"),
        (["--model", str(empty), "--context", "あ", *vocab_flags], "no 'checkpoint' file"),
        (["--model", model_dir, "--context", "あ", "--vocabulary", str(vocab)],
         "has 100 ids but the model has num_vocabulary 36000"),
        (base + ["--context", "あ", "--tpu_nodes", "v3-8"], "TPU inference needs"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=message):
            run_main(*argv)


def test_cli_refuses_to_overwrite_output(repo_root, model_dir, vocab_flags, tmp_path):
    output = tmp_path / "keep.json"
    output.write_text("precious\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "run_languagemodel.py"),
                           "--model", model_dir, "--context", "あ", "--output", str(output),
                           *vocab_flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "exists" in proc.stderr
    assert output.read_text(encoding="utf-8") == "precious\n"
