"""Fine-tune a converted GPTSAN model: train the extension layers (and spout), keep the rest frozen.

Example:
  python tools/run_modelconvert.py --checkpoint GPTSAN-2.8B-spout_is_uniform \
      --output GPTSAN-finetune --add_extra_stage 14
  python run_finetune.py --model GPTSAN-finetune --input_files 'records/*.tfrecord' \
      --spout_vector onehot --batch_size 8 --max_training_step 10000

The variables listed in MODEL/ignore-params.json (or --ignore_parameters) get
no gradients and no optimizer slots and stay bit-identical. Checkpoints go to
--output_dir (default: the model directory); re-running the same command
resumes from the latest one. Uses run_training.py's training loop.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import cli  # noqa: E402
from model.cli_train import add_training_flags, parse_frozen, train_from_args  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help="converted model directory (tools/run_modelconvert.py output)")
    add_training_flags(p, input_help="TFRecord shards from tools/make_tfrecord.py "
                                     "(comma-separated globs)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override train_params.batch_size")
    p.add_argument("--base_lr", type=float, default=None, help="override train_params.base_lr")
    p.add_argument("--num_warmup_steps", type=int, default=None,
                   help="override train_params.num_warmup_steps (linear warm-up, then "
                        "inverse square-root decay)")
    p.add_argument("--output_dir", default=None,
                   help="checkpoint directory (default: the model directory)")
    return p


def frozen_variables(args):
    """--ignore_parameters if given, else the weights in the model directory's
    transformer-params.json (the released converter's list of copied weights;
    their optimizer slots are not weights), else its ignore-params.json."""
    # model.convert owns the file names; imported here because it loads TensorFlow
    from model.convert import IGNORE_FILE, TRANSFORMER_FILE
    from model.graph import is_optimizer_state
    if args.ignore_parameters is not None:
        return parse_frozen(args.ignore_parameters)
    transformer = os.path.join(args.model, TRANSFORMER_FILE)
    if os.path.isfile(transformer):
        return [n for n in parse_frozen(transformer, source=transformer)
                if not is_optimizer_state(n)]
    path = os.path.join(args.model, IGNORE_FILE)
    if not os.path.isfile(path):
        cli.fail("%s has no %s (not a converted model?); convert it with "
                 "tools/run_modelconvert.py, or pass --ignore_parameters '[]' to train "
                 "every variable" % (args.model, IGNORE_FILE))
    return parse_frozen(path, source=path)


def apply_overrides(params, args):
    changes = {}
    if args.batch_size is not None:
        if args.batch_size < 1:
            cli.fail("--batch_size must be at least 1, got %d" % args.batch_size)
        changes["batch_size"] = args.batch_size
    if args.base_lr is not None:
        if args.base_lr <= 0:
            cli.fail("--base_lr must be positive, got %g" % args.base_lr)
        changes["base_lr"] = args.base_lr
    if args.num_warmup_steps is not None:
        if args.num_warmup_steps < 0:
            cli.fail("--num_warmup_steps must be >= 0, got %d" % args.num_warmup_steps)
        changes["num_warmup_steps"] = args.num_warmup_steps
    return params.with_train(**changes)


def main(args):
    from model import params as params_lib
    params = apply_overrides(params_lib.load_model_dir(args.model), args)
    frozen = frozen_variables(args)
    output_dir = args.output_dir or args.model
    params = params.with_train(output_dir=output_dir)
    # In the model directory itself the Trainer starts from the converted
    # weights (a checkpoint without optimizer state); elsewhere it loads them
    # from the model directory unless output_dir already has its own checkpoint.
    same = os.path.abspath(output_dir) == os.path.abspath(args.model)
    return train_from_args(args, params, output_dir,
                           init_checkpoint=None if same else args.model,
                           extra_frozen=frozen)


if __name__ == "__main__":
    cli.run(main, build_parser())
