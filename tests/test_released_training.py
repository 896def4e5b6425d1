"""Training against the released GPTSAN's recorded optimizer numerics
(shared/reference/released/train_step.json), the released checkpoint's resume,
the spout vectors of released training, and the one-batch record file."""
import json
import os
import shutil
import types

import numpy as np
import pytest

from tests import records as record_files
from model import params as params_lib
from model.compat import tf

SCENARIOS = ["resume_noclip", "resume_clip", "fresh_noclip", "fresh_clip"]


@pytest.fixture(scope="module")
def released(shared_dir):
    root = os.path.join(shared_dir, "reference", "released")
    if not os.path.exists(os.path.join(root, "train_step.json")):
        pytest.skip("released train_step.json not found under %s" % root)
    with open(os.path.join(root, "train_step.json")) as f:
        return root, json.load(f)


def make_trainer(tmp_path, root, golden, scenario):
    from model import train

    resume = scenario.startswith("resume")
    params = params_lib.load(os.path.join(root, "model")).with_train(**golden["train_params"])
    out = str(tmp_path / scenario)
    if resume:  # the released output_dir itself, restarted
        shutil.copytree(os.path.join(root, "model"), out)
    batch = golden["batch"]
    opts = train.TrainOptions(
        params=params, input_files="unused", output_dir=out, spout_vector="uniform",
        clip_gradients=0.01 if scenario.endswith("_clip") else 0.0, router_jitter=0.0,
        no_token_drop=True, init_checkpoint=None if resume else os.path.join(root, "model"),
        progress=False)

    class Fixed(train.Trainer):
        def _features(self):  # the stored batch and the fixed spout, every step
            features = {k: tf.constant(np.asarray(batch[k], np.int32).reshape(
                np.shape(batch[k])[0], -1).squeeze(-1) if k in ("num_input", "i")
                else np.asarray(batch[k], np.int32)) for k in ("x", "y", "num_input", "i")}
            features["spout"] = tf.constant(np.asarray(batch["spout"], np.float32))
            return features

    return Fixed(opts).start()


def state(trainer, names):
    s = trainer.session
    s.run(trainer.copy_to_masters)
    loss, aux, lr, step = s.run([trainer.ops.loss, trainer.ops.aux_loss, trainer.ops.learning_rate,
                                 trainer.ops.global_step])
    by_name = {v.op.name: v for v in trainer.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)}
    values = s.run({n: by_name[n] for n in names})
    return dict(loss=loss, extra_loss=aux, learning_rate=lr, global_step=step, variables=values)


def recorded(v):
    a = np.asarray(v["values"] if "values" in v else v["head_flat"], np.float64)
    return a


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_released_train_step(tmp_path, released, scenario):
    """Loss before any update = recorded; after 1 and 2 updates, the recorded
    step, learning rate and variable values.

    With clipping the released graph computes every gradient before any update
    (the global norm needs them all), so its numbers are race-free and must match
    to max(repeat_spread, 1e-5) everywhere. Without clipping the released
    train_op lets a variable's update run as soon as its gradient exists, and the
    backward pass through the output projection (model/dense/kernel, the first
    weight whose gradient is complete) then reads the updated kernel: every
    gradient below it is computed through the new kernel.
    test_released_noclip_race checks that this alone reproduces the recording
    (an independent eager re-implementation of the step, tests/released_step.py).
    This project's step reads every gradient first, so here the recorded values
    must hold on at least 99% of the elements (measured: 12 and 36 of 3871 off in
    resume_noclip, 21 in fresh_noclip) and, on the rest, a difference below the
    size of the updates made (10 * the learning rates used, the largest
    m/sqrt(v) of two bias-uncorrected Adam steps being < 5): an element with a
    gradient near zero takes a full-size Adam step whichever sign it has.
    """
    root, golden = released
    sc = golden["scenarios"][scenario]
    spread = golden["repeat_spread"][scenario]
    names = list(sc["states"][0]["variables"])
    clipped = scenario.endswith("_clip")
    trainer = make_trainer(tmp_path, root, golden, scenario)
    lr_used = 0.0
    try:
        for k, want in enumerate(sc["states"]):
            got = state(trainer, names)
            sp = spread[k]
            assert got["global_step"] == want["global_step"]
            assert abs(got["learning_rate"] - want["learning_rate"]) <= 1e-9, k
            loss_tol = max(sp["loss"], 1e-5 if (k == 0 or clipped) else 1e-3)
            assert abs(got["loss"] - want["loss"]) <= loss_tol, (k, got["loss"], want["loss"])
            # The MoE load-balancing loss is a mean over a routing group. The
            # released layer makes one group of the device's whole batch (512
            # tokens here; test_released_noclip_race's re-implementation does so
            # and matches to 2e-7); this project's groups are single rows so that
            # training does not depend on the mesh, which measures 0.28% higher
            # here. Compared loosely for that reason.
            aux_tol = 3e-3 * want["extra_loss"] + max(sp["extra_loss"], 1e-5)
            assert abs(got["extra_loss"] - want["extra_loss"]) <= aux_tol, (k, got["extra_loss"])
            off = total = 0
            for name, v in want["variables"].items():
                ref = recorded(v)
                mine = np.asarray(got["variables"][name], np.float64).ravel()[:ref.size]
                tol = max(sp["variables"].get(name, 0.0), 1e-5)
                diff = np.abs(mine - ref)
                if k == 0 or clipped:
                    assert diff.max() <= tol, "%s state %d %s: %g" % (scenario, k, name, diff.max())
                else:
                    assert diff.max() <= max(tol, 10 * lr_used), (scenario, k, name, diff.max())
                    off += int((diff > tol).sum())
                total += diff.size
            assert off <= 0.01 * total, (scenario, k, off, total)
            lr_used += got["learning_rate"]
            trainer.session.run(trainer.ops.train_op)
    finally:
        trainer.session.close()


