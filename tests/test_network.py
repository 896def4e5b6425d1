"""The network against an independent NumPy forward pass, its masking and
caching invariants, its mesh layouts, parameter counts and checkpoint checks.

Weights are written by a plain tf.train.Saver over variables named and shaped
as the released checkpoint has them (tests/numpy_gptsan.py), so these tests also pin
the released checkpoint's names. Graphs are built once per module and reused.
"""
import dataclasses
import os

import numpy as np
import pytest

import numpy_gptsan as ref
from model import mesh as meshlib
from model import graph as graphlib
from model import network, params, runtime
from model import devices as devicelib
from model.errors import UserError
from model.compat import mtf, tf

BATCH = 2
REFERENCE_ATOL = 1e-4
# Mesh layouts and cache splits only reorder float32 sums; the 1e-5 allowed for that is
# taken relative to the values' scale (these deliberately large weights give
# logits near 14, where one float32 ulp is already 1e-6).
SAME_COMPUTATION_RTOL = 1e-5
# Routing within this margin could flip between float32 and float64.
MIN_ROUTER_MARGIN = 1e-4

CONFIGS = {
    "switch_only": params.default_params(
        num_contexts=32, num_switch_layers=2, num_ext_layers=0, num_hidden=32, num_header=4,
        num_experts=4, num_vocabulary=101).model,
    # C = 10 < 1 spout slot + 12 tokens, so the last positions are clipped to C - 1.
    "ext_spout": params.default_params(
        num_contexts=10, num_switch_layers=1, num_ext_layers=2, num_hidden=32, num_header=4,
        num_experts=4, num_vocabulary=101, num_spout=8).model,
}
LENGTHS = {"switch_only": 8, "ext_spout": 12}
SEEDS = {"switch_only": 11, "ext_spout": 12}

RELEASED = params.default_params(
    num_contexts=1280, num_switch_layers=10, num_ext_layers=0, num_hidden=1024, num_header=16,
    num_experts=16, num_vocabulary=36000, num_pallarelizm=1).model
RELEASED_COUNT = 2776248480


def has_spout(config):
    return bool(CONFIGS[config].num_spout)


