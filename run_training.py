"""Pretrain (or continue training) a GPTSAN model from TFRecord shards.

Example:
  python run_training.py --parameter_file parameters.json \
      --input_files 'data/records/*.tfrecord' --output_dir runs/base
Re-running the same command resumes from the latest checkpoint in output_dir.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import cli  # noqa: E402
from model.cli_train import add_training_flags, train_from_args  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parameter_file", required=True,
                   help="parameters.json (model_params + train_params)")
    add_training_flags(p)
    p.add_argument("--output_dir", default=None,
                   help="checkpoint directory (default: train_params.output_dir)")
    return p


def main(args):
    from model import params as params_lib
    try:
        params = params_lib.load(cli.require_file(args.parameter_file, "parameter file"))
    except params_lib.ParameterError as e:
        cli.fail(str(e))
    output_dir = args.output_dir or params.train.output_dir
    if not output_dir:
        cli.fail("no output directory: pass --output_dir or set train_params.output_dir")
    return train_from_args(args, params.with_train(output_dir=output_dir), output_dir)


if __name__ == "__main__":
    cli.run(main, build_parser())
