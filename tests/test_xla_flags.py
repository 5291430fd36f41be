"""`import scoresde` leaves convolutions out of XLA:CPU's YNNPACK fusions (`scoresde/__init__.py`),
appending to the user's XLA_FLAGS, never overriding their own YNNPACK setting, and only before
JAX starts its backend. Each case runs in a fresh interpreter."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

import scoresde

# The versions the flag is set for (scoresde/__init__.py); elsewhere XLA_FLAGS stays as given.
CHECKED = tuple(int(v) for v in importlib.metadata.version("jaxlib").split(".")[:2]) == (0, 10)

PROBE = """
import os, sys
if sys.argv[1] == "jax first":
    import jax.numpy as jnp
    jnp.ones(1).block_until_ready()
import scoresde, jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
y = jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print("flags:" + os.environ.get("XLA_FLAGS", ""))
print(jax.device_count(), float(abs(y).sum()) > 0)
"""


def probe(xla_flags, order="scoresde first"):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, "-c", PROBE, order], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, result = out.stdout.strip().splitlines()[-2:]
    flags = flags.removeprefix("flags:")
    return flags, result


@pytest.mark.parametrize(
    "given, expected, devices",
    [
        (None, scoresde._YNN_FLAG, "1"),
        ("--xla_force_host_platform_device_count=2", f"--xla_force_host_platform_device_count=2 {scoresde._YNN_FLAG}", "2"),
        ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_experimental_ynn_fusion_type=", "1"),  # the user's own
    ],
    ids=["unset", "appended", "user-set"],
)
def test_import_sets_the_convolution_flag(given, expected, devices):
    flags, result = probe(given)
    assert flags == (expected if CHECKED else given or "")
    assert result == f"{devices} True"  # XLA accepted the flags, and the convolution ran


def test_too_late_once_jax_has_started():
    flags, result = probe(None, "jax first")
    assert flags == "" and result == "1 True"
