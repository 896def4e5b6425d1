"""Flags and the start-up sequence shared by run_training.py and run_finetune.py.

Importing this module does not import TensorFlow (so --help stays fast).
"""
import json
import os
import sys

from model import cli


def add_training_flags(p, input_help="TFRecord shards from tools/make_tfrecord.py "
                                     "(comma-separated globs; gs:// paths work)"):
    """Flags shared with run_finetune.py."""
    p.add_argument("--input_files", required=True, help=input_help)
    p.add_argument("--vocabulary", default=None,
                   help="vocabulary file; checked against num_vocabulary when given")
    p.add_argument("--spout_vector", default="none",
                   choices=["none", "uniform", "onehot", "stateless_uniform", "half_onehot"],
                   help="spout input: none; uniform (fresh random vector each step); onehot "
                        "(of the record's i mod num_spout); stateless_uniform (uniform vector "
                        "seeded by the record's i, the same every epoch); half_onehot (one-hot "
                        "of i mod num_spout/2 in the first half, uniform noise in the second) "
                        "(default: %(default)s)")
    p.add_argument("--max_training_step", type=int, default=100000)
    p.add_argument("--max_minutes", type=float, default=0.0,
                   help="stop and save after this many minutes of training (0: no limit); "
                        "re-running resumes")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adafactor"],
                   help="adam: the released AdamWeightDecay (eps 1e-8, weight decay 0.01 "
                        "except */bias, no bias correction); adafactor (default: %(default)s)")
    p.add_argument("--lr_schedule", default="released", choices=["released", "rsqrt"],
                   help="released: linear warm-up to base_lr, then 1/sqrt(max(step, "
                        "1/base_lr^2)); rsqrt: inverse square-root decay after warm-up "
                        "(default: %(default)s)")
    p.add_argument("--router_jitter", type=float, default=0.01,
                   help="multiplicative uniform noise on the router input in training, as "
                        "released (0: off) (default: %(default)s)")
    p.add_argument("--no_token_drop", action="store_true",
                   help="every token gets its expert in training too (default: the expert "
                        "capacity rule drops tokens over capacity factor 1.25)")
    p.add_argument("--use_bfloat16", action="store_true",
                   help="bfloat16 activations, float32 master weights")
    p.add_argument("--use_mixed_precision", action="store_true",
                   help="float16 activations with dynamic loss scaling")
    p.add_argument("--loss_scale", type=float, default=2.0 ** 15,
                   help="initial loss scale for --use_mixed_precision (default: %(default)s)")
    p.add_argument("--fixed_loss_scale", action="store_true",
                   help="keep --loss_scale constant instead of dynamic scaling (the released "
                        "fp16 recipe: --loss_scale 512 --fixed_loss_scale)")
    p.add_argument("--clip_gradients", type=float, nargs="?", const=0.01, default=0.0,
                   help="clip gradients to this global norm; the bare flag clips to 0.01, how "
                        "the released model was pre-trained (default: %(default)s = off)")
    p.add_argument("--ignore_parameters", default=None,
                   help="JSON list of variable names to freeze, or a file holding one")
    p.add_argument("--mesh_shape", default=None,
                   help="override the mesh, e.g. 2x2 or 'batch:2;model:2'")
    p.add_argument("--cpu_devices", type=int, default=None,
                   help="split the CPU into N logical devices (model parallelism on a laptop)")
    p.add_argument("--tpu_nodes", default=None,
                   help="TPU name(s) for TPUClusterResolver: train through TPUEstimator on "
                        "that TPU (mesh from num_pallarelizm over all its cores, or --mesh_shape)")
    p.add_argument("--use_tpu_estimator", action="store_true",
                   help="run the TPUEstimator program on this machine's CPU (no TPU needed): "
                        "checks a TPU setup before paying for one")
    p.add_argument("--iterations_per_loop", type=int, default=100,
                   help="TPUEstimator steps per host round trip (checkpoints, --max_minutes "
                        "and signals act between loops)")
    p.add_argument("--worker_hosts", default=None,
                   help="comma-separated host:port of a multi-host CPU/GPU cluster "
                        "(or set TF_CONFIG)")
    p.add_argument("--task_index", type=int, default=0, help="this process's worker index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--allow_incomplete_records", action="store_true",
                   help="train on records whose make_tfrecord summary says the run that "
                        "wrote them was interrupted")
    p.add_argument("--force", action="store_true",
                   help="start from scratch in an output directory whose checkpoint files "
                        "cannot be restored (they are overwritten)")


