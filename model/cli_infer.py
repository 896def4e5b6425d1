"""The inference command-line layer shared by run_generate.py and
run_languagemodel.py (training's counterpart: model/cli_train.py).

Model flags, loading a model directory (parameters, checkpoint, vocabulary),
devices, spout parsing, and the two inference drivers: Generator (cached
decoding, best of several candidates) and Scorer (one forward pass with
hidden-state vectors). Library errors name parameters; here they become
messages naming flags.
"""
import json
import os
import sys

from model import cli, text
from model import spout as spoutlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_model_flags(p):
    """Flags every inference script takes."""
    p.add_argument("--model", required=True,
                   help="model directory (parameters.json and a checkpoint)")
    p.add_argument("--vocabulary", default=os.path.join(REPO, "ja-swe36k.txt"),
                   help="vocabulary file the model was trained with")
    p.add_argument("--emoji", default=os.path.join(REPO, "emoji.json"), help="emoji table")
    p.add_argument("--mesh_shape", default=None, help="override the mesh, e.g. 2x2")
    p.add_argument("--cpu_devices", type=int, default=None,
                   help="split the CPU into N logical devices")
    p.add_argument("--tpu_nodes", default=None, help="TPU name(s) (needs a reachable TPU)")


# ---------------------------------------------------------------- loading
def check_tpu(tpu_nodes):
    """TPU inference is not wired up; say so plainly instead of hanging on a
    cluster resolver that cannot reach anything."""
    if not tpu_nodes:
        return
    try:
        import cloud_tpu_client  # noqa: F401
        reason = "cannot reach TPU %r from this machine" % tpu_nodes
    except ImportError:
        reason = "cloud-tpu-client is not installed"
    cli.fail("TPU inference needs cloud-tpu-client and a reachable TPU (%s); "
             "run without --tpu_nodes to use the local CPU/GPU" % reason)


def load_model_params(model_dir):
    """parameters.json of a model directory that also holds a checkpoint;
    user mistakes become UserError before any graph is built."""
    from model import graph as graphlib
    from model import params as paramslib
    model_params = paramslib.load_model_dir(model_dir).model
    graphlib.latest_checkpoint(model_dir)
    return model_params


def check_vocabulary_size(path, num_vocabulary):
    """A vocabulary file holds one id per line and no trailing newline (encode_swe's
    rule); its size must be the model's num_vocabulary."""
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except UnicodeDecodeError:
        cli.fail("vocabulary %s is not UTF-8 text" % path)
    size = len(content.split("\n"))
    if content.endswith("\n") and size == num_vocabulary + 1:
        cli.fail("vocabulary %s ends with a newline, which would be an extra empty "
                 "token; the file must not end with a newline" % path)
    if size != num_vocabulary:
        cli.fail("vocabulary %s has %d ids but the model has num_vocabulary %d; use "
                 "the vocabulary the model was trained with" % (path, size, num_vocabulary))


def load_vocabulary(vocab_file, emoji_file, num_vocabulary):
    """The encoder for these files, checked against the model's vocabulary size."""
    import encode_swe
    for path, what in ((vocab_file, "vocabulary file"), (emoji_file, "emoji file")):
        if not os.path.isfile(path):
            cli.fail("%s not found: %s (pass --vocabulary/--emoji)" % (what, path))
    # Compare sizes first: a foreign vocabulary may not even load.
    check_vocabulary_size(vocab_file, num_vocabulary)
    try:
        return encode_swe.load_encoder(vocab_file, emoji_file)
    except encode_swe.EmojiTableError as e:
        cli.fail("cannot load the emoji table %s: %s" % (emoji_file, e))
    except (OSError, ValueError) as e:
        cli.fail("cannot load vocabulary %s: %s" % (vocab_file, e))


def load(args):
    """(model parameters, encoder) for --model/--vocabulary/--emoji."""
    check_tpu(args.tpu_nodes)
    model_params = load_model_params(args.model)
    return model_params, load_vocabulary(args.vocabulary, args.emoji,
                                         model_params.num_vocabulary)


def devices(args, model_params):
    from model import devices as devicelib
    return devicelib.local(model_params.num_pallarelizm, mesh_shape=args.mesh_shape,
                           cpu_devices=args.cpu_devices)


