"""Continue a Japanese text with a trained GPTSAN model.

Example:
  python run_generate.py --model GPTSAN-2.8B-spout_is_uniform --context "武田信玄は、"

The input is [<|startoftext|>, <|segmenter|>] + the context (plain causal
context). With --prefix it is [<|startoftext|>] + the context +
[<|segmenter|>] and <|startoftext|> plus the context form the bidirectional
prefix of the hybrid model. Decoding runs inside the graph with a key/value
cache; outputs longer than the model's num_contexts slide the window (the most
recent half is re-encoded and decoding continues).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import cli, cli_infer  # noqa: E402
from model.atomic import JsonLinesOutput  # noqa: E402

START, END = "=====[start generate]=====", "=====[end generate]====="


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    cli_infer.add_model_flags(p)
    p.add_argument("--context", default="", help="text to continue")
    p.add_argument("--top_k", type=int, default=120,
                   help="sample among the k most likely tokens (1: greedy, 0: no limit)")
    p.add_argument("--top_p", type=float, default=1.0,
                   help="nucleus sampling: keep the smallest set of those tokens whose "
                        "probability reaches p (1.0: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    p.add_argument("--beam_width", type=int, default=4,
                   help="candidates decoded together; the one with the best mean "
                        "log-probability is printed")
    p.add_argument("--max_generate", type=int, default=300, help="most tokens to generate")
    p.add_argument("--num_generate", type=int, default=1, help="texts to generate per context")
    p.add_argument("--spout", default="none",
                   help="spout input: none, uniform, zeros, a class number (one-hot) or a "
                        ".npy/.json file holding num_spout values")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed; the same seed gives the same text (default: random)")
    p.add_argument("--prefix", action="store_true",
                   help="use the context as the bidirectional prefix of the hybrid model")
    p.add_argument("--input_file", default=None,
                   help="one context per line; writes JSON lines {context, text, tokens, "
                        "mean_logprob} to --output or stdout")
    p.add_argument("--batch_size", type=int, default=4,
                   help="contexts decoded together with --input_file (times beam_width rows)")
    p.add_argument("--output", default=None, help="JSON-lines file for --input_file results")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.add_argument("--stream", action="store_true",
                   help="print the text as it is generated (decodes one candidate: "
                        "--beam_width is ignored)")
    p.add_argument("--use_bfloat16", action="store_true",
                   help="bfloat16 weights and activations (half the memory)")
    p.add_argument("--no_progress", action="store_true",
                   help="no progress bar for --input_file")
    return p


def check_args(args):
    for name in ("max_generate", "num_generate", "beam_width", "batch_size"):
        if getattr(args, name) < 1:
            cli.fail("--%s must be at least 1, got %d" % (name, getattr(args, name)))
    if args.stream and args.input_file:
        cli.fail("--stream prints one text; it cannot be combined with --input_file")
    if args.output and not args.input_file:
        cli.fail("--output is for --input_file results; the text goes to stdout")
    if args.input_file:
        cli.require_file(args.input_file, "input file")
    if args.output:
        cli.check_output_file(args.output, args.force)


def generate_one(args, model_params, enc, spout):
    from model import text
    prompt = text.Prompt(args.context, enc, args.prefix)
    warn_if_long([prompt], model_params)
    printer = cli_infer.StreamPrinter(enc, prompt.previous) if args.stream else None
    generator = cli_infer.Generator(args, model_params, [prompt], args.beam_width,
                                    cli_infer.make_sampling(args, enc), spout, on_emit=printer)
    for _ in range(args.num_generate):
        print(START, flush=True)
        if printer:
            printer.start()
            generator.best([prompt])
            printer.finish()
        else:
            result = generator.best([prompt])[0]
            print(text.ids_to_text(result.tokens, enc, prompt.previous))
        print(END, flush=True)
    return 0


def generate_file(args, model_params, enc, spout):
    from tqdm import tqdm
    from model import text
    contexts = cli.read_lines(args.input_file)
    if not contexts:
        cli.fail("input file %s holds no contexts" % args.input_file)
    prompts = [text.Prompt(c, enc, args.prefix) for c in contexts]
    warn_if_long(prompts, model_params)
    generator = cli_infer.Generator(args, model_params, prompts, args.beam_width,
                                    cli_infer.make_sampling(args, enc), spout)
    step = generator.prompts_per_batch
    out = JsonLinesOutput(args.output)
    with tqdm(total=len(prompts) * args.num_generate, unit="text", file=sys.stderr,
              disable=args.no_progress) as bar:
        for _ in range(args.num_generate):
            for start in range(0, len(prompts), step):
                batch = prompts[start:start + step]
                for p, r in zip(batch, generator.best(batch)):
                    out.add({"context": p.text,
                             "text": text.ids_to_text(r.tokens, enc, p.previous),
                             "tokens": r.tokens, "mean_logprob": r.mean_logprob})
                bar.update(len(batch))
    out.close()
    return 0


def warn_if_long(prompts, model_params):
    C = model_params.num_contexts
    longest = max(len(p.ids) for p in prompts)
    if longest > C:
        print("note: a context is %d tokens; the model sees its last %d" % (longest, C),
              file=sys.stderr)


def main(args):
    import numpy as np
    check_args(args)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little") >> 1
    if args.stream:
        args.beam_width = 1
    model_params, enc = cli_infer.load(args)
    cli_infer.make_sampling(args, enc)  # bad --top_k/--top_p/--temperature fail before any graph
    spout = cli_infer.parse_spout(args.spout, model_params.num_spout,
                                  np.random.RandomState(args.seed))
    if args.input_file:
        return generate_file(args, model_params, enc, spout)
    return generate_one(args, model_params, enc, spout)


if __name__ == "__main__":
    cli.run(main, build_parser())
