"""Two real JAX processes on loopback train the same toy config; do they agree?

    python experiments/train_multihost.py [--steps 6] [--workdir DIR]

The parent starts two worker processes that call
`jax.distributed.initialize(coordinator_address="localhost:PORT", num_processes=2,
process_id=i)` with CPU collectives over gloo, each loading its own half of every
global batch (`get_dataset(..., process_index, process_count)` defaults to JAX's)
and training through `scoresde.train.train` into a shared work directory (orbax
coordinates the checkpoint writes). Then it runs the same config in one process
(one device, the whole global batch) and checks that

  1. both workers end with bit-identical parameters (replicated state), and
  2. those equal the single-process parameters to float tolerance (the same global
     batch and keys; only the all-reduce summation order differs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _model():
    import flax.linen as nn
    import jax.numpy as jnp

    class ToyScore(nn.Module):
        """A small MLP score network on flattened 8x8 digits."""

        @nn.compact
        def __call__(self, x, labels, train=False):
            h = jnp.concatenate([x.reshape((x.shape[0], -1)), jnp.log1p(labels.astype(jnp.float32))[:, None]], -1)
            h = nn.silu(nn.Dense(64)(h))
            h = nn.silu(nn.Dense(64)(h))
            return nn.Dense(x[0].size)(h).reshape(x.shape)

    return ToyScore()


def run_training(workdir: str, steps: int, out: str):
    import jax

    from scoresde import data, sde_lib, train

    it = data.get_dataset("digits", "train", batch_size=32, centered=True, random_flip=True)
    state = train.train(
        _model(),
        sde_lib.VPSDE(),
        it,
        workdir,
        optimizer=train.get_optimizer(warmup=2),
        schedule=train.Schedule(n_iters=steps, log_freq=2, snapshot_freq=steps, snapshot_freq_for_preemption=2),
        progress=False,
    )
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)
    leaves, _ = jax.tree.flatten(params)
    np.savez(out, *leaves)
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "process_count": jax.process_count(),
                "devices": jax.device_count(),
                "step": int(state.step),
                "data_position": it.get_state(),
            }
        ),
        flush=True,
    )


def worker(args):
    import jax

    if args.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"localhost:{args.port}", num_processes=2, process_id=args.process_id
        )
    run_training(args.workdir, args.steps, args.out)
    if args.process_id is not None:
        jax.distributed.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workdir", default=None)
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the workers")
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    root = args.workdir or tempfile.mkdtemp(prefix="scoresde_multihost_")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    t0 = time.time()
    procs, logs = [], []
    for i in range(2):
        cmd = [sys.executable, "-u", __file__, "--worker", "--steps", str(args.steps), "--workdir",
               os.path.join(root, "two"), "--process-id", str(i), "--port", str(port),
               "--out", os.path.join(root, f"params_{i}.npz")]
        logs.append(open(os.path.join(root, f"worker_{i}.log"), "w+"))
        procs.append(subprocess.Popen(cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + args.timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            print(f"worker pid {proc.pid} still running after {args.timeout} s: killing it")
            proc.kill()
            proc.wait()
    t_two = time.time() - t0
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    if any(proc.returncode for proc in procs):
        for i, (proc, out) in enumerate(zip(procs, outputs)):
            print(f"----- worker {i} (exit code {proc.returncode}):\n{out[-6000:]}")
        raise SystemExit("a worker failed")
    reports = [json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]) for out in outputs]
    t0 = time.time()
    single = subprocess.run(
        [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--workdir", os.path.join(root, "one"),
         "--out", os.path.join(root, "params_single.npz")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    t_one = time.time() - t0
    if single.returncode:
        print(single.stdout)
        raise SystemExit("single-process run failed")
    reports.append(json.loads([ln for ln in single.stdout.splitlines() if ln.startswith("{")][-1]))

    def load(name):
        with np.load(os.path.join(root, name)) as f:
            return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]

    p0, p1, ps = load("params_0.npz"), load("params_1.npz"), load("params_single.npz")
    identical = all(np.array_equal(a, b) for a, b in zip(p0, p1))
    max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(p0, ps))
    max_abs = max(float(np.max(np.abs(a))) for a in ps)
    ckpts = sorted(os.listdir(os.path.join(root, "two", "checkpoints")))
    print("reports:")
    for r in reports:
        print("  ", json.dumps(r))
    print(f"two-process run: {t_two:.1f} s wall (startup, compile and {args.steps} steps); single process: {t_one:.1f} s")
    print(f"checkpoints written by the two-process run: checkpoints/{ckpts}")
    print(f"process 0 and process 1 parameters bit-identical: {identical}")
    print(f"max |two-process - single-process| parameter difference: {max_diff:.3g} (max |param| {max_abs:.3g})")
    ok = identical and max_diff < 1e-5 and all(r["step"] == args.steps for r in reports)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
