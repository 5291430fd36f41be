"""Conditioning inside the networks: class labels, cross-attention to tokens, the null
condition and its dropout, and the noise-conditional classifier.

Tiny networks on 8 x 8 images; parameters are made in numpy from `param_shapes` (random,
so that every output depends on every input: at initialization the output layers are
zero), and each network is compiled once or twice.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scoresde import sde_lib
from scoresde.models import (
    drop_condition,
    get_classifier_log_prob_fn,
    get_model,
    get_score_fn,
    noise_labels,
    null_condition,
    param_shapes,
)

import conftest
from conftest import images

TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
SHAPE = (2, 8, 8, 3)
LABELS = jnp.array([100.0, 700.0])  # DDPM++'s t * 999


def random_params(shapes, seed=0):
    """Random parameters shaped like `shapes`: GroupNorm scales 1, everything else random
    (kernels and embeddings ~ N(0, 1/fan_in), vectors ~ N(0, 0.1^2))."""
    return conftest.random_params(shapes, seed, vector_std=0.1, fourier_std=0.1)


def shapes_of(tree):
    return jax.tree.map(lambda leaf: leaf.shape, tree)


def apply_fn(model):
    """A jitted `(params, x, labels, y) -> output` (y=None compiles a second program)."""
    return jax.jit(lambda p, x, labels, y: model.apply({"params": p}, x, labels, y, train=False))


# ----------------------------------------------------------------------------------------
# Score networks.


def test_unconditional_network_unchanged():
    """With no conditioning configured the tree has no condition parameters, and the
    conditional trees only add theirs (every other parameter keeps its name and shape)."""
    default = get_model("ddpmpp", **TINY)
    explicit = get_model("ddpmpp", **TINY, num_classes=0, context_vocab_size=0)
    shapes = param_shapes(default, SHAPE)
    assert shapes_of(param_shapes(explicit, SHAPE)) == shapes_of(shapes)
    assert not any(k.startswith(("Embed", "ContextEmbedding", "CrossAttnBlock")) for k in shapes)

    by_class = param_shapes(default.clone(num_classes=5), SHAPE)
    assert set(by_class) - set(shapes) == {"Embed_0"} and by_class["Embed_0"]["embedding"].shape == (6, 64)
    by_tokens = param_shapes(default.clone(context_vocab_size=11), SHAPE)
    assert set(by_tokens) - set(shapes) == {"ContextEmbedding_0", "CrossAttnBlock_0", "CrossAttnBlock_1", "CrossAttnBlock_2"}
    for tree in (by_class, by_tokens):
        assert shapes_of({k: tree[k] for k in shapes}) == shapes_of(shapes)

    params, x = random_params(shapes), images()
    out = jax.jit(
        lambda p, x: (
            default.apply({"params": p}, x, LABELS, train=False),
            explicit.apply({"params": p}, x, LABELS, None, train=False),
        )
    )(params, x)
    np.testing.assert_array_equal(*out)


def test_class_conditional_ncsnpp():
    model = get_model("ddpmpp", **TINY, num_classes=5)
    params, x = random_params(param_shapes(model, SHAPE)), images()
    run = apply_fn(model)
    base = run(params, x, LABELS, jnp.array([1, 2]))
    changed = run(params, x, LABELS, jnp.array([3, 2]))
    null = run(params, x, LABELS, jnp.array([-1, -1]))
    # Per example: changing example 0's label changes example 0 only.
    assert np.abs(changed[0] - base[0]).max() > 1e-3
    np.testing.assert_allclose(changed[1], base[1], atol=1e-6)
    assert np.abs(null - base).max() > 1e-3
    # y=None is the null class (label -1) for every example.
    np.testing.assert_allclose(run(params, x, LABELS, None), null, atol=1e-6)
    mixed = run(params, x, LABELS, jnp.array([-1, 2]))
    np.testing.assert_allclose(mixed[0], null[0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], base[1], atol=1e-6)


def test_cross_attention_ncsnpp():
    model = get_model("ddpmpp", **TINY, context_vocab_size=11, context_length=4, context_dim=8)
    params, x = random_params(param_shapes(model, SHAPE)), images()
    run = apply_fn(model)
    tokens = jnp.array([[3, 0, 5], [2, 7, 0]])
    base = run(params, x, LABELS, tokens)
    # Padding is masked out: appending a 0 token, or changing the padding embedding, changes nothing.
    np.testing.assert_allclose(run(params, x, LABELS, jnp.pad(tokens, ((0, 0), (0, 1)))), base, atol=1e-5)
    embed = params["ContextEmbedding_0"]["Embed_0"]["embedding"]
    repadded = jax.tree.map(lambda a: a, params)
    repadded["ContextEmbedding_0"]["Embed_0"]["embedding"] = embed.at[0].add(3.0)
    np.testing.assert_allclose(run(repadded, x, LABELS, tokens), base, atol=1e-6)
    # Tokens matter, per example.
    changed = run(params, x, LABELS, jnp.array([[4, 0, 5], [2, 7, 0]]))
    assert np.abs(changed[0] - base[0]).max() > 1e-3
    np.testing.assert_allclose(changed[1], base[1], atol=1e-6)
    # An all-padding row is the null condition, as y=None.
    null_row = run(params, x, LABELS, jnp.array([[0, 0, 0], [2, 7, 0]]))
    none = run(params, x, LABELS, None)
    np.testing.assert_allclose(null_row[0], none[0], atol=1e-5)
    np.testing.assert_allclose(null_row[1], base[1], atol=1e-6)
    assert np.abs(none[0] - base[0]).max() > 1e-3


def test_mlp_class_conditional_score_fn():
    """get_score_fn's score_fn(x, t) (null condition) and score_fn(x, t, y), also jitted."""
    sde = sde_lib.VPSDE()
    model = get_model("mlp", hidden=32, num_layers=2, num_classes=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
    t = jnp.array([0.1, 0.3, 0.5, 0.9])
    params = random_params(param_shapes(model, x.shape))
    score_fn = get_score_fn(sde, model, params)
    y = jnp.array([0, 1, 2, -1])
    out = score_fn(x, t, y)
    assert out.shape == x.shape and np.all(np.isfinite(out))
    np.testing.assert_allclose(jax.jit(score_fn)(x, t, y), out, rtol=1e-5, atol=1e-6)
    uncond = score_fn(x, t)
    np.testing.assert_allclose(uncond[3], out[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score_fn(x, t, null_condition(y)), uncond, rtol=1e-5, atol=1e-6)
    assert np.abs(uncond[:3] - out[:3]).min(axis=1).max() > 1e-4
    assert not np.allclose(score_fn(x, t, jnp.array([1, 1, 2, -1]))[0], out[0])


def _apply_shape(model, x_shape, y, labels=None):
    params = param_shapes(model, x_shape)
    labels = jnp.ones(x_shape[:1]) if labels is None else labels
    return jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros(x_shape), labels, y, train=False), params)


