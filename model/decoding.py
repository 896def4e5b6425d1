"""Cached autoregressive decoding inside one TensorFlow graph.

The prompt goes through the network once (a padded buffer of P positions);
its keys/values fill a fixed-size cache of M = min(C, P + S) positions
(C = num_contexts, S = the most steps one call takes: a call never writes
past slot P + S - 2, and attention reads the whole cache at every step). Then
an `mtf.while_loop` feeds one token per step against that cache, samples the
next token and writes the step's keys/values into the cache in place, so
every step costs the same whatever the output length, and no Python runs
between tokens.

When a sequence outgrows C, the Python driver (`generate`) re-prompts with the
most recent C//2 tokens and runs the loop again: one session call per window.

Sequence index i (0 = first prompt token) lives in cache slot i and gets the
position embedding min(i + s, C - 1), where s = 1 when a spout is given (the
spout is the extra past slot placed before everything, as network.model does).
"""
import numpy as np

from model import devices as devicelib
from model import mesh as meshlib
from model import graph as graphlib
from model import network, runtime
from model import spout as spoutlib
from model.compat import mtf, tf

NEG_INF = -1e9
# Added to a step counter to pick a fresh random stream for every loop step.
SEED_STRIDE = 1 << 20


class Sampling:
    """How the next token is picked.

    top_k: 1 = greedy; 0 = the whole vocabulary; k = the k best logits.
    top_p: nucleus sampling over those candidates (1.0 = off).
    banned: ids never emitted. end_id: the id that ends a row (None: never).
    """

    def __init__(self, top_k=120, top_p=1.0, temperature=1.0, banned=(), end_id=None):
        if top_k < 0:
            raise ValueError("top_k must be >= 0 (0 = no limit), got %d" % top_k)
        if not 0.0 < top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1], got %g" % top_p)
        if not 0.0 < temperature < float("inf"):  # also refuses nan
            raise ValueError("temperature must be a finite number > 0, got %g" % temperature)
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature
        self.banned, self.end_id = tuple(banned), end_id

    @property
    def greedy(self):
        return self.top_k == 1


def bucket(n, cap):
    """The next power of two >= n, capped."""
    return min(cap, 1 << max(0, int(n - 1).bit_length()))


