"""The one training loop, shared by run_training.py and run_finetune.py.

Builds the graph (records -> model -> loss -> optimizer) on a mesh, resumes
from the latest checkpoint in the output directory, trains with a progress
bar, checkpoints every N steps / hours and on SIGINT/SIGTERM.
"""
import os
import signal
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from model import inputs as inputs_lib
from model import mesh as meshlib
from model import network, optimizer, params as params_lib, runtime
from model.cli import UserError
from model.compat import mtf, tf

SPOUT_CHOICES = ("none", "uniform", "onehot")


@dataclass
class TrainOptions:
    params: dict                       # parameters.json contents
    input_files: str                   # comma-separated globs of TFRecord shards
    output_dir: str
    max_training_step: int = 100000
    max_seconds: float = 0.0           # stop (and save) after this much training time; 0: no limit
    spout_vector: str = "none"
    optimizer: str = "adam"
    use_bfloat16: bool = False
    use_mixed_precision: bool = False
    loss_scale: float = 2.0 ** 15      # initial dynamic loss scale (float16 only)
    clip_gradients: float = 0.0        # global-norm clipping; 0 disables
    ignore_parameters: List[str] = field(default_factory=list)  # frozen variable names
    init_checkpoint: Optional[str] = None  # weights to start from when output_dir is empty
    devices: Optional[runtime.Devices] = None
    seed: int = 0
    router_jitter: float = 1e-2
    progress: bool = True
    log_every: int = 10


