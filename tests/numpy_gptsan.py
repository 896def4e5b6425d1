"""An independent NumPy forward pass of GPTSAN: the tests' reference.

Written from the released architecture's facts (layer structure, variable
names and shapes of the released checkpoints), never from model/, so agreement with the mesh-tensorflow network means both compute the
released architecture. Everything runs in float64 so the reference's own
rounding is negligible next to the model's float32.

Conventions those facts leave open (fixed here once, for both sides):
- Keys are ordered: the spout slot (if any), then the pasts, then this call's
  tokens; `num_past` counts the first two. Query t of this call sees key j iff
  j <= num_past + t (causal) or j < num_past + num_precontext[b] (prefix).
- Positions of this call's tokens start at num_past, clipped to C - 1.
- The spout projection (size L*2*H) is reshaped row-major to [L, 2, A, K]:
  layer-major, then key/value, then head, then kv.
- A switch layer outputs p_e * expert_e(x) for the argmax expert e of the
  softmax router probabilities p, plus tanh(x W_softmlp). With token_drop
  (the released inference rule) each sequence is one group of T tokens
  (T <= 1024) and an expert takes at most max(min(T, int(T * 2.0 / E)), 4) of
  them, in position order; a token arriving at a full expert gets no expert
  output (the bypass remains). Without it no token is dropped.
- pos_vector concatenates, layer-major, the hidden state after each full layer
  at pos_index[b].
"""
import numpy as np

NUM_SPOUT_LAYERS = 8
LN_EPSILON = 1e-5
MASK_PENALTY = 10000.0


class Sizes:
    """The dimensions of one configuration (V, C, H, A, K, E, S, X, L, P)."""

    def __init__(self, model_params):
        p = model_params
        self.V, self.C, self.H = p.num_vocabulary, p.num_contexts, p.num_hidden
        self.A, self.E = p.num_header, p.num_experts
        self.K = self.H // self.A
        self.S, self.X = p.num_switch_layers, p.num_ext_layers
        self.L = self.S + self.X
        self.P = p.num_spout


def variable_shapes(model_params):
    """{checkpoint name: shape} exactly as the released checkpoints have them."""
    z = Sizes(model_params)
    shapes = {"model/wte": (z.V, z.H), "model/wpe": (z.C, z.H)}
    if z.X:
        shapes["model/ete"] = (z.C, z.H)
    for i in range(z.L):
        shapes["model/att%d/qkv/kernel" % i] = (z.H, 3, z.A, z.K)
        shapes["model/att%d/o/kernel" % i] = (z.A, z.K, z.H)
        for norm in ("an", "ln"):
            shapes["model/%s%d/g" % (norm, i)] = (z.H,)
            shapes["model/%s%d/b" % (norm, i)] = (z.H,)
        if i < z.S:
            shapes["model/moe%d/switch_gating/kernel" % i] = (z.H, z.E)
            shapes["model/moe%d/wi/kernel" % i] = (z.E, z.H, 8 * z.H)
            shapes["model/moe%d/wo/kernel" % i] = (z.E, 8 * z.H, z.H)
            shapes["model/moe%d/softmlp/kernel" % i] = (z.H, z.H)
        else:
            shapes["model/mlp%d/p1/kernel" % i] = (z.H, 4 * z.H)
            shapes["model/mlp%d/p1/bias" % i] = (4 * z.H,)
            shapes["model/mlp%d/p2/kernel" % i] = (4 * z.H, z.H)
            shapes["model/mlp%d/p2/bias" % i] = (z.H,)
    shapes["model/dense/kernel"] = (z.H, z.H)
    shapes["model/dense_1/bias"] = (z.H,)
    shapes["model/wob"] = (z.V,)
    if z.P:
        for k in range(NUM_SPOUT_LAYERS):
            shapes["pasts/mlp%d/kernel" % k] = (z.P, z.P)
        shapes["pasts/out/kernel"] = (z.P, z.L * 2 * z.H)
    return shapes


def parameter_count(model_params):
    return sum(int(np.prod(shape)) for shape in variable_shapes(model_params).values())


def random_weights(model_params, seed, stddev=0.3):
    """Weights far from the initialisation (LayerNorm gains around 1, every
    bias and `ete` nonzero) so that any mistake shows in the logits."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in variable_shapes(model_params).items():
        value = rng.normal(0.0, stddev, shape)
        if name.endswith("/g"):
            value += 1.0
        weights[name] = value.astype(np.float32)
    return weights


def load_weights(checkpoint_path, model_params):
    """Read these variables from a TF checkpoint (TensorFlow imported lazily)."""
    from model.compat import tf
    reader = tf.train.load_checkpoint(checkpoint_path)
    return {name: reader.get_tensor(name) for name in variable_shapes(model_params)}


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def swish(x):
    return x / (1.0 + np.exp(-x))


def layer_norm(x, w, name):
    centered = x - x.mean(-1, keepdims=True)
    normed = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + LN_EPSILON)
    return normed * w[name + "/g"] + w[name + "/b"]


def visibility_mask(batch, length, num_past, num_precontext):
    """[batch, length, num_past + length]: 1 where a query may see a key."""
    query = num_past + np.arange(length)[:, None]
    key = np.arange(num_past + length)[None, :]
    causal = key <= query
    prefix = key[None] < (num_past + np.asarray(num_precontext).reshape(batch, 1, 1))
    return (causal[None] | prefix).astype(np.float64)


def spout_keys_values(w, z, spout):
    """[batch, L, 2, A, 1, K]: the one cached position the spout stands for."""
    s = np.asarray(spout, np.float64)
    for k in range(NUM_SPOUT_LAYERS):
        s = np.tanh(s @ w["pasts/mlp%d/kernel" % k])
    out = s @ w["pasts/out/kernel"]
    return out.reshape(len(s), z.L, 2, z.A, 1, z.K)


def attention(x, w, i, z, past, mask):
    """Returns the output and this call's keys/values [batch, 2, A, T, K]."""
    qkv = np.einsum("bth,hcak->cbatk", x, w["model/att%d/qkv/kernel" % i])
    q, k, v = qkv
    present = np.stack([k, v], axis=1)
    if past is not None:
        k = np.concatenate([past[:, 0], k], axis=2)
        v = np.concatenate([past[:, 1], v], axis=2)
    scores = np.einsum("batk,bamk->batm", q, k) * z.K ** -0.5
    m = mask[:, None]
    weights = softmax(scores * m - (1.0 - m) * MASK_PENALTY)
    a = np.einsum("batm,bamk->batk", weights, v)
    return np.einsum("batk,akh->bth", a, w["model/att%d/o/kernel" % i]), present


