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
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import cli  # noqa: E402
from model.atomic import JsonLinesOutput  # noqa: E402

REPO = os.path.dirname(os.path.abspath(__file__))
START, END = "=====[start generate]=====", "=====[end generate]====="


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(p)
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


def add_model_flags(p):
    """Flags shared with run_languagemodel.py."""
    p.add_argument("--model", required=True,
                   help="model directory (parameters.json and a checkpoint)")
    p.add_argument("--vocabulary", default=os.path.join(REPO, "ja-swe36k.txt"),
                   help="vocabulary file the model was trained with")
    p.add_argument("--emoji", default=os.path.join(REPO, "emoji.json"), help="emoji table")
    p.add_argument("--mesh_shape", default=None, help="override the mesh, e.g. 2x2")
    p.add_argument("--cpu_devices", type=int, default=None,
                   help="split the CPU into N logical devices")
    p.add_argument("--tpu_nodes", default=None, help="TPU name(s) (needs a reachable TPU)")


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


def parse_spout(value, num_spout, rng):
    """The spout vector [num_spout] for --spout, or None."""
    import numpy as np
    if value == "none":
        return None
    if not num_spout:
        cli.fail("this model has no spout weights (num_spout is 0 in parameters.json); "
                 "run with --spout none")
    if value == "uniform":
        return rng.uniform(0.0, 1.0, num_spout).astype(np.float32)
    if value == "zeros":
        return np.zeros(num_spout, np.float32)
    if value.lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < num_spout:
            cli.fail("--spout class %d is outside 0..%d" % (k, num_spout - 1))
        return np.eye(num_spout, dtype=np.float32)[k]
    if value.endswith((".npy", ".json")):
        return load_spout_file(value, num_spout)
    cli.fail("--spout must be none, uniform, zeros, a class number or a .npy/.json file; "
             "got %r" % value)


def load_spout_file(path, num_spout):
    import numpy as np
    cli.require_file(path, "spout file")
    try:
        if path.endswith(".npy"):
            vector = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as f:
                vector = np.asarray(json.load(f), dtype=np.float64)
        vector = np.asarray(vector, np.float32).reshape(-1)
    except (ValueError, TypeError, OSError) as e:
        cli.fail("cannot read spout vector from %s: %s" % (path, e))
    if vector.size != num_spout:
        cli.fail("spout file %s holds %d values but the model's num_spout is %d"
                 % (path, vector.size, num_spout))
    if not np.all(np.isfinite(vector)):
        cli.fail("spout file %s holds non-finite values" % path)
    return vector


class Prompt:
    """One context as model input ids plus the size of its bidirectional prefix."""

    def __init__(self, text, enc, prefix):
        self.text = text
        body = enc.encode(text)
        if prefix:
            self.ids = [enc.startoftext] + body + [enc.segmenter]
            self.num_precontext = 1 + len(body)
        else:
            self.ids = [enc.startoftext, enc.segmenter] + body
            self.num_precontext = 0
        from model import decoding
        self.previous = decoding.last_visible(body, enc)


class StreamPrinter:
    """Prints row 0's text as tokens arrive (called from inside the graph)."""

    def __init__(self, enc, previous, out=sys.stdout):
        from model import decoding
        self.enc, self.previous, self.out = enc, previous, out
        self.to_text = decoding.ids_to_text
        self.start()

    def start(self):
        self.ids, self.printed = [], ""

    def __call__(self, step, tokens, active):
        if not active[0]:
            return
        self.ids.append(int(tokens[0]))
        text = self.to_text(self.ids, self.enc, self.previous)
        # A multi-byte character split over byte tokens shows up as U+FFFD
        # until its last byte arrives: hold it back until then.
        stable = text.rstrip("\ufffd")
        if stable.startswith(self.printed) and len(stable) > len(self.printed):
            self.out.write(stable[len(self.printed):])
            self.out.flush()
            self.printed = stable

    def finish(self):
        text = self.to_text(self.ids, self.enc, self.previous)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
        self.out.write("\n")