def write_checkpoint(weights, folder):
    """A plain TF checkpoint (and its `checkpoint` file) holding `weights`."""
    with tf.Graph().as_default():
        variables = [tf.Variable(value, name=name) for name, value in weights.items()]
        saver = tf.train.Saver(variables)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            return saver.save(session, os.path.join(folder, "model.ckpt"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{config name: (model dir, weights as read back from the checkpoint)}."""
    out = {}
    for name, model_params in CONFIGS.items():
        folder = str(tmp_path_factory.mktemp(name))
        path = write_checkpoint(ref.random_weights(model_params, SEEDS[name]), folder)
        out[name] = (folder, ref.load_weights(path, model_params))
    return out


@pytest.fixture(scope="module")
def built_forwards(checkpoints):
    built = {}
    yield built
    for f in built.values():
        f.close()


def cpu_mesh(mesh):
    """Logical CPU devices even where a GPU is visible: the same arithmetic on
    every machine, and a 2x2 mesh needs no 4 GPUs."""
    rows, cols = (int(n) for n in mesh.split("x"))
    return devicelib.local(mesh_shape=mesh, cpu_devices=rows * cols)


@pytest.fixture
def forward(checkpoints, built_forwards):
    """forward(config, length, mesh, past_length) -> a restored runtime.Forward
    (spout input when the config has one, pos_vector output always), built
    once per module for each distinct request."""

    def get(config, length=None, mesh="1x1", past_length=0):
        length = length or LENGTHS[config]
        key = (config, length, mesh, past_length)
        if key not in built_forwards:
            f = runtime.Forward(CONFIGS[config], BATCH, length, devices=cpu_mesh(mesh),
                                with_spout=has_spout(config), with_pos_vector=True,
                                past_length=past_length)
            built_forwards[key] = f.restore(checkpoints[config][0])
        return built_forwards[key]

    return get


def example(config, seed=0, length=None):
    """Random tokens, plus a spout vector when the config has one."""
    rng = np.random.default_rng(seed)
    length = length or LENGTHS[config]
    tokens = rng.integers(0, CONFIGS[config].num_vocabulary, (BATCH, length))
    inputs = {"pos_index": np.zeros(BATCH, np.int32)}
    if has_spout(config):
        inputs["spout"] = rng.normal(0, 1, (BATCH, CONFIGS[config].num_spout))
    return tokens, inputs


def reference(checkpoints, config, tokens, **inputs):
    out = ref.forward(checkpoints[config][1], CONFIGS[config], tokens, **inputs)
    assert out["router_margin"] > MIN_ROUTER_MARGIN, "test data routes a token on a near-tie"
    return out


def assert_close(actual, expected, atol):
    err = np.abs(np.asarray(actual, np.float64) - expected).max()
    assert err <= atol, "max abs error %.3g > %.3g" % (err, atol)


def assert_same_computation(actual, expected):
    """Equal up to float32 summation order."""
    assert_close(actual, expected, SAME_COMPUTATION_RTOL * max(1.0, np.abs(expected).max()))


# --- checkpoint names -------------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_graph_variables_are_the_released_checkpoint_names(forward, config):
    expected = {name: list(shape) for name, shape in ref.variable_shapes(CONFIGS[config]).items()}
    assert graphlib.expected_variables(forward(config).graph) == expected


# --- the NumPy reference ----------------------------------------------------

@pytest.mark.parametrize("config,num_precontext", [
    ("switch_only", [0, 0]),
    ("switch_only", [3, 6]),
    ("ext_spout", [0, 0]),
    ("ext_spout", [5, 2]),
])
def test_logits_and_presents_match_numpy(forward, checkpoints, config, num_precontext):
    tokens, inputs = example(config)
    got = forward(config)(tokens, num_precontext=num_precontext, **inputs)
    want = reference(checkpoints, config, tokens, num_precontext=num_precontext, **inputs)
    assert got["logits"].shape == want["logits"].shape
    assert_close(got["logits"], want["logits"], REFERENCE_ATOL)
    assert_close(got["presents"], want["presents"], REFERENCE_ATOL)


def test_spout_changes_the_logits(forward):
    f = forward("ext_spout")
    tokens, first = example("ext_spout", seed=1)
    _, second = example("ext_spout", seed=2)
    a, b = f(tokens, **first)["logits"], f(tokens, **second)["logits"]
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_pos_vector_is_every_layers_hidden_state(forward, checkpoints, config):
    z = ref.Sizes(CONFIGS[config])
    tokens, inputs = example(config)
    inputs["pos_index"] = np.array([LENGTHS[config] - 1, 2])
    got = forward(config)(tokens, **inputs)["pos_vector"]
    want = reference(checkpoints, config, tokens, **inputs)
    assert got.shape == (BATCH, z.H * z.L)
    assert_close(got, want["pos_vector"], REFERENCE_ATOL)


# --- masking invariants -----------------------------------------------------

def change_token(tokens, position, config):
    changed = tokens.copy()
    changed[:, position] = (changed[:, position] + 1) % CONFIGS[config].num_vocabulary
    return changed


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("position", [3, -1])
def test_causal_later_tokens_never_change_earlier_logits(forward, config, position):
    f, (tokens, inputs) = forward(config), example(config)
    position %= LENGTHS[config]
    before = f(tokens, **inputs)["logits"]
    after = f(change_token(tokens, position, config), **inputs)["logits"]
    # Equal up to summation order, not bit for bit: changing a token can change how
    # many tokens an expert takes, and a matrix product over another number of
    # rows may round a row differently (seen on an AVX2-only CPU). A leak through
    # the mask would move the logits by far more.
    assert_same_computation(after[:, :position], before[:, :position])
    assert np.abs(after[:, position:] - before[:, position:]).max() > 1e-3


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_prefix_is_bidirectional_and_blind_to_the_rest(forward, config):
    f, (tokens, inputs), k = forward(config), example(config), 5
    inputs["num_precontext"] = [k, k]
    before = f(tokens, **inputs)["logits"]
    inside = f(change_token(tokens, k - 1, config), **inputs)["logits"]
    # Every earlier prefix position sees the last prefix token.
    assert (np.abs(inside[:, :k - 1] - before[:, :k - 1]).max(axis=-1) > 1e-4).all()
    for position in range(k, LENGTHS[config]):
        after = f(change_token(tokens, position, config), **inputs)["logits"]
        assert_same_computation(after[:, :k], before[:, :k])  # as in the causal test


# --- incremental decoding ---------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("num_precontext", [[0, 0], [3, 1]])
def test_decoding_with_pasts_equals_the_full_pass(forward, config, num_precontext):
    """The first call holds the prefix; the second continues from its presents
    (given the same spout, if any)."""
    first, length = 5, LENGTHS[config]
    tokens, inputs = example(config)
    full = forward(config)(tokens, num_precontext=num_precontext, **inputs)
    head = forward(config, length=first)(tokens[:, :first], num_precontext=num_precontext,
                                         **inputs)
    tail = forward(config, length=length - first, past_length=first)(
        tokens[:, first:], pasts=head["presents"], **inputs)
    assert_same_computation(head["logits"], full["logits"][:, :first])
    assert_same_computation(tail["logits"], full["logits"][:, first:])
    assert_same_computation(tail["presents"], full["presents"][..., first:, :])


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_one_token_step_reads_only_the_chosen_experts_and_equals_the_full_pass(
        forward, config, monkeypatch):
    """A decoding step (one token, fewer rows than experts) takes the switch
    layer's own-expert path; it must compute what the full pass computes."""
    from model import network
    taken = []
    real = network.chosen_experts_only
    monkeypatch.setattr(network, "chosen_experts_only",
                        lambda x, cfg: taken.append(real(x, cfg)) or taken[-1])
    length = LENGTHS[config]
    tokens, inputs = example(config)
    full = forward(config)(tokens, **inputs)
    head = forward(config, length=length - 1)(tokens[:, :-1], **inputs)
    step = forward(config, length=1, past_length=length - 1)(
        tokens[:, -1:], pasts=head["presents"], **inputs)
    assert BATCH < CONFIGS[config].num_experts
    assert [t is not None for t in taken][-CONFIGS[config].num_switch_layers:] == \
        [True] * CONFIGS[config].num_switch_layers
    assert_same_computation(step["logits"], full["logits"][:, -1:])
    assert_same_computation(step["presents"], full["presents"][..., -1:, :])


# --- mesh layouts -----------------------------------------------------------

@pytest.mark.parametrize("config,mesh", [
    ("switch_only", "2x1"), ("switch_only", "1x2"), ("switch_only", "2x2"),
    ("ext_spout", "2x2"),
])
def test_every_mesh_layout_gives_the_same_logits(forward, config, mesh):
    tokens, inputs = example(config)
    inputs["num_precontext"] = [2, 0]
    one = forward(config)(tokens, **inputs)
    split = forward(config, mesh=mesh)(tokens, **inputs)
    for name in ("logits", "presents"):
        assert_same_computation(split[name], one[name])


# --- parameter counts -------------------------------------------------------

SINGLE_DEVICE = dict(layout=meshlib.LAYOUT, mesh_shape=meshlib.mesh_shape(1, 1))


def graph_parameter_count(model_params, config_kwargs=SINGLE_DEVICE):
    """Sum of the trainable variable sizes a built mtf graph declares: no
    lowering, no session, nothing allocated."""
    with tf.Graph().as_default():
        mtf_graph, mesh = meshlib.new_mesh()
        cfg = network.Config(model_params, **config_kwargs)
        batch, length = mtf.Dimension("batch", 1), mtf.Dimension("length", 4)
        inputs = {}
        if model_params.num_spout:
            inputs["spout"] = mtf.zeros(mesh, [batch, cfg.dims.spout])
        network.model(mtf.zeros(mesh, [batch, length], tf.int32), cfg, **inputs)
        return sum(v.shape.size for v in mtf_graph.trainable_variables)


def released(**overrides):
    return dataclasses.replace(RELEASED, **overrides)


@pytest.mark.parametrize("model_params,count", [
    (released(), RELEASED_COUNT),
    (released(num_spout=128), RELEASED_COUNT + 8 * 128 ** 2 + 128 * 10 * 2 * 1024),
])
def test_released_parameter_count(model_params, count):
    assert ref.parameter_count(model_params) == count
    assert network.count_parameters(model_params) == count
    assert graph_parameter_count(model_params) == count


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_small_parameter_counts_agree(config):
    count = ref.parameter_count(CONFIGS[config])
    assert network.count_parameters(CONFIGS[config]) == count
    assert graph_parameter_count(CONFIGS[config]) == count


def test_config_defaults_build_a_switch_layer():
    """network.Config(params) alone, without a layout or mesh shape, describes
    one unsplit device and must build (the moe layer reads both)."""
    count = ref.parameter_count(CONFIGS["switch_only"])
    assert graph_parameter_count(CONFIGS["switch_only"], config_kwargs={}) == count


# --- checkpoint mismatches --------------------------------------------------

def test_checkpoint_with_other_shapes_names_the_variable(forward, tmp_path):
    other_vocab = dataclasses.replace(CONFIGS["switch_only"], num_vocabulary=97)
    write_checkpoint(ref.random_weights(other_vocab, seed=0), str(tmp_path))
    with pytest.raises(UserError, match="model/w(te|ob)"):
        forward("switch_only").restore(str(tmp_path))


def test_checkpoint_missing_a_variable_names_it(forward, checkpoints):
    # The switch-only checkpoint lacks the extension layers and the spout.
    with pytest.raises(UserError, match="has no variable (model|pasts)/"):
        forward("ext_spout").restore(checkpoints["switch_only"][0])


def test_directory_without_checkpoint_file_is_a_user_error(forward, tmp_path):
    (tmp_path / "parameters.json").write_text("{}")
    with pytest.raises(UserError, match="no 'checkpoint' file"):
        forward("switch_only").restore(str(tmp_path))


@pytest.mark.parametrize("token_drop", [True, False])
def test_token_dropping_switch_matches_numpy_per_sequence(checkpoints, token_drop):
    """Config(no_token_drop=False) is the released capacity rule: equal to the
    NumPy reference's rule, per sequence (a row's result never depends on the
    other rows), and on this data it does drop tokens (so it differs from the
    all-routed pass)."""
    config, length = "switch_only", 24
    f = runtime.Forward(CONFIGS[config], BATCH, length, devices=cpu_mesh("1x1"),
                        with_pos_vector=True, token_drop=token_drop)
    f.restore(checkpoints[config][0])
    tokens, inputs = example(config, seed=5, length=length)
    # One token repeated routes most positions to one expert, over its
    # capacity of max(int(24 * 2 / 4), 4) = 12.
    tokens[0] = 1
    try:
        got = f(tokens, **inputs)
        alone = f(np.stack([tokens[0], tokens[0]]), **inputs)
    finally:
        f.close()
    want = reference(checkpoints, config, tokens, token_drop=token_drop, **inputs)
    other = ref.forward(checkpoints[config][1], CONFIGS[config], tokens,
                        token_drop=not token_drop, **inputs)
    assert_close(got["logits"], want["logits"], REFERENCE_ATOL)
    assert np.abs(want["logits"][0] - other["logits"][0]).max() > 1e-3
    assert_same_computation(alone["logits"][0], got["logits"][0])


# --- the training loss --------------------------------------------------------

def numpy_lm_loss(h, table, bias, targets, z_loss):
    """The released loss and its gradients in float64, written out directly:
    logits = h table^T + bias; mean over targeted positions of
    log Z - logit[target] + z (log Z)^2, divided by (count + 1e-5)."""
    logits = h @ table.T + bias
    peak = logits.max(-1, keepdims=True)
    log_z = (peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True)))[..., 0]
    valid = (targets >= 0).astype(np.float64)
    labels = np.maximum(targets, 0)
    picked = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    count = valid.sum() + 1e-5
    loss = ((log_z - picked + z_loss * log_z ** 2) * valid).sum() / count
    softmax = np.exp(logits - log_z[..., None])
    one_hot = np.eye(table.shape[0])[labels]
    d_logits = ((1 + 2 * z_loss * log_z)[..., None] * softmax - one_hot) * (valid / count)[..., None]
    return loss, d_logits @ table, np.einsum("blv,blh->vh", d_logits, h), d_logits.sum((0, 1))


