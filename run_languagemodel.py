"""Fill [MASK]s in a text, score its tokens and read out hidden-state vectors.

Example:
  python run_languagemodel.py --model GPTSAN-2.8B-spout_is_uniform \
      --context "武田信玄は、[MASK]時代ファンならぜひ押さえておきたい名将の一人。"

The input is [<|startoftext|>] + the context's tokens, as the released script
builds it: in a model whose parameters.json says train_mode "hybrid" (or has no
train_mode) every --mask string becomes one <|inputmask|> and every context
token is bidirectional prefix (num_precontext = the number of context tokens;
the last one is causal); in a train_mode "lm" model the mask string is plain
text and nothing is prefix. No <|endoftext|> is appended. A text longer than
the model's context is cut to its first num_contexts positions (a note says so).

For input position i, the output token is the argmax of the logits at i when
the input token at i + 1 is <|inputmask|>, otherwise that token; its score is
the raw logit at i of the input token at i + 1. The vector is the hidden state
after every layer at --pos_vector (default -1: the last input position),
concatenated (layers x hidden values; 10,240 for GPTSAN-2.8B).

Expert capacity is the released model's (factor 2.0, at least 4 tokens per
expert, per text): a token over an expert's capacity gets no expert output.
--no_token_drop gives every token its expert.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import cli, cli_infer  # noqa: E402
from model.atomic import JsonLinesOutput, write_text_atomic  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    cli_infer.add_model_flags(p)
    p.add_argument("--context", default=None, help="text to analyse")
    p.add_argument("--mask", default="[MASK]", help="string marking a token to fill in")
    p.add_argument("--pos_vector", type=int, default=-1,
                   help="input position whose hidden states form the vector: 0 is "
                        "<|startoftext|>, k the k-th context token, negative counts from "
                        "the end of the (possibly truncated) input (default -1: the last)")
    p.add_argument("--no_token_drop", action="store_true",
                   help="give every token its expert (the released model drops tokens over "
                        "an expert's capacity; default: drop, as released)")
    p.add_argument("--output", default=None,
                   help="write the result as JSON (JSON lines with --input_file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.add_argument("--input_file", default=None,
                   help="one text per line; JSON lines {output_text, output_tokens, "
                        "output_scores, output_vector, input_text, input_tokens, "
                        "output_spellings} to --output or stdout")
    p.add_argument("--batch_size", type=int, default=8, help="texts per batch for --input_file")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def check_args(args):
    if (args.context is None) == (args.input_file is None):
        cli.fail("give exactly one of --context and --input_file")
    if not args.mask:
        cli.fail("--mask must not be empty")
    if args.batch_size < 1:
        cli.fail("--batch_size must be at least 1, got %d" % args.batch_size)
    if args.input_file:
        cli.require_file(args.input_file, "input file")
    if args.output:
        cli.check_output_file(args.output, args.force)


def print_result(result):
    print("{OUTPUT TEXTS}")
    print(result["output_text"])
    print("{OUTPUT TOKENS}")
    print(json.dumps(result["output_tokens"]))
    print("{OUTPUT SCORES}")
    print(json.dumps(result["output_scores"]))
    print("{OUTPUT VECTOR SHAPE}")
    print("(%d,)" % len(result["output_vector"]))


def notes(args, model_params, queries):
    """One-line notes on stderr about what the released semantics did to the input."""
    if not model_params.fills_masks and any(args.mask in q.text for q in queries):
        print("note: this model's parameters.json says train_mode \"%s\": %r is read as "
              "text and nothing is filled; train_mode \"hybrid\" enables mask filling"
              % (model_params.train_mode, args.mask), file=sys.stderr)
    cut = sum(q.truncated for q in queries)
    if cut:
        print("note: %d text(s) longer than the model's %d positions were cut to the first "
              "%d" % (cut, model_params.num_contexts, model_params.num_contexts),
              file=sys.stderr)


def analyse_one(args, model_params, enc):
    query = cli_infer.make_queries(args, model_params, enc, [args.context])[0]
    notes(args, model_params, [query])
    result = cli_infer.Scorer(args, model_params, 1, len(query.ids)).run([query], enc)[0]
    print_result(result)
    if args.output:
        write_text_atomic(args.output, json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def analyse_file(args, model_params, enc):
    from tqdm import tqdm
    texts = cli.read_lines(args.input_file)
    if not texts:
        cli.fail("input file %s holds no texts" % args.input_file)
    queries = cli_infer.make_queries(args, model_params, enc, texts)
    notes(args, model_params, queries)
    with tqdm(total=len(queries), unit="text", file=sys.stderr, disable=args.no_progress) as bar:
        results = cli_infer.score_all(args, model_params, enc, queries, bar.update)
    out = JsonLinesOutput(args.output)
    for result in results:
        out.add(result)
    out.close()
    return 0


def main(args):
    check_args(args)
    model_params, enc = cli_infer.load(args)
    if args.input_file:
        return analyse_file(args, model_params, enc)
    return analyse_one(args, model_params, enc)


if __name__ == "__main__":
    cli.run(main, build_parser())
