"""Training through TPUEstimator: TPU pods with `--tpu_nodes`, or the same
program on the host CPU with `--use_tpu_estimator` (no TPU needed).

The model_fn builds the one training graph (`train.build_train_step`). On a
TPU it is lowered with mesh-tensorflow's SIMD implementation, one mesh slot
per TPU core, and the whole batch is broadcast to every host (each core takes
its slice, as the layout says). Without a TPU it is lowered with the placement
implementation on the CPU; that is how this path is tested here.

Checkpoints use the same variable names and the same sharded, relative-path
Saver as the session loop, so a run started on a TPU can resume on GPUs and the
other way round. SIGINT/SIGTERM and --max_minutes stop after the current loop
of `iterations_per_loop` steps and save.
"""
import os
import time

from model import inputs as inputs_lib
from model import mesh as meshlib
from model import devices as devicelib
from model import graph as graphlib
from model import train
from model.errors import UserError
from model.compat import mtf, simd_mesh_impl, tf

SUMMARY_KEYS = ("loss", "aux_loss", "learning_rate")


def tpu_master(tpu_nodes):
    """(grpc master, number of TPU cores) of the named TPU, through cloud-tpu-client."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_nodes.split(","))
    master = resolver.get_master()
    workers = len(resolver.cluster_spec().as_dict().get("worker", [None]))
    cores = resolver.num_accelerators().get("TPU")
    if not cores:
        raise ValueError("%s reports no TPU cores" % tpu_nodes)
    return master, workers * cores


def tpu_mesh_impl(mesh_shape, context):
    """SIMD mesh implementation over the cores TPUEstimator assigned to this program."""
    assignment = context.device_assignment
    physical = list(assignment.topology.mesh_shape)
    try:
        order = simd_mesh_impl.auto_logical_to_physical_tpu(mesh_shape.to_integer_list,
                                                            physical)
    except Exception:  # unknown topology format: lexicographic core order still works
        order = None
    return simd_mesh_impl.SimdMeshImpl(mesh_shape, mtf.convert_to_layout_rules(meshlib.LAYOUT),
                                       None, assignment, logical_to_physical=order)


def model_fn_for(opts, mesh_shape, cpu_devices):
    """The TPUEstimator model_fn; `cpu_devices` are used when not on a TPU."""

    def model_fn(features, labels, mode, params):
        del labels
        if mode != tf.estimator.ModeKeys.TRAIN:
            raise ValueError("this model_fn only trains")
        context = params.get("context")
        impl = (tpu_mesh_impl(mesh_shape, context) if context is not None
                else meshlib.placement(mesh_shape, cpu_devices))
        step = train.build_train_step(opts, features, mesh_shape, impl)
        if opts.init_checkpoint:
            _init_from(opts.init_checkpoint)
        saver = tf.train.Saver(max_to_keep=opts.params.train.max_to_keep_save,
                               sharded=True, save_relative_paths=True)
        tf.add_to_collection(tf.GraphKeys.SAVERS, saver)
        tp = opts.params.train
        saver_hook = tf.train.CheckpointSaverHook(
            opts.output_dir, save_steps=tp.checkpoint_per_steps, saver=saver,
            listeners=[mtf.MtfCheckpointSaverListener(step.lowering)])
        values = [step.loss, step.aux_loss, step.learning_rate]
        host_call = (_write_summaries(opts.output_dir),
                     [tf.reshape(tf.cast(step.global_step, tf.int64), [1])]
                     + [tf.reshape(tf.cast(v, tf.float32), [1]) for v in values])
        return tf.estimator.tpu.TPUEstimatorSpec(
            mode, loss=step.loss, train_op=step.train_op, host_call=host_call,
            training_hooks=[mtf.MtfRestoreHook(step.lowering), saver_hook])

    return model_fn


def _write_summaries(output_dir):
    """host_call: TensorBoard scalars written on the host (TPU summaries must be)."""

    def write(global_step, *values):
        tf2 = tf.compat.v2
        with tf2.summary.create_file_writer(output_dir).as_default():
            with tf2.summary.record_if(True):
                for key, value in zip(SUMMARY_KEYS, values):
                    tf2.summary.scalar(key, value[0], step=global_step[0])
                return tf.summary.all_v2_summary_ops()

    return write


def _init_from(path):
    """Start from the model weights in `path` (a converted or released model);
    optimizer slots and new layers keep their initial values."""
    path, wanted = graphlib.model_weights(path, tf.global_variables())
    tf.train.init_from_checkpoint(path, {v.op.name: v.op.name for v in wanted})


def input_fn_for(opts):
    mp = opts.params.model

    def input_fn(params):
        # BROADCAST input: params["batch_size"] is the global batch on every host.
        return inputs_lib.read_dataset(opts.input_files, params["batch_size"],
                                       mp.num_contexts, shuffle=True, seed=opts.seed,
                                       repeat=True)

    return input_fn


class _StopHook(tf.train.SessionRunHook):
    """Stop after --max_minutes or on SIGINT/SIGTERM; CheckpointSaverHook then saves."""

    def __init__(self, max_seconds):
        self.max_seconds = max_seconds
        self.requested = False

    def begin(self):
        self.t0 = time.time()
        self.flag = train.StopFlag()

    def after_run(self, run_context, run_values):
        timed_out = self.max_seconds and time.time() - self.t0 > self.max_seconds
        if self.flag.requested or timed_out:
            self.requested = self.flag.requested
            run_context.request_stop()

    def end(self, session):
        self.flag.restore()


def check_resumable(output_dir):
    """TPUEstimator restores everything it saved; a weights-only checkpoint in
    output_dir (a converted model) must be read through init_checkpoint instead."""
    latest = tf.train.latest_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if latest and "global_step" not in dict(tf.train.list_variables(latest)):
        raise UserError("%s holds model weights without training state; with the TPUEstimator "
                        "path, write checkpoints to another output directory (the weights "
                        "are read from this one)" % output_dir)
    return latest


def train_with_estimator(opts, mesh_shape, master=None, iterations_per_loop=100):
    """Train to opts.max_training_step through TPUEstimator; a TPU when `master`
    is given, else the host CPU. Returns the same summary keys as Trainer.run."""
    tp, mp = opts.params.train, opts.params.model
    train.check_options(opts, mesh_shape.dims[0].size)
    resumed = check_resumable(opts.output_dir)
    if resumed:
        opts.init_checkpoint = None  # the estimator resumes from output_dir itself
    use_tpu = master is not None
    devices = devicelib.local(mp.num_pallarelizm, mesh_shape, mesh_shape.size)
    run_config = tf.estimator.tpu.RunConfig(
        master=master, model_dir=opts.output_dir,
        session_config=None if use_tpu else devices.config,
        tf_random_seed=opts.seed,
        save_checkpoints_steps=None, save_checkpoints_secs=None,
        keep_checkpoint_max=tp.max_to_keep_save, log_step_count_steps=None,
        tpu_config=tf.estimator.tpu.TPUConfig(
            iterations_per_loop=iterations_per_loop, num_cores_per_replica=1,
            num_shards=mesh_shape.size if use_tpu else None,
            per_host_input_for_training=tf.estimator.tpu.InputPipelineConfig.BROADCAST))
    estimator = tf.estimator.tpu.TPUEstimator(
        model_fn=model_fn_for(opts, mesh_shape, devices.devices), config=run_config,
        use_tpu=use_tpu, train_batch_size=tp.batch_size)
    start_step = _checkpoint_step(opts.output_dir)
    stop = _StopHook(opts.max_seconds)
    t0 = time.time()
    if start_step < opts.max_training_step:
        estimator.train(input_fn_for(opts), max_steps=opts.max_training_step, hooks=[stop])
    elapsed = time.time() - t0
    step = _checkpoint_step(opts.output_dir)
    losses = read_scalars(opts.output_dir, "loss")
    return {"checkpoint": tf.train.latest_checkpoint(opts.output_dir), "step": step,
            "steps_run": step - start_step, "resumed_from": resumed,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "tokens_per_second": (step - start_step) * tp.batch_size * mp.num_contexts
            / max(elapsed, 1e-9),
            "interrupted": stop.requested, "losses": losses}


def _checkpoint_step(output_dir):
    latest = tf.train.latest_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not latest:
        return 0
    return int(tf.train.load_variable(latest, "global_step"))


def read_scalars(output_dir, tag):
    """The values of one summary scalar in output_dir's event files, by step."""
    from tensorflow.python.summary.summary_iterator import summary_iterator
    from tensorflow.python.framework import tensor_util
    by_step = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(output_dir, "events.out.tfevents.*"))):
        for event in summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    number = (value.simple_value if value.HasField("simple_value")
                              else float(tensor_util.MakeNdarray(value.tensor)))
                    by_step[event.step] = number
    return [by_step[k] for k in sorted(by_step)]
