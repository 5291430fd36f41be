"""scoresde: score-based generative modelling with SDEs, on JAX."""

import importlib.metadata
import os
import sys

__version__ = "0.1.0"

# XLA's CPU compiler (jaxlib 0.10) hands each convolution to YNNPACK, which runs it on one
# thread; Eigen's convolutions use them all (experiments/results/bench_conv_threads.md; with
# Eigen's, a 3x3 convolution forward and backward runs 1.4-1.8x faster at 32x32 and 16x16 on 2 cores,
# experiments/results/profile_layers.md). So, before JAX starts its CPU
# backend, and unless the user set YNNPACK's fusions themselves, convolutions are left out of
# them (YNNPACK keeps its other fusions, which are faster than the alternatives). Only the CPU
# backend reads the flag, but a jaxlib that did not know it, or its "-" syntax, would refuse to
# start: so only the versions where it was checked (0.10.0 and 0.10.2).
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _threaded_cpu_convolutions():
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return
    try:
        jaxlib = tuple(int(v) for v in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if jaxlib != (0, 10):
        return
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        return  # too late: XLA read its flags when JAX started
    os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}".strip()


_threaded_cpu_convolutions()
