"""Side-by-side CPU benchmark of one full train step: the PyTorch reference against ours.

    python experiments/bench_train_vs_reference.py                   # nf 32, batch 16, 5 rounds of 3 steps
    python experiments/bench_train_vs_reference.py --nf 32 --batch 16 --rounds 5 --steps-per-round 3
    python experiments/bench_train_vs_reference.py --tiny            # smoke test: nf 16, batch 4, 1 round

Run it with the package's venv (`.venv/bin/python`); it starts the reference side itself
in the benchmark venv (`--torch-python`, default `.bench-venv/bin/python`).

Both sides run the reference's `vp/cifar10_ddpmpp_continuous` config (DDPM++ continuous:
VP SDE, reduce_mean, ch_mult (1,2,2,2), 4 res blocks, attention at 16x16, positional
embedding, dropout 0.1, fir=False) with `model.nf` and the batch overridden, on 32x32x3
images: the same fixed batch of centered data in [-1, 1] (NHWC for us, NCHW for torch).
The parameter counts are asserted equal (3,881,955 at nf=32). The step timed is the full
train step: loss (t ~ U, noise, perturbation, score network), backward, gradient clipping
(global norm 1), Adam with the warmup learning rate, EMA (0.9999).

- theirs: yang-song/score_sde_pytorch's own code (`experiments/reference_torch.py`):
  `losses.get_step_fn` with `optimization_manager`, `get_optimizer` and
  `ExponentialMovingAverage`, built as its `run_lib.train` does; torch intra-op threads
  = the machine's cores (`--threads`), as XLA's CPU thread pool.
- ours: `scoresde.train.compile_step(train.make_train_step(loss_fn, optimizer, ema_rate), 1)`
  (as `experiments/bench_train.py`), from `scoresde.configs.get_config` of the same config.

The two sides run in two processes (torch in the benchmark venv, JAX here), each warmed up
first (our step compiled, two untimed steps on each side), then timed in interleaved
rounds: theirs, ours, theirs, ours, ... with k back-to-back steps per round and a short
pause between sides; the process not being timed is blocked on a pipe. Reported: seconds
per step for each side (median over rounds; the best and every round in the JSON) and the
ratio ours/theirs of throughput (= their seconds per step / ours). Without `--tiny` the
results are written to `experiments/results/bench_train_vs_reference.{json,md}`.

Set-up (from the repository root; neither folder is committed, both are in .gitignore):

1. The reference code in `.reference/score_sde_pytorch/`: a checkout or export of
   https://github.com/yang-song/score_sde_pytorch (measured at cb1f359f, its last commit):

       git clone https://github.com/yang-song/score_sde_pytorch .reference/score_sde_pytorch
       # or, from a bare mirror:  mkdir -p .reference/score_sde_pytorch &&
       #   git --git-dir=<mirror> archive HEAD | tar -x -C .reference/score_sde_pytorch

   Nothing in it needs building: its CUDA `op` package (upfirdn2d, used only with fir=True)
   is replaced by a stub at import (`experiments/reference_torch.py`).

2. A separate benchmark venv with torch (CPU) — never a dependency of the package:

       python3 -m venv .bench-venv
       .bench-venv/bin/pip install torch==2.13.0 ml-collections numpy scipy

   (torch 2.13.0 is a CPU build on this machine's wheel cache; a plain `pip install torch`
   from PyPI works too, as a larger CUDA build.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
DEFAULT_REFERENCE_DIR = os.path.join(REPO_ROOT, ".reference", "score_sde_pytorch")
DEFAULT_TORCH_PYTHON = os.path.join(REPO_ROOT, ".bench-venv", "bin", "python")
RESULTS = os.path.join(HERE, "results", "bench_train_vs_reference")
CONFIG = "vp/cifar10_ddpmpp_continuous"
SETUP_HINT = "see the set-up in the docstring of experiments/bench_train_vs_reference.py"


def fail(message: str):
    sys.exit(f"bench_train_vs_reference: {message}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- theirs


class Reference:
    """The reference's train step in a worker process (experiments/reference_torch.py --serve)."""

    def __init__(self, python: str, reference_dir: str, nf: int, batch: int, threads: int, seed: int):
        cmd = [python, os.path.join(HERE, "reference_torch.py"), "--serve", "--nf", str(nf), "--batch", str(batch),
               "--threads", str(threads), "--seed", str(seed), "--reference-dir", reference_dir]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        msg = self._read()
        if "error" in msg:
            self.proc.wait()
            fail(msg["error"])
        self.info = msg["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            fail(f"the reference worker exited (code {code}) without answering; its error is above")
        return json.loads(line)

    def steps(self, n: int) -> tuple[float, float]:
        self.proc.stdin.write(json.dumps({"cmd": "steps", "n": n}) + "\n")
        msg = self._read()
        return msg["seconds"], msg["loss"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- ours


class Ours:
    """Our compiled train step (as experiments/bench_train.py) from the same config."""

    def __init__(self, nf: int, batch: int, seed: int):
        import jax
        import numpy as np

        from scoresde import configs, experiment, models, train

        sys.path.insert(0, HERE)
        from bench_train import timed  # k dispatched steps, blocked at the end

        config = configs.get_config(CONFIG)
        configs.apply_overrides(config, [f"model.nf={nf}", f"training.batch_size={batch}"])
        sde = experiment.sde_from_config(config)
        model = experiment.model_from_config(config)
        kw = experiment.train_kwargs(config)
        shape = experiment.data_shape(config)
        loss_fn = train.objective_loss_fn(sde, model, kw["objective"], True, **kw["loss_kwargs"])
        state = train.init_train_state(model, sde, jax.random.PRNGKey(kw["seed"]), shape, kw["optimizer"],
                                       kw["loss_kwargs"]["continuous"])
        self.step = train.compile_step(train.make_train_step(loss_fn, kw["optimizer"], kw["ema_rate"]), 1)
        # The same batch as the reference worker (reference_torch.build): NHWC here.
        images = np.random.default_rng(seed).uniform(-1, 1, (batch,) + tuple(shape)).astype(np.float32)
        self.x = train.put_batch(images)
        self.state = state
        self.timed = timed
        self.info = dict(
            params=int(models.count_params(state.params)),
            jax=jax.__version__,
            backend=jax.default_backend(),
            devices=jax.device_count(),
            batch=batch,
            nf=nf,
            shape=list(shape),
            config=CONFIG,
            reduce_mean=bool(config.training.reduce_mean),
            ema_rate=float(kw["ema_rate"]),
            python=sys.executable,
        )
        self.loss = None

    def _one(self):
        self.state, metrics = self.step(self.state, self.x)
        self.loss = metrics["loss"]
        return self.loss

    def steps(self, n: int) -> tuple[float, float]:
        return self.timed(self._one, n), float(self.loss)


# ----------------------------------------------------------------------------- main


def write_results(result: dict):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".json", "w") as f:
        json.dump(result, f, indent=1)
    m, r, o, t = result["machine"], result["reference"], result["ours"], result["timing"]
    rows = "\n".join(f"| {i + 1} | {a:.4f} | {b:.4f} | {a / b:.3f} |"
                     for i, (a, b) in enumerate(zip(t["theirs_s_per_step_rounds"], t["ours_s_per_step_rounds"])))
    text = f"""# Train step: the PyTorch reference against ours, side by side on the CPU

Command (from the repository root; set-up in the script's docstring):

    {result["command"]}

Machine: {m["cpu"]}, {m["cores"]} cores, no accelerator; torch {r["torch"]} ({r["torch_threads"]} intra-op
threads), jax {o["jax"]} ({o["backend"]} backend). Load average {m["load_before"]:.1f} before, {m["load_after"]:.1f}
after (the machine is shared).

Network: the reference's `{CONFIG}` config (DDPM++ continuous, VP SDE) with nf={o["nf"]}:
{r["params"]:,} parameters in both ({r["params"]} torch, {o["params"]} ours). Batch {o["batch"]},
{"x".join(map(str, o["shape"]))} images. Full train step: loss, backward, gradient clipping, Adam, EMA.
Reference: yang-song/score_sde_pytorch {result["reference_commit"] or "(commit unknown)"}, its `losses.get_step_fn`.
Ours: `train.compile_step(train.make_train_step(...), 1)`.

{t["rounds"]} interleaved rounds (theirs, ours, ...) of {t["steps_per_round"]} steps, after {t["warmup_steps"]} warm-up steps each.

| | s/step (median) | s/step (best) | images/s (median) |
|---|---|---|---|
| reference (PyTorch) | {t["theirs_s_per_step"]:.4f} | {min(t["theirs_s_per_step_rounds"]):.4f} | {o["batch"] / t["theirs_s_per_step"]:.1f} |
| scoresde (JAX) | {t["ours_s_per_step"]:.4f} | {min(t["ours_s_per_step_rounds"]):.4f} | {o["batch"] / t["ours_s_per_step"]:.1f} |

**Ratio, ours/theirs throughput: {t["ratio_ours_over_theirs"]:.3f}x** (median of rounds; best of rounds:
{t["ratio_best"]:.3f}x).

| round | theirs s/step | ours s/step | ratio |
|---|---|---|---|
{rows}
"""
    with open(RESULTS + ".md", "w") as f:
        f.write(text)


def reference_commit(reference_dir: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", reference_dir, "rev-parse", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0 and os.path.isdir(os.path.join(reference_dir, ".git")):
            return out.stdout.strip()
    except OSError:
        pass
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on each side after building/compiling")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each timed block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON, help="python of the venv with torch")
    p.add_argument("--reference-dir", default=DEFAULT_REFERENCE_DIR)
    p.add_argument("--reference-commit", default="cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44",
                   help="recorded in the results (read from the reference's .git where it has one)")
    p.add_argument("--tiny", action="store_true", help="smoke test: nf 16, batch 4, 1 round of 2 steps; nothing recorded")
    args = p.parse_args()
    if args.tiny:
        args.nf, args.batch, args.rounds, args.steps_per_round, args.warmup = 16, 4, 1, 2, 1

    # The set-up, checked before anything heavy: one line each.
    if not os.path.isdir(args.reference_dir):
        fail(f"reference code not found at {args.reference_dir}; {SETUP_HINT}")
    if not os.path.exists(args.torch_python):
        fail(f"no benchmark venv: {args.torch_python} does not exist; {SETUP_HINT}")
    probe = subprocess.run([args.torch_python, "-c", "import torch, ml_collections"], capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        fail(f"{args.torch_python} cannot import torch and ml_collections ({last}); {SETUP_HINT}")

    load_before = os.getloadavg()[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load_before:.1f}", flush=True)
    if load_before > 0.5 * os.cpu_count():
        print(f"warning: the machine is busy (load average {load_before:.1f} on {os.cpu_count()} cores); torch's "
              "OpenMP threads slow down far more than XLA's under oversubscription (seen here: 6x at --threads 2 "
              "with a load of 5), so the ratio is meaningful only on a quiet machine", flush=True)
    reference = Reference(args.torch_python, args.reference_dir, args.nf, args.batch, args.threads, args.seed)
    try:
        t0 = time.perf_counter()
        ours = Ours(args.nf, args.batch, args.seed)
        ours.steps(1)  # compiles
        compile_s = time.perf_counter() - t0
        r, o = reference.info, ours.info
        print(f"reference: torch {r['torch']}, {r['torch_threads']} threads, {r['params']:,} params; "
              f"ours: jax {o['jax']} ({o['backend']}), {o['params']:,} params (built and compiled in {compile_s:.1f} s)",
              flush=True)
        if r["params"] != o["params"]:
            fail(f"parameter counts differ: reference {r['params']:,}, ours {o['params']:,}")
        if args.warmup:
            reference.steps(args.warmup)
            ours.steps(args.warmup)

        k = args.steps_per_round
        theirs_t, ours_t, losses = [], [], []
        for i in range(args.rounds):
            time.sleep(args.pause)
            s, loss_r = reference.steps(k)
            theirs_t.append(s / k)
            time.sleep(args.pause)
            s, loss_o = ours.steps(k)
            ours_t.append(s / k)
            losses.append([loss_r, loss_o])
            print(f"round {i + 1}/{args.rounds}: theirs {theirs_t[-1]:.4f} s/step, ours {ours_t[-1]:.4f} s/step "
                  f"(ratio {theirs_t[-1] / ours_t[-1]:.3f}); losses {loss_r:.4f} / {loss_o:.4f}", flush=True)
    finally:
        reference.close()

    import numpy as np

    t_theirs, t_ours = float(np.median(theirs_t)), float(np.median(ours_t))
    ratio = t_theirs / t_ours
    load_after = os.getloadavg()[0]
    print(f"median s/step over {args.rounds} rounds of {k}: theirs (PyTorch) {t_theirs:.4f} "
          f"({args.batch / t_theirs:.1f} img/s), ours (JAX) {t_ours:.4f} ({args.batch / t_ours:.1f} img/s); "
          f"ours/theirs throughput = {ratio:.3f}x; load average {load_after:.1f}", flush=True)
    if args.tiny:
        print("(--tiny: smoke test, nothing recorded)")
        return
    commit = reference_commit(args.reference_dir) or args.reference_commit
    result = dict(
        command="python " + shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:]),
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                     load_before=load_before, load_after=load_after),
        reference_commit=commit,
        reference=r,
        ours=o,
        timing=dict(
            rounds=args.rounds, steps_per_round=k, warmup_steps=args.warmup, pause_s=args.pause,
            theirs_s_per_step=t_theirs, ours_s_per_step=t_ours,
            theirs_img_s=args.batch / t_theirs, ours_img_s=args.batch / t_ours,
            ratio_ours_over_theirs=ratio, ratio_best=min(theirs_t) / min(ours_t),
            theirs_s_per_step_rounds=theirs_t, ours_s_per_step_rounds=ours_t,
            losses_theirs_ours=losses, ours_build_and_compile_s=compile_s,
        ),
    )
    write_results(result)
    print(f"wrote {os.path.relpath(RESULTS, REPO_ROOT)}.json and .md")


if __name__ == "__main__":
    main()