def prompt_buffer_length(longest_prompt, max_generate, num_contexts):
    """Static prompt length P of the graph. When the output will need a window
    slide, the buffer must also hold the re-encoded recent half (C//2)."""
    p = bucket(longest_prompt, num_contexts)
    if min(longest_prompt, num_contexts) + max_generate > num_contexts:
        p = max(p, bucket(num_contexts // 2, num_contexts))
    return p


class KVCache:
    """The key/value cache of a decoding loop, one mutable buffer per device
    slice, updated in place.

    As a while-loop variable the cache would be copied whole at every step
    (TensorFlow does not update a loop variable in place): 105 MB per token at
    the 2.8B size, about a sixth of the step. Here each slice is a TensorFlow
    variable that one scatter updates in place. Reads and writes of a mutable
    buffer are not ordered by data flow, so every method takes a tensor `after`
    and orders itself after it: `fill` and `write` return `after` again, now
    also ordered after them, for the caller to thread into the next read.
    """

    def __init__(self, initial):
        self.initial, self.shape, self.dtype = initial, initial.shape, initial.dtype
        self.slices = []  # one variable per device slice, in the lowering's order

    def fill(self, after):
        """Copy the initial value in (one copy per session call)."""
        def put(value, after):
            var = tf.raw_ops.VariableV2(shape=value.shape, dtype=value.dtype)
            # Later reads and writes go through the assignment's output: a
            # reference to the variable that exists only once it is filled.
            self.slices.append(tf.assign(var, value))
            with tf.control_dependencies([self.slices[-1]]):
                return tf.identity(after)

        return self._slicewise(put, [self.initial, after], after)

    def read(self, after):
        """The cache as an mtf tensor: views of the buffers, no copy."""
        buffers = iter(self.slices)

        def get(after):
            with tf.control_dependencies([after]):
                return tf.identity(next(buffers))

        return mtf.slicewise(get, [after], output_shape=self.shape, output_dtype=self.dtype,
                             splittable_dims=self.shape.dims)

    def write(self, present, slot, after):
        """cache[l, t, b, h, slot[b], :] = present[l, t, b, h, :] for every row b."""
        buffers = iter(self.slices)

        def put(present, slot, after):
            layers, two, rows, header, kv = present.shape.as_list()
            where = np.indices((layers, two, rows, header)).reshape(4, -1).T.astype(np.int32)
            index = tf.concat([where, tf.gather(slot, where[:, 2])[:, None]], 1)
            with tf.control_dependencies([after]):
                written = tf.scatter_nd_update(next(buffers), index,
                                               tf.reshape(present, [-1, kv]))
            with tf.control_dependencies([written]):
                return tf.identity(after)

        return self._slicewise(put, [present, slot, after], after)

    def _slicewise(self, fn, inputs, like):
        return mtf.slicewise(fn, inputs, output_shape=like.shape, output_dtype=like.dtype,
                             splittable_dims=self.shape.dims)


class Decoder:
    """One lowered decoding graph: fixed batch, prompt buffer P, max steps S."""

    def __init__(self, model_params, batch_size, prompt_length, max_steps, sampling,
                 devices=None, with_spout=False, activation_dtype=tf.float32, on_emit=None):
        self.params = model_params
        self.batch_size, self.prompt_length, self.max_steps = batch_size, prompt_length, max_steps
        self.num_contexts = model_params.num_contexts
        if prompt_length > self.num_contexts:
            raise ValueError("prompt buffer %d exceeds num_contexts %d"
                             % (prompt_length, self.num_contexts))
        self.cache_size = min(self.num_contexts, prompt_length + max_steps)
        self.sampling = sampling
        self.with_spout = with_spout
        self.activation_dtype = activation_dtype
        self.on_emit = on_emit
        self.devices = devices or devicelib.local(model_params.num_pallarelizm)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._build()

    # ----------------------------------------------------------------- graph
    def _build(self):
        mtf_graph, mesh = meshlib.new_mesh()
        cfg = network.Config(self.params, activation_dtype=self.activation_dtype,
                             layout=meshlib.LAYOUT, mesh_shape=self.devices.shape,
                             # Generation routes every token (see the README's
                             # differences from the released scripts).
                             no_token_drop=True)
        if self.activation_dtype != tf.float32:
            # Store the weights in the activation dtype too: that is what halves memory.
            cfg.variable_dtype = mtf.VariableDType(self.activation_dtype, self.activation_dtype,
                                                   self.activation_dtype)
        self.cfg, self.mesh = cfg, mesh
        d = cfg.dims
        B, P = self.batch_size, self.prompt_length
        self.batch = mtf.Dimension("batch", B)
        self.feeds = {
            "prompt": tf.placeholder(tf.int32, [B, P], "prompt"),
            "prompt_len": tf.placeholder(tf.int32, [B], "prompt_len"),
            "num_precontext": tf.placeholder(tf.int32, [B], "num_precontext"),
            "done": tf.placeholder(tf.bool, [B], "done"),
            "max_steps": tf.placeholder(tf.int32, [], "max_steps"),
            "seed": tf.placeholder(tf.int64, [], "seed"),
            "seed_offset": tf.placeholder(tf.int64, [], "seed_offset"),
            "end_id": tf.placeholder_with_default(
                tf.constant(-1 if self.sampling.end_id is None else self.sampling.end_id,
                            tf.int32), [], "end_id"),
        }
        spout = None
        if self.with_spout:
            spoutlib.require(d.num_spout)
            self.feeds["spout"] = tf.placeholder(tf.float32, [B, d.num_spout], "spout")
            spout = self._import("spout", [self.batch, d.spout])
        self.spout_slots = 1 if spout is not None else 0
        self.seed = self._import("seed", [])
        self.seed_offset = self._import("seed_offset", [])
        self.end_id = self._import("end_id", [])
        self.vocab_bias = self._banned_bias()

        outputs = self._decode(spout)
        self.lowering = graphlib.lower(mtf_graph, mesh, self.devices)
        self.fetches = {k: self.lowering.export_to_tf_tensor(v) for k, v in outputs.items()}
        self.variables = graphlib.master_variables(self.graph)
        self._copy = self.lowering.copy_masters_to_slices()
        self.session = graphlib.session(self.graph, self.devices)

    def _import(self, name, dims):
        return runtime.import_tensor(self.mesh, self.feeds[name], dims)

    def _banned_bias(self):
        bias = np.zeros([self.cfg.dims.vocab.size], np.float32)
        bias[list(self.sampling.banned)] = NEG_INF
        return runtime.import_tensor(self.mesh, tf.constant(bias), [self.cfg.dims.vocab])

    def _decode(self, spout):
        """Prompt pass, first token, then the while loop; returns mtf outputs."""
        B, C, S = self.batch, self.num_contexts, self.max_steps
        length = mtf.Dimension("length", self.prompt_length)
        steps_dim = mtf.Dimension("steps", S)
        prompt = self._import("prompt", [B, length])
        prompt_len = self._import("prompt_len", [B])
        done_in = self._import("done", [B])
        max_steps = self._import("max_steps", [])
        out = network.model(prompt, self.cfg, num_precontext=self._import("num_precontext", [B]),
                            spout=spout)
        logits = network.gather_position(out["logits"], prompt_len - 1, length)
        step0 = mtf.zeros(self.mesh, [], tf.int32)
        token, logprob = self._choose(logits, step0)
        active = mtf.logical_not(done_in)
        token = self._emit(step0, token, active)
        state = self._record(step0, token, logprob, active, done_in,
                             tokens=mtf.zeros(self.mesh, [B, steps_dim], tf.int32),
                             lengths=mtf.zeros(self.mesh, [B], tf.int32),
                             sum_logprob=mtf.zeros(self.mesh, [B], tf.float32))
        cache = KVCache(self._cache_layout(
            mtf.pad(out["presents"], [0, self.cache_size - self.prompt_length], "memory")))
        token = cache.fill(after=token)
        pos = prompt_len  # sequence index of the token emitted but not yet fed

        def cond(step, tokens, last, pos, done, lengths, sum_logprob):
            running = mtf.reduce_any(mtf.logical_not(done))
            room = mtf.reduce_all(mtf.logical_or(done, mtf.less(pos, C)))
            return mtf.logical_and(mtf.logical_and(mtf.less(step, max_steps), running), room)

        def body(step, tokens, last, pos, done, lengths, sum_logprob):
            fed = mtf.minimum(pos, C - 1)  # finished rows keep stepping; keep them in range
            logits, present = self._step(cache.read(after=last), last, fed, spout)
            token, logprob = self._choose(logits, step)
            active = mtf.logical_not(done)
            token = self._emit(step, token, active)
            # The token depends on every read of this step; the next step's
            # reads depend on the token returned here, written after the write.
            token = cache.write(present, fed, after=token)
            state = self._record(step, token, logprob, active, done, tokens, lengths, sum_logprob)
            return [step + 1, state["tokens"], token, pos + 1, state["done"],
                    state["lengths"], state["sum_logprob"]]

        final = mtf.while_loop(cond, body, [step0 + 1, state["tokens"], token, pos,
                                            state["done"], state["lengths"], state["sum_logprob"]])
        return {"tokens": final[1], "done": final[4], "lengths": final[5],
                "sum_logprob": final[6]}

    def _record(self, step, token, logprob, active, done, tokens, lengths, sum_logprob):
        """Write this step's token for the rows still running."""
        steps_dim = tokens.shape.dims[1]
        active_int = mtf.cast(active, tf.int32)
        write = mtf.one_hot(step, steps_dim, on_value=1, off_value=0, dtype=tf.int32)
        tokens += mtf.einsum([token * active_int, write], output_shape=tokens.shape)
        ended = mtf.logical_and(active, mtf.equal(token, self.end_id))
        return {"tokens": tokens, "lengths": lengths + active_int,
                "sum_logprob": sum_logprob + logprob * mtf.cast(active, tf.float32),
                "done": mtf.logical_or(done, ended)}

    def _step(self, cache, last, fed, spout):
        """Feed one token per row at sequence index `fed`; return the logits and
        the token's keys/values [layers, two, batch, header, kv]."""
        d, B, C, M = self.cfg.dims, self.batch, self.num_contexts, self.cache_size
        one = mtf.Dimension("length", 1)
        tokens = mtf.reshape(last, [B, one])
        positions = mtf.reshape(mtf.minimum(fed + self.spout_slots, C - 1), [B, one])
        memory = mtf.Dimension("memory", self.spout_slots + M + 1)
        slot = mtf.range(self.mesh, memory, tf.int32) - self.spout_slots
        visible = mtf.logical_or(mtf.less(slot, fed, output_shape=[B, memory]),
                                 mtf.equal(slot, M), output_shape=[B, memory])
        out = network.model(tokens, self.cfg, pasts=cache, key_valid=mtf.cast(visible, tf.float32),
                            positions=positions, spout=spout)
        logits = mtf.reshape(out["logits"], [B, d.vocab])
        present = mtf.reshape(out["presents"], out["presents"].shape - [mtf.Dimension("memory", 1)])
        return logits, mtf.transpose(present, cache.shape - cache.shape.get_dim_by_name("memory"))

    @staticmethod
    def _cache_layout(presents):
        """[layers, two, batch, header, memory, kv]: network.model splits pasts
        by layer and key/value; with those dimensions leading, TensorFlow's
        unstack hands out views instead of copying the whole cache every step."""
        names = ["layers", "two", "batch", "header", "memory", "kv"]
        return mtf.transpose(presents, [presents.shape.get_dim_by_name(n) for n in names])

    def _choose(self, logits, step):
        """Sample (or argmax) the next token; also its log-probability under the
        untempered distribution with banned tokens removed."""
        vocab = self.cfg.dims.vocab
        s = self.sampling
        logits = logits + self.vocab_bias
        log_probs = mtf.log_softmax(logits, vocab)
        if s.greedy:
            token = mtf.argmax(logits, vocab)
        else:
            scaled = logits * (1.0 / s.temperature)
            if s.top_k == 0 and s.top_p >= 1.0:
                token = mtf.argmax(scaled + self._gumbel(vocab, step), vocab)
            else:
                token = self._choose_among_best(scaled, step)
        logprob = mtf.reduce_sum(log_probs * mtf.one_hot(token, vocab), reduced_dim=vocab)
        return token, logprob

    def _choose_among_best(self, scaled, step):
        vocab = self.cfg.dims.vocab
        s = self.sampling
        k = mtf.Dimension("top_k", min(s.top_k or vocab.size, vocab.size))
        values, ids = mtf.top_k(scaled, vocab, k)
        if s.top_p < 1.0:
            mass_before = mtf.cumsum(mtf.softmax(values, k), k, exclusive=True)
            values += mtf.cast(mtf.greater_equal(mass_before, s.top_p), tf.float32) * NEG_INF
        choice = mtf.argmax(values + self._gumbel(k, step), k)
        picked = mtf.one_hot(choice, k, on_value=1, off_value=0, dtype=tf.int32)
        return mtf.reduce_sum(ids * picked, reduced_dim=k)

    def _gumbel(self, dim, step):
        """Gumbel noise [batch, dim] from a stateless generator keyed by
        (seed, seed_offset + step): same seed, same text, on any mesh. The noise
        is made replicated (a batch dimension the layout does not split), so
        every device draws the same values, then laid out like the batch."""
        full = mtf.Dimension("sample_batch", self.batch.size)

        def draw(seed, offset, step):
            u = tf.random.stateless_uniform([full.size, dim.size], tf.stack(
                [seed, offset + tf.cast(step, tf.int64)]), minval=1e-20, maxval=1.0)
            return -tf.math.log(-tf.math.log(u))

        noise = mtf.slicewise(draw, [self.seed, self.seed_offset, step],
                              output_shape=mtf.Shape([full, dim]), output_dtype=tf.float32,
                              splittable_dims=[])
        return mtf.rename_dimension(noise, full.name, self.batch.name)

    def _emit(self, step, token, active):
        """Hand each new token to on_emit (Python) from inside the loop; used by
        --stream. The returned token depends on the call, so it always runs."""
        if self.on_emit is None:
            return token
        full = mtf.Dimension("emit_batch", self.batch.size)
        callback, slices_built = self.on_emit, []

        def report(step, tokens, active):
            callback(int(step), tokens, active)
            return np.int32(0)

        def call(step, token, active):
            # The tensors are replicated: only the first device's slice reports,
            # so each token reaches Python once whatever the mesh.
            if slices_built:
                return tf.identity(token)
            slices_built.append(True)
            reported = tf.numpy_function(report, [step, token, active], tf.int32, stateful=True)
            with tf.control_dependencies([reported]):
                return tf.identity(token)

        replicated = [mtf.rename_dimension(x, self.batch.name, full.name) for x in (token, active)]
        emitted = mtf.slicewise(call, [step] + replicated, output_shape=mtf.Shape([full]),
                                output_dtype=tf.int32, splittable_dims=[])
        return mtf.rename_dimension(emitted, full.name, self.batch.name)

    # --------------------------------------------------------------- weights
    def restore(self, model_dir_or_path):
        """Load a checkpoint after checking every variable name and shape."""
        graphlib.restore(self.session, model_dir_or_path, self.variables)
        self.session.run(self._copy)
        return self

    def init_random(self):
        """Random weights (benchmarks, the scale check). One variable at a time
        keeps the peak memory at the weights plus the largest single tensor.
        (Constant initial values would be worse: TensorFlow folds tf.zeros
        into a constant and keeps it, doubling the memory.)"""
        for var in self.variables:
            self.session.run(var.initializer)
        self.session.run(self._copy)
        return self

    def save(self, path):
        return graphlib.save(self.session, path, self.variables)

    # ------------------------------------------------------------------- run
    def run_window(self, prompt, prompt_len, num_precontext, done, steps, seed, seed_offset,
                   spout=None, end_id=None):
        """One session call: returns tokens [B, S], lengths, sum_logprob, done.
        end_id overrides sampling.end_id (-1: never stop early)."""
        feed = {self.feeds["prompt"]: prompt, self.feeds["prompt_len"]: prompt_len,
                self.feeds["num_precontext"]: num_precontext, self.feeds["done"]: done,
                self.feeds["max_steps"]: steps, self.feeds["seed"]: seed,
                self.feeds["seed_offset"]: seed_offset}
        if self.with_spout:
            feed[self.feeds["spout"]] = spout
        if end_id is not None:
            feed[self.feeds["end_id"]] = end_id
        return self.session.run(self.fetches, feed)

    def close(self):
        self.session.close()


class Result:
    """One row's output: generated ids (including a final end id if any)."""

    def __init__(self):
        self.tokens, self.sum_logprob, self.ended = [], 0.0, False

    @property
    def mean_logprob(self):
        return self.sum_logprob / max(1, len(self.tokens))


def slide(window, num_precontext, keep):
    """Keep the last `keep` tokens; prefix tokens that stay keep their role."""
    dropped = max(0, len(window) - keep)
    return window[dropped:], max(0, num_precontext - dropped)


class Windows:
    """Per-row sequence windows fed to the decoder, sliding as they grow."""

    def __init__(self, prompts, num_precontext, num_contexts, prompt_length):
        self.num_contexts, self.prompt_length = num_contexts, prompt_length
        # A prompt longer than the buffer keeps its most recent tokens.
        self.rows = [slide(list(p), n, prompt_length) for p, n in zip(prompts, num_precontext)]

    def extend(self, row, tokens):
        window, npc = self.rows[row]
        window = window + list(tokens)
        if len(window) > self.prompt_length:
            window, npc = slide(window, npc, self.num_contexts // 2)
        self.rows[row] = (window, npc)

    def arrays(self, batch_size):
        prompt = np.zeros([batch_size, self.prompt_length], np.int32)
        lengths = np.ones([batch_size], np.int32)
        npc = np.zeros([batch_size], np.int32)
        for i, (window, n) in enumerate(self.rows):
            prompt[i, :len(window)] = window
            lengths[i], npc[i] = len(window), n
        return prompt, lengths, npc


def generate(decoder, prompts, num_precontext, max_generate, seed=0, spout=None,
             seed_offset=0, end_id=None):
    """Decode every prompt (list of ids) for up to max_generate tokens.

    The batch is filled with finished dummy rows; spout holds one vector per
    prompt. One session call per window. Returns a list of Result; the
    optional decoder.on_emit sees every token as it is sampled.
    """
    B = decoder.batch_size
    if len(prompts) > B:
        raise ValueError("%d prompts for a batch of %d" % (len(prompts), B))
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    windows = Windows(prompts, num_precontext, decoder.num_contexts, decoder.prompt_length)
    windows.rows += [([0], 0)] * (B - len(prompts))
    results = [Result() for _ in prompts]
    done = np.arange(B) >= len(prompts)
    spout_batch = None
    if spout is not None:
        spout_batch = np.zeros([B, decoder.cfg.dims.num_spout], np.float32)
        spout_batch[:len(prompts)] = np.asarray(spout, np.float32)
    generated, call = 0, 0
    while generated < max_generate and not done.all():
        steps = min(decoder.max_steps, max_generate - generated)
        prompt, lengths, npc = windows.arrays(B)
        out = decoder.run_window(prompt, lengths, npc, done, steps, seed,
                                 seed_offset + call * SEED_STRIDE, spout_batch, end_id)
        for i, r in enumerate(results):
            new = out["tokens"][i, :int(out["lengths"][i])].tolist()
            r.tokens += new
            r.sum_logprob += float(out["sum_logprob"][i])
            r.ended = bool(out["done"][i])
            windows.extend(i, new)
        # Rows still running advance in lockstep; finished rows report 0.
        generated += int(out["lengths"][:len(prompts)].max(initial=0))
        done = np.asarray(out["done"], bool)
        call += 1
    return results
