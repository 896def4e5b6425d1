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

import numpy as np

from model import mesh as meshlib
from model.compat import mtf, mtf_moe, tf

NUM_SPOUT_LAYERS = 8
LN_EPSILON = 1e-5
MASK_PENALTY = 10000.0
SOFTMLP_STDDEV = 0.01
INIT_STDDEV = 0.02


class Dims:
    """The named dimensions of one configuration (a params.ModelParams)."""

    def __init__(self, model_params):
        p = model_params
        self.hidden = mtf.Dimension("hidden", p.num_hidden)
        self.hidden_out = mtf.Dimension("hidden_out", p.num_hidden)
        self.header = mtf.Dimension("header", p.num_header)
        self.kv = mtf.Dimension("kv", p.num_hidden // p.num_header)
        self.qkv = mtf.Dimension("qkv", 3)
        self.two = mtf.Dimension("two", 2)
        self.vocab = mtf.Dimension("vocab", p.num_vocabulary)
        self.context = mtf.Dimension("context", p.num_contexts)
        self.layers = mtf.Dimension("layers", p.num_layers)
        self.ext_hidden = mtf.Dimension("ext_hidden", 4 * p.num_hidden)
        self.num_experts = p.num_experts
        self.num_switch_layers = p.num_switch_layers
        self.num_spout = p.num_spout
        if self.num_spout:
            self.spout = mtf.Dimension("spout", self.num_spout)
            self.spout_in = mtf.Dimension("spout_in", self.num_spout)
            self.spout_out = mtf.Dimension("spout_out", p.num_layers * 2 * p.num_hidden)


class Config:
    """What a forward pass needs besides the weights: sizes (a params.ModelParams),
    dtypes, MoE policy."""

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


def ordered(x, dims):
    """x with its dimensions in this order; no op when they already are (mtf's
    transpose is an einsum even when it has nothing to move)."""
    return x if x.shape.dims == list(dims) else mtf.transpose(x, dims)


def dense(x, w, output_dims, cfg, train):
    """einsum([x, w]) contracting the dimensions they share. At inference, when the
    weight's contracted dimensions lead (as every weight here is stored) and the
    experts/heads are not split over the mesh, this is one tf.matmul: TensorFlow's
    CPU einsum costs several times a matmul's fixed overhead, which dominates the
    small matrix-vector products of a decoding step."""
    reduced = [dim for dim in w.shape.dims if dim in x.shape.dims]
    w_out = [dim for dim in w.shape.dims if dim not in reduced]
    model_dims = [m.size for m in cfg.mesh_shape.dims if m.name == "model"]
    if train or (model_dims and model_dims[0] > 1) or w.shape.dims[:len(reduced)] != reduced:
        return mtf.einsum([x, w], output_shape=mtf.Shape(output_dims))
    outer = [dim for dim in x.shape.dims if dim not in reduced]
    x = ordered(x, outer + reduced)

    def product(x, w):
        xs, ws = x.shape.as_list(), w.shape.as_list()
        n = len(outer)
        flat_x = tf.reshape(x, [-1, int(np.prod(xs[n:]))])
        flat_w = tf.reshape(w, [int(np.prod(ws[:len(reduced)])), -1])
        return tf.reshape(tf.matmul(flat_x, flat_w), xs[:n] + ws[len(reduced):])

    # Only batch can be split more than one way here (the model axis has size 1).
    out = mtf.slicewise(product, [x, w], output_shape=mtf.Shape(outer + w_out),
                        output_dtype=x.dtype, splittable_dims=outer + w.shape.dims)
    return ordered(out, output_dims)


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


def attention(x, past, mask, cfg, name, train=False):
    """Multi-head self-attention over (pasts + this call's positions).

    past: None or a list of cached (key, value) segments, in memory order.
    Returns the output and this call's (key, value) as the layer's present.
    """
    d = cfg.dims
    batch, length = x.shape.dims[0], x.shape.dims[1]
    memory = mtf.Dimension("memory", length.size)
    with tf.variable_scope(name):
        w_qkv = variable(x.mesh, "qkv/kernel", [d.hidden, d.qkv, d.header, d.kv], cfg)
        w_o = variable(x.mesh, "o/kernel", [d.header, d.kv, d.hidden], cfg)
    qkv = dense(x, w_qkv, [batch, d.qkv, d.header, length, d.kv], cfg, train)
    q, k, v = mtf.unstack(qkv, d.qkv)
    k = mtf.rename_dimension(k, length.name, memory.name)
    v = mtf.rename_dimension(v, length.name, memory.name)
    present = (k, v)
    # Scores are taken against each segment and joined; the segments themselves
    # are never concatenated, which would copy the whole key/value cache of the
    # layer at every decoding step.
    segments = list(past or []) + [present]
    scores = [per_head_matmul(q, sk, [batch, d.header, length, sk.shape.get_dim_by_name("memory")],
                              train, transpose_b=True) for sk, _ in segments]
    scores = scores[0] if len(scores) == 1 else mtf.concat(scores, "memory")
    scores = to_float(scores) * (d.kv.size ** -0.5)
    scores = scores * mask - (1.0 - mask) * MASK_PENALTY
    weights = mtf.cast(mtf.softmax(scores, reduced_dim=scores.shape.dims[-1]),
                       cfg.activation_dtype)
    a, begin = None, 0
    for _, sv in segments:
        size = sv.shape.get_dim_by_name("memory").size
        w = weights if len(segments) == 1 else mtf.slice(weights, begin, size, "memory")
        part = per_head_matmul(w, sv, [batch, d.header, length, d.kv], train)
        a = part if a is None else a + part
        begin += size
    return dense(a, w_o, [batch, length, d.hidden], cfg, train), present


def per_head_matmul(a, b, output_dims, train, transpose_b=False):
    """[batch, header, i, j] x [batch, header, j, k] (or [.., k, j] with
    transpose_b) per row and head. At inference one batched tf.matmul per slice,
    which reads the cached keys in place; TensorFlow's CPU einsum is several
    times slower at these sizes. Heads may be split over the mesh: they are
    not contracted."""
    if train:
        return mtf.einsum([a, b], output_shape=mtf.Shape(output_dims))
    batch, header = output_dims[:2]
    a = ordered(a, [batch, header] + (a.shape - [batch, header]).dims)
    b = ordered(b, [batch, header] + (b.shape - [batch, header]).dims)
    return mtf.slicewise(lambda a, b: tf.matmul(a, b, transpose_b=transpose_b), [a, b],
                         output_shape=mtf.Shape(output_dims), output_dtype=a.dtype,
                         splittable_dims=[batch, header])


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
    bypass = mtf.tanh(dense(x, w_soft, (x.shape - d.hidden).dims + [d.hidden_out], cfg, train))
    return moe_out + mtf.rename_dimension(bypass, d.hidden_out.name, d.hidden.name), aux_loss


def chosen_experts_only(x, cfg):
    """The switch layer at inference, computing each token with its routed
    expert only: mesh-tensorflow's layer multiplies every expert's weights (with
    a one-hot dispatch), and without token dropping each expert takes the whole
    group, so it does E times the work; at batch 1 a decoding step would also
    read all E experts to use one. Same variables, routing and arithmetic as that
    layer at inference (float32 router softmax, top-1, gate times ReLU expert).
    One new token per row (a decoding step, fewer rows than experts) reads just
    the rows' experts; longer inputs go expert by expert over the tokens routed
    to it, which is exact only when no token is dropped.
    Returns None where it does not apply: token dropping over several tokens,
    or experts split over the mesh."""
    d, mesh = cfg.dims, x.mesh
    batch, length = x.shape.dims[:2]
    model_dims = [m.size for m in cfg.mesh_shape.dims if m.name == "model"]
    if model_dims and model_dims[0] > 1:
        return None
    one_step = length.size == 1 and batch.size < d.num_experts
    if not one_step and not (cfg.no_token_drop or length.size == 1):
        return None
    experts = mtf.Dimension("experts", d.num_experts)
    unsplit = mtf.Dimension("expert_unsplit", d.num_experts)
    expert_hidden = mtf.Dimension("expert_hidden", 8 * d.hidden.size)
    router = moe_kernel(mesh, "switch_gating", [d.hidden, unsplit], cfg)
    wi = moe_kernel(mesh, "wi", [experts, d.hidden, expert_hidden], cfg)
    wo = moe_kernel(mesh, "wo", [experts, expert_hidden, d.hidden], cfg)
    gate_logits = dense(mtf.to_float(x), mtf.cast(router, tf.float32),
                        (x.shape - d.hidden).dims + [unsplit], cfg, False)
    gate, index = mtf.top_1(mtf.softmax(gate_logits, reduced_dim=unsplit), reduced_dim=unsplit)
    x = ordered(x, [batch, length, d.hidden])
    index = ordered(index, [batch, length])
    out = mtf.slicewise(own_expert_ffn if one_step else routed_expert_ffn, [x, wi, wo, index],
                        output_shape=x.shape, output_dtype=x.dtype,
                        splittable_dims=[batch] + wi.shape.dims)
    return out * mtf.cast(gate, out.dtype)


def expert_weights(wi, wo, e):
    """Expert e's two matrices. tf.slice along the leading (experts) dimension
    hands out a view of the variable's buffer; tf.gather would first copy both
    (2 x 8 H^2 values), tripling what a batch-1 step moves through memory."""
    return [tf.squeeze(tf.slice(w, tf.stack([e, 0, 0]), [1, -1, -1]), 0) for w in (wi, wo)]


def own_expert_ffn(x, wi, wo, index):
    """relu(x[b] wi[index[b]]) wo[index[b]] for every row b of a [rows, 1, hidden] slice."""
    outputs = []
    for row in range(x.shape[0]):
        w1, w2 = expert_weights(wi, wo, index[row, 0])
        outputs.append(tf.matmul(tf.nn.relu(tf.matmul(x[row], w1)), w2))
    return tf.stack(outputs)


def routed_expert_ffn(x, wi, wo, index):
    """The same for a [rows, length, hidden] slice, one expert at a time over the
    tokens routed to it; every token has exactly one expert, so the stitched
    pieces cover every position once."""
    rows, length, hidden = x.shape.as_list()
    flat = tf.reshape(x, [rows * length, hidden])
    index = tf.reshape(index, [rows * length])
    positions, pieces = [], []
    for e in range(wi.shape[0]):
        chosen = tf.cast(tf.reshape(tf.where(tf.equal(index, e)), [-1]), tf.int32)
        w1, w2 = expert_weights(wi, wo, e)
        positions.append(chosen)
        pieces.append(tf.matmul(tf.nn.relu(tf.matmul(tf.gather(flat, chosen), w1)), w2))
    return tf.reshape(tf.dynamic_stitch(positions, pieces), [rows, length, hidden])


def moe_kernel(mesh, name, dims, cfg):
    """A switch-layer kernel as mesh-tensorflow's dense layer makes it (or the
    one it already made): same name, dimensions and fan-in-scaled truncated
    normal initializer (seeded by name through seeded_by_name)."""
    fan_in = dims[-2].size
    init = tf.truncated_normal_initializer(stddev=fan_in ** -0.5)
    return mtf.get_variable(mesh, name + "/kernel", mtf.Shape(dims), initializer=init,
                            dtype=cfg.variable_dtype)


def ext_ffn(x, cfg, name, train=False):
    """The ordinary MLP of an extension layer: H -> 4H (swish) -> H, with biases."""
    d = cfg.dims
    with tf.variable_scope(name):
        w1 = variable(x.mesh, "p1/kernel", [d.hidden, d.ext_hidden], cfg)
        b1 = variable(x.mesh, "p1/bias", [d.ext_hidden], cfg, init=tf.zeros_initializer())
        w2 = variable(x.mesh, "p2/kernel", [d.ext_hidden, d.hidden], cfg)
        b2 = variable(x.mesh, "p2/bias", [d.hidden], cfg, init=tf.zeros_initializer())
    h = swish(dense(x, w1, (x.shape - d.hidden).dims + [d.ext_hidden], cfg, train) + b1)
    return dense(h, w2, (h.shape - d.ext_hidden).dims + [d.hidden], cfg, train) + b2


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


def lookup(table, indices, dim, train, cfg=None):
    """table[indices] as a row gather. (mtf.gather would multiply by a one-hot over
    the whole vocabulary: a [positions, vocabulary, hidden] product forward and
    another backward; the layout never splits the vocabulary, context or hidden
    dimensions, so each slice holds whole rows.) In training the gradient adds
    each position's gradient to its row (see rows_gradient)."""
    grad = None
    if train:
        parts = batch_parts(indices, cfg)
        if parts is None:
            return mtf.gather(table, indices, dim)
        def grad(op, dy):
            return [rows_gradient(dy, indices, table, parts), None]
    return mtf.slicewise(lambda w, i: tf.gather(w, i), [table, indices],
                         output_shape=indices.shape + table.shape.dims[1:],
                         output_dtype=table.dtype, splittable_dims=indices.shape.dims,
                         grad_function=grad)


def batch_parts(indices, cfg):
    """Dimension("batch", n) for the n mesh slices that split `indices`' batch
    dimension (n = 1 on an unsplit batch); None when the layout splits any other
    dimension of `indices`, where a slice's rows cannot be summed on their own."""
    if cfg is None or cfg.mesh_shape is None or not cfg.mesh_shape.dims:
        return mtf.Dimension("batch", 1)
    rules = mtf.convert_to_layout_rules(cfg.layout or "")
    mesh_shape = mtf.convert_to_shape(cfg.mesh_shape)
    n = 1
    for d in indices.shape.dims:
        axis = rules.tensor_dimension_to_mesh_axis(d, mesh_shape)
        if axis is None:
            continue
        if d.name != "batch":
            return None
        n = mesh_shape.dims[axis].size
    return mtf.Dimension("batch", n)


def rows_gradient(dy, indices, table, parts):
    """The gradient of table[indices] for the table: dy summed into the rows its
    positions read. Each batch slice of the mesh sums its own positions into a
    [1, rows, ...] part; the reduce_sum over `parts` then adds the slices (an
    all-reduce where the batch is split)."""
    rows = table.shape.dims[0].size

    def part(g, i):  # summed in float32 whatever the activation dtype
        total = tf.math.unsorted_segment_sum(tf.cast(g, tf.float32), i, rows)
        return tf.cast(total, g.dtype)[None]

    partial = mtf.slicewise(part, [dy, indices], output_shape=mtf.Shape([parts] + table.shape.dims),
                            output_dtype=dy.dtype, splittable_dims=[parts] + indices.shape.dims)
    return sum_parts(partial, parts, table.shape)


def sum_parts(partial, parts, shape):
    """The sum over the mesh slices' parts (an all-reduce where they are split)."""
    if parts.size == 1:
        return mtf.reshape(partial, shape)
    return mtf.reduce_sum(partial, reduced_dim=parts)


def embed(tokens, positions, cfg, train):
    d = cfg.dims
    wte = variable(tokens.mesh, "wte", [d.vocab, d.hidden], cfg)
    wpe = variable(tokens.mesh, "wpe", [d.context, d.hidden], cfg, stddev=0.01)
    x = lookup(wte, tokens, d.vocab, train, cfg) + lookup(wpe, positions, d.context, train, cfg)
    return x, wte


def output_head(x, wte, cfg, train=False):
    """What the vocabulary projection reads: (swish(x W + b) in float32 with hidden
    last, the tied embedding, the vocabulary bias). The names dense/kernel and
    dense_1/bias are the released checkpoint's."""
    d = cfg.dims
    w = variable(x.mesh, "dense/kernel", [d.hidden, d.hidden_out], cfg)
    b = variable(x.mesh, "dense_1/bias", [d.hidden_out], cfg, init=tf.zeros_initializer())
    wob = variable(x.mesh, "wob", [d.vocab], cfg, init=tf.zeros_initializer())
    h = swish(dense(x, w, (x.shape - d.hidden).dims + [d.hidden_out], cfg, train) + b)
    h = mtf.rename_dimension(h, d.hidden_out.name, d.hidden.name)
    return ordered(to_float(h), (h.shape - d.hidden).dims + [d.hidden]), to_float(wte), to_float(wob)


def output_logits(head, cfg):
    """h wte^T + wob: one 2-D matrix product per slice. The einsum lowering streams
    the [vocab, hidden] table, the largest matrix a decoding step reads, slower
    than one tf.matmul (measured in the decoding benchmark). The layout never
    splits vocab or hidden."""
    h, table, bias = head
    d = cfg.dims
    outer = h.shape - d.hidden
    if batch_parts(h, cfg) is None:
        return mtf.einsum([h, table], reduced_dims=[d.hidden]) + bias

    def product(a, w):
        out = tf.matmul(tf.reshape(a, [-1, d.hidden.size]), w, transpose_b=True)
        return tf.reshape(out, tf.concat([tf.shape(a)[:-1], [d.vocab.size]], 0))

    return mtf.slicewise(product, [h, table], output_shape=outer + d.vocab,
                         output_dtype=h.dtype, splittable_dims=outer.dims) + bias


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
    Returns dict(logits [batch, length, vocab] float32 (None in training), head (what
    lm_loss reads, training only), presents, aux_loss, pos_vector).
    """
    d = cfg.dims
    mesh = tokens.mesh
    batch, length = tokens.shape.dims
    # Per layer, a list of cached (key, value) segments: the spout's slot, then the pasts.
    past_list = None
    for segment in (split_pasts(spout_pasts(spout, cfg)) if spout is not None else None,
                    split_pasts(pasts)):
        if segment is not None:
            past_list = [[kv] for kv in segment] if past_list is None else [
                layer + [kv] for layer, kv in zip(past_list, segment)]
    num_past = 0 if past_list is None else sum(
        k.shape.get_dim_by_name("memory").size for k, _ in past_list[0])
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
                x += mtf.cast(lookup(ete, positions, d.context, train, cfg),
                               cfg.activation_dtype)
            a, present = attention(x, past_list[i] if past_list else None, mask, cfg,
                                   "att%d" % i, train)
            x = layer_norm(a, "an%d" % i, cfg) + x
            if i < d.num_switch_layers:
                f, aux = switch_ffn(x, cfg, train, "moe%d" % i)
                aux_losses.append(aux)
            else:
                f = ext_ffn(x, cfg, "mlp%d" % i, train)
            x = layer_norm(f, "ln%d" % i, cfg) + x
            presents.append(present)
            layer_outputs.append(x)
        head = output_head(x, wte, cfg, train)

    # Training reads the projection's inputs (lm_loss), never the logits themselves.
    out = {"logits": None if train else output_logits(head, cfg),
           "head": head if train else None,
           "presents": stack_presents(presents, cfg),
           "aux_loss": mtf.add_n(aux_losses) if aux_losses else None}
    if pos_index is not None:
        per_layer = mtf.stack([gather_position(to_float(h), pos_index, length)
                               for h in layer_outputs], d.layers.name, axis=1)
        flat = mtf.Dimension("pos_vector", d.layers.size * d.hidden.size)
        out["pos_vector"] = mtf.reshape(per_layer, [batch, flat])
    return out


def lm_loss(head, targets, cfg, z_loss=1e-4):
    """Mean cross-entropy over positions with target >= 0, plus z-loss; divided by
    (count + 1e-5) as released (0 for a batch with no target). `head` is
    model(train=True)["head"]."""
    valid = mtf.cast(mtf.greater_equal(targets, 0), tf.float32)
    per_position = cross_entropy_with_z_loss(head, targets, cfg, z_loss)
    return mtf.reduce_sum(per_position * valid) / (mtf.reduce_sum(valid) + 1e-5)


def cross_entropy_with_z_loss(head, targets, cfg, z_loss):
    """log Z - logit[target] + z_loss * (log Z)^2 per position (a negative target
    counts as 0), with the vocabulary projection inside.

    The [positions, vocabulary] logits are the largest tensor of a training step,
    so they are made once and read as little as possible: the forward keeps the
    exponentials, and the gradient of the logits, (1 + 2 z log Z) softmax - one_hot,
    is never formed. Its row scale moves onto the small operands of the two
    backward matrix products, and the one-hot part becomes a row gather and a
    scatter-add into the vocabulary rows. The bias gradient rides along as one
    more column of the table's gradient product."""
    h, table, bias = head
    d = cfg.dims
    parts = batch_parts(targets, cfg)
    if parts is None:  # a layout splitting more than the batch: plain mtf ops
        logits = output_logits(head, cfg)
        log_z = mtf.reduce_logsumexp(logits, d.vocab)
        picked = mtf.reduce_sum(logits * mtf.one_hot(mtf.maximum(targets, 0), d.vocab,
                                                     dtype=logits.dtype), reduced_dim=d.vocab)
        return log_z - picked + z_loss * mtf.square(log_z)
    positions = targets.shape
    h = ordered(h, positions.dims + [d.hidden])
    width = d.hidden.size

    def rows(t, size):
        return tf.reshape(t, [-1, size])

    def labels(t):
        return tf.reshape(tf.maximum(t, 0), [-1])

    def forward(h, w, b, t):
        logits = tf.matmul(rows(h, width), w, transpose_b=True) + b
        peak = tf.reduce_max(logits, axis=1)
        exps = tf.exp(logits - peak[:, None])
        total = tf.reduce_sum(exps, axis=1)
        log_z = peak + tf.math.log(total)
        picked = tf.gather(logits, labels(t)[:, None], axis=1, batch_dims=1)[:, 0]
        shape = tf.shape(t)
        return (tf.reshape(log_z - picked + z_loss * tf.square(log_z), shape),
                tf.reshape(exps, tf.concat([shape, [d.vocab.size]], 0)),
                tf.reshape((1.0 + 2.0 * z_loss * log_z) / total, shape))

    def grad(op, dy, *unused):
        _, exps, softmax_scale = op.outputs
        scale = dy * softmax_scale  # d loss / d logits = scale * exps - dy * one_hot

        def d_hidden(e, w, s, c, t):
            out = tf.matmul(rows(e, d.vocab.size), w) * rows(s, 1) - \
                tf.gather(w, labels(t)) * rows(c, 1)
            return tf.reshape(out, tf.concat([tf.shape(t), [width]], 0))

        def d_table_and_bias(e, a, s, c, t):
            s, c = rows(s, 1), rows(c, 1)
            both = tf.matmul(rows(e, d.vocab.size), tf.concat([rows(a, width) * s, s], 1),
                             transpose_a=True)
            both -= tf.math.unsorted_segment_sum(tf.concat([rows(a, width) * c, c], 1),
                                                 labels(t), d.vocab.size)
            return both[None, :, :width], both[None, :, width]

        grad_h = mtf.slicewise(d_hidden, [exps, table, scale, dy, targets], output_shape=h.shape,
                               output_dtype=h.dtype, splittable_dims=positions.dims)
        grad_w, grad_b = mtf.slicewise(
            d_table_and_bias, [exps, h, scale, dy, targets],
            output_shape=[mtf.Shape([parts] + table.shape.dims), mtf.Shape([parts, d.vocab])],
            output_dtype=[h.dtype, h.dtype], splittable_dims=[parts] + positions.dims)
        return [grad_h, sum_parts(grad_w, parts, table.shape),
                sum_parts(grad_b, parts, bias.shape), None]

    loss, _, _ = mtf.slicewise(
        forward, [h, table, bias, targets],
        output_shape=[positions, positions + d.vocab, positions],
        output_dtype=[tf.float32] * 3, splittable_dims=positions.dims, grad_function=grad)
    return loss


def count_parameters(model_params):
    """Trainable parameter count from a params.ModelParams alone (no graph)."""
    p = model_params
    v, c, h, e = p.num_vocabulary, p.num_contexts, p.num_hidden, p.num_experts
    s, x = p.num_switch_layers, p.num_ext_layers
    attn_and_norms = 3 * h * h + h * h + 4 * h
    switch = h * e + 2 * e * h * 8 * h + h * h
    ext = h * 4 * h + 4 * h + 4 * h * h + h
    total = v * h + c * h + (s + x) * attn_and_norms + s * switch + x * ext
    total += (c * h if x else 0) + h * h + h + v
    spout = p.num_spout
    if spout:
        total += NUM_SPOUT_LAYERS * spout * spout + spout * (s + x) * 2 * h
    return total


