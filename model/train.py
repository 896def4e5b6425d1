"""The one training loop, shared by run_training.py and run_finetune.py.

Builds the graph (records -> model -> loss -> optimizer) on a mesh, resumes
from the latest checkpoint in the output directory, trains with a progress
bar, checkpoints every N steps / hours and on SIGINT/SIGTERM.
"""
import os
import signal
import sys
import time
import types
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from model import inputs as inputs_lib
from model import mesh as meshlib
from model import devices as devicelib
from model import graph as graphlib
from model import network, optimizer, params as params_lib, runtime
from model.errors import UserError
from model.compat import mtf, tf

SPOUT_CHOICES = ("none", "uniform", "onehot", "stateless_uniform", "half_onehot")


@dataclass
class TrainOptions:
    params: params_lib.Params          # parameters.json contents
    input_files: str                   # comma-separated globs of TFRecord shards
    output_dir: str
    max_training_step: int = 100000
    max_seconds: float = 0.0           # stop (and save) after this much training time; 0: no limit
    spout_vector: str = "none"
    optimizer: str = "adam"
    use_bfloat16: bool = False
    use_mixed_precision: bool = False
    loss_scale: float = 2.0 ** 15      # initial dynamic loss scale (float16 only)
    fixed_loss_scale: bool = False     # keep loss_scale constant (released fp16 used 2**9)
    clip_gradients: float = 0.0        # global-norm clipping; 0 disables (released: 0.01)
    lr_schedule: str = "released"      # see optimizer.learning_rate
    no_token_drop: bool = False        # every token gets its expert in training too
    ignore_parameters: List[str] = field(default_factory=list)  # frozen variable names
    init_checkpoint: Optional[str] = None  # weights to start from when output_dir is empty
    force: bool = False  # start from scratch over checkpoint files that cannot be restored
    devices: Optional[devicelib.Devices] = None
    seed: int = 0
    router_jitter: float = 1e-2
    progress: bool = True
    log_every: int = 10


class TrainingError(UserError):
    """Training cannot go on until the user acts; the message names TrainOptions
    fields (a bool one written `force=True`). It is kept as `template` % `values` so
    that the command-line layer can write the fields as its flags without touching
    the paths and record errors in the values."""

    def __init__(self, template, **values):
        super().__init__(template % values)
        self.template, self.values = template, values

    def renamed(self, rename):
        """The message with `rename` applied to the template only."""
        return rename(self.template) % self.values


class OptionError(TrainingError, ValueError):
    """A TrainOptions field has a value that cannot work; the message starts with
    the field's name."""


def check_options(opts, mesh_batch):
    """User mistakes in the options, as one-line errors before any graph is built."""
    mp, batch = opts.params.model, opts.params.train.batch_size
    if opts.spout_vector not in SPOUT_CHOICES:
        raise OptionError("spout_vector must be one of %(choices)s",
                          choices=", ".join(SPOUT_CHOICES))
    if opts.spout_vector != "none" and not mp.num_spout:
        raise OptionError("spout_vector %(value)s needs num_spout > 0 in parameters.json "
                          "(add spout weights with tools/run_modelconvert.py --num_spout)",
                          value=opts.spout_vector)
    if opts.use_bfloat16 and opts.use_mixed_precision:
        raise OptionError("use_bfloat16 and use_mixed_precision exclude each other; choose one")
    if opts.optimizer not in ("adam", "adafactor"):
        raise OptionError("optimizer must be adam or adafactor")
    if opts.lr_schedule not in optimizer.LR_SCHEDULES:
        raise OptionError("lr_schedule must be one of %(choices)s",
                          choices=", ".join(optimizer.LR_SCHEDULES))
    if opts.spout_vector == "half_onehot" and mp.num_spout < 2:
        raise OptionError("spout_vector half_onehot needs num_spout >= 2 in parameters.json")
    if batch % mesh_batch:
        raise UserError("batch_size %d is not divisible by the mesh's batch dimension %d"
                        % (batch, mesh_batch))


def activation_dtype(opts):
    if opts.use_bfloat16:
        return tf.bfloat16
    if opts.use_mixed_precision:
        return tf.float16
    return tf.float32


def _uniform_by_record(i, width):
    """Uniform [0, 1) noise per record, a function of the record's `i` alone (and
    not of the step), as the released stateless_uniform: a record always gets the
    same vector, so it acts as a learned per-record code."""
    def one(idx):
        seed = tf.stack([tf.cast(idx, tf.int64), tf.constant(0, tf.int64)])
        return tf.random.stateless_uniform([width], seed=seed)
    return tf.map_fn(one, i, fn_output_signature=tf.float32)


