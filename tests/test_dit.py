"""DiT: the official parameter counts, adaLN-Zero's zero output at init, shapes and class
conditioning, the memory options, and the score contract (a traced score in a sampler).

The other tests share one small class-conditional DiT (one block: at init every block is
the identity alike) and one input batch, so that they share its few compiled programs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import configs, experiment, models, samplers, sde_lib
from scoresde.models import count_params, dit_from_name, param_shapes

from conftest import count_compiles, random_params

# facebookresearch/DiT's sum(p.numel() for p in model.parameters()) for 32 x 32 x 4 latents,
# 1000 classes, learn_sigma=True, counted from its models.py (the paper's 33M, 130M, 458M, 675M
# for /2).
OFFICIAL = {
    "DiT-S/2": 32_963_360, "DiT-S/4": 32_945_024, "DiT-S/8": 33_148_160,
    "DiT-B/2": 130_512_416, "DiT-B/4": 130_475_648, "DiT-B/8": 130_881_536,
    "DiT-L/2": 458_102_816, "DiT-L/4": 458_053_760, "DiT-L/8": 458_594_816,
    "DiT-XL/2": 675_129_632, "DiT-XL/4": 675_074_432, "DiT-XL/8": 675_683_072,
}
TINY = dict(hidden_size=32, depth=1, num_heads=4, patch_size=2, num_classes=10)


def tiny(**fields):
    return models.get_model("dit", **{**TINY, **fields})


# H != W, so that a swapped axis in patchify or unpatchify shows; examples 0-2 are one input.
X = np.repeat(np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32), [3, 1], axis=0)
LABELS = np.array([500.0, 500.0, 500.0, 20.0], np.float32)
Y = np.array([1, 3, -1, 2])


@functools.partial(jax.jit, static_argnums=0)
def apply(net, params, x, y=None):
    """net.apply to (x, LABELS), compiled once per network (op-by-op dispatch is far slower)."""
    return net.apply({"params": params}, x, LABELS, y, train=False)


def random_tiny_params(seed):
    return random_params(param_shapes(tiny(), X.shape), seed=seed, vector_std=0.05)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_counts_are_the_official_ones(name):
    net = dit_from_name(name, num_classes=1000)
    ours = count_params(param_shapes(net, (1, 32, 32, 4)))  # eval_shape: nothing allocated
    D, p = net.hidden_size, net.patch_size
    pos_embed = (32 // p) ** 2 * D  # a frozen parameter there, a constant here
    sigma_outputs = p * p * 4 * (D + 1)  # learn_sigma's 4 more channels per pixel of a patch
    assert ours + pos_embed + sigma_outputs == OFFICIAL[name]


def test_standard_sizes_by_name():
    net = dit_from_name("DiT-XL/2", num_classes=1000)
    assert (net.depth, net.hidden_size, net.num_heads, net.patch_size, net.num_classes) == (28, 1152, 16, 2, 1000)
    assert dit_from_name("B/4") == models.get_model("dit", depth=12, hidden_size=768, num_heads=12, patch_size=4)
    with pytest.raises(ValueError, match="DiT-<size>/<patch>"):
        dit_from_name("DiT-M/2")


def test_adaln_zero_init():
    """At init the output is exactly zero (zero final layer) and every block is the identity
    (zero gates): with a random final layer, one input pixel then changes exactly the output
    patch that holds it, which attention in a non-identity block would spread to all tokens."""
    params = jax.jit(tiny().init)(jax.random.PRNGKey(1), X, LABELS)["params"]
    np.testing.assert_array_equal(apply(tiny(), params, X), 0.0)

    params = {**params, "FinalLayer_0": random_params(params["FinalLayer_0"], seed=2, vector_std=0.1)}
    out = apply(tiny(), params, X)
    assert out.shape == X.shape and out.dtype == jnp.float32
    x = X.copy()
    x[3, 5, 6, 0] += 1.0
    changed = np.abs(apply(tiny(), params, x) - out).max(axis=-1) > 0
    expected = np.zeros(changed.shape, bool)
    expected[3, 4:6, 6:8] = True  # the 2 x 2 patch of pixel (5, 6)
    np.testing.assert_array_equal(changed, expected)


def test_class_conditioning():
    """The class changes the output; label -1 is y=None, the null class (whose embedding
    y=None creates); an unconditional DiT refuses labels."""
    params = random_tiny_params(seed=1)
    out = apply(tiny(), params, X, Y)
    assert out.shape == X.shape
    assert not np.allclose(out[0], out[1])  # classes 1 and 3
    np.testing.assert_array_equal(out[2], apply(tiny(), params, X)[2])
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(tiny(num_classes=0).init, jax.random.PRNGKey(0), X, LABELS, Y)


def test_memory_options():
    """remat keeps the parameters and checkpoints every block in the gradient; bfloat16 runs
    every convolution and matrix product on tokens in bf16 and returns float32. Traced, not
    run: the values are jax.checkpoint's and XLA's."""
    params = random_tiny_params(seed=1)

    def jaxpr(net, grad=False):
        out = lambda p: net.apply({"params": p}, X, LABELS)  # noqa: E731
        return jax.make_jaxpr(jax.grad(lambda p: jnp.sum(out(p) ** 2)) if grad else out)(params)

    def checkpoints(net):
        return [e for e in jaxpr(net, grad=True).eqns if e.primitive.name == "remat2"]  # jax.checkpoint's

    def token_dtypes(net):
        program = jaxpr(net)
        assert program.out_avals[0].dtype == jnp.float32
        outs = [e.outvars[0].aval for e in program.eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
        return {out.dtype.name for out in outs if out.ndim > 2}

    assert jax.tree.structure(param_shapes(tiny(remat=True), X.shape)) == jax.tree.structure(params)
    assert len(checkpoints(tiny(remat=True))) == TINY["depth"] and not checkpoints(tiny())
    assert token_dtypes(tiny(compute_dtype="bfloat16")) == {"bfloat16"} and token_dtypes(tiny()) == {"float32"}
    with pytest.raises(ValueError, match="compute_dtype"):
        param_shapes(tiny(compute_dtype="int8"), X.shape)


def test_score_is_traced_through_a_sampler():
    """`get_score_fn` of a DiT samples with a compiled sampler, and new parameters reuse it."""
    sde, shape = sde_lib.VPSDE(), (2, 8, 8, 1)

    def sample(seed):
        score = models.get_score_fn(sde, tiny(), random_params(param_shapes(tiny(), shape), seed, vector_std=0.05))
        return samplers.sample(jax.random.PRNGKey(0), sde, score, shape, "euler_maruyama", num_steps=2)[0]

    first = jax.block_until_ready(sample(0))
    with count_compiles() as compiles:
        second = sample(1)
    assert compiles["backend"] == 0
    assert first.shape == second.shape == shape and np.all(np.isfinite(second))
    assert not np.allclose(first, second)


def test_digits_config():
    config = configs.get_config("digits_dit")
    net = experiment.model_from_config(config)
    assert isinstance(net, models.DiT) and (net.hidden_size, net.depth, net.num_heads, net.patch_size) == (128, 4, 4, 2)
    assert 5e5 < count_params(param_shapes(net, (1,) + experiment.data_shape(config))) < 2e6
