"""No run may lose a trained model, hang, or end in a traceback: damaged
checkpoints, damaged records, concurrent runs and bad flags."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests import faults
from tests.test_training import make_trainer, tiny_params, write_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    write_records(str(d / "a.tfrecord"))
    return str(d / "*.tfrecord")


def train_to(records, out, steps, **kw):
    trainer = make_trainer(records, out, steps, **kw)
    summary = trainer.run()
    trainer.close()
    return summary


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def data_shard(out, step):
    return [os.path.join(out, n) for n in os.listdir(out)
            if n.startswith("model.ckpt-%d.data" % step)][0]


@pytest.mark.parametrize("damage", [faults.remove_index_file, faults.garbage_index_file,
                                    faults.index_names_deleted])
def test_damaged_checkpoint_index_still_resumes_the_trained_checkpoint(records, tmp_path, damage):
    train_to(records, tmp_path, 6)
    before = sha(data_shard(str(tmp_path), 6))
    damage(str(tmp_path))
    trainer = make_trainer(records, tmp_path, 8)
    assert trainer.resumed_from.endswith("model.ckpt-6") and trainer.step() == 6
    trainer.run()
    trainer.close()
    assert sha(data_shard(str(tmp_path), 6)) == before


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(records, tmp_path, capfd):
    p = tiny_params(str(tmp_path)).with_train(checkpoint_per_steps=3)
    train_to(records, tmp_path, 6, params=p)
    faults.truncate_data(str(tmp_path / "model.ckpt-6"), keep=0.5)
    trainer = make_trainer(records, tmp_path, 6, params=p)
    assert trainer.resumed_from.endswith("model.ckpt-3") and trainer.step() == 3
    trainer.close()
    err = capfd.readouterr().err
    assert "model.ckpt-6" in err and "resuming from" in err


def test_training_errors_write_the_options_as_flags_on_the_command_line():
    from model import cli_train, train
    error = train.TrainingError("the input pipeline yielded no batch: check input_files "
                                "(saved %(path)s at step %(step)d)",
                                path="/runs/force/input_files/model.ckpt-3", step=3)
    assert str(error) == ("the input pipeline yielded no batch: check input_files "
                          "(saved /runs/force/input_files/model.ckpt-3 at step 3)")
    # Only the advice is rewritten, never a path that happens to hold an option's name.
    assert cli_train.training_error_as_flags(error) == (
        "the input pipeline yielded no batch: check --input_files "
        "(saved /runs/force/input_files/model.ckpt-3 at step 3)")


@pytest.mark.parametrize("damage", ["empty_data", "truncated_index"])
def test_no_restorable_checkpoint_is_refused_without_force(records, tmp_path, damage):
    from model.errors import UserError
    train_to(records, tmp_path, 3)
    prefix = str(tmp_path / "model.ckpt-3")
    if damage == "empty_data":
        faults.truncate_data(prefix, keep=0)
    else:
        faults.truncate_index(prefix, keep=0.5)
    before = sha(prefix + ".index")
    with pytest.raises(UserError, match="force=True") as refused:
        make_trainer(records, tmp_path, 3)
    from model import cli_train
    assert cli_train.training_error_as_flags(refused.value) == (
        "%s holds checkpoint files but none can be restored; repair or move them, or pass "
        "--force to start from scratch there" % tmp_path)
    assert sha(prefix + ".index") == before
    trainer = make_trainer(records, tmp_path, 3, force=True)
    assert trainer.step() == 0
    trainer.close()


def test_max_to_keep_holds_across_restarts(records, tmp_path):
    p = tiny_params(str(tmp_path)).with_train(checkpoint_per_steps=2, max_to_keep_save=2)
    for steps in (4, 8, 12):
        train_to(records, tmp_path, steps, params=p)
    kept = sorted(n for n in os.listdir(tmp_path) if n.endswith(".index"))
    assert kept == ["model.ckpt-10.index", "model.ckpt-12.index"]


def test_second_trainer_on_the_same_output_dir_is_refused(records, tmp_path):
    from model import checkpoints
    from model.errors import UserError
    lock = tmp_path / checkpoints.LOCK_NAME
    import socket
    # A live process on this host (the parent of this test) holds the directory.
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(UserError, match="pid %d" % os.getppid()):
        make_trainer(records, tmp_path, 2)
    # A dead holder's lock is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    trainer = make_trainer(records, tmp_path, 2)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    trainer.close()
    assert not lock.exists()


def test_corrupt_records_mid_run_save_a_checkpoint_then_fail(tmp_path):
    from model.errors import UserError
    rec = tmp_path / "r"
    rec.mkdir()
    path = write_records(str(rec / "a.tfrecord"), n=64)
    faults.corrupt_record(path, offset=os.path.getsize(path) - 40)
    out = tmp_path / "out"
    trainer = make_trainer(str(rec / "*.tfrecord"), out, 1000)
    with pytest.raises(UserError, match="corrupt training records.*saved"):
        trainer.run()
    trainer.close()
    assert any(n.endswith(".index") for n in os.listdir(out))


def run_training(args, tmp_path):
    params = tmp_path / "parameters.json"
    from model import params as params_lib
    params_lib.save(tiny_params(""), str(params))
    cmd = [sys.executable, os.path.join(REPO, "run_training.py"), "--parameter_file", str(params),
           "--no_progress"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("flag,message", [
    (["--mesh_shape", "banana"], "--mesh_shape"),
    (["--cpu_devices", "-1"], "--cpu_devices"),
    (["--max_training_step", "-5"], "--max_training_step"),
])
def test_bad_training_flags_are_one_line(records, tmp_path, flag, message):
    r = run_training(["--input_files", records, "--output_dir", str(tmp_path / "o")] + flag,
                     tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_inputs_and_output_dir_are_one_line(records, tmp_path):
    empty = faults.empty_record_file(str(tmp_path / "empty.tfrecord"))
    r = run_training(["--input_files", empty, "--output_dir", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2 and "holds no records" in r.stderr, r.stderr
    r = run_training(["--input_files", str(tmp_path), "--output_dir", str(tmp_path / "o")],
                     tmp_path)
    assert r.returncode == 2 and "directory" in r.stderr, r.stderr
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_training(["--input_files", records, "--output_dir", str(f)], tmp_path)
    assert r.returncode == 2 and "is a file" in r.stderr, r.stderr


def test_mixed_record_lengths_are_refused_up_front(tmp_path):
    from model import inputs
    from model.errors import UserError
    from tests import test_training
    write_records(str(tmp_path / "a.tfrecord"))
    old = test_training.C
    try:
        test_training.C = 8
        write_records(str(tmp_path / "b.tfrecord"))
    finally:
        test_training.C = old
    with pytest.raises(UserError, match="b.tfrecord holds examples of 8 tokens"):
        inputs.check_record_files(str(tmp_path / "*.tfrecord"), 16)


STUCK = """
import sys, time
sys.path.insert(0, %(repo)r)
from tests.test_training import make_trainer, write_records
from model import train
train.StopFlag.GRACE_SECONDS = 2.0
write_records(%(rec)r)
trainer = make_trainer(%(rec)r, %(out)r, 10)
run = trainer.session.run
def stuck(fetches, *args, **kwargs):
    # a training step that never returns, like a read from a source that never answers
    if isinstance(fetches, list) and trainer.ops.train_op in fetches:
        time.sleep(3600)
    return run(fetches, *args, **kwargs)
