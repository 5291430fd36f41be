"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test with 64-bit floats (jax_enable_x64), restoring the previous setting after."""
    with jax.enable_x64(True):
        yield
