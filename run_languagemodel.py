"""Fill [MASK]s in a text, score its tokens and read out hidden-state vectors.

Example:
  python run_languagemodel.py --model GPTSAN-2.8B-spout_is_uniform \
      --context "武田信玄は、[MASK]時代ファンならぜひ押さえておきたい名将の一人。"

Every --mask string becomes one <|inputmask|>. The model input is
[<|startoftext|>] + the context's tokens + [<|endoftext|>]; <|startoftext|> and
every context token form the bidirectional prefix (num_precontext = 1 + the
number of context tokens), so each position sees the whole context on both
sides. The appended <|endoftext|> is the slot after the last token: causal
attention lets it see everything while no context token sees it, and its
hidden states are the default --pos_vector (-1).

For context token k (input position i = k), the output token is the argmax of
the logits at i when that token is <|inputmask|>, otherwise the token itself;
its score is the logit at i of the input token at i + 1 (as the released
script did; at a mask this is the logit of <|inputmask|>). The vector is the
hidden state after every layer at --pos_vector, concatenated (layers x hidden
values; 10,240 for GPTSAN-2.8B).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import cli  # noqa: E402
from run_generate import add_model_flags  # noqa: E402
from model.atomic import JsonLinesOutput, write_text_atomic  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(p)
    p.add_argument("--context", default=None, help="text to analyse")
    p.add_argument("--mask", default="[MASK]", help="string marking a token to fill in")
    p.add_argument("--pos_vector", type=int, default=-1,
                   help="input position whose hidden states form the vector: 0 is "
                        "<|startoftext|>, k the k-th context token, negative counts from "
                        "the end (-1: the <|endoftext|> slot after the last token)")
    p.add_argument("--output", default=None,
                   help="write the result as JSON (JSON lines with --input_file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.add_argument("--input_file", default=None,
                   help="one text per line; JSON lines {text, output_text, output_tokens, "
                        "output_scores, output_vector} to --output or stdout")
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


class Query:
    """One text as model input: ids, prefix size and the vector position."""

    def __init__(self, text, enc, mask, pos_vector, num_contexts):
        self.text = text
        self.tokens = []
        for k, piece in enumerate(text.split(mask)):
            if k:
                self.tokens.append(enc.inputmask)
            self.tokens += enc.encode(piece)
        self.ids = [enc.startoftext] + self.tokens + [enc.endoftext]
        if len(self.ids) > num_contexts:
            cli.fail("text is %d tokens; with <|startoftext|> and <|endoftext|> the model "
                     "takes at most %d: %.40r" % (len(self.tokens), num_contexts - 2, text))
        self.num_precontext = 1 + len(self.tokens)
        n = len(self.ids)
        self.pos_index = pos_vector + n if pos_vector < 0 else pos_vector
        if not 0 <= self.pos_index < n:
            cli.fail("--pos_vector %d is outside the input: %d positions (-%d..%d) for %d "
                     "context tokens plus <|startoftext|> and <|endoftext|>"
                     % (pos_vector, n, n, n - 1, len(self.tokens)))


def fill(query, logits, vector, enc):
    """The result dict for one query from its logits [length, vocab]."""
    from model import decoding
    out_ids, scores = [], []
    for i, next_id in enumerate(query.tokens):
        out_ids.append(int(logits[i].argmax()) if next_id == enc.inputmask else next_id)
        scores.append(float(logits[i, next_id]))
    return {"output_text": decoding.ids_to_text(out_ids, enc),
            "output_tokens": [enc.id_to_token(i) for i in out_ids],
            "output_scores": scores,
            "output_vector": [float(v) for v in vector]}


class Model:
    """A Forward graph with hidden-state vectors for a batch of queries."""

    def __init__(self, args, model_params, batch_size, length):
        from model import runtime
        devices = runtime.Devices.local(model_params["num_pallarelizm"],
                                        mesh_shape=args.mesh_shape, cpu_devices=args.cpu_devices)
        self.batch_size, self.length = batch_size, length
        self.forward = runtime.Forward(model_params, batch_size, length, devices=devices,
                                       with_pos_vector=True).restore(args.model)

    def run(self, queries, enc):
        import numpy as np
        B, L = self.batch_size, self.length
        tokens = np.zeros([B, L], np.int32)
        npc = np.zeros([B], np.int32)
        pos = np.zeros([B], np.int32)
        for row, q in enumerate(queries):
            tokens[row, :len(q.ids)] = q.ids
            npc[row], pos[row] = q.num_precontext, q.pos_index
        out = self.forward(tokens, num_precontext=npc, pos_index=pos)
        return [fill(q, out["logits"][row], out["pos_vector"][row], enc)
                for row, q in enumerate(queries)]


def print_result(result):
    print("{OUTPUT TEXTS}")
    print(result["output_text"])
    print("{OUTPUT TOKENS}")
    print(json.dumps(result["output_tokens"], ensure_ascii=False))
    print("{OUTPUT SCORES}")
    print(json.dumps([round(s, 4) for s in result["output_scores"]]))
    print("{OUTPUT VECTOR SHAPE}")
    print("(%d,)" % len(result["output_vector"]))


def analyse_one(args, model_params, enc):
    query = Query(args.context, enc, args.mask, args.pos_vector, model_params["num_contexts"])
    result = Model(args, model_params, 1, len(query.ids)).run([query], enc)[0]
    print_result(result)
    if args.output:
        write_text_atomic(args.output, json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def analyse_file(args, model_params, enc):
    from tqdm import tqdm
    from model import decoding
    with open(args.input_file, encoding="utf-8", errors="strict") as f:
        texts = f.read().splitlines()
    if not texts:
        cli.fail("input file %s holds no texts" % args.input_file)
    C = model_params["num_contexts"]
    queries = [Query(t, enc, args.mask, args.pos_vector, C) for t in texts]
    B = min(args.batch_size, len(queries))
    model = Model(args, model_params, B, decoding.bucket(max(len(q.ids) for q in queries), C))
    out = JsonLinesOutput(args.output)
    with tqdm(total=len(queries), unit="text", file=sys.stderr, disable=args.no_progress) as bar:
        for start in range(0, len(queries), B):
            batch = queries[start:start + B]
            for q, result in zip(batch, model.run(batch, enc)):
                out.add(dict(text=q.text, **result))
            bar.update(len(batch))
    out.close()
    return 0


def main(args):
    check_args(args)
    from model import decoding
    decoding.check_tpu(args.tpu_nodes)
    model_params = decoding.load_model_params(args.model)
    enc = decoding.load_vocabulary(args.vocabulary, args.emoji, model_params["num_vocabulary"])
    try:
        if args.input_file:
            return analyse_file(args, model_params, enc)
    except UnicodeDecodeError:
        cli.fail("input file %s is not UTF-8 text" % args.input_file)
    return analyse_one(args, model_params, enc)


if __name__ == "__main__":
    cli.run(main, build_parser())