def spout_input(opts, features, batch_size):
    p = opts.params.model.num_spout
    if opts.spout_vector != "none" and "spout" in features:
        return tf.cast(features["spout"], tf.float32)  # a given spout (tests, fixed inputs)
    if opts.spout_vector == "uniform":
        return tf.random.uniform([batch_size, p], seed=opts.seed)
    if opts.spout_vector == "onehot":
        return tf.one_hot(tf.math.floormod(features["i"], p), p)
    if opts.spout_vector == "stateless_uniform":
        return _uniform_by_record(features["i"], p)
    if opts.spout_vector == "half_onehot":
        # One-hot class code of i mod p/2 in the first half, fresh noise in the
        # second half (a controllable class plus free variation), as released.
        half = p // 2
        code = tf.one_hot(tf.math.floormod(features["i"], half), half)
        noise = tf.random.uniform([batch_size, p - half], seed=opts.seed)
        return tf.concat([code, noise], axis=1)
    return None


def trainable_variables(opts, mtf_graph):
    names = {v.name for v in mtf_graph.trainable_variables}
    unknown = [n for n in opts.ignore_parameters if n not in names]
    if unknown:
        raise UserError("ignore_parameters names %s, which is not a variable of this model"
                        % unknown[0])
    frozen = set(opts.ignore_parameters)
    if opts.spout_vector == "none":
        # Spout weights receive no gradient without a spout: leave them alone.
        frozen |= {n for n in names if n.startswith("pasts/")}
    variables = [v for v in mtf_graph.trainable_variables if v.name not in frozen]
    if not variables:
        raise UserError("every variable is frozen; nothing to train")
    return variables


def loss_scale_update(loss_scale, finite):
    """Dynamic loss scaling: halve on overflow (the step is skipped), double
    after 1000 clean steps."""
    good = tf.get_variable("loss_scale_good_steps", initializer=0, trainable=False)
    grow = tf.logical_and(finite, tf.equal(tf.math.floormod(good + 1, 1000), 0))
    new_scale = tf.where(finite, tf.where(grow, loss_scale * 2.0, loss_scale),
                         tf.maximum(loss_scale / 2.0, 1.0))
    return tf.group(tf.assign(loss_scale, new_scale),
                    tf.assign(good, tf.where(finite, good + 1, 0)))


def after_every_gradient(grads):
    """The gradients, each available only once all of them are computed.

    The backward pass reads the weights directly (TF1 reference variables), so
    an update that ran before a later gradient was computed would change what
    that gradient sees, and a step would depend on thread timing. (On a TPU the
    step is compiled as one XLA program, where this cannot happen.)
    """
    def laid_out(g):  # a plain tensor per slice, as control dependencies need
        return mtf.slicewise(tf.identity, [g], output_shape=g.shape, output_dtype=g.dtype,
                             splittable_dims=g.shape.dims)

    barrier = [laid_out(g) for g in grads]
    return [mtf.depend(g, barrier) for g in barrier]


