"""run_languagemodel against outputs recorded from the RELEASED scripts
(../shared/reference/released/languagemodel.jsonl, see its README)."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest


TOL = 1e-4


@pytest.fixture(scope="module")
def released(shared_dir):
    path = os.path.join(shared_dir, "reference", "released")
    if not os.path.isfile(os.path.join(path, "languagemodel.jsonl")):
        pytest.skip("released golden data not found: %s" % path)
    return path


@pytest.fixture(scope="module")
def cases(released):
    with open(os.path.join(released, "languagemodel.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def model_dirs(released, tmp_path_factory):
    """train_mode -> a model directory: the released one ("lm") and a copy with
    the hybrid parameters.json."""
    hybrid = str(tmp_path_factory.mktemp("released_hybrid") / "model")
    shutil.copytree(os.path.join(released, "model"), hybrid)
    os.chmod(os.path.join(hybrid, "parameters.json"), 0o644)
    shutil.copyfile(os.path.join(released, "model-hybrid.parameters.json"),
                    os.path.join(hybrid, "parameters.json"))
    return {"lm": os.path.join(released, "model"), "hybrid": hybrid}


def run_cases(cases, model_dirs, train_mode, no_token_drop):
    """Each case of train_mode through run_languagemodel's Query/Model, one graph per length."""
    import run_languagemodel as rl
    from model import cli_infer, text
    mine = [c for c in cases if c["train_mode"] == train_mode]
    model_dir = model_dirs[train_mode]
    parser = rl.build_parser()
    args = parser.parse_args(["--model", model_dir, "--context", "x"]
                             + (["--no_token_drop"] if no_token_drop else []))
    mp = cli_infer.load_model_params(model_dir)
    enc = cli_infer.load_vocabulary(args.vocabulary, args.emoji, mp.num_vocabulary)
    queries = [text.Query(c["context"], enc, c["mask"], c["pos_vector"], mp.num_contexts,
                        mp.fills_masks) for c in mine]
    results = [None] * len(mine)
    by_length = {}
    for k, q in enumerate(queries):
        by_length.setdefault(len(q.ids), []).append(k)
    for length, rows in by_length.items():
        model = cli_infer.Scorer(args, mp, len(rows), length)
        for k, r in zip(rows, model.run([queries[k] for k in rows], enc)):
            results[k] = r
    return mine, queries, results


def compare(mine, queries, results, suffix):
    checked = 0
    for case, q, r in zip(mine, queries, results):
        if case["rc"] == 0:
            assert r["input_tokens"] == case["input_tokens"], case["context"]
            assert r["input_text"] == case["input_text"]
        else:
            assert r["input_tokens"] == case["input_tokens_computed"]
        if case["rc"] != 0 and not suffix:
            continue  # the released script crashed: only the no-drop network values exist
        assert r["output_tokens"] == case["output_tokens" + suffix], case["context"]
        assert np.allclose(r["output_scores"], case["output_scores" + suffix], atol=TOL, rtol=0)
        assert np.allclose(r["output_vector"], case["output_vector" + suffix], atol=TOL, rtol=0)
        if case["rc"] == 0:
            assert q.num_precontext == case["derived"]["num_precontext"]
            assert q.pos_index == case["derived"]["pos_index"]
        checked += 1
    assert checked


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", ["hybrid", "lm"])
def test_languagemodel_cases_equal_released_with_token_dropping(cases, model_dirs, train_mode):
    compare(*run_cases(cases, model_dirs, train_mode, no_token_drop=False), suffix="")


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", ["hybrid", "lm"])
def test_languagemodel_cases_equal_released_network_without_dropping(cases, model_dirs,
                                                                      train_mode):
    compare(*run_cases(cases, model_dirs, train_mode, no_token_drop=True), suffix="_nodrop")


def test_printed_sections_and_json_keys_equal_released(cases, model_dirs, tmp_path, capsys):
    import run_languagemodel as rl
    case = cases[0]
    assert case["train_mode"] == "hybrid" and case["rc"] == 0
    out = str(tmp_path / "out.json")
    rl.main(rl.build_parser().parse_args(
        ["--model", model_dirs["hybrid"], "--context", case["context"], "--output", out]))
    printed = capsys.readouterr().out
    expected = case["stdout"].split("\n", 1)[1]  # after the released TPU/GPU line
    # Same sections, same format; numbers may differ in the last float digits.
    assert [line for line in printed.splitlines() if line.startswith("{")] == \
        [line for line in expected.splitlines() if line.startswith("{")]
    got = dict(zip(printed.splitlines()[0::2], printed.splitlines()[1::2]))
    assert got["{OUTPUT TEXTS}"] == case["printed"]["{OUTPUT TEXTS}"].strip("\n")
    assert got["{OUTPUT TOKENS}"] == case["printed"]["{OUTPUT TOKENS}"].strip("\n")
    assert got["{OUTPUT VECTOR SHAPE}"] == case["printed"]["{OUTPUT VECTOR SHAPE}"].strip("\n")
    assert np.allclose(json.loads(got["{OUTPUT SCORES}"]), case["output_scores"], atol=TOL)
    with open(out, encoding="utf-8") as f:
        written = json.load(f)
    for key in ("output_text", "output_tokens", "output_scores", "output_vector",
                "input_text", "input_tokens"):
        assert key in written
    assert written["output_tokens"] == case["output_tokens"]


def test_lm_model_notes_mask_is_text_and_long_text_is_cut(cases, model_dirs, capsys):
    import run_languagemodel as rl
    long_case = cases[-1]
    assert long_case["rc"] != 0
    rl.main(rl.build_parser().parse_args(
        ["--model", model_dirs["lm"], "--context", "[MASK]" + long_case["context"]]))
    err = capsys.readouterr().err
    assert 'train_mode "hybrid" enables' in err
    assert "cut to the first 64" in err


