"""Memory options of training: gradient accumulation, gradient checkpointing, mixed precision.

Each gives the plain step's loss and gradients (accumulation and checkpointing to float32
rounding, bf16 to its precision) and cuts the compiled step's temporary memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import losses, models, sde_lib, train

from conftest import random_params

SDE = sde_lib.VPSDE()
SHAPE = (8, 8, 8, 3)


def ddpmpp(**kwargs):
    return models.get_model("ddpmpp", nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                            **kwargs)


def setup(**kwargs):
    net = ddpmpp(**kwargs)
    x = jax.random.uniform(jax.random.PRNGKey(0), SHAPE) * 2 - 1
    return net, random_params(models.param_shapes(ddpmpp(), SHAPE), seed=1, vector_std=0.05), x


def value_and_grad(net, params, x, micro_batches=1):
    loss_fn = losses.get_sde_loss_fn(SDE, net, train=True, reduce_mean=True)
    if micro_batches == 1:
        return jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.PRNGKey(4), x)
    return jax.jit(train.accumulated_value_and_grad(loss_fn, micro_batches))(params, jax.random.PRNGKey(4), x)


def assert_close_trees(a, b, rtol, atol):
    for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def plain():
    net, params, x = setup()
    return params, x, value_and_grad(net, params, x)


def test_accumulation_is_the_plain_step(plain):
    """Same randomness, sliced: loss and gradients equal to float32 summation order."""
    params, x, (loss, grads) = plain
    net = ddpmpp()
    acc_loss, acc_grads = value_and_grad(net, params, x, micro_batches=4)  # slices of 2
    np.testing.assert_allclose(acc_loss, loss, rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    assert_close_trees(acc_grads, grads, rtol=1e-4, atol=1e-6 * scale)


def test_accumulated_train_step_matches_and_rejects_other_losses():
    net = models.get_model("mlp", hidden=32, num_layers=2, init_scale=1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    params = random_params(models.param_shapes(net, x.shape), seed=1, vector_std=0.05)
    optimizer = train.get_optimizer(lr=1e-3, warmup=0)
    state = train.TrainState(step=0, params=params, ema_params=params, opt_state=optimizer.init(params),
                             rng=jax.random.PRNGKey(0))
    loss_fn = losses.get_sde_loss_fn(SDE, net, train=True)
    a, ma = jax.jit(train.make_train_step(loss_fn, optimizer, 0.9))(state, x)
    b, mb = jax.jit(train.make_train_step(loss_fn, optimizer, 0.9, micro_batches=4))(state, x)
    np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-6)
    # Adam moves every parameter by about lr = 1e-3; the two agree to 1% of that step.
    assert_close_trees(b.params, a.params, rtol=0, atol=1e-5)
    ddpm_loss = losses.get_ddpm_loss_fn(SDE, net, train=True)
    with pytest.raises(ValueError, match="needs the continuous SDE loss"):
        train.make_train_step(ddpm_loss, optimizer, 0.9, micro_batches=2)
    with pytest.raises(ValueError, match="micro_batches must be an integer >= 1"):
        train.make_train_step(loss_fn, optimizer, 0.9, micro_batches=0)


def test_checkpointing_keeps_parameters_and_gradients(plain):
    params, x, (loss, grads) = plain
    net = ddpmpp(remat=True)
    shapes = jax.eval_shape(lambda: net.init({"params": jax.random.PRNGKey(1)}, x, jnp.ones(SHAPE[0]), train=False))
    assert jax.tree.structure(shapes["params"]) == jax.tree.structure(params)  # checkpoints interchangeable
    remat_loss, remat_grads = value_and_grad(net, params, x)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    assert_close_trees(remat_grads, grads, rtol=1e-4, atol=1e-6 * scale)


def test_bfloat16_is_close_with_float32_parameters(plain):
    params, x, (loss, grads) = plain
    net = ddpmpp(compute_dtype="bfloat16")
    bf_loss, bf_grads = value_and_grad(net, params, x)
    # float32 gradients of float32 parameters: Adam's state and the EMA stay float32 too.
    assert bf_loss.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(bf_grads))
    np.testing.assert_allclose(bf_loss, loss, rtol=0.02)  # bf16 has 8 bits of mantissa
    flat = lambda t: jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)])  # noqa: E731
    cosine = jnp.dot(flat(bf_grads), flat(grads)) / (jnp.linalg.norm(flat(bf_grads)) * jnp.linalg.norm(flat(grads)))
    assert cosine > 0.99
    with pytest.raises(ValueError, match="compute_dtype"):
        ddpmpp(compute_dtype="int8").init(jax.random.PRNGKey(0), x, jnp.ones(SHAPE[0]))


def temp_bytes(net, params, x, micro_batches=1) -> int:
    loss_fn = losses.get_sde_loss_fn(SDE, net, train=True)
    fn = jax.value_and_grad(loss_fn) if micro_batches == 1 else train.accumulated_value_and_grad(loss_fn, micro_batches)
    compiled = jax.jit(fn).lower(params, jax.random.PRNGKey(0), x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_accumulation_cuts_the_step_memory():
    """XLA's temporary memory of the compiled step; checkpointing and bf16 are measured at
    scale by experiments/bench_memory.py (on this small network XLA's CPU buffer assignment
    gives checkpointing no saving)."""
    net, params, _ = setup()
    x = jnp.zeros((32, 8, 8, 3))  # activations dominate
    assert temp_bytes(net, params, x, micro_batches=4) < 0.5 * temp_bytes(net, params, x)