class Trainer:
    """Owns the training graph and session; `run()` trains to max_training_step."""

    def __init__(self, opts):
        self.opts = opts
        self.model_params = opts.params["model_params"]
        self.train_params = opts.params["train_params"]
        self.devices = opts.devices or runtime.Devices.local(self.model_params["num_pallarelizm"])
        self._check_options()
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(opts.seed)
            self._build()

    def _check_options(self):
        o = self.opts
        if o.spout_vector not in SPOUT_CHOICES:
            raise UserError("--spout_vector must be one of %s" % ", ".join(SPOUT_CHOICES))
        if o.spout_vector != "none" and not self.model_params.get("num_spout"):
            raise UserError("--spout_vector %s needs num_spout > 0 in parameters.json "
                            "(add spout weights with tools/run_modelconvert.py --num_spout)"
                            % o.spout_vector)
        if o.use_bfloat16 and o.use_mixed_precision:
            raise UserError("choose one of --use_bfloat16 and --use_mixed_precision")
        batch = self.train_params["batch_size"]
        if batch % self.devices.shape.dims[0].size:
            raise UserError("batch_size %d is not divisible by the mesh's batch dimension %d"
                            % (batch, self.devices.shape.dims[0].size))

    # ---- graph -------------------------------------------------------------
    def _activation_dtype(self):
        if self.opts.use_bfloat16:
            return tf.bfloat16
        if self.opts.use_mixed_precision:
            return tf.float16
        return tf.float32

    def _features(self):
        mp, batch_size = self.model_params, self.train_params["batch_size"]
        ds = inputs_lib.read_dataset(self.opts.input_files, batch_size, mp["num_contexts"],
                                     shuffle=True, seed=self.opts.seed, repeat=True)
        return tf.data.make_one_shot_iterator(ds).get_next()

    def _spout(self, features, batch_size):
        p = self.model_params.get("num_spout", 0)
        if self.opts.spout_vector == "uniform":
            return tf.random.uniform([batch_size, p], seed=self.opts.seed)
        if self.opts.spout_vector == "onehot":
            return tf.one_hot(tf.math.floormod(features["i"], p), p)
        return None

    def _build(self):
        o, mp = self.opts, self.model_params
        batch_size, length = self.train_params["batch_size"], mp["num_contexts"]
        features = self._features()
        mtf_graph, mesh = meshlib.new_mesh()
        cfg = network.Config(mp, activation_dtype=self._activation_dtype(), layout=meshlib.LAYOUT,
                             mesh_shape=self.devices.shape, router_jitter=o.router_jitter,
                             seed=o.seed)
        batch = mtf.Dimension("batch", batch_size)
        length_dim = mtf.Dimension("length", length)

        def imp(t, dims):
            return runtime.import_tensor(mesh, t, dims)

        spout = self._spout(features, batch_size)
        out = network.model(
            imp(features["x"], [batch, length_dim]), cfg,
            num_precontext=imp(features["num_input"], [batch]),
            spout=None if spout is None else imp(spout, [batch, cfg.dims.spout]), train=True)
        lm_loss = network.lm_loss(out["logits"], imp(features["y"], [batch, length_dim]),
                                  cfg.dims.vocab)
        aux_loss = out["aux_loss"] if out["aux_loss"] is not None else mtf.zeros(mesh, [])
        aux_loss = mtf.cast(aux_loss, tf.float32)
        loss = lm_loss + aux_loss

        variables = self._trainable(mtf_graph)
        self.global_step = tf.train.get_or_create_global_step()
        lr = optimizer.learning_rate(self.global_step, self.train_params["base_lr"],
                                     self.train_params["num_warmup_steps"])
        mtf_lr = imp(lr, [])
        scale = None
        if o.use_mixed_precision:
            self.loss_scale = tf.get_variable("loss_scale", initializer=float(o.loss_scale),
                                              trainable=False)
            scale = imp(self.loss_scale, [])
        grads = mtf.gradients([loss * scale if scale is not None else loss],
                              [v.outputs[0] for v in variables])
        grads = [mtf.cast(g, tf.float32) for g in grads]
        apply = None
        if scale is not None:
            apply = optimizer.finite_flag(grads)
            grads = [optimizer.zero_nonfinite(g) / scale for g in grads]
        if o.clip_gradients > 0:
            grads, _ = optimizer.clip_by_global_norm(grads, o.clip_gradients)
        if o.optimizer == "adam":
            updates = optimizer.adam_updates(variables, grads, mtf_lr, apply)
        elif o.optimizer == "adafactor":
            updates = optimizer.adafactor_updates(variables, grads, mtf_lr)
        else:
            raise UserError("--optimizer must be adam or adafactor")

        impl = meshlib.placement(self.devices.shape, self.devices.devices)
        self.lowering = mtf.Lowering(mtf_graph, {mesh: impl})
        self.loss = self.lowering.export_to_tf_tensor(lm_loss)
        self.aux_loss = self.lowering.export_to_tf_tensor(aux_loss)
        self.learning_rate = lr
        tf_updates = [self.lowering.lowered_operation(op) for op in updates]
        step_ops = tf_updates + [tf.assign_add(self.global_step, 1)]
        if apply is not None:
            finite = self.lowering.export_to_tf_tensor(apply) > 0.5
            step_ops.append(self._loss_scale_update(finite))
        self.train_op = tf.group(step_ops)
        self.tokens_per_step = batch_size * length

        self.trainable_names = sorted(v.name for v in variables)
        self.frozen_names = sorted(v.name for v in mtf_graph.trainable_variables
                                   if v.name not in set(self.trainable_names))
        self.count = {
            "trainable": sum(v.shape.size for v in variables),
            "frozen": sum(v.shape.size for v in mtf_graph.trainable_variables) -
            sum(v.shape.size for v in variables),
            "optimizer_bytes": 4 * sum(v.shape.size for v in mtf_graph.all_variables
                                       if not v.trainable),
        }
        self.saver = tf.train.Saver(max_to_keep=self.train_params["max_to_keep_save"],
                                    sharded=True, save_relative_paths=True)
        self.copy_to_slices = self.lowering.copy_masters_to_slices()
        self.copy_to_masters = self.lowering.copy_slices_to_masters()
        self.init = tf.group(tf.global_variables_initializer(), tf.local_variables_initializer())
        self.init_local = tf.local_variables_initializer()
        with tf.name_scope("summaries"):
            self.summaries = tf.summary.merge([
                tf.summary.scalar("loss", self.loss), tf.summary.scalar("aux_loss", self.aux_loss),
                tf.summary.scalar("learning_rate", lr)])

    def _loss_scale_update(self, finite):
        """Dynamic loss scaling: halve on overflow (the step is skipped), double
        after 1000 clean steps."""
        good = tf.get_variable("loss_scale_good_steps", initializer=0, trainable=False)
        grow = tf.logical_and(finite, tf.equal(tf.math.floormod(good + 1, 1000), 0))
        new_scale = tf.where(finite, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                             tf.maximum(self.loss_scale / 2.0, 1.0))
        return tf.group(tf.assign(self.loss_scale, new_scale),
                        tf.assign(good, tf.where(finite, good + 1, 0)))

    def _trainable(self, mtf_graph):
        names = {v.name for v in mtf_graph.trainable_variables}
        unknown = [n for n in self.opts.ignore_parameters if n not in names]
        if unknown:
            raise UserError("--ignore_parameters names %s, which is not a variable of this model"
                            % unknown[0])
        frozen = set(self.opts.ignore_parameters)
        if self.opts.spout_vector == "none":
            # Spout weights receive no gradient without a spout: leave them alone.
            frozen |= {n for n in names if n.startswith("pasts/")}
        variables = [v for v in mtf_graph.trainable_variables if v.name not in frozen]
        if not variables:
            raise UserError("every variable is frozen; nothing to train")
        return variables

    # ---- session -----------------------------------------------------------
    def start(self):
        """Open the session: resume from output_dir, else init (and load init_checkpoint)."""
        self.session = tf.Session(self.devices.target, graph=self.graph, config=self.devices.config)
        latest = tf.train.latest_checkpoint(self.opts.output_dir) \
            if os.path.isdir(self.opts.output_dir) else None
        self.session.run(self.init)
        with self.graph.as_default():
            if latest and _has_training_state(latest, self.graph):
                runtime.check_checkpoint(latest, runtime.expected_variables(self.graph))
                self.saver.restore(self.session, latest)
                self.resumed_from = latest
            elif latest:
                # Weights only (a converted or released model): start training from them.
                self._load_weights(latest)
                self.resumed_from = None
            elif self.opts.init_checkpoint:
                self._load_weights(self.opts.init_checkpoint)
                self.resumed_from = None
            else:
                self.resumed_from = None
        self.session.run(self.copy_to_slices)
        return self

    def _load_weights(self, path):
        """Load the model weights present in `path`; slots and new layers keep
        their initial values (fine-tuning a converted model)."""
        if os.path.isdir(path):
            path = runtime.latest_checkpoint(path)
        stored = dict(tf.train.list_variables(path))
        wanted = [v for v in self.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
                  if v.op.name in stored and not _is_training_state(v.op.name)]
        runtime.check_checkpoint(path, {v.op.name: v.shape.as_list() for v in wanted})
        tf.train.Saver(var_list=wanted).restore(self.session, path)

    def step(self):
        return int(self.session.run(self.global_step))

    def save(self):
        self.session.run(self.copy_to_masters)
        os.makedirs(self.opts.output_dir, exist_ok=True)
        params_lib.save(self.opts.params, os.path.join(self.opts.output_dir, "parameters.json"))
        with self.graph.as_default():
            return self.saver.save(self.session, os.path.join(self.opts.output_dir, "model.ckpt"),
                                   global_step=self.step())

    def run(self):
        """Train until max_training_step; returns a summary dict."""
        o, tp = self.opts, self.train_params
        stop = _StopFlag()
        writer = tf.summary.FileWriter(o.output_dir, self.graph) if o.log_every else None
        step = self.step()
        start_step, last_save, losses = step, time.time(), []
        bar = _progress(step, o.max_training_step, o.progress)
        t0 = time.time()
        try:
            while step < o.max_training_step and not stop.requested:
                if o.max_seconds and time.time() - t0 > o.max_seconds:
                    break
                fetch = [self.train_op, self.loss, self.aux_loss, self.learning_rate]
                want_summary = writer is not None and step % o.log_every == 0
                if want_summary:
                    fetch.append(self.summaries)
                values = self.session.run(fetch)
                step += 1
                losses.append(float(values[1]))
                if want_summary:
                    writer.add_summary(values[4], step)
                rate = (step - start_step) * self.tokens_per_step / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss="%.3f" % values[1], aux="%.3f" % values[2],
                                lr="%.2e" % values[3], tok_s="%.0f" % rate, refresh=False)
                bar.update(1)
                due_steps = step % tp["checkpoint_per_steps"] == 0
                due_time = time.time() - last_save > tp["checkpoint_per_hours"] * 3600
                if due_steps or due_time:
                    self.save()
                    last_save = time.time()
        finally:
            bar.close()
            stop.restore()
        path = self.save()
        if writer is not None:
            writer.close()
        elapsed = time.time() - t0
        return {"checkpoint": path, "step": step, "steps_run": step - start_step,
                "final_loss": losses[-1] if losses else None,
                "mean_loss_last_10": float(np.mean(losses[-10:])) if losses else None,
                "tokens_per_second": (step - start_step) * self.tokens_per_step / max(elapsed, 1e-9),
                "interrupted": stop.requested, "losses": losses}

    def close(self):
        self.session.close()