def _emulated(root, scenario, race):
    import subprocess
    import sys
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released_step.py")
    proc = subprocess.run([sys.executable, helper, root, scenario] + list(race),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _off(golden, scenario, states):
    """Elements outside max(repeat_spread, 1e-5) of the recording, per state."""
    sc, spread = golden["scenarios"][scenario], golden["repeat_spread"][scenario]
    counts = []
    for k, want in enumerate(sc["states"]):
        off = 0
        for name, v in want["variables"].items():
            if name == "global_step":
                continue
            ref = recorded(v)
            mine = np.asarray(states[k]["variables"][name], np.float64)[:ref.size]
            off += int((np.abs(mine - ref) > max(spread[k]["variables"].get(name, 0.0), 1e-5)).sum())
        counts.append(off)
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["resume_noclip", "fresh_noclip"])
def test_released_noclip_race(released, scenario):
    """The released unclipped update = backward through model/dense/kernel
    reading its updated value (see test_released_train_step). An independent
    eager re-implementation of the released step, with that one read racing,
    reproduces every recorded element of resume_noclip; without it 12 and 36
    elements are off. In fresh_noclip (whose first update has lr 0, so only the
    second can race) it leaves 2 of 21: wpe elements whose gradients (~1e-5)
    nearly vanish, where Adam turns a 1e-5 gradient difference into a
    full-size step. Racing one more weight (measured for each) helps at most
    one element (att0/qkv, in fresh_noclip); the attention and expert output
    kernels make it clearly worse, so those were read before their update."""
    root, golden = released
    want = golden["scenarios"][scenario]["states"]
    exact = _emulated(root, scenario, [])
    racing = _emulated(root, scenario, ["model/dense/kernel"])
    for states in (exact, racing):  # states[0]: no update yet, nothing to race
        assert abs(states[0]["loss"] - want[0]["loss"]) <= 1e-5
        assert abs(states[0]["extra_loss"] - want[0]["extra_loss"]) <= 1e-6
    off_exact, off_racing = _off(golden, scenario, exact), _off(golden, scenario, racing)
    assert off_exact[0] == off_racing[0] == 0
    assert sum(off_exact) >= 20, off_exact  # the race matters ...
    assert sum(off_racing) <= (0 if scenario == "resume_noclip" else 2), off_racing  # ... and is this


# ---- fast checks --------------------------------------------------------------

_write = record_files.write_records


def test_one_batch_file_gives_that_batch_every_step(tmp_path):
    from model import inputs
    C, B = 8, 5
    rows = [(np.arange(C) + 10 * k, np.arange(C) + 10 * k + 1, k % 3, k) for k in range(B)]
    path = str(tmp_path / "one.tfrecord")
    _write(path, rows)
    with tf.Graph().as_default():
        nxt = tf.data.make_one_shot_iterator(
            inputs.read_dataset(path, B, C, shuffle=True, seed=3)).get_next()
        with tf.Session() as s:
            for _ in range(6):
                got = s.run(nxt)
                order = np.argsort(got["i"])
                assert sorted(got["i"].tolist()) == list(range(B))  # no record dropped or repeated
                np.testing.assert_array_equal(got["x"][order], np.stack([r[0] for r in rows]))
                np.testing.assert_array_equal(got["num_input"][order], [r[2] for r in rows])


def _spout(kind, i, num_spout=8, seed=0):
    from model import train
    opts = types.SimpleNamespace(spout_vector=kind, seed=seed,
                                 params=params_lib.default_params(num_spout=num_spout))
    with tf.Graph().as_default():
        t = train.spout_input(opts, {"i": tf.constant(np.asarray(i, np.int32))}, len(i))
        with tf.Session() as s:
            return s.run(t), s.run(t)