def build_train_step(opts, features, mesh_shape, mesh_impl):
    """features -> model -> loss -> optimizer, lowered onto `mesh_impl`.

    The one training graph: the session loop (Trainer) lowers it onto GPUs/CPUs
    with the placement implementation, the TPUEstimator model_fn onto TPU cores
    with the SIMD implementation. Returns a namespace of the TF tensors and ops.
    """
    mp, tp = opts.params.model, opts.params.train
    batch_size, length = tp.batch_size, mp.num_contexts
    mtf_graph, mesh = meshlib.new_mesh()
    cfg = network.Config(mp, activation_dtype=activation_dtype(opts), layout=meshlib.LAYOUT,
                         mesh_shape=mesh_shape, router_jitter=opts.router_jitter, seed=opts.seed,
                         no_token_drop=opts.no_token_drop)
    batch = mtf.Dimension("batch", batch_size)
    length_dim = mtf.Dimension("length", length)

    def imp(t, dims):
        return runtime.import_tensor(mesh, t, dims)

    spout = spout_input(opts, features, batch_size)
    out = network.model(
        imp(features["x"], [batch, length_dim]), cfg,
        num_precontext=imp(features["num_input"], [batch]),
        spout=None if spout is None else imp(spout, [batch, cfg.dims.spout]), train=True)
    lm_loss = network.lm_loss(out["head"], imp(features["y"], [batch, length_dim]), cfg)
    aux_loss = out["aux_loss"] if out["aux_loss"] is not None else mtf.zeros(mesh, [])
    aux_loss = mtf.cast(aux_loss, tf.float32)
    loss = lm_loss + aux_loss

    variables = trainable_variables(opts, mtf_graph)
    global_step = tf.train.get_or_create_global_step()
    lr = optimizer.learning_rate(global_step, tp.base_lr, tp.num_warmup_steps,
                                 opts.lr_schedule)
    mtf_lr = imp(lr, [])
    loss_scale = scale = None
    if opts.use_mixed_precision:
        loss_scale = tf.get_variable("loss_scale", initializer=float(opts.loss_scale),
                                     trainable=False)
        scale = imp(loss_scale, [])
    grads = mtf.gradients([loss * scale if scale is not None else loss],
                          [v.outputs[0] for v in variables])
    grads = [mtf.cast(g, tf.float32) for g in grads]
    if mesh_impl.supports_control_dependencies:
        grads = after_every_gradient(grads)
    apply = None
    if scale is not None:
        apply = optimizer.finite_flag(grads)
        grads = [optimizer.zero_nonfinite(g) / scale for g in grads]
    if opts.clip_gradients > 0:
        grads, _ = optimizer.clip_by_global_norm(grads, opts.clip_gradients)
    if opts.optimizer == "adam":
        updates = optimizer.adam_updates(variables, grads, mtf_lr, apply)
    else:
        updates = optimizer.adafactor_updates(variables, grads, mtf_lr)

    lowering = mtf.Lowering(mtf_graph, {mesh: mesh_impl})
    step_ops = [lowering.lowered_operation(op) for op in updates]
    # The step counter moves only after every update has read the learning rate
    # of this step, so an update never uses the next step's rate.
    with tf.control_dependencies(step_ops):
        step_ops.append(tf.assign_add(global_step, 1))
    if apply is not None and not opts.fixed_loss_scale:
        finite = lowering.export_to_tf_tensor(apply) > 0.5
        step_ops.append(loss_scale_update(loss_scale, finite))
    trainable = {v.name for v in variables}
    all_trainable = mtf_graph.trainable_variables
    return types.SimpleNamespace(
        lowering=lowering, global_step=global_step, learning_rate=lr, loss_scale=loss_scale,
        loss=lowering.export_to_tf_tensor(lm_loss),
        aux_loss=lowering.export_to_tf_tensor(aux_loss),
        train_op=tf.group(step_ops), tokens_per_step=batch_size * length,
        trainable_names=sorted(trainable),
        frozen_names=sorted(v.name for v in all_trainable if v.name not in trainable),
        count={"trainable": sum(v.shape.size for v in variables),
               "frozen": sum(v.shape.size for v in all_trainable if v.name not in trainable),
               "optimizer_bytes": 4 * sum(v.shape.size for v in mtf_graph.all_variables
                                          if not v.trainable)})