@pytest.mark.parametrize("token_drop", [True, False])
def test_numpy_reference_with_capacity_rule_equals_released(released, cases, token_drop):
    """The independent NumPy forward on the released model's weights gives the
    released scores and vectors: as released with the capacity rule, the no-drop
    values without it (so the rule is what separates them)."""
    import numpy_gptsan as ref
    from model import params as pl
    model_dir = os.path.join(released, "model")
    mp = pl.load(model_dir).model
    import tensorflow as tf
    weights = ref.load_weights(tf.train.latest_checkpoint(model_dir), mp)
    suffix = "" if token_drop else "_nodrop"
    checked = differs = 0
    for case in cases:
        if case["rc"] != 0 or not case["output_scores"]:
            continue
        ids = case["input_tokens"][:mp.num_contexts]
        d = case["derived"]
        out = ref.forward(weights, mp, [ids], num_precontext=[d["num_precontext"]],
                          pos_index=[d["pos_index"]], token_drop=token_drop)
        n = len(case["output_scores"])
        nxt = case["input_tokens"][1:n + 1]
        scores = out["logits"][0, np.arange(n), nxt]
        assert np.allclose(scores, case["output_scores" + suffix], atol=TOL), case["context"]
        assert np.allclose(out["pos_vector"][0], case["output_vector" + suffix], atol=TOL)
        differs += not np.allclose(case["output_scores"], case["output_scores_nodrop"], atol=TOL)
        checked += 1
    assert checked > 20 and differs > 5


# --- run_generate -------------------------------------------------------------

def released_lines(released, name):
    with open(os.path.join(released, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_greedy_generation_equals_released_for_every_spout_case(released, tmp_path):
    """--top_k 1 --beam_width 1 gives the released greedy ids (EOT if argmax is
    EOT, else argmax without NOT and SEP) and the printed text (no byte tokens
    are involved in these cases)."""
    import run_generate as rg
    cases = released_lines(released, "generate.jsonl")
    groups = {}
    for c in cases:
        groups.setdefault((c["model"], c["spout"]), []).append(c)
    for (model, spout), group in sorted(groups.items()):
        inputs = tmp_path / ("%s_%s.txt" % (model, spout))
        inputs.write_text("\n".join(c["context"] for c in group) + "\n", encoding="utf-8")
        output = tmp_path / ("%s_%s.jsonl" % (model, spout))
        rg.main(rg.build_parser().parse_args([
            "--model", os.path.join(released, model), "--input_file", str(inputs),
            "--output", str(output), "--top_k", "1", "--beam_width", "1",
            "--max_generate", str(group[0]["max_generate"]), "--spout", spout,
            "--no_progress", "--seed", "1"]))
        rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
        for c, r in zip(group, rows):
            assert r["tokens"] == c["generated_ids"], (model, spout, c["context"])
            assert r["text"] == c["printed_text"], (model, spout, c["context"])


def test_text_clean_up_equals_released_except_byte_tokens(released, encoder):
    """<|bagoftoken|> adds the previous kept token twice more, as released; the
    released script also dropped every id >= <|emoji12|> (byte tokens and
    emoji12), which this project keeps."""
    from model import text
    enc = encoder
    cases = released_lines(released, "generate_cleanup.jsonl")
    last_token = cases[0]["constants"]["LAST_TOKEN"]
    for c in cases:
        ours = text.visible_ids(c["generated_ids"], enc)
        assert [i for i in ours if i < last_token] == c["ids_after_cleanup"]
        assert any(i >= last_token and i not in text.control_ids(enc)
                   for i in ours) or ours == c["ids_after_cleanup"]


# --- a directory written by the released converter ----------------------------------

@pytest.mark.slow
def test_released_converted_directory_generates_and_finetunes_frozen(released, tmp_path):
    """converted/ (checkpoint named `model`, transformer-params.json, the
    converter's Adam slots) runs with run_generate and fine-tunes with
    run_finetune.py, which freezes the weights in transformer-params.json:
    they stay bit-identical while the added layers train."""
    import contextlib
    import io
    import run_finetune
    import run_generate as rg
    from model.compat import tf
    src = os.path.join(released, "converted")
    work = str(tmp_path / "converted")
    shutil.copytree(src, work)
    for name in os.listdir(work):
        os.chmod(os.path.join(work, name), 0o644)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rg.main(rg.build_parser().parse_args(
            ["--model", work, "--context", "GIMPは", "--max_generate", "3", "--top_k", "1",
             "--beam_width", "1"]))
    assert "generate" in out.getvalue()
    records = os.path.join(released, "records", "hybrid", "hybrid_0000.tfrecord")
    output_dir = str(tmp_path / "tuned")
    args = run_finetune.build_parser().parse_args(
        ["--model", work, "--input_files", records, "--output_dir", output_dir,
         "--max_training_step", "3", "--batch_size", "8", "--spout_vector", "uniform",
         "--no_progress"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_finetune.main(args) == 0
    with open(os.path.join(src, "transformer-params.json")) as f:
        copied = [n for n in json.load(f)
                  if not n.endswith(("/adam_m", "/adam_v")) and n != "global_step"]
    before = tf.train.load_checkpoint(os.path.join(src, "model"))
    after = tf.train.load_checkpoint(tf.train.latest_checkpoint(output_dir))
    assert copied
    for name in copied:
        assert np.array_equal(after.get_tensor(name), before.get_tensor(name)), name
    assert not np.array_equal(after.get_tensor("model/ln2/g"), before.get_tensor("model/ln2/g"))