def validate_flags(args, output_dir):
    """Flag mistakes found before any graph is built."""
    import math
    if args.max_training_step < 1:
        cli.fail("--max_training_step must be at least 1, not %d" % args.max_training_step)
    if args.cpu_devices is not None and args.cpu_devices < 1:
        cli.fail("--cpu_devices must be at least 1, not %d" % args.cpu_devices)
    if not math.isfinite(args.max_minutes) or args.max_minutes < 0:
        cli.fail("--max_minutes must be a finite number >= 0")
    if args.mesh_shape:
        from model import mesh as meshlib
        try:
            meshlib.parse_mesh_shape(args.mesh_shape)
        except Exception as e:
            cli.fail("--mesh_shape %r is not a mesh such as 2x2 or 'batch:2;model:2' (%s)"
                     % (args.mesh_shape, e))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        cli.fail("--output_dir %s is a file, not a directory" % output_dir)


def parse_frozen(value, source="--ignore_parameters"):
    """A JSON list of variable names, given inline or as a file. `source` names where
    the value came from (the flag, or a file the model directory holds)."""
    if not value:
        return []
    text = value
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            cli.fail("cannot read %s (%s)" % (value, e))
    flag = source.startswith("--")
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        if flag:
            cli.fail("%s must be a JSON list of variable names or a file holding one" % source)
        cli.fail("%s is not a JSON list of variable names (damaged?); rewrite it, or pass "
                 "--ignore_parameters to choose the frozen weights" % source)
    return names


def check_vocabulary(path, model_params):
    if not path:
        return
    cli.require_file(path, "vocabulary file")
    from model import cli_infer
    cli_infer.check_vocabulary_size(path, model_params.num_vocabulary)


def record_summaries(files):
    """(folder, path, summary) for each make_tfrecord <name>-summary.json beside the
    record files; summary is None for a folder without one, and the OSError or
    ValueError itself for a file that cannot be read."""
    import glob
    for folder in sorted({os.path.dirname(f) for f in files if "://" not in f}):
        paths = sorted(glob.glob(os.path.join(folder, "*-summary.json")))
        if not paths:
            yield folder, None, None
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    yield folder, path, json.load(f)
            except (OSError, ValueError) as e:
                yield folder, path, e


def records_train_mode(file_pattern, sample=256):
    """"hybrid" when the records have a bidirectional prefix, else "lm".

    The records' summary (make_tfrecord's <name>-summary.json) names the mode;
    records without one (e.g. from the released tool) are judged by whether any of
    the first `sample` records has num_input > 0.
    """
    from model import inputs

    files = inputs.list_record_files(file_pattern)
    modes = set()
    for _, _, summary in record_summaries(files):
        mode = summary.get("options", {}).get("mode") if isinstance(summary, dict) else None
        if mode:
            modes.add(mode)
    if modes:
        return "hybrid" if modes & {"hybrid", "mlm"} else "lm"
    from model.compat import tf
    seen = 0
    for path in files[:8]:
        for rec in tf.compat.v1.io.tf_record_iterator(path):
            feature = tf.train.Example.FromString(rec).features.feature
            if "num_input" in feature and any(feature["num_input"].int64_list.value):
                return "hybrid"
            seen += 1
            if seen >= sample:
                return "lm"
    return "lm"


def check_record_summaries(files, model_params, vocabulary=None, allow_incomplete=False):
    """Compare make_tfrecord's <name>-summary.json in each records directory with the
    model: an interrupted run, or records of another vocabulary, are refused."""
    import hashlib
    vocab_sha = None
    if vocabulary:
        with open(vocabulary, "rb") as f:
            vocab_sha = hashlib.sha256(f.read()).hexdigest()
    unchecked = []
    for folder, path, summary in record_summaries(files):
        if path is None:
            unchecked.append(folder)
            continue
        if isinstance(summary, Exception) or not isinstance(summary, dict):
            cli.fail("cannot read the records summary %s (%s)" % (path, summary))
        if summary.get("complete") is False and not allow_incomplete:
            cli.fail("%s says the make_tfrecord run that wrote these records did not "
                     "finish; rebuild them, or pass --allow_incomplete_records" % path)
        vocab = summary.get("vocabulary") or {}
        size = vocab.get("size")
        if size is not None and size != model_params.num_vocabulary:
            cli.fail("records in %s were made with a vocabulary of %d ids but the model "
                     "has num_vocabulary %d (%s)" % (folder, size,
                                                     model_params.num_vocabulary, path))
        if vocab_sha and vocab.get("sha256") and vocab["sha256"] != vocab_sha:
            cli.fail("records in %s were made with another vocabulary than %s (sha256 "
                     "differs; %s)" % (folder, vocabulary, path))
    if unchecked:
        print("note: no make_tfrecord summary in %s: completeness and vocabulary of the "
              "records cannot be checked" % ", ".join(unchecked), file=sys.stderr)


