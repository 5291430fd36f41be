"""Does XLA:CPU run a convolution on all cores? One 3x3 convolution and one matmul, on every core
and pinned to one, with convolutions in YNNPACK (XLA's choice) and out of it (what `import
scoresde` sets, `scoresde/__init__.py`).

    python experiments/bench_conv_threads.py

Each setting runs in a fresh process (XLA reads its flags when JAX starts; the CPU set is the
process's affinity mask, from which XLA sizes its thread pool). Milliseconds per call: median of
5 blocks of 20 back-to-back calls after a warm-up. Writes experiments/results/bench_conv_threads.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SETTINGS = {  # name -> XLA_FLAGS (scoresde keeps a user's own YNNPACK setting)
    "convolutions in YNNPACK (XLA's default)": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "convolutions out of YNNPACK (scoresde's)": "",
}
WORKER = """
import json, os, sys, time
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(sys.argv[1])])
import scoresde  # noqa: F401
import jax, jax.numpy as jnp, numpy as np

def ms(f, *args, n=20):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / n)
    return 1e3 * float(np.median(times))

k = jax.random.split(jax.random.key(0), 3)
x, w = jax.random.normal(k[0], (16, 32, 32, 64)), jax.random.normal(k[1], (3, 3, 64, 32))
a = jax.random.normal(k[2], (1024, 1024))
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
print(json.dumps(dict(conv=ms(conv, x, w), conv_grad=ms(grad, x, w), matmul=ms(jax.jit(lambda a: a @ a), a),
                      xla_flags=os.environ.get("XLA_FLAGS", ""))))
"""


def main():
    sys.path.insert(0, os.path.dirname(__file__))
    from ablate_samplers import machine

    rows = []
    for name, flags in SETTINGS.items():
        for cores in sorted({1, os.cpu_count()}):
            env = {**os.environ, "XLA_FLAGS": flags}
            out = subprocess.run([sys.executable, "-c", WORKER, str(cores)], env=env, capture_output=True, text=True,
                                 check=True)
            rows.append(dict(setting=name, cores=cores, **json.loads(out.stdout.strip().splitlines()[-1])))
            print(rows[-1], flush=True)
    lines = ["# XLA:CPU convolutions and threads\n",
             f"Machine: {machine()}. Command: `python experiments/bench_conv_threads.py`. One 3x3 convolution "
             "16x32x32x64 -> 32 (NHWC), its gradient (input and kernel) and a 1024 x 1024 matmul; ms per call.\n",
             "| setting | XLA_FLAGS in effect | cores | convolution | its gradient | matmul |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | `{r['xla_flags']}` | {r['cores']} | {r['conv']:.2f} | {r['conv_grad']:.2f} | "
              f"{r['matmul']:.2f} |" for r in rows]
    path = os.path.join(os.path.dirname(__file__), "results", "bench_conv_threads.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