def test_stateless_uniform_spout_is_a_function_of_i():
    i = [0, 1, 2, 1, 0, 7, 7, 123456]
    a, b = _spout("stateless_uniform", i)
    assert a.shape == (8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same record, same vector at every step
    np.testing.assert_array_equal(a[1], a[3])
    np.testing.assert_array_equal(a[5], a[6])
    assert not np.allclose(a[0], a[1])
    assert a.min() >= 0.0 and a.max() < 1.0
    # With another graph seed the vector is the same: it depends on i alone.
    c, _ = _spout("stateless_uniform", i, seed=5)
    np.testing.assert_array_equal(a, c)


def test_half_onehot_spout():
    i = list(range(10))
    a, b = _spout("half_onehot", i, num_spout=8)
    assert a.shape == (10, 8)
    np.testing.assert_array_equal(a[:, :4], np.eye(4)[np.asarray(i) % 4])
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    noise = a[:, 4:]
    assert noise.min() >= 0.0 and noise.max() < 1.0
    assert not np.allclose(noise, b[:, 4:])  # fresh noise each step
    assert len(np.unique(noise)) == noise.size


def test_released_learning_rate_schedule():
    from model import optimizer
    base, warm = 1e-3, 10
    steps = [0, 1, 5, 9, 10, 11, 30, 10 ** 6, 4 * 10 ** 6]
    want = [base * s / warm if s < warm else 1.0 / np.sqrt(max(s, (1 / base) ** 2)) for s in steps]
    with tf.Graph().as_default(), tf.Session() as s:
        step = tf.placeholder(tf.int64, [])
        lr = optimizer.learning_rate(step, base, warm, "released")
        got = [s.run(lr, {step: k}) for k in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[-1] == pytest.approx(5e-4)


def test_weight_decay_names():
    from model import optimizer
    # GPTSAN's norm gains/offsets are decayed as released; only biases are not.
    assert optimizer.decays("model/an0/g") and optimizer.decays("model/ln1/b")
    assert optimizer.decays("model/wte") and optimizer.decays("pasts/out/kernel")
    assert not optimizer.decays("model/dense_1/bias")
    assert not optimizer.decays("x/LayerNorm/gamma") and not optimizer.decays("x/layer_norm/s")


def test_train_mode_from_records(tmp_path):
    from model import cli_train
    C = 8
    lm = tmp_path / "lm"
    lm.mkdir()
    _write(str(lm / "a.tfrecord"), [(np.arange(C), np.arange(C), 0, k) for k in range(4)])
    hy = tmp_path / "hy"
    hy.mkdir()
    _write(str(hy / "a.tfrecord"), [(np.arange(C), np.arange(C), k % 2, k) for k in range(4)])
    assert cli_train.records_train_mode(str(lm / "*.tfrecord")) == "lm"
    assert cli_train.records_train_mode(str(hy / "*.tfrecord")) == "hybrid"
    # A summary naming the mode wins over the sample.
    (lm / "x-summary.json").write_text(json.dumps({"options": {"mode": "mlm"}}))
    assert cli_train.records_train_mode(str(lm / "*.tfrecord")) == "hybrid"


@pytest.mark.slow
def test_run_training_resumes_released_checkpoint(tmp_path, released):
    """The released training's output_dir (sharded Saver, adam_m/adam_v, step 30)
    resumes: weights, slots and step are read, training goes on from step 30, and
    parameters.json keeps the released keys."""
    import subprocess
    import sys
    root, _ = released
    out = str(tmp_path / "model")
    shutil.copytree(os.path.join(root, "model"), out)
    before = dict(tf.train.list_variables(out))
    reader = tf.train.load_checkpoint(out)
    v30 = reader.get_tensor("model/wte/adam_v")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "run_training.py"),
         "--parameter_file", os.path.join(out, "parameters.json"), "--output_dir", out,
         "--input_files", os.path.join(root, "records", "hybrid", "hybrid_0000.tfrecord"),
         "--spout_vector", "uniform", "--max_training_step", "32", "--no_progress"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(step 30)" in proc.stderr
    latest = tf.train.latest_checkpoint(out)
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("global_step") == 32
    assert set(dict(tf.train.list_variables(latest))) >= set(before)
    # v' = 0.999 v + 0.001 g^2 >= 0.999 v: holds only if the stored v was read.
    v32 = reader.get_tensor("model/wte/adam_v")
    assert np.all(v32 >= 0.999 ** 2 * v30 * (1 - 1e-6)) and v30.max() > 0
    with open(os.path.join(out, "parameters.json")) as f:
        mp = json.load(f)["model_params"]
    assert mp["train_mode"] == "lm" and mp["num_vocabulary"] == 36000