# TrainOptions fields that library messages name and that are flags of the same name.
OPTION_FLAGS = ("force", "input_files", "spout_vector", "use_bfloat16", "use_mixed_precision",
                "optimizer", "lr_schedule")


def training_error_as_flags(error):
    """A train.TrainingError's message with the options it names written as flags
    (`force=True` is the store_true flag `--force`); the values (paths, record
    errors) are left as they are."""
    import re
    pattern = r"(?<![-\w])(%s)(?:=True)?\b" % "|".join(OPTION_FLAGS)
    return error.renamed(lambda template: re.sub(pattern, r"--\1", template))


def train_from_args(args, params, output_dir, init_checkpoint=None, extra_frozen=()):
    """Shared by run_training.py and run_finetune.py: build options, train, report."""
    from model import train

    validate_flags(args, output_dir)
    check_vocabulary(args.vocabulary, params.model)
    from model import inputs
    files = inputs.check_record_files(args.input_files, params.model.num_contexts)
    check_record_summaries(files, params.model, args.vocabulary,
                           args.allow_incomplete_records)
    # Inference scripts fill masks only for train_mode hybrid; an existing value
    # (a released or resumed directory) is kept.
    if params.model.train_mode is None:
        params = params.with_model(train_mode=records_train_mode(args.input_files))
    opts = train.TrainOptions(
        params=params, force=args.force, input_files=args.input_files, output_dir=output_dir,
        max_training_step=args.max_training_step, max_seconds=60.0 * args.max_minutes,
        spout_vector=args.spout_vector,
        optimizer=args.optimizer, use_bfloat16=args.use_bfloat16,
        use_mixed_precision=args.use_mixed_precision, loss_scale=args.loss_scale,
        fixed_loss_scale=args.fixed_loss_scale, clip_gradients=args.clip_gradients,
        lr_schedule=args.lr_schedule, router_jitter=args.router_jitter,
        no_token_drop=args.no_token_drop,
        ignore_parameters=list(extra_frozen) or parse_frozen(args.ignore_parameters),
        init_checkpoint=init_checkpoint, seed=args.seed, progress=not args.no_progress)
    try:
        # The mesh is known only later, where the trainer checks its batch split.
        train.check_options(opts, mesh_batch=1)
        if args.tpu_nodes or args.use_tpu_estimator:
            summary = _train_with_estimator(args, opts)
        else:
            summary = _train_in_session(args, opts)
    except train.TrainingError as e:
        cli.fail(training_error_as_flags(e))
    if summary is not None:
        print(json.dumps(summary))
    return 0


def _train_in_session(args, opts):
    from model import devices as devicelib
    from model import train

    opts.devices = devicelib.resolve(opts.params.model.num_pallarelizm,
                                     args.mesh_shape, args.cpu_devices, args.worker_hosts,
                                     args.task_index)
    if opts.devices is None:  # a non-chief worker served its devices until the chief finished
        return None
    trainer = train.Trainer(opts)
    print("mesh %s on %s" % (opts.devices.shape, ", ".join(opts.devices.devices)),
          file=sys.stderr)
    for key, value in train.describe(trainer).items():
        print("%s: %s" % (key, format(value, ",")), file=sys.stderr)
    trainer.start()
    if trainer.resumed_from:
        print("resuming from %s (step %d)" % (trainer.resumed_from, trainer.step()),
              file=sys.stderr)
    summary = trainer.run()
    trainer.close()
    return summary


def _train_with_estimator(args, opts):
    from model import devices as devicelib
    from model import estimator

    if args.iterations_per_loop < 1:
        cli.fail("--iterations_per_loop must be at least 1")
    if args.worker_hosts:
        cli.fail("--worker_hosts is for GPU/CPU clusters; a TPU brings its own hosts")
    shape, master = devicelib.tpu_mesh(opts.params.model.num_pallarelizm,
                                       args.tpu_nodes, args.mesh_shape, args.cpu_devices)
    print("TPUEstimator, mesh %s on %s" % (shape, master or "the host CPU"), file=sys.stderr)
    from model import checkpoints
    # A bucket path (gs://) cannot hold a lock file; a local directory is locked as the
    # session loop locks it.
    lock = None if "://" in opts.output_dir else checkpoints.OutputLock(opts.output_dir).acquire()
    try:
        return estimator.train_with_estimator(opts, shape, master, args.iterations_per_loop)
    finally:
        if lock is not None:
            lock.release()
