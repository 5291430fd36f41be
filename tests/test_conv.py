"""`convolution.conv_general_dilated`: the convolution of every U-Net, whose gradient within
`canonical_gradients()` is written as two canonical NHWC/HWIO convolutions, so that XLA's CPU
compiler keeps its fast kernels inside loops (gradient accumulation, several train steps per call).

Its values and gradients must be those of `lax.conv_general_dilated` under JAX's own rule,
for every padding the networks use and for the cases it hands back to lax; the gradient
compiled inside a `lax.scan` must contain no other convolution than the canonical one; and
outside the context forward-mode differentiation (the likelihood's) goes through it.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import losses, models, sde_lib
from scoresde.models import convolution

from conftest import random_params

NHWC = convolution.NHWC


def both_gradients(x, w, **kwargs):
    """(value, dx, dw) of sum(conv(x, w) * r) under ours and under lax's own rule."""
    r = jax.random.normal(jax.random.PRNGKey(9), jax.eval_shape(
        lambda: jax.lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs)).shape, x.dtype)
    out = []
    for conv in (convolution.conv_general_dilated, jax.lax.conv_general_dilated):
        loss = lambda x, w, conv=conv: jnp.sum(conv(x, w, dimension_numbers=NHWC, **kwargs) * r)
        with convolution.canonical_gradients():
            out.append(jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w))
    return out


@pytest.mark.parametrize(
    "kernel, cin, cout, padding, strides",
    [
        (3, 8, 16, "SAME", (1, 1)),         # conv3x3
        (1, 8, 4, "SAME", (1, 1)),          # conv1x1
        (3, 4, 4, "VALID", (1, 1)),
        (3, 4, 6, ((0, 1), (2, 0)), (1, 1)),  # asymmetric explicit padding
        (2, 4, 8, "VALID", (2, 2)),         # DiT's patchify: strided, handed back to lax
    ],
)
def test_values_and_gradients_are_lax(kernel, cin, cout, padding, strides):
    key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(key_x, (3, 6, 6, cin))
    w = jax.random.normal(key_w, (kernel, kernel, cin, cout)) / np.sqrt(kernel * kernel * cin)
    (ours, ours_grads), (theirs, their_grads) = both_gradients(x, w, window_strides=strides, padding=padding)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for a, b, name in zip(ours_grads, their_grads, ("dx", "dw")):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))), err_msg=name)


def test_bfloat16_gradients_keep_their_dtype_and_agree():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16), jnp.bfloat16)
    w = (jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 8)) / 12).astype(jnp.bfloat16)
    (_, ours), (_, theirs) = both_gradients(x, w, window_strides=(1, 1), padding="SAME")
    for a, b in zip(ours, theirs):
        assert a.dtype == jnp.bfloat16
        # bfloat16 keeps 8 bits: both round sums of the same products, in different orders.
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=0.05 * float(jnp.max(jnp.abs(np.float32(b)))))


def convolutions(hlo: str) -> list[str]:
    return re.findall(r"convolution\([^)]*\).*?dim_labels=([\w>-]+)", hlo)


def test_gradient_inside_a_scan_compiles_to_canonical_convolutions():
    """In a loop body, lax's rule leaves convolutions with permuted dimensions (XLA CPU then
    uses a kernel 20-40x slower); ours compiles to the forward's b01f_01io->b01f only."""
    x = jnp.ones((4, 2, 8, 8, 16))
    w = jnp.ones((3, 3, 16, 8)) / 100

    def accumulated(x, w, conv=convolution.conv_general_dilated):
        grad = jax.grad(lambda w, xi: jnp.sum(conv(xi, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2), (0, 1))

        def body(acc, xi):
            dw, dx = grad(w, xi)
            return acc + dw + jnp.sum(dx), None

        return jax.lax.scan(body, jnp.zeros_like(w), x)[0]

    with convolution.canonical_gradients():
        labels = convolutions(jax.jit(accumulated).lower(x, w).compile().as_text())
    assert len(labels) == 3, labels  # forward, input gradient, weight gradient
    assert set(labels) == {"b01f_01io->b01f"}, labels


def test_forward_mode_goes_through_outside_the_context():
    """The likelihood linearizes the networks: outside `canonical_gradients` the convolution
    is lax's, which jax.jvp differentiates; inside, it refuses forward mode."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5))
    v = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    ours = lambda x: convolution.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    theirs = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    np.testing.assert_allclose(jax.jvp(ours, (x,), (v,))[1], jax.jvp(theirs, (x,), (v,))[1], rtol=1e-6)
    with convolution.canonical_gradients(), pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(ours, (x,), (v,))


def test_network_gradients_are_bitwise_those_of_lax_outside_loops():
    """The same arithmetic: a DDPM++ loss gradient within the context equals lax's bit for bit,
    so runs trained before the context was added reproduce."""
    net = models.get_model("ddpmpp", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3)) * 2 - 1
    params = random_params(models.param_shapes(net, x.shape), seed=1, vector_std=0.05)
    loss_fn = losses.get_sde_loss_fn(sde_lib.VPSDE(), net, train=True, reduce_mean=True)
    plain = jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.PRNGKey(2), x)
    with convolution.canonical_gradients():
        ours = jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.PRNGKey(2), x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(a, b)
