"""The shared training loop: learning, resume, signals, frozen variables,
mesh layouts, float16 overflow handling, and a two-process cluster."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import records as record_files
from model import params as params_lib
from model.compat import tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
C, V = 16, 40


def write_records(path, n=64, seed=0, period=4):
    """Sequences that follow a learnable rule: token t+1 = (token t + 1) mod period + 2."""
    rng = np.random.RandomState(seed)
    rows = []
    for k in range(n):
        x = (rng.randint(period) + np.arange(C)) % period + 2
        rows.append((x, np.append(x[1:], -1), k % 3, k % 2))
    return record_files.write_records(path, rows)


def tiny_params(output_dir="", **model):
    p = params_lib.default_params(num_vocabulary=V, num_contexts=C, num_switch_layers=2,
                                  num_hidden=16, num_header=2, num_experts=4, **model)
    return p.with_train(output_dir=output_dir, batch_size=4, base_lr=1e-2,
                        num_warmup_steps=2, checkpoint_per_steps=1000)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    write_records(str(d / "a.tfrecord"))
    return str(d / "*.tfrecord")


def make_trainer(records, out, steps, mesh="1x1", **kw):
    from model import devices as devicelib, train
    kw.setdefault("router_jitter", 0.0)
    opts = train.TrainOptions(params=kw.pop("params", tiny_params(str(out))), input_files=records,
                              output_dir=str(out), max_training_step=steps,
                              devices=devicelib.local(mesh_shape=mesh), progress=False,
                              log_every=0, **kw)
    return train.Trainer(opts).start()


def checkpoint_tensors(out):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(out)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def resume_and_compare(records, out, step, saved, names):
    """A session trainer resumed from out's checkpoint at `step`, whose `names`
    hold exactly the saved values."""
    resumed = make_trainer(records, out, step)
    assert resumed.step() == step and resumed.resumed_from.endswith("model.ckpt-%d" % step)
    resumed.session.run(resumed.copy_to_masters)
    with resumed.graph.as_default():
        now = {v.op.name: v for v in tf.global_variables()}
    for name in names:
        np.testing.assert_array_equal(resumed.session.run(now[name]), saved[name])
    return resumed


def test_loss_falls_and_resume_continues_with_identical_weights(records, tmp_path):
    trainer = make_trainer(records, tmp_path, 40)
    summary = trainer.run()
    trainer.close()
    first, last = np.mean(summary["losses"][:5]), np.mean(summary["losses"][-5:])
    assert last < first - 1.0, (first, last)   # log(40)=3.7 at start; the rule is learnable
    saved = checkpoint_tensors(tmp_path)
    assert saved["global_step"] == 40

    resumed = resume_and_compare(records, tmp_path, 40, saved,
                                 ("model/wte", "model/moe1/wi/kernel", "model/wte/adam_m",
                                  "model/ln0/g"))
    resumed.opts.max_training_step = 42
    assert resumed.run()["step"] == 42
    resumed.close()
    with open(tmp_path / "parameters.json") as f:
        assert json.load(f)["model_params"]["num_contexts"] == C


def test_frozen_variables_are_bit_identical_and_have_no_slots(records, tmp_path):
    frozen = ["model/wte", "model/moe0/wi/kernel", "model/an1/g"]
    start = make_trainer(records, tmp_path / "init", 0)
    start.save()
    start.close()
    before = checkpoint_tensors(tmp_path / "init")
    trainer = make_trainer(records, tmp_path / "run", 5, ignore_parameters=frozen,
                           init_checkpoint=str(tmp_path / "init"))
    assert set(frozen) <= set(trainer.ops.frozen_names)
    trainer.run()
    trainer.close()
    after = checkpoint_tensors(tmp_path / "run")
    for name in frozen:
        np.testing.assert_array_equal(after[name], before[name])
        assert name + "/adam_m" not in after and name + "/adam_v" not in after
    assert not np.array_equal(after["model/wpe"], before["model/wpe"])
    assert "model/wpe/adam_m" in after


def test_unknown_frozen_name_is_a_user_error(records, tmp_path):
    from model.errors import UserError
    with pytest.raises(UserError, match="model/nope"):
        make_trainer(records, tmp_path, 1, ignore_parameters=["model/nope"])


def test_2x2_mesh_matches_1x1_for_the_first_steps(records, tmp_path):
    params = tiny_params().with_train(base_lr=1e-4)
    losses = {}
    for mesh in ("1x1", "2x2"):
        t = make_trainer(records, tmp_path / mesh, 3, mesh=mesh, params=params)
        losses[mesh] = t.run()["losses"]
        t.close()
    np.testing.assert_allclose(losses["1x1"], losses["2x2"], atol=1e-4)


def test_two_runs_take_identical_steps(records, tmp_path):
    # Updates wait for every gradient; before they did, a weight could change
    # while a later gradient still read it, and runs drifted apart by 1e-4.
    params = tiny_params().with_train(base_lr=1e-4)
    runs = []
    for k in range(2):
        t = make_trainer(records, tmp_path / str(k), 6, params=params)
        runs.append(t.run()["losses"])
        t.close()
    assert runs[0] == runs[1]


def test_float16_overflow_skips_the_step_and_halves_the_scale(records, tmp_path):
    trainer = make_trainer(records, tmp_path, 1, use_mixed_precision=True, loss_scale=1e30)
    with trainer.graph.as_default():
        wte = [v for v in tf.global_variables() if v.op.name == "model/wte"][0]
    trainer.session.run(trainer.copy_to_masters)
    before = trainer.session.run(wte)
    trainer.session.run(trainer.ops.train_op)
    trainer.session.run(trainer.copy_to_masters)
    np.testing.assert_array_equal(trainer.session.run(wte), before)
    assert trainer.session.run(trainer.ops.loss_scale) == pytest.approx(5e29)
    trainer.close()


def run_training_cmd(records, out, steps, *extra, checkpoint_per_steps=1000):
    params_file = str(out.parent / (out.name + "-params.json"))
    params = tiny_params(str(out)).with_train(checkpoint_per_steps=checkpoint_per_steps)
    params_lib.save(params, params_file)
    return [PY, os.path.join(REPO, "run_training.py"), "--parameter_file", params_file,
            "--input_files", records, "--max_training_step", str(steps), "--no_progress",
            *extra]


def test_sigterm_saves_a_loadable_checkpoint_and_exits_0(records, tmp_path):
    out = tmp_path / "run"
    # checkpoints every 5 steps: the first one proves training is under way
    proc = subprocess.Popen(run_training_cmd(records, out, 10 ** 6, checkpoint_per_steps=5),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoint").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["step"] >= 5
    saved = checkpoint_tensors(out)
    assert saved["global_step"] == summary["step"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_worker_cluster_on_localhost_trains_a_step(records, tmp_path):
    hosts = "127.0.0.1:%d,127.0.0.1:%d" % (free_port(), free_port())
    out = tmp_path / "cluster"
    base = run_training_cmd(records, out, 2, "--worker_hosts", hosts)
    worker = subprocess.Popen(base + ["--task_index", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        chief = subprocess.run(base + ["--task_index", "0"], capture_output=True, text=True,
                               timeout=300)
    finally:
        worker.kill()
        worker.wait()
    assert chief.returncode == 0, chief.stderr[-2000:]
    assert "/job:worker/task:1" in chief.stderr
    assert json.loads(chief.stdout.strip().splitlines()[-1])["step"] == 2


# ---- the TPUEstimator path, run on the host CPU (use_tpu=False) -------------------

def estimator_train(records, out, steps, mesh="1x1", **kw):
    from model import estimator, mesh as meshlib, train
    kw.setdefault("router_jitter", 0.0)
    opts = train.TrainOptions(params=kw.pop("params", tiny_params(str(out))), input_files=records,
                              output_dir=str(out), max_training_step=steps, progress=False, **kw)
    return estimator.train_with_estimator(opts, meshlib.parse_mesh_shape(mesh),
                                          iterations_per_loop=5)


def test_estimator_program_computes_what_the_session_loop_computes(records, tmp_path):
    # Same seed, same records, same initial weights: the TPUEstimator program
    # must see the same losses as the session loop, step for step.
    params = tiny_params().with_train(base_lr=1e-4)
    session = make_trainer(records, tmp_path / "session", 6,
                           params=params)
    expected = session.run()["losses"]
    session.close()
    summary = estimator_train(records, tmp_path / "estimator", 6,
                              params=params)
    assert summary["step"] == 6 and summary["steps_run"] == 6
    np.testing.assert_allclose(summary["losses"], expected, atol=1e-5)
    # Same checkpoint contents: names, shapes and dtypes.
    a, b = checkpoint_tensors(tmp_path / "session"), checkpoint_tensors(tmp_path / "estimator")
    assert sorted(a) == sorted(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def test_estimator_learns_and_checkpoints_resume_across_both_paths(records, tmp_path):
    out = tmp_path / "run"
    first = estimator_train(records, out, 30)
    assert len(first["losses"]) == 30
    assert np.mean(first["losses"][-5:]) < np.mean(first["losses"][:5]) - 1.0, first["losses"]
    saved = checkpoint_tensors(out)
    assert saved["global_step"] == 30
    # The session loop resumes the estimator's checkpoint with its weights and slots ...
    resumed = resume_and_compare(records, out, 30, saved,
                                 ("model/wte", "model/moe1/wi/kernel", "model/wte/adam_v"))
    resumed.opts.max_training_step = 33
    assert resumed.run()["step"] == 33
    resumed.close()
    # ... and the estimator resumes the session loop's.
    again = estimator_train(records, out, 35)
    assert again["resumed_from"].endswith("model.ckpt-33")
    assert again["step"] == 35 and again["steps_run"] == 2


def test_estimator_starts_from_other_weights_and_keeps_frozen_ones(records, tmp_path):
    start = make_trainer(records, tmp_path / "init", 3)
    start.run()
    start.close()
    before = checkpoint_tensors(tmp_path / "init")
    frozen = ["model/wte", "model/an1/g"]
    estimator_train(records, tmp_path / "run", 4, ignore_parameters=frozen,
                    init_checkpoint=str(tmp_path / "init"))
    after = checkpoint_tensors(tmp_path / "run")
    assert after["global_step"] == 4  # a new run: the source's step is not taken over
    for name in frozen:
        np.testing.assert_array_equal(after[name], before[name])
        assert name + "/adam_m" not in after
    assert not np.array_equal(after["model/wpe"], before["model/wpe"])


def test_estimator_refuses_a_weights_only_output_dir(tmp_path):
    from model import estimator
    from model.errors import UserError
    with tf.Graph().as_default():
        tf.get_variable("model/wte", [2, 2])
        with tf.Session() as s:
            s.run(tf.global_variables_initializer())
            tf.train.Saver().save(s, str(tmp_path / "model.ckpt"))
    with pytest.raises(UserError, match="another output directory"):
        estimator.check_resumable(str(tmp_path))


def test_run_training_through_the_estimator_on_a_2x2_cpu_mesh(records, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(run_training_cmd(records, out, 4, "--use_tpu_estimator",
                                           "--iterations_per_loop", "2", "--cpu_devices", "4",
                                           "--mesh_shape", "2x2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mesh Shape[batch=2, model=2]" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and len(summary["losses"]) == 4
    assert checkpoint_tensors(out)["global_step"] == 4


def test_unreachable_tpu_is_a_one_line_error_within_the_timeout():
    from model import devices as devicelib
    from model.errors import UserError
    t = time.time()
    # A closed port on this machine: the resolver would wait for it forever.
    with pytest.raises(UserError, match="did not answer within 8 s"):
        devicelib.resolve_tpu("grpc://127.0.0.1:%d" % free_port(), timeout=8)
    assert time.time() - t < 30