def _is_training_state(name):
    return "/adam_" in name or name.startswith("loss_scale") or name == "global_step"


def _has_training_state(path, graph):
    """Does the checkpoint hold this graph's optimizer state (i.e. was it written
    by this training setup), rather than model weights alone?"""
    stored = dict(tf.train.list_variables(path))
    wanted = [n for n in runtime.expected_variables(graph) if _is_training_state(n)]
    return all(n in stored for n in wanted) and "global_step" in stored


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step; it then saves."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _progress(initial, total, enabled):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, leave=True)


def describe(trainer):
    """The start-of-run report: parameter counts and memory estimate."""
    c = trainer.count
    weights_bytes = 4 * (c["trainable"] + c["frozen"])
    mp = trainer.model_params
    batch, length, h = trainer.train_params["batch_size"], mp["num_contexts"], mp["num_hidden"]
    layers = mp["num_switch_layers"] + mp["num_ext_layers"]
    # activations kept for backprop: a rough per-token, per-layer figure (attention
    # scores plus ~16 hidden-sized tensors), and the logits.
    activations = 4 * batch * length * (layers * (16 * h + mp["num_header"] * length)
                                        + 2 * mp["num_vocabulary"])
    return {"trainable_parameters": c["trainable"], "frozen_parameters": c["frozen"],
            "optimizer_state_bytes": c["optimizer_bytes"],
            "estimated_accelerator_bytes": weights_bytes + c["optimizer_bytes"]
            + 4 * c["trainable"] + activations}


__all__ = ["TrainOptions", "Trainer", "describe"]