class Trainer:
    """Owns the training graph and session; `run()` trains to max_training_step."""

    def __init__(self, opts):
        self.opts = opts
        self.model_params = opts.params.model
        self.train_params = opts.params.train
        self.devices = opts.devices or devicelib.local(self.model_params.num_pallarelizm)
        check_options(opts, self.devices.shape.dims[0].size)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(opts.seed)
            self._build()

    def _features(self):
        mp, batch_size = self.model_params, self.train_params.batch_size
        ds = inputs_lib.read_dataset(self.opts.input_files, batch_size, mp.num_contexts,
                                     shuffle=True, seed=self.opts.seed, repeat=True)
        return tf.data.make_one_shot_iterator(ds).get_next()

    def _build(self):
        impl = meshlib.placement(self.devices.shape, self.devices.devices)
        # The step's tensors and ops (loss, train_op, lowering, ...), as built.
        self.ops = build_train_step(self.opts, self._features(), self.devices.shape, impl)
        self.saver = tf.train.Saver(max_to_keep=self.train_params.max_to_keep_save,
                                    sharded=True, save_relative_paths=True)
        self.copy_to_slices = self.ops.lowering.copy_masters_to_slices()
        self.copy_to_masters = self.ops.lowering.copy_slices_to_masters()
        self.init = tf.group(tf.global_variables_initializer(), tf.local_variables_initializer())
        with tf.name_scope("summaries"):
            self.summaries = tf.summary.merge([
                tf.summary.scalar("loss", self.ops.loss),
                tf.summary.scalar("aux_loss", self.ops.aux_loss),
                tf.summary.scalar("learning_rate", self.ops.learning_rate)])

    # ---- session -----------------------------------------------------------
    def start(self):
        """Open the session: resume from output_dir, else init (and load init_checkpoint).

        Resumes from the newest complete checkpoint on disk whatever the `checkpoint`
        index says, falling back (with a message) past damaged ones; refuses to
        initialise over checkpoint files it cannot read unless opts.force."""
        from model import checkpoints
        self.lock = checkpoints.OutputLock(self.opts.output_dir).acquire()
        self.session = tf.Session(self.devices.target, graph=self.graph, config=self.devices.config)
        good, skipped = checkpoints.candidates(self.opts.output_dir)
        self.session.run(self.init)
        self.resumed_from = None
        loaded = None
        with self.graph.as_default():
            for prefix in good:
                try:
                    if _has_training_state(prefix, self.graph):
                        graphlib.check_checkpoint(prefix, graphlib.expected_variables(self.graph))
                        self.saver.restore(self.session, prefix)
                        self.resumed_from = prefix
                    else:
                        # Weights only (a converted or released model): start training from them.
                        self._load_weights(prefix)
                    loaded = prefix
                    break
                except (tf.errors.OpError, IndexError, ValueError) as e:
                    skipped.append((prefix, checkpoints.readable_error(prefix, e)))
                    self.session.run(self.init)
            for prefix, why in skipped:
                print("skipping checkpoint %s: %s" % (prefix, why), file=sys.stderr)
            if loaded is None and checkpoints.has_checkpoint_files(self.opts.output_dir) \
                    and not self.opts.force:
                self.lock.release()
                raise TrainingError("%(output_dir)s holds checkpoint files but none can be "
                                    "restored; repair or move them, or pass force=True to "
                                    "start from scratch there", output_dir=self.opts.output_dir)
            if loaded is None and self.opts.init_checkpoint:
                self._load_weights(self.opts.init_checkpoint)
            if loaded is not None and skipped:
                print("resuming from %s instead" % loaded, file=sys.stderr)
        checkpoints.recover_retention(self.saver, self.opts.output_dir,
                                      self.train_params.max_to_keep_save)
        self.session.run(self.copy_to_slices)
        return self

    def _load_weights(self, path):
        """Load the model weights present in `path`; slots and new layers keep
        their initial values (fine-tuning a converted model)."""
        path, wanted = graphlib.model_weights(path, graphlib.master_variables(self.graph))
        tf.train.Saver(var_list=wanted).restore(self.session, path)

    def step(self):
        return int(self.session.run(self.ops.global_step))

    def step_fetches(self):
        """What one training step runs: the update, then loss, aux_loss and the
        learning rate it used (the benchmarks time exactly this)."""
        ops = self.ops
        return [ops.train_op, ops.loss, ops.aux_loss, ops.learning_rate]

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
        stop = StopFlag()
        writer = tf.summary.FileWriter(o.output_dir, self.graph) if o.log_every else None
        step = self.step()
        start_step, last_save, losses = step, time.time(), []
        bar = Progress(step, o.max_training_step, o.max_seconds, o.progress)
        t0 = bar.t0
        failure, reason = None, ""
        try:
            while step < o.max_training_step and not stop.requested:
                if o.max_seconds and time.time() - t0 > o.max_seconds:
                    break
                fetch = self.step_fetches()
                want_summary = writer is not None and step % o.log_every == 0
                if want_summary:
                    fetch.append(self.summaries)
                try:
                    values = self.session.run(fetch)
                except tf.errors.DataLossError as e:
                    # Save the steps done so far before reporting the corrupt records.
                    failure = "corrupt training records: %(reason)s"
                    reason = str(e).strip().splitlines()[0]
                    break
                except tf.errors.OutOfRangeError:
                    failure = "the input pipeline yielded no batch: check input_files"
                    break
                step += 1
                losses.append(float(values[1]))
                if want_summary:
                    writer.add_summary(values[4], step)
                rate = (step - start_step) * self.ops.tokens_per_step / max(time.time() - t0, 1e-9)
                bar.update(step, loss="%.3f" % values[1], aux="%.3f" % values[2],
                           lr="%.2e" % values[3], tok_s="%.0f" % rate)
                due_steps = step % tp.checkpoint_per_steps == 0
                due_time = time.time() - last_save > tp.checkpoint_per_hours * 3600
                if due_steps or due_time:
                    self.save()
                    last_save = time.time()
        finally:
            bar.close()
            stop.restore()
        path = self.save()
        if writer is not None:
            writer.close()
        if failure:
            raise TrainingError(failure + " (saved %(path)s at step %(step)d)",
                                reason=reason, path=path, step=step)
        elapsed = time.time() - t0
        return {"checkpoint": path, "step": step, "steps_run": step - start_step,
                "final_loss": losses[-1] if losses else None,
                "mean_loss_last_10": float(np.mean(losses[-10:])) if losses else None,
                "tokens_per_second":
                    (step - start_step) * self.ops.tokens_per_step / max(elapsed, 1e-9),
                "interrupted": stop.requested, "losses": losses}

    def close(self):
        self.session.close()
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()