def capacity_keep(chosen, num_experts, capacity_factor=2.0, min_capacity=4):
    """[B, T] bool: whether each token fits in its expert's capacity, tokens
    of one sequence taken in position order."""
    batch, length = chosen.shape
    capacity = max(min(length, int(length * capacity_factor / num_experts)), min_capacity)
    keep = np.zeros(chosen.shape, bool)
    for b in range(batch):
        used = [0] * num_experts
        for t in range(length):
            e = chosen[b, t]
            keep[b, t] = used[e] < capacity
            used[e] += 1
    return keep


def switch_ffn(x, w, i, token_drop=False):
    """Top-1 expert scaled by its router probability, plus the softmlp bypass.
    Also returns the smallest gap between the best and second-best router
    probability: a test whose routing is nearly tied would be fragile."""
    name = "model/moe%d/" % i
    probs = softmax(x @ w[name + "switch_gating/kernel"])
    chosen = probs.argmax(-1)
    gate = np.take_along_axis(probs, chosen[..., None], -1)
    hidden = np.maximum(np.einsum("bth,bthf->btf", x, w[name + "wi/kernel"][chosen]), 0.0)
    expert = np.einsum("btf,btfh->bth", hidden, w[name + "wo/kernel"][chosen])
    if token_drop:
        expert = expert * capacity_keep(chosen, probs.shape[-1])[..., None]
    top2 = np.sort(probs, -1)[..., -2:]
    margin = float((top2[..., 1] - top2[..., 0]).min())
    return gate * expert + np.tanh(x @ w[name + "softmlp/kernel"]), margin


def ext_ffn(x, w, i):
    name = "model/mlp%d/" % i
    h = swish(x @ w[name + "p1/kernel"] + w[name + "p1/bias"])
    return h @ w[name + "p2/kernel"] + w[name + "p2/bias"]


def cached_keys_values(w, z, pasts, spout):
    """Spout slot first, then the pasts, along the memory axis (or None)."""
    parts = []
    if spout is not None:
        parts.append(spout_keys_values(w, z, spout))
    if pasts is not None:
        parts.append(np.asarray(pasts, np.float64))
    return np.concatenate(parts, axis=4) if parts else None


def forward(weights, model_params, tokens, num_precontext=None, pasts=None, spout=None,
            pos_index=None, token_drop=False):
    """The GPTSAN forward pass.

    Returns dict(logits [B,T,V], presents [B,L,2,A,T,K], layer_outputs
    [B,L,T,H], router_margin, and pos_vector [B, L*H] if pos_index is given).
    """
    z = Sizes(model_params)
    w = {name: np.asarray(value, np.float64) for name, value in weights.items()}
    tokens = np.asarray(tokens)
    batch, length = tokens.shape
    if num_precontext is None:
        num_precontext = np.zeros(batch, np.int64)
    cache = cached_keys_values(w, z, pasts, spout)
    num_past = 0 if cache is None else cache.shape[4]
    positions = np.minimum(np.arange(length) + num_past, z.C - 1)
    mask = visibility_mask(batch, length, num_past, num_precontext)

    x = w["model/wte"][tokens] + w["model/wpe"][positions]
    presents, layer_outputs, margins = [], [], []
    for i in range(z.L):
        if i == z.S:
            x = x + w["model/ete"][positions]
        a, present = attention(x, w, i, z, None if cache is None else cache[:, i], mask)
        x = layer_norm(a, w, "model/an%d" % i) + x
        if i < z.S:
            f, margin = switch_ffn(x, w, i, token_drop)
            margins.append(margin)
        else:
            f = ext_ffn(x, w, i)
        x = layer_norm(f, w, "model/ln%d" % i) + x
        presents.append(present)
        layer_outputs.append(x)

    h = swish(x @ w["model/dense/kernel"] + w["model/dense_1/bias"])
    out = {"logits": h @ w["model/wte"].T + w["model/wob"],
           "presents": np.stack(presents, axis=1),
           "layer_outputs": np.stack(layer_outputs, axis=1),
           "router_margin": min(margins) if margins else float("inf")}
    if pos_index is not None:
        rows = np.arange(batch)
        per_layer = out["layer_outputs"][rows, :, np.asarray(pos_index)]
        out["pos_vector"] = per_layer.reshape(batch, z.L * z.H)
    return out