# ---------------------------------------------------------------- spout
def parse_spout(value, num_spout, rng):
    """The spout vector [num_spout] for --spout, or None."""
    import numpy as np
    if value == "none":
        return None
    try:
        spoutlib.require(num_spout)
    except spoutlib.NoSpoutError as e:
        cli.fail("%s; run with --spout none" % e)
    if value == "uniform":
        return rng.uniform(0.0, 1.0, num_spout).astype(np.float32)
    if value == "zeros":
        return np.zeros(num_spout, np.float32)
    if value.lstrip("-").isdigit():
        try:
            return spoutlib.vector(int(value), num_spout)
        except ValueError as e:
            cli.fail("--%s" % e)
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
    try:
        return spoutlib.vector(vector, num_spout)
    except ValueError as e:
        cli.fail("spout file %s: %s" % (path, str(e).replace("spout holds", "holds")))


# ---------------------------------------------------------------- generation
def make_sampling(args, enc):
    from model import decoding
    try:
        return decoding.Sampling(top_k=args.top_k, top_p=args.top_p,
                                 temperature=args.temperature,
                                 banned=[enc.nottoken, enc.separator], end_id=enc.endoftext)
    except ValueError as e:  # names the parameter; the flag has the same name
        cli.fail("--%s" % e)


class StreamPrinter:
    """Prints row 0's text as tokens arrive (called from inside the graph)."""

    def __init__(self, enc, previous, out=sys.stdout):
        self.enc, self.previous, self.out = enc, previous, out
        self.start()

    def start(self):
        self.ids, self.printed = [], ""

    def __call__(self, step, tokens, active):
        if not active[0]:
            return
        self.ids.append(int(tokens[0]))
        shown = text.ids_to_text(self.ids, self.enc, self.previous)
        # A multi-byte character split over byte tokens shows up as U+FFFD
        # until its last byte arrives: hold it back until then.
        stable = shown.rstrip("\ufffd")
        if stable.startswith(self.printed) and len(stable) > len(self.printed):
            self.out.write(stable[len(self.printed):])
            self.out.flush()
            self.printed = stable

    def finish(self):
        shown = text.ids_to_text(self.ids, self.enc, self.previous)
        if shown.startswith(self.printed):
            self.out.write(shown[len(self.printed):])
        self.out.write("\n")


class Generator:
    """A decoder sized for these prompts; decodes rows_per_prompt candidates of
    each prompt together and keeps the best."""

    def __init__(self, args, model_params, prompts, rows_per_prompt, sampling, spout=None,
                 on_emit=None):
        from model import decoding
        from model.compat import tf
        self.args, self.spout, self.rows_per_prompt = args, spout, rows_per_prompt
        C = model_params.num_contexts
        longest = max(len(p.ids) for p in prompts)
        prompts_per_batch = min(len(prompts), args.batch_size) if args.input_file else 1
        self.batch_size = rows_per_prompt * prompts_per_batch
        self.decoder = decoding.Decoder(
            model_params, self.batch_size,
            decoding.prompt_buffer_length(longest, args.max_generate, C),
            min(args.max_generate, C + 1), sampling, devices=devices(args, model_params),
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


# ---------------------------------------------------------------- scoring
def make_queries(args, model_params, enc, texts):
    try:
        return [text.Query(t, enc, args.mask, args.pos_vector, model_params.num_contexts,
                           model_params.fills_masks) for t in texts]
    except ValueError as e:
        cli.fail("--%s" % e)


class Scorer:
    """A Forward graph with hidden-state vectors for a batch of queries."""

    def __init__(self, args, model_params, batch_size, length):
        from model import runtime
        self.batch_size, self.length = batch_size, length
        self.forward = runtime.Forward(model_params, batch_size, length,
                                       devices=devices(args, model_params),
                                       with_pos_vector=True,
                                       token_drop=not args.no_token_drop).restore(args.model)

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
        return [text.fill(q, out["logits"][row], out["pos_vector"][row], enc)
                for row, q in enumerate(queries)]


def score_all(args, model_params, enc, queries, on_done=lambda n: None):
    """Results for every query, in order, batched by --batch_size. Token dropping
    depends on the sequence length, so with it each length runs at that length;
    without it, padding never changes a row's result and one graph serves all."""
    from model import decoding
    C = model_params.num_contexts
    B = min(args.batch_size, len(queries))
    if args.no_token_drop:
        groups = {decoding.bucket(max(len(q.ids) for q in queries), C): list(range(len(queries)))}
    else:
        groups = {}
        for k, q in enumerate(queries):
            groups.setdefault(len(q.ids), []).append(k)
    results = [None] * len(queries)
    for length, members in sorted(groups.items()):
        scorer = Scorer(args, model_params, min(B, len(members)), length)
        for start in range(0, len(members), scorer.batch_size):
            rows = members[start:start + scorer.batch_size]
            for k, result in zip(rows, scorer.run([queries[k] for k in rows], enc)):
                results[k] = result
            on_done(len(rows))
    return results