def _has_training_state(path, graph):
    """Does the checkpoint hold this graph's optimizer state (i.e. was it written
    by this training setup), rather than model weights alone?"""
    stored = dict(tf.train.list_variables(path))
    wanted = [n for n in graphlib.expected_variables(graph) if graphlib.is_optimizer_state(n)]
    return all(n in stored for n in wanted) and "global_step" in stored


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step; it then saves.

    A step that does not return (an input pipeline stuck on a slow or empty source)
    holds the main thread inside TensorFlow, where Python signal handlers never run.
    So the signal is also delivered through a wakeup socket to a watcher thread,
    which ends the process GRACE_SECONDS after the signal if the loop has not
    finished by then; a second signal ends it at once."""
    GRACE_SECONDS = 20.0

    def __init__(self):
        self.requested = False
        self._old = {}
        self._old_wakeup = None
        self._done = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        if self._old:
            import socket
            import threading
            self._reader, writer = socket.socketpair()
            writer.setblocking(False)
            self._writer = writer
            self._old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            threading.Thread(target=self._watch, daemon=True).start()

    def _handle(self, signum, frame):
        self.requested = True

    def _watch(self):
        import select
        deadline, signum = None, None
        while not self._done:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            ready, _, _ = select.select([self._reader], [], [], timeout)
            if self._done:
                return
            if ready:
                data = self._reader.recv(64)
                if not data:
                    self._reader.close()
                    return
                for byte in data:
                    if byte not in (signal.SIGINT, signal.SIGTERM):
                        continue
                    if deadline is not None:
                        self._exit(byte, "second signal")
                    self.requested, signum = True, byte
                    deadline = time.time() + self.GRACE_SECONDS
            elif deadline is not None and time.time() >= deadline:
                self._exit(signum, "the current step did not finish in %.0f s"
                           % self.GRACE_SECONDS)

    def _exit(self, signum, why):
        if self._done:
            return
        sys.stderr.write("stopped by signal %d (%s); no checkpoint for the unfinished "
                         "steps; re-running resumes from the last one\n" % (signum, why))
        sys.stderr.flush()
        os._exit(128 + signum)

    def restore(self):
        self._done = True
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._writer.close()  # the watcher sees end-of-file and closes its end
            self._old_wakeup = None
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Progress:
    """The training bar. A time-bounded run (max_seconds) ends on the clock long
    before its step bound, so its bar runs over minutes of training time, moved by
    the elapsed time, with the step count beside it; otherwise it runs over steps."""

    def __init__(self, initial_step, max_steps, max_seconds=0.0, enabled=True, file=None,
                 clock=time.time):
        from tqdm import tqdm
        self.clock, self.t0 = clock, clock()
        self.minutes = max_seconds / 60.0 if max_seconds else None
        if self.minutes:
            self.bar = tqdm(total=self.minutes, disable=not enabled, file=file, leave=True,
                            dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min "
                                       "[{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=max_steps, initial=initial_step, disable=not enabled,
                            file=file, unit="step", dynamic_ncols=True, leave=True)

    def update(self, step, **postfix):
        if self.minutes:
            self.bar.set_postfix(step=step, **postfix, refresh=False)
            done = min((self.clock() - self.t0) / 60.0, self.minutes)
            self.bar.update(max(done - self.bar.n, 0.0))
        else:
            self.bar.set_postfix(**postfix, refresh=False)
            self.bar.update(1)

    def close(self):
        self.bar.close()


def describe(trainer):
    """The start-of-run report: parameter counts and memory estimate."""
    c = trainer.ops.count
    weights_bytes = 4 * (c["trainable"] + c["frozen"])
    mp = trainer.model_params
    batch, length, h = trainer.train_params.batch_size, mp.num_contexts, mp.num_hidden
    layers = mp.num_layers
    # activations kept for backprop: a rough per-token, per-layer figure (attention
    # scores plus ~16 hidden-sized tensors), and the logits.
    activations = 4 * batch * length * (layers * (16 * h + mp.num_header * length)
                                        + 2 * mp.num_vocabulary)
    return {"trainable_parameters": c["trainable"], "frozen_parameters": c["frozen"],
            "optimizer_state_bytes": c["optimizer_bytes"],
            "estimated_accelerator_bytes": weights_bytes + c["optimizer_bytes"]
            + 4 * c["trainable"] + activations}


__all__ = ["TrainOptions", "Trainer", "describe"]
