"""`make demo`: the whole GPTSAN pipeline on a real Japanese corpus, on one CPU machine.

corpus -> records -> training (bounded time) -> generation -> MASK filling ->
vectors -> convert with extension layers -> fine-tune with a one-hot spout on
two classes of documents -> generation with --spout 0 and --spout 1 -> summary.

Every step is cached: a second run reuses the corpus and records and resumes
the model for another DEMO_MINUTES of training.
"""
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from model import cli  # noqa: E402

PROMPTS = ["日本語の文章を", "このコマンドは、", "画像を編集するには"]
MASKED = "ファイルを[MASK]するには、次の[MASK]を実行します。"
# Two kinds of documents for class control: manual pages vs. the GIMP help.
CLASSES = ["manpages-ja.txt", "gimp-help-ja.txt"]


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default=os.path.join(REPO, "data"),
                   help="corpus, records and models go here")
    p.add_argument("--minutes", type=float, default=float(os.environ.get("DEMO_MINUTES", 6)),
                   help="training time of the base model (env DEMO_MINUTES)")
    p.add_argument("--finetune_minutes", type=float, default=1.5,
                   help="fine-tuning time with the spout")
    p.add_argument("--num_contexts", type=int, default=128)
    p.add_argument("--corpus_from", default=None,
                   help="build the corpus from this folder instead of Debian packages")
    return p


def step(title):
    print("\n=== %s" % title, flush=True)


def run(cmd, capture=False):
    """Run one of the project's scripts; stop the demo with its message if it fails."""
    shown = " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd)
    print("$ python " + shown[len(sys.executable) + 1:] if shown.startswith(sys.executable)
          else "$ " + shown, flush=True)
    out = subprocess.run([sys.executable] + cmd, cwd=REPO, text=True,
                         stdout=subprocess.PIPE if capture else None)
    if out.returncode != 0:
        cli.fail("step failed (exit %d): %s" % (out.returncode, " ".join(cmd)))
    return out.stdout


def script(name):
    return os.path.join(REPO, name)


def demo_params(output_dir, num_contexts):
    from model import params as params_lib
    p = params_lib.default_params(num_contexts=num_contexts, num_switch_layers=2, num_hidden=128,
                                  num_header=4, num_experts=4, num_vocabulary=vocab_size())
    p["train_params"].update(output_dir=output_dir, batch_size=8, base_lr=2e-3,
                             num_warmup_steps=50, checkpoint_per_steps=200,
                             checkpoint_per_hours=0.05)
    return p


def vocab_size():
    import encode_swe
    cli.require_file(encode_swe.DEFAULT_VOCAB, "vocabulary", "run tools/build_vocab.py")
    return len(encode_swe.load_encoder())


def have(pattern):
    return bool(glob.glob(pattern))