@pytest.mark.parametrize("mesh", ["1x1", "2x1"])
def test_training_loss_and_its_gradients_match_numpy(mesh):
    """lm_loss writes the vocabulary projection's gradient out by hand (no logits
    gradient tensor, the bias gradient folded into the table's): it must equal the
    plain formula, also when the batch is split and each slice sums its own part."""
    rng = np.random.default_rng(5)
    batch, length, hidden, vocab, z_loss = 4, 6, 8, 37, 1e-2
    h = rng.normal(0, 1, (batch, length, hidden))
    table, bias = rng.normal(0, 0.5, (vocab, hidden)), rng.normal(0, 0.5, vocab)
    targets = rng.integers(0, vocab, (batch, length))
    targets[0, :2] = -1  # positions without a target count for nothing
    targets[3, :] = -1
    devices = cpu_mesh(mesh)
    mp = dataclasses.replace(CONFIGS["switch_only"], num_hidden=hidden, num_vocabulary=vocab)
    with tf.Graph().as_default():
        mtf_graph, m = meshlib.new_mesh()
        cfg = network.Config(mp, layout=meshlib.LAYOUT, mesh_shape=devices.shape)
        d = cfg.dims
        dims = {"batch": mtf.Dimension("batch", batch), "length": mtf.Dimension("length", length)}

        def imp(value, shape, dtype=tf.float32):
            return runtime.import_tensor(m, tf.constant(value, dtype), shape)

        head = [imp(h, [dims["batch"], dims["length"], d.hidden]), imp(table, [d.vocab, d.hidden]),
                imp(bias, [d.vocab])]
        loss = network.lm_loss(head, imp(targets, [dims["batch"], dims["length"]], tf.int32),
                               cfg, z_loss=z_loss)
        grads = mtf.gradients([loss], head)
        lowering = mtf.Lowering(mtf_graph, {m: meshlib.placement(devices.shape, devices.devices)})
        outs = [lowering.export_to_tf_tensor(t) for t in [loss] + grads]
        with tf.Session(config=devices.config) as session:
            got = session.run(outs)
    want = numpy_lm_loss(h, table, bias, targets, z_loss)
    for name, g, w in zip(["loss", "d_hidden", "d_table", "d_bias"], got, want):
        assert np.abs(g - w).max() <= 1e-5 * max(1.0, np.abs(w).max()), name
