"""The GPTSAN network: a Switch Transformer with a softmlp bypass, Prefix-LM
masking, optional extension layers and a spout.

Each architectural idea is one small function over mesh-tensorflow tensors.
Variable names and shapes match the released GPTSAN checkpoints exactly; the
mesh layout (which dimension is split over which devices) lives in mesh.py and
never appears here.

Dimension names (mesh.py's layout refers to them):
  batch, length (queries), memory (keys), hidden (H), header (A), kv (K),
  experts (E), vocab (V), context (C positions), layers (L), two (key/value).
"""
import copy
import zlib

from model import mesh as meshlib
from model.compat import mtf, mtf_moe, tf
from model.params import num_layers

NUM_SPOUT_LAYERS = 8
LN_EPSILON = 1e-5
MASK_PENALTY = 10000.0
SOFTMLP_STDDEV = 0.01
INIT_STDDEV = 0.02


class Dims:
    """The named dimensions of one configuration."""

    def __init__(self, model_params):
        p = model_params
        self.hidden = mtf.Dimension("hidden", p["num_hidden"])
        self.hidden_out = mtf.Dimension("hidden_out", p["num_hidden"])
        self.header = mtf.Dimension("header", p["num_header"])
        self.kv = mtf.Dimension("kv", p["num_hidden"] // p["num_header"])
        self.qkv = mtf.Dimension("qkv", 3)
        self.two = mtf.Dimension("two", 2)
        self.vocab = mtf.Dimension("vocab", p["num_vocabulary"])
        self.context = mtf.Dimension("context", p["num_contexts"])
        self.layers = mtf.Dimension("layers", num_layers(p))
        self.ext_hidden = mtf.Dimension("ext_hidden", 4 * p["num_hidden"])
        self.num_experts = p["num_experts"]
        self.num_switch_layers = p["num_switch_layers"]
        self.num_spout = p.get("num_spout", 0)
        if self.num_spout:
            self.spout = mtf.Dimension("spout", self.num_spout)
            self.spout_in = mtf.Dimension("spout_in", self.num_spout)
            self.spout_out = mtf.Dimension("spout_out", num_layers(p) * 2 * p["num_hidden"])


class Config:
    """What a forward pass needs besides the weights: sizes, dtypes, MoE policy."""

    def __init__(self, model_params, activation_dtype=tf.float32, layout=None,
                 mesh_shape=None, capacity_factor_train=1.25, aux_loss_coef=1e-2,
                 router_jitter=1e-2, seed=0, no_token_drop=False):
        self.params = model_params
        # False: the released expert capacity (factor 2.0 at inference, 1.25 in
        # training, at least 4 per expert); a token over an expert's capacity gets
        # no expert output. True: every token gets its expert (capacity = group).
        self.no_token_drop = no_token_drop
        self.seed = seed
        self.dims = Dims(model_params)
        self.variable_dtype = mtf.VariableDType(tf.float32, tf.float32, activation_dtype)
        self.activation_dtype = activation_dtype
        # Defaults: the standard layout on a one-device mesh (graph-only builds).
        self.layout = layout if layout is not None else meshlib.LAYOUT
        self.mesh_shape = mesh_shape if mesh_shape is not None else mtf.Shape([])
        self.capacity_factor_train = capacity_factor_train
        self.aux_loss_coef = aux_loss_coef
        self.router_jitter = router_jitter


def variable(mesh, name, dims, cfg, stddev=INIT_STDDEV, init=None):
    """A weight whose random initial value depends only on its name and the
    configured seed, so every mesh layout starts from the same weights."""
    if init is None:
        full_name = "%s/%s" % (tf.get_variable_scope().name, name)
        init = tf.random_normal_initializer(stddev=stddev, seed=name_seed(full_name, cfg))
    return mtf.get_variable(mesh, name, mtf.Shape(dims), initializer=init,
                            dtype=cfg.variable_dtype)


def name_seed(full_name, cfg):
    return (zlib.crc32(full_name.encode()) + cfg.seed) % (2 ** 31)


def seeded_by_name(cfg):
    """A variable-scope getter giving mesh-tensorflow's own unseeded random
    initializers (the switch layer's) a seed from the variable's name. Without
    it their values would depend on how many ops the graph held before them,
    so the same model built inside TPUEstimator would start elsewhere."""
    def getter(getter, *args, **kwargs):  # TensorFlow passes `getter` by keyword
        init = kwargs.get("initializer")
        if init is not None and getattr(init, "seed", 0) is None:
            init = copy.copy(init)
            init.seed = name_seed(kwargs["name"], cfg)
            kwargs["initializer"] = init
        return getter(*args, **kwargs)
    return getter


def to_float(x):
    return mtf.cast(x, tf.float32) if x.dtype != tf.float32 else x


def layer_norm(x, name, cfg):
    """LayerNorm over hidden, computed in float32 whatever the activation dtype."""
    h = cfg.dims.hidden
    with tf.variable_scope(name):
        g = variable(x.mesh, "g", [h], cfg, init=tf.ones_initializer())
        b = variable(x.mesh, "b", [h], cfg, init=tf.zeros_initializer())
    x = to_float(x)
    x -= mtf.reduce_mean(x, reduced_dim=h)
    x *= mtf.rsqrt(mtf.reduce_mean(mtf.square(x), reduced_dim=h) + LN_EPSILON)
    return mtf.cast(x * to_float(g) + to_float(b), cfg.activation_dtype)


def swish(x):
    return x * mtf.sigmoid(x)


def prefix_lm_mask(mesh, batch, length, memory, num_precontext, past_length):
    """1.0 where query i may see key j: j <= i (causal) or j is in the prefix.

    Indices count the keys of the pasts first (past_length of them), so the
    prefix of this call's tokens ends at past_length + num_precontext.
    """
    query_index = mtf.range(mesh, length, tf.int32) + past_length
    key_index = mtf.range(mesh, memory, tf.int32)
    causal = mtf.cast(mtf.less_equal(key_index, query_index), tf.float32)
    prefix = mtf.cast(mtf.less(key_index, num_precontext + past_length), tf.float32)
    return mtf.maximum(mtf.broadcast(causal, [batch, length, memory]), prefix)


def attention(x, past, mask, cfg, name):
    """Multi-head self-attention over (pasts + this call's positions).

    Returns the output and this call's (key, value) as the layer's present.
    """
    d = cfg.dims
    batch, length = x.shape.dims[0], x.shape.dims[1]
    memory = mtf.Dimension("memory", length.size)
    with tf.variable_scope(name):
        w_qkv = variable(x.mesh, "qkv/kernel", [d.hidden, d.qkv, d.header, d.kv], cfg)
        w_o = variable(x.mesh, "o/kernel", [d.header, d.kv, d.hidden], cfg)
    qkv = mtf.einsum([x, w_qkv], [batch, d.qkv, d.header, length, d.kv])
    q, k, v = mtf.unstack(qkv, d.qkv)
    k = mtf.rename_dimension(k, length.name, memory.name)
    v = mtf.rename_dimension(v, length.name, memory.name)
    present = (k, v)
    if past is not None:
        k = mtf.concat([past[0], k], memory.name)
        v = mtf.concat([past[1], v], memory.name)
    scores = mtf.einsum([q, k], [batch, d.header, length, k.shape.dims[2]])
    scores = to_float(scores) * (d.kv.size ** -0.5)
    scores = scores * mask - (1.0 - mask) * MASK_PENALTY
    weights = mtf.cast(mtf.softmax(scores, reduced_dim=k.shape.dims[2]), cfg.activation_dtype)
    a = mtf.einsum([weights, v], [batch, d.header, length, d.kv])
    return mtf.einsum([a, w_o], [batch, length, d.hidden]), present


def moe_hparams(cfg, group_size):
    """Switch (top-1) routing. One group per sequence keeps routing independent
    of the mesh and of the other rows of a batch. With token dropping (the
    released rule) each expert takes at most max(int(group * factor / experts), 4)
    tokens of a group, earlier positions first; sequences over mesh-tensorflow's
    default group of 1024 tokens are split into equal groups as it does.
    Without it the capacity equals the group, so no token drops."""
    e = cfg.dims.num_experts
    if cfg.no_token_drop:
        factor_train = factor_eval = float(e)
        min_capacity = 1
    else:
        factor_train, factor_eval = cfg.capacity_factor_train, 2.0
        min_capacity = 4
        group_size = min(group_size, 1024)
    return mtf_moe.HParams(
        moe_gating="switch", moe_num_experts=e, moe_hidden_size=8 * cfg.dims.hidden.size,
        moe_group_size=group_size, moe_capacity_factor_train=factor_train,
        moe_capacity_factor_eval=factor_eval, moe_min_expert_capacity=min_capacity,
        moe_switch_policy_train="input_jitter", moe_switch_policy_eval="argmax",
        moe_switch_jitter=cfg.router_jitter, moe_loss_coef=cfg.aux_loss_coef,
        moe_dropout_rate=0.0, moe_word_embed_mode=None, moe_use_second_place_expert_prob=None,
        moe_z_loss=None, moe_use_experts_attention=False, moe_switch_dropout=0.0,
        moe_switch_temperature=1.0)


def switch_ffn(x, cfg, train, name):
    """Top-1 mixture of ReLU experts plus the softmlp bypass tanh(x W)."""
    d = cfg.dims
    length = x.shape.dims[1]
    with tf.variable_scope(name, custom_getter=seeded_by_name(cfg)):
        experts = None if train else chosen_experts_only(x, cfg)
        if experts is not None:
            moe_out, aux_loss = experts, mtf.zeros(x.mesh, [])
        else:
            # Every position counts for load balancing (the layer needs the weights
            # explicitly when training).
            nonpadding = mtf.ones(x.mesh, x.shape.dims[:2], x.dtype)
            moe_out, aux_loss = mtf_moe.transformer_moe_layer_v1(
                x, d.hidden, moe_hparams(cfg, length.size), train, cfg.variable_dtype,
                layout=cfg.layout, mesh_shape=cfg.mesh_shape, nonpadding=nonpadding,
                activation=mtf.relu)
        w_soft = variable(x.mesh, "softmlp/kernel", [d.hidden, d.hidden_out], cfg,
                          stddev=SOFTMLP_STDDEV)
    bypass = mtf.tanh(mtf.einsum([x, w_soft], reduced_dims=[d.hidden]))
    return moe_out + mtf.rename_dimension(bypass, d.hidden_out.name, d.hidden.name), aux_loss


def chosen_experts_only(x, cfg):
    """The switch layer for one new token per row (a decoding step), reading
    only the chosen expert's weights: mesh-tensorflow's layer multiplies every
    expert's weights (with a one-hot dispatch), so at batch 1 a step would read
    all E experts to use one. Same variables, routing and arithmetic as that
    layer at inference (float32 router softmax, top-1, gate times ReLU expert).
    Returns None where it does not apply: more rows than experts, or experts
    split over the mesh."""
    d, mesh = cfg.dims, x.mesh
    batch, length = x.shape.dims[:2]
    model_dims = [m.size for m in cfg.mesh_shape.dims if m.name == "model"]
    if length.size != 1 or batch.size >= d.num_experts or (model_dims and model_dims[0] > 1):
        return None
    experts = mtf.Dimension("experts", d.num_experts)
    unsplit = mtf.Dimension("expert_unsplit", d.num_experts)
    expert_hidden = mtf.Dimension("expert_hidden", 8 * d.hidden.size)
    router = moe_kernel(mesh, "switch_gating", [d.hidden, unsplit], cfg)
    wi = moe_kernel(mesh, "wi", [experts, d.hidden, expert_hidden], cfg)
    wo = moe_kernel(mesh, "wo", [experts, expert_hidden, d.hidden], cfg)
    gate_logits = mtf.einsum([mtf.to_float(x), mtf.cast(router, tf.float32)],
                             reduced_dims=[d.hidden])
    gate, index = mtf.top_1(mtf.softmax(gate_logits, reduced_dim=unsplit), reduced_dim=unsplit)
    index = mtf.reshape(index, [batch])

    def own_expert(w):
        # The layout may name a mesh axis for experts; it has size 1 here.
        return mtf.slicewise(lambda w, i: tf.gather(w, i, axis=0), [w, index],
                             output_shape=mtf.Shape([batch] + (w.shape - experts).dims),
                             output_dtype=w.dtype, splittable_dims=[batch] + w.shape.dims)

    hidden = mtf.relu(mtf.einsum([x, own_expert(wi)], reduced_dims=[d.hidden]))
    out = mtf.einsum([hidden, own_expert(wo)], reduced_dims=[expert_hidden])
    return out * mtf.cast(gate, out.dtype)


def moe_kernel(mesh, name, dims, cfg):
    """A switch-layer kernel as mesh-tensorflow's dense layer makes it (or the
    one it already made): same name, dimensions and fan-in-scaled truncated
    normal initializer (seeded by name through seeded_by_name)."""
    fan_in = dims[-2].size
    init = tf.truncated_normal_initializer(stddev=fan_in ** -0.5)
    return mtf.get_variable(mesh, name + "/kernel", mtf.Shape(dims), initializer=init,
                            dtype=cfg.variable_dtype)


def ext_ffn(x, cfg, name):
    """The ordinary MLP of an extension layer: H -> 4H (swish) -> H, with biases."""
    d = cfg.dims
    with tf.variable_scope(name):
        w1 = variable(x.mesh, "p1/kernel", [d.hidden, d.ext_hidden], cfg)
        b1 = variable(x.mesh, "p1/bias", [d.ext_hidden], cfg, init=tf.zeros_initializer())
        w2 = variable(x.mesh, "p2/kernel", [d.ext_hidden, d.hidden], cfg)
        b2 = variable(x.mesh, "p2/bias", [d.hidden], cfg, init=tf.zeros_initializer())
    h = swish(mtf.einsum([x, w1], reduced_dims=[d.hidden]) + b1)
    return mtf.einsum([h, w2], reduced_dims=[d.ext_hidden]) + b2


def near_identity(size, stddev, seed):
    """Identity plus small noise. The released stddev-0.01 init shrinks a one-hot
    spout by ~0.01*sqrt(P) per tanh layer (to ~1e-14 after eight), so the spout
    would receive no gradient; starting near the identity lets it train."""
    def init(shape, dtype=tf.float32, partition_info=None):
        noise = tf.random.normal(shape, stddev=stddev, seed=seed, dtype=dtype)
        return tf.eye(size, dtype=dtype) + noise
    return init


def spout_pasts(spout, cfg):
    """Project a spout vector [batch, spout] to one cached key/value position
    for every layer: [batch, layers, two, header, memory=1, kv]."""
    d = cfg.dims
    batch = spout.shape.dims[0]
    with tf.variable_scope("pasts"):
        s = mtf.cast(spout, cfg.activation_dtype)
        for k in range(NUM_SPOUT_LAYERS):
            w = variable(spout.mesh, "mlp%d/kernel" % k, [d.spout, d.spout_in], cfg,
                         init=near_identity(d.spout.size, SOFTMLP_STDDEV, cfg.seed + k))
            s = mtf.rename_dimension(mtf.tanh(mtf.einsum([s, w], reduced_dims=[d.spout])),
                                     d.spout_in.name, d.spout.name)
        w_out = variable(spout.mesh, "out/kernel", [d.spout, d.spout_out], cfg,
                         stddev=SOFTMLP_STDDEV)
        out = mtf.einsum([s, w_out], reduced_dims=[d.spout])
    memory = mtf.Dimension("memory", 1)
    return mtf.reshape(out, [batch, d.layers, d.two, d.header, memory, d.kv])


def split_pasts(pasts):
    """[batch, layers, two, header, memory, kv] -> per layer (key, value)."""
    if pasts is None:
        return None
    layers_dim = pasts.shape.get_dim_by_name("layers")
    two_dim = pasts.shape.get_dim_by_name("two")
    return [tuple(mtf.unstack(p, two_dim)) for p in mtf.unstack(pasts, layers_dim)]


def stack_presents(presents, cfg):
    d = cfg.dims
    return mtf.stack([mtf.stack(list(kv), d.two.name, axis=1) for kv in presents],
                     d.layers.name, axis=1)


def lookup(table, indices, dim, train):
    """table[indices]. mtf.gather multiplies by a one-hot over the whole vocabulary;
    at inference a plain row gather is far cheaper (the layout never splits the
    vocabulary, context or hidden dimensions, so each slice holds whole rows)."""
    if train:
        return mtf.gather(table, indices, dim)
    return mtf.slicewise(lambda w, i: tf.gather(w, i), [table, indices],
                         output_shape=indices.shape + table.shape.dims[1:],
                         output_dtype=table.dtype, splittable_dims=indices.shape.dims)


def embed(tokens, positions, cfg, train):
    d = cfg.dims
    wte = variable(tokens.mesh, "wte", [d.vocab, d.hidden], cfg)
    wpe = variable(tokens.mesh, "wpe", [d.context, d.hidden], cfg, stddev=0.01)
    x = lookup(wte, tokens, d.vocab, train) + lookup(wpe, positions, d.context, train)
    return x, wte


def output_logits(x, wte, cfg):
    """swish(x W + b) against the tied embedding, plus a vocabulary bias.
    The names dense/kernel and dense_1/bias are the released checkpoint's."""
    d = cfg.dims
    w = variable(x.mesh, "dense/kernel", [d.hidden, d.hidden_out], cfg)
    b = variable(x.mesh, "dense_1/bias", [d.hidden_out], cfg, init=tf.zeros_initializer())
    wob = variable(x.mesh, "wob", [d.vocab], cfg, init=tf.zeros_initializer())
    h = swish(mtf.einsum([x, w], reduced_dims=[d.hidden]) + b)
    h = mtf.rename_dimension(h, d.hidden_out.name, d.hidden.name)
    return mtf.einsum([to_float(h), to_float(wte)], reduced_dims=[d.hidden]) + to_float(wob)


def gather_position(x, index, length):
    """x[b, index[b], ...] for a per-example index."""
    return mtf.einsum([x, mtf.one_hot(index, length, dtype=x.dtype)], reduced_dims=[length])


def model(tokens, cfg, num_precontext=None, pasts=None, past_length=None, key_valid=None,
          positions=None, spout=None, pos_index=None, train=False):
    """The forward pass.

    tokens:         int [batch, length]
    num_precontext: int [batch]; how many of this call's tokens form the
                    bidirectional prefix (0: plain causal LM).
    pasts:          [batch, layers, two, header, memory, kv] cached keys/values
                    (dimensions are found by name, so any order works).
    past_length:    number of past positions before this call's first token
                    (default: the size of pasts' memory). Positions of this
                    call's tokens start there, clipped to num_contexts - 1.
    key_valid:      optional float [batch, memory] over (spout + pasts + new)
                    keys; 0 hides a key (used by fixed-size decoding caches).
    positions:      optional int [batch, length] overriding the positions.
    spout:          optional float [batch, spout]: one extra cached position,
                    placed before the pasts.
    pos_index:      optional int [batch]; returns the hidden state after every
                    layer at that position, concatenated ([batch, layers*hidden]).
    Returns dict(logits [batch, length, vocab] float32, presents, aux_loss, pos_vector).
    """
    d = cfg.dims
    mesh = tokens.mesh
    batch, length = tokens.shape.dims
    past_list = split_pasts(pasts)
    if spout is not None:
        spout_list = split_pasts(spout_pasts(spout, cfg))
        past_list = spout_list if past_list is None else [
            tuple(mtf.concat([s, p], "memory") for s, p in zip(sp, pp))
            for sp, pp in zip(spout_list, past_list)]
    num_past = 0 if past_list is None else past_list[0][0].shape.get_dim_by_name("memory").size
    if positions is None:
        start = num_past if past_length is None else past_length
        positions = mtf.minimum(mtf.range(mesh, length, tf.int32) + start, d.context.size - 1)
        positions = mtf.broadcast(positions, [batch, length])
    if num_precontext is None:
        num_precontext = mtf.zeros(mesh, [batch], tf.int32)
    memory = mtf.Dimension("memory", num_past + length.size)
    mask = prefix_lm_mask(mesh, batch, length, memory, num_precontext, num_past)
    if key_valid is not None:
        mask *= key_valid

    with tf.variable_scope("model"):
        x, wte = embed(tokens, positions, cfg, train)
        x = mtf.cast(x, cfg.activation_dtype)
        presents, aux_losses, layer_outputs = [], [], []
        for i in range(d.layers.size):
            if i == d.num_switch_layers:
                ete = variable(mesh, "ete", [d.context, d.hidden], cfg,
                               init=tf.zeros_initializer())
                x += mtf.cast(lookup(ete, positions, d.context, train), cfg.activation_dtype)
            a, present = attention(x, past_list[i] if past_list else None, mask, cfg,
                                   "att%d" % i)
            x = layer_norm(a, "an%d" % i, cfg) + x
            if i < d.num_switch_layers:
                f, aux = switch_ffn(x, cfg, train, "moe%d" % i)
                aux_losses.append(aux)
            else:
                f = ext_ffn(x, cfg, "mlp%d" % i)
            x = layer_norm(f, "ln%d" % i, cfg) + x
            presents.append(present)
            layer_outputs.append(x)
        logits = output_logits(x, wte, cfg)

    out = {"logits": logits, "presents": stack_presents(presents, cfg),
           "aux_loss": mtf.add_n(aux_losses) if aux_losses else None}
    if pos_index is not None:
        per_layer = mtf.stack([gather_position(to_float(h), pos_index, length)
                               for h in layer_outputs], d.layers.name, axis=1)
        flat = mtf.Dimension("pos_vector", d.layers.size * d.hidden.size)
        out["pos_vector"] = mtf.reshape(per_layer, [batch, flat])
    return out


def lm_loss(logits, targets, vocab_dim, z_loss=1e-4):
    """Mean cross-entropy over positions with target >= 0, plus z-loss; divided by
    (count + 1e-5) as released (0 for a batch with no target)."""
    valid = mtf.cast(mtf.greater_equal(targets, 0), tf.float32)
    safe_targets = mtf.maximum(targets, 0)
    log_z = mtf.reduce_logsumexp(logits, vocab_dim)
    target_logit = mtf.reduce_sum(logits * mtf.one_hot(safe_targets, vocab_dim), reduced_dim=vocab_dim)
    per_position = (log_z - target_logit) + z_loss * mtf.square(log_z)
    return mtf.reduce_sum(per_position * valid) / (mtf.reduce_sum(valid) + 1e-5)


def count_parameters(model_params):
    """Trainable parameter count from the configuration alone (no graph)."""
    p = model_params
    v, c, h, e = p["num_vocabulary"], p["num_contexts"], p["num_hidden"], p["num_experts"]
    s, x = p["num_switch_layers"], p["num_ext_layers"]
    attn_and_norms = 3 * h * h + h * h + 4 * h
    switch = h * e + 2 * e * h * 8 * h + h * h
    ext = h * 4 * h + 4 * h + 4 * h * h + h
    total = v * h + c * h + (s + x) * attn_and_norms + s * switch + x * ext
    total += (c * h if x else 0) + h * h + h + v
    spout = p.get("num_spout", 0)
    if spout:
        total += NUM_SPOUT_LAYERS * spout * spout + spout * (s + x) * 2 * h
    return total