def test_condition_errors():
    labels, tokens = jnp.array([1, 2]), jnp.array([[1, 2], [3, 0]])
    for name, kwargs in [("ddpmpp", TINY), ("ddpm", dict(TINY, nf=32)), ("mlp", {})]:
        shape = (2, 2) if name == "mlp" else SHAPE
        with pytest.raises(ValueError, match="unconditional"):
            _apply_shape(get_model(name, **kwargs), shape, labels)
    by_class = get_model("ddpmpp", **TINY, num_classes=5)
    by_tokens = get_model("ddpmpp", **TINY, context_vocab_size=11, context_length=4)
    assert _apply_shape(by_class, SHAPE, labels).shape == SHAPE
    with pytest.raises(ValueError, match="class-conditional"):
        _apply_shape(by_class, SHAPE, tokens)
    with pytest.raises(ValueError, match="integer"):
        _apply_shape(by_class, SHAPE, jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="cross-attends"):
        _apply_shape(by_tokens, SHAPE, labels)
    with pytest.raises(ValueError, match="context_length=4"):
        _apply_shape(by_tokens, SHAPE, jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="exclusive"):
        param_shapes(get_model("ddpmpp", **TINY, num_classes=5, context_vocab_size=11), SHAPE)
    with pytest.raises(ValueError, match="conditional=True"):
        param_shapes(get_model("ddpmpp", **TINY, num_classes=5, conditional=False), SHAPE)
    with pytest.raises(ValueError, match="class-conditional"):
        _apply_shape(get_model("mlp", num_classes=3), (2, 2), tokens)