def main(args):
    from model import params as params_lib
    t_start = time.time()
    work = args.work_dir
    corpus, heldout = os.path.join(work, "corpus"), os.path.join(work, "heldout")
    records, heldout_records = os.path.join(work, "records"), os.path.join(work, "heldout_records")
    class_records = os.path.join(work, "class_records")
    base, tuned = os.path.join(REPO, "runs", "demo"), os.path.join(REPO, "runs", "demo-spout")
    C = args.num_contexts

    step("1. corpus (cached after the first run)")
    cmd = [script("tools/get_corpus.py"), "--output_dir", corpus, "--heldout_dir", heldout]
    if args.corpus_from:
        cmd += ["--from", args.corpus_from]
    run(cmd)

    step("2. training records (hybrid: bidirectional prefix + causal part)")
    if not have(os.path.join(records, "*.tfrecord")):
        run([script("tools/make_tfrecord.py"), "--input_files", os.path.join(corpus, "*.txt"),
             "--output_dir", records, "--mode", "hybrid", "--num_context", str(C),
             "--num_process", "2"])
    if not have(os.path.join(heldout_records, "*.tfrecord")) and have(os.path.join(heldout, "*.txt")):
        run([script("tools/make_tfrecord.py"), "--input_files", os.path.join(heldout, "*.txt"),
             "--output_dir", heldout_records, "--mode", "lm", "--num_context", str(C),
             "--name", "heldout"])

    step("3. train a small Switch Transformer for %.1f minutes (resumes if run before)"
         % args.minutes)
    params_file = os.path.join(work, "demo-parameters.json")
    params_lib.save(demo_params(base, C), params_file)
    train_out = run([script("run_training.py"), "--parameter_file", params_file,
                     "--input_files", os.path.join(records, "*.tfrecord"),
                     "--max_minutes", str(args.minutes)], capture=True)
    train_summary = json.loads(train_out.strip().splitlines()[-1])

    step("4. generation on %d prompts" % len(PROMPTS))
    prompts = os.path.join(work, "demo-prompts.txt")
    with open(prompts, "w", encoding="utf-8") as f:
        f.write("\n".join(PROMPTS) + "\n")
    t = time.time()
    generated = run([script("run_generate.py"), "--model", base, "--input_file", prompts,
                     "--max_generate", "60", "--top_k", "40", "--seed", "1", "--beam_width", "1"],
                    capture=True)
    gen_seconds = time.time() - t
    gen_tokens = 0
    for line in generated.strip().splitlines():
        row = json.loads(line)
        gen_tokens += len(row.get("tokens", []))
        print("%s -> %s" % (row.get("context", ""), row.get("text", "")))

    step("5. MASK filling and a hidden-state vector")
    run([script("run_languagemodel.py"), "--model", base, "--context", MASKED])
    vector_file = os.path.join(work, "demo-vector.json")
    if os.path.exists(vector_file):
        os.unlink(vector_file)
    run([script("run_languagemodel.py"), "--model", base, "--context", MASKED,
         "--pos_vector", "-1", "--output", vector_file])

    step("6. add 2 extension layers and a spout, fine-tune on two classes of documents")
    csv = os.path.join(work, "demo-classes.csv")
    with open(csv, "w", encoding="utf-8") as f:
        f.write("filename,fileid\n")
        for k, name in enumerate(CLASSES):
            f.write("%s,%d\n" % (os.path.join(corpus, name), k))
    if not have(os.path.join(class_records, "*.tfrecord")):
        run([script("tools/make_tfrecord.py"), "--input_csv", csv, "--output_dir",
             class_records, "--mode", "lm", "--num_context", str(C), "--name", "classes"])
    if not os.path.isdir(tuned):
        run([script("tools/run_modelconvert.py"), "--checkpoint", base, "--output", tuned,
             "--add_extra_stage", "2", "--num_spout", "2"])
    tune_out = run([script("run_finetune.py"), "--model", tuned, "--input_files",
                    os.path.join(class_records, "*.tfrecord"), "--spout_vector", "onehot",
                    "--max_minutes", str(args.finetune_minutes)], capture=True)
    tune_summary = json.loads(tune_out.strip().splitlines()[-1])
    for spout in ("0", "1"):
        print("--spout %s (%s style):" % (spout, CLASSES[int(spout)].split(".")[0]))
        run([script("run_generate.py"), "--model", tuned, "--context", "", "--spout", spout,
             "--max_generate", "60", "--top_k", "40", "--seed", "1", "--beam_width", "1"])

    step("summary")
    from model import evaluate
    lines = [("base model", base),
             ("fine-tuned model (spout)", tuned),
             ("training steps", train_summary["step"]),
             ("final training loss (mean of last 10 steps)", "%.3f" % train_summary["mean_loss_last_10"]
              if train_summary.get("mean_loss_last_10") is not None else "n/a")]
    if have(os.path.join(heldout_records, "*.tfrecord")):
        loss = evaluate.heldout_loss(base, os.path.join(heldout_records, "*.tfrecord"))
        lines.append(("held-out loss (Debian policy text)", "%.3f" % loss))
    lines += [("training tokens/s", "%.0f" % train_summary["tokens_per_second"]),
              ("generation tokens/s (incl. start-up)", "%.1f" % (gen_tokens / max(gen_seconds, 1e-9))),
              ("fine-tuning final loss", "%.3f" % tune_summary["mean_loss_last_10"]
               if tune_summary.get("mean_loss_last_10") is not None else "n/a"),
              ("vector file", vector_file),
              ("demo time", "%.1f min" % ((time.time() - t_start) / 60))]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print("%-*s  %s" % (width, key, value))
    return 0


if __name__ == "__main__":
    cli.run(main, build_parser())