trainer.session.run = stuck
init = train.StopFlag.__init__
def ready(self):   # say "running" only once the loop's signal handling is in place
    init(self)
    print("running", flush=True)
train.StopFlag.__init__ = ready
trainer.run()
"""


@pytest.mark.slow
def test_sigterm_stops_a_run_whose_step_is_stuck(tmp_path):
    import signal
    import time
    script = STUCK % {"repo": REPO, "rec": str(tmp_path / "empty.tfrecord"),
                      "out": str(tmp_path / "out")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "running"
    time.sleep(3)
    assert proc.poll() is None   # stuck inside the step
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("SIGTERM did not stop a stuck run within 30 s")
    assert time.time() - t0 < 15
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by signal" in proc.stderr.read()


def test_modelconvert_force_never_deletes_the_source_or_foreign_files(tmp_path):
    from model import convert
    from model.errors import UserError
    from tests.tiny_model import make_model_dir, tiny_params as model_params
    parent = tmp_path / "parent"
    src = make_model_dir(str(parent / "src"), model_params(num_vocabulary=64))
    before = sorted(os.listdir(src))
    with pytest.raises(UserError, match="contains the source"):
        convert.convert(src, str(parent), add_layers=1, force=True, progress=False)
    assert sorted(os.listdir(src)) == before
    old_umask = os.umask(0o022)
    try:
        summary_dst = tmp_path / "dst"
        convert.convert(src, str(summary_dst), add_layers=1, progress=False)
    finally:
        os.umask(old_umask)
    assert os.stat(summary_dst).st_mode & 0o777 == 0o755


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_temperature_must_be_finite_and_positive(value):
    import argparse
    from model import cli_infer, decoding
    from model.errors import UserError
    with pytest.raises(ValueError, match="^temperature must be a finite number"):
        decoding.Sampling(temperature=float(value))
    # The command-line layer names the flag.
    args = argparse.Namespace(top_k=120, top_p=1.0, temperature=float(value))
    enc = argparse.Namespace(nottoken=1, separator=2, endoftext=3)
    with pytest.raises(UserError, match="^--temperature must be a finite number"):
        cli_infer.make_sampling(args, enc)


@pytest.mark.parametrize("keep", [0, 0.5])
def test_truncated_data_shard_is_one_error_in_inference_and_conversion(tmp_path, keep):
    import glob
    from model import convert, runtime
    from model import devices as devicelib
    from model.errors import UserError
    from tests.tiny_model import make_model_dir, tiny_params as model_params
    p = model_params(num_vocabulary=64)
    src = make_model_dir(str(tmp_path / "src"), p)
    faults.truncate(sorted(glob.glob(os.path.join(src, "model.ckpt.data-*")))[0], keep)
    forward = runtime.Forward(p.model, batch_size=1, length=4,
                              devices=devicelib.local())
    with pytest.raises(UserError, match="damaged|cannot read"):
        forward.restore(src)
    forward.close()
    with pytest.raises(UserError, match="damaged|cannot read"):
        convert.convert(src, str(tmp_path / "dst"), add_layers=1, progress=False)
    assert not os.path.exists(tmp_path / "dst")


def test_incomplete_or_foreign_vocabulary_records_are_refused(tmp_path):
    import hashlib
    from model.errors import UserError
    from model.cli_train import check_record_summaries
    mp = tiny_params("").model
    rec = tmp_path / "rec"
    rec.mkdir()
    files = [write_records(str(rec / "train_0.tfrecord"))]
    vocab = tmp_path / "v.txt"
    vocab.write_text("\n".join("t%d" % k for k in range(mp.num_vocabulary)))
    good = {"size": mp.num_vocabulary, "sha256": hashlib.sha256(vocab.read_bytes()).hexdigest()}
    summary = rec / "train-summary.json"
    summary.write_text(json.dumps({"complete": False, "vocabulary": good}))
    with pytest.raises(UserError, match="--allow_incomplete_records"):
        check_record_summaries(files, mp, str(vocab))
    check_record_summaries(files, mp, str(vocab), allow_incomplete=True)
    summary.write_text(json.dumps({"complete": True, "vocabulary": dict(good, size=36000)}))
    with pytest.raises(UserError, match="36000"):
        check_record_summaries(files, mp)
    summary.write_text(json.dumps({"complete": True, "vocabulary": dict(good, sha256="0" * 64)}))
    with pytest.raises(UserError, match="sha256"):
        check_record_summaries(files, mp, str(vocab))
    summary.write_text(json.dumps({"complete": True, "vocabulary": good}))
    check_record_summaries(files, mp, str(vocab))


def test_output_and_input_paths_are_checked_before_work(tmp_path):
    from model import cli
    from model.errors import UserError
    with pytest.raises(UserError, match="is a directory"):
        cli.check_output_file(str(tmp_path), force=True)
    with pytest.raises(UserError, match="is a directory"):
        cli.require_file(str(tmp_path), "input file")
    cli.check_output_file(str(tmp_path / "new" / "out.jsonl"), force=False)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UserError, match="permission denied"):
                cli.check_output_file(str(locked / "out.jsonl"), force=False)
        finally:
            locked.chmod(0o700)


def test_encode_output_in_a_missing_directory_and_non_utf8_stdin(tmp_path):
    from tests.test_encoder import Tiny
    tiny = Tiny(tmp_path, ["今日", "の", "天気", "a", "b"])
    files = ["--vocabulary", tiny.vocab, "--emoji", tiny.emoji]
    script = os.path.join(REPO, "encode_swe.py")
    out = tmp_path / "new" / "dir" / "ids.jsonl"
    done = subprocess.run([sys.executable, script, "encode", *files, "--output", str(out)],
                          input="今日".encode(), capture_output=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["ids"]
    bad = subprocess.run([sys.executable, script, "encode", *files], input=b"a\xff\xfeb",
                         capture_output=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and b"UTF-8" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_get_corpus_output_dir_that_is_a_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("日本語の文章です。\n", encoding="utf-8")
    f = tmp_path / "afile"
    f.write_text("x")
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "get_corpus.py"),
                           "--from", str(src), "--output_dir", str(f),
                           "--cache_dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "is a file" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_vocabulary_with_a_trailing_newline_is_named_as_such(tmp_path):
    from model.errors import UserError
    from model.cli_train import check_vocabulary
    vocab = tmp_path / "v.txt"
    vocab.write_text("".join("t%d\n" % k for k in range(40)))
    with pytest.raises(UserError, match="must not end with a newline"):
        check_vocabulary(str(vocab), tiny_params("").with_model(num_vocabulary=40).model)
    from model import cli_infer      # the inference scripts' loader says the same
    with pytest.raises(UserError, match="must not end with a newline"):
        cli_infer.load_vocabulary(str(vocab), os.path.join(REPO, "emoji.json"), 40)


def test_broken_emoji_table_is_named_as_the_emoji_table(tmp_path):
    from model import cli_infer
    from model.errors import UserError
    bad = tmp_path / "emoji.json"
    bad.write_text("{oops")
    vocab = os.path.join(REPO, "ja-swe36k.txt")
    with pytest.raises(UserError) as e:
        cli_infer.load_vocabulary(vocab, str(bad), 36000)
    assert str(e.value).startswith("cannot load the emoji table %s" % bad)


def test_damaged_ignore_params_file_is_named_when_the_flag_was_not_given(tmp_path):
    from model.errors import UserError
    from model.cli_train import parse_frozen
    damaged = tmp_path / "ignore-params.json"
    damaged.write_text('["model/wte", ')
    with pytest.raises(UserError) as e:
        parse_frozen(str(damaged), source=str(damaged))
    assert str(damaged) in str(e.value) and "is not a JSON list" in str(e.value)
    with pytest.raises(UserError, match="^--ignore_parameters must be a JSON list"):
        parse_frozen(str(damaged))      # given by the flag: the flag is named
    assert parse_frozen('["a", "b"]') == ["a", "b"]


def test_permission_errors_are_one_line_in_every_script(capsys):
    # root ignores file modes, so the error is raised by hand inside a script's main
    from model import cli

    def main(args):
        raise PermissionError(13, "Permission denied", "/data/out.json")
    parser = cli.ArgumentParser(prog="some_script.py")
    old = sys.argv
    sys.argv = ["some_script.py"]
    try:
        with pytest.raises(SystemExit) as e:
            cli.run(main, parser)
    finally:
        sys.argv = old
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "permission denied: /data/out.json" in err


@pytest.mark.slow
def test_two_processes_on_one_output_dir(records, tmp_path):
    """A real second process, by either training driver, is refused while the first
    runs, and names the holder's pid."""
    import signal
    out = tmp_path / "out"
    script = STUCK % {"repo": REPO, "rec": str(tmp_path / "a.tfrecord"), "out": str(out)}
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert first.stdout.readline().strip() == "running"
        for extra in ([], ["--use_tpu_estimator"]):
            second = run_training(["--input_files", records, "--output_dir", str(out),
                                   "--max_training_step", "2"] + extra, tmp_path)
            assert second.returncode == 2, second.stderr
            assert "in use by another training run (pid %d" % first.pid in second.stderr
            assert "Traceback" not in second.stderr
            assert second.stderr.strip().splitlines()[-1].startswith("run_training.py: error:")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