# ----------------------------------------------------------------------------------------
# The null condition and condition dropout.


def test_null_and_drop_condition():
    labels = jnp.arange(10000, dtype=jnp.int32) % 7
    tokens = jnp.tile(jnp.array([[1, 2, 3]], jnp.int32), (5, 1))
    np.testing.assert_array_equal(null_condition(labels[:3]), [-1, -1, -1])
    np.testing.assert_array_equal(null_condition(tokens), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        null_condition(jnp.zeros((2, 2, 2, 2), jnp.int32))

    key = jax.random.key(0)
    assert drop_condition(key, None, 0.5) is None
    np.testing.assert_array_equal(drop_condition(key, labels, 0.0), labels)
    np.testing.assert_array_equal(drop_condition(key, labels, 1.0), -1)
    np.testing.assert_array_equal(drop_condition(key, tokens, 1.0), 0)
    dropped = np.asarray(drop_condition(key, labels, 0.3)) == -1
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / labels.size)
    np.testing.assert_array_equal(np.asarray(drop_condition(key, labels, 0.3))[~dropped], np.asarray(labels)[~dropped])
    # Token rows are dropped whole.
    rows = np.asarray(drop_condition(jax.random.key(1), jnp.tile(tokens, (200, 1)), 0.5))
    assert set(rows.sum(axis=1)) == {0, 6}


# ----------------------------------------------------------------------------------------
# The noise-conditional classifier.


def test_classifier_shapes_and_log_prob():
    sde = sde_lib.VESDE()
    model = get_model("classifier", nf=16, num_classes=3, embedding_type="fourier")
    params = random_params(param_shapes(model, SHAPE, label=1.0))
    t = jnp.array([0.2, 0.8])
    assert jax.eval_shape(lambda p: model.apply({"params": p}, images(), t, train=False), params).shape == (2, 3)
    log_prob = jax.jit(get_classifier_log_prob_fn(sde, model, params))(images(), t)
    assert log_prob.shape == (2, 3)
    np.testing.assert_allclose(np.exp(log_prob).sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(np.diff(np.asarray(log_prob), axis=1)).max() > 1e-4  # not uniform


def test_classifier_overfits_random_labels():
    """150 Adam steps on 64 random images with random binary labels at a small noise level
    (one resolution and nf=8: compiling the training loop is most of the cost)."""
    sde = sde_lib.VPSDE()
    model = get_model("classifier", nf=8, ch_mult=(1,), num_classes=2)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(64, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=64), jnp.int32)
    t = jnp.full((64,), 0.01)
    mean, std = sde.marginal_prob(x, t)
    labels = noise_labels(sde, t)
    params = random_params(param_shapes(model, x.shape))
    tx = optax.adam(3e-3)

    def loss_fn(p, key):
        noisy = mean + std[:, None, None, None] * jax.random.normal(key, x.shape)
        logits = model.apply({"params": p}, noisy, labels, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(params):
        def step(carry, key):
            p, state = carry
            grads = jax.grad(loss_fn)(p, key)
            updates, state = tx.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(jax.random.key(1), 150))
        noisy = mean + std[:, None, None, None] * jax.random.normal(jax.random.key(2), x.shape)
        return jnp.mean(jnp.argmax(model.apply({"params": params}, noisy, labels, train=False), axis=-1) == y)

    assert train(params) > 0.9
