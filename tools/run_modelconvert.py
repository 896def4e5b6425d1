#!/usr/bin/env python3
"""Add extension layers (and a spout) to a trained GPTSAN model for fine-tuning.

Example:
  python tools/run_modelconvert.py --checkpoint GPTSAN-2.8B-spout_is_uniform \
      --output GPTSAN-finetune --add_extra_stage 14
  python run_finetune.py --model GPTSAN-finetune --input_files 'records/*.tfrecord'

The output directory holds the new checkpoint (global_step reset to 0, Adam
slots dropped unless --keep_optimizer_state), parameters.json with
num_ext_layers (and num_spout) increased, and ignore-params.json: the weights
copied from the source, which run_finetune.py keeps frozen. With the default
--init identity the converted model computes exactly the source's logits until
it is trained (see model/convert.py for the one exception: a spout added by
--num_spout and then given).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import cli  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="source model directory (parameters.json + checkpoint) or a "
                        "checkpoint prefix inside one")
    p.add_argument("--output", required=True, help="directory to write the converted model to")
    p.add_argument("--add_extra_stage", type=int, default=0,
                   help="number of extension layers to add after the existing ones")
    p.add_argument("--num_spout", type=int, default=0,
                   help="add spout weights of this size (for a source without a spout)")
    p.add_argument("--init", default="identity", choices=["identity", "random"],
                   help="identity: new layers start as exact no-ops (same logits as the "
                        "source); random: LayerNorm gain 1 (the released behaviour)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights")
    p.add_argument("--keep_optimizer_state", action="store_true",
                   help="also copy the source's Adam slots (/adam_m, /adam_v: 3x the size)")
    p.add_argument("--freeze_spout", action="store_true",
                   help="list the source's spout projection (pasts/*) in ignore-params.json "
                        "too (by default it trains with the extension layers)")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def check_args(args):
    if args.add_extra_stage < 0 or args.num_spout < 0:
        cli.fail("--add_extra_stage and --num_spout must be >= 0")
    if args.add_extra_stage == 0 and args.num_spout == 0:
        cli.fail("nothing to add: pass --add_extra_stage N and/or --num_spout P")
    if not os.path.exists(args.checkpoint) and not os.path.isfile(args.checkpoint + ".index"):
        cli.fail("--checkpoint not found: %s" % args.checkpoint)
    # Checked again by convert(); here it fails before TensorFlow loads.
    if os.path.exists(args.output) and not args.force:
        cli.fail("%s already exists; pass --force to replace it" % args.output)


def main(args):
    check_args(args)
    from model import convert

    result = convert.convert(
        args.checkpoint, args.output, add_layers=args.add_extra_stage,
        num_spout=args.num_spout, init=args.init, seed=args.seed,
        keep_optimizer_state=args.keep_optimizer_state, freeze_spout=args.freeze_spout,
        force=args.force, progress=not args.no_progress)
    print("wrote %s: %d layers, %s parameters (%s frozen, %s trainable)"
          % (result["output"], result["num_layers"], format(result["parameters"], ","),
             format(result["frozen_parameters"], ","),
             format(result["trainable_parameters"], ",")), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    cli.run(main, build_parser())