class Generator:
    """A decoder sized for these prompts; decodes rows_per_prompt candidates of
    each prompt together and keeps the best."""

    def __init__(self, args, model_params, prompts, rows_per_prompt, sampling, spout=None,
                 on_emit=None):
        from model import decoding, runtime
        from model.compat import tf
        self.args, self.spout, self.rows_per_prompt = args, spout, rows_per_prompt
        C = model_params["num_contexts"]
        longest = max(len(p.ids) for p in prompts)
        prompts_per_batch = min(len(prompts), args.batch_size) if args.input_file else 1
        self.batch_size = rows_per_prompt * prompts_per_batch
        devices = runtime.Devices.local(model_params["num_pallarelizm"],
                                        mesh_shape=args.mesh_shape, cpu_devices=args.cpu_devices)
        self.decoder = decoding.Decoder(
            model_params, self.batch_size,
            decoding.prompt_buffer_length(longest, args.max_generate, C),
            min(args.max_generate, C + 1), sampling, devices=devices,
            with_spout=spout is not None,
            activation_dtype=tf.bfloat16 if args.use_bfloat16 else tf.float32, on_emit=on_emit)
        self.decoder.restore(args.model)
        self.calls = 0

    @property
    def prompts_per_batch(self):
        return self.batch_size // self.rows_per_prompt

    def best(self, prompts):
        from model import decoding
        n = self.rows_per_prompt
        rows = [p for p in prompts for _ in range(n)]
        spout = None if self.spout is None else [self.spout] * len(rows)
        # Every call draws from its own random streams (same seed, same texts).
        results = decoding.generate(self.decoder, [p.ids for p in rows],
                                    [p.num_precontext for p in rows], self.args.max_generate,
                                    seed=self.args.seed, spout=spout,
                                    seed_offset=self.calls << 40)
        self.calls += 1
        return [max(results[k * n:(k + 1) * n], key=lambda r: r.mean_logprob)
                for k in range(len(prompts))]


def make_sampling(args, enc):
    from model import decoding
    return decoding.Sampling(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                             banned=[enc.nottoken, enc.separator], end_id=enc.endoftext)


def load(args):
    from model import decoding
    decoding.check_tpu(args.tpu_nodes)
    model_params = decoding.load_model_params(args.model)
    enc = decoding.load_vocabulary(args.vocabulary, args.emoji, model_params["num_vocabulary"])
    return model_params, enc


def generate_one(args, model_params, enc, spout):
    from model import decoding
    prompt = Prompt(args.context, enc, args.prefix)
    warn_if_long([prompt], model_params)
    printer = StreamPrinter(enc, prompt.previous) if args.stream else None
    generator = Generator(args, model_params, [prompt], args.beam_width,
                          make_sampling(args, enc), spout, on_emit=printer)
    for _ in range(args.num_generate):
        print(START, flush=True)
        if printer:
            printer.start()
            generator.best([prompt])
            printer.finish()
        else:
            result = generator.best([prompt])[0]
            print(decoding.ids_to_text(result.tokens, enc, prompt.previous))
        print(END, flush=True)
    return 0


def read_contexts(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError:
        cli.fail("input file %s is not UTF-8 text" % path)


def generate_file(args, model_params, enc, spout):
    from tqdm import tqdm
    from model import decoding
    contexts = read_contexts(args.input_file)
    if not contexts:
        cli.fail("input file %s holds no contexts" % args.input_file)
    prompts = [Prompt(c, enc, args.prefix) for c in contexts]
    warn_if_long(prompts, model_params)
    generator = Generator(args, model_params, prompts, args.beam_width,
                          make_sampling(args, enc), spout)
    step = generator.prompts_per_batch
    out = JsonLinesOutput(args.output)
    with tqdm(total=len(prompts) * args.num_generate, unit="text", file=sys.stderr,
              disable=args.no_progress) as bar:
        for _ in range(args.num_generate):
            for start in range(0, len(prompts), step):
                batch = prompts[start:start + step]
                for p, r in zip(batch, generator.best(batch)):
                    out.add({"context": p.text,
                             "text": decoding.ids_to_text(r.tokens, enc, p.previous),
                             "tokens": r.tokens, "mean_logprob": r.mean_logprob})
                bar.update(len(batch))
    out.close()
    return 0


def warn_if_long(prompts, model_params):
    C = model_params["num_contexts"]
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
    model_params, enc = load(args)
    make_sampling(args, enc)  # bad --top_k/--top_p/--temperature fail before any graph
    spout = parse_spout(args.spout, model_params.get("num_spout", 0),
                        np.random.RandomState(args.seed))
    if args.input_file:
        return generate_file(args, model_params, enc, spout)
    return generate_one(args, model_params, enc, spout)


if __name__ == "__main__":
    cli.run(main, build_parser())
