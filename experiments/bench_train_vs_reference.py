"""Side-by-side CPU benchmark of one full train step: the PyTorch reference against ours.

    python experiments/bench_train_vs_reference.py                   # nf 32, batch 16, 5 rounds of 3 steps
    python experiments/bench_train_vs_reference.py --nf 32 --batch 16 --rounds 5 --steps-per-round 3
    python experiments/bench_train_vs_reference.py --allocators glibc thp jemalloc --jemalloc /path/libjemalloc.so.2
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
- ours: `scoresde.train.compile_step(train.make_train_step(loss_fn, optimizer, ema_rate), n)`
  (as `experiments/bench_train.py`), from `scoresde.configs.get_config` of the same config,
  for each n of `--n-jitted-steps` (default 1 and 5): n steps per compiled call (`lax.scan`),
  each on its own batch. 5 is the CIFAR-10 configs' default, so it is what `scoresde train`
  runs for this config; it also allocates XLA's temporaries once per 5 steps (see below).

Each side runs in its own worker process (torch in the benchmark venv, ours in this
script's Python, `--serve-ours`, one per n), once per memory allocator set-up (`--allocators`; both
sides get the same environment):

  glibc     the C library's malloc as it comes (what both sides get by default)
  jemalloc  `LD_PRELOAD` of libjemalloc (`--jemalloc`, default the system's: `apt install
            libjemalloc2`) with `MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`: freed
            memory is kept for reuse. The `scoresde` command line re-runs itself so where
            the library is installed (`scoresde.cli.rerun_with_jemalloc`)
  thp       glibc's malloc with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`: its large blocks on
            transparent huge pages (glibc >= 2.35, THP not "never"); not a default: whether
            huge pages are at hand depends on the machine's state

Why it matters: XLA:CPU allocates a train step's temporaries afresh on every call (one block
of about 535 MiB here) and glibc maps blocks that large from the kernel and unmaps them on free,
so every step page-faults all of it in again (about 137,000 4 KiB faults per step; the
script also times a first touch of fresh memory: 3.1 us per page in the recorded run). torch allocates tensor by tensor, mostly below glibc's
mapping threshold. Each worker reports its page faults per step. The default set-ups are
glibc and, where the library is found, jemalloc.

All workers are built and warmed up first (our step compiled, untimed steps on each side),
then timed in interleaved rounds: for each set-up in turn theirs then ours, k back-to-back
steps each, a short pause before each; the workers not being timed are blocked on a pipe.
Reported per set-up and n: seconds per step for each side (median over rounds; every round
in the JSON), page faults per step and the ratio ours/theirs of throughput (= their seconds
per step / ours), with its range over rounds; and the ratio as each side runs this config
out of the box (the reference under glibc, ours with the config's n under each set-up). Without `--tiny` the results are written to
`experiments/results/bench_train_vs_reference.{json,md}`.

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
import resource
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
ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF")


def allocator_env(name: str, jemalloc: str | None) -> dict:
    """The environment of a worker under allocator set-up `name` (see the docstring)."""
    from scoresde.cli import JEMALLOC_CONF  # here: profile_layers' torch worker imports this file without scoresde
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    if name == "thp":
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    elif name == "jemalloc":
        env["LD_PRELOAD"] = jemalloc
        env["MALLOC_CONF"] = JEMALLOC_CONF
    return env


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


# ----------------------------------------------------------------------------- the workers


def stop_worker(proc: subprocess.Popen):
    """Ask a worker of the JSON-lines protocol to quit; kill it if it cannot or does not within 60 s."""
    if proc.poll() is None:
        try:
            proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


class Worker:
    """A train step in a worker process: the reference's (`experiments/reference_torch.py
    --serve`) or ours (this script, `--serve-ours`), answering one JSON line per command."""

    def __init__(self, cmd: list[str], env: dict):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        msg = self._read()
        if "error" in msg:
            self.proc.wait()
            fail(msg["error"])
        self.info = msg["ready"]

    @classmethod
    def reference(cls, python, reference_dir, nf, batch, threads, seed, env):
        return cls([python, os.path.join(HERE, "reference_torch.py"), "--serve", "--nf", str(nf), "--batch", str(batch),
                    "--threads", str(threads), "--seed", str(seed), "--reference-dir", reference_dir], env)

    @classmethod
    def ours(cls, nf, batch, seed, n_jitted_steps, env):
        return cls([sys.executable, os.path.abspath(__file__), "--serve-ours", "--nf", str(nf), "--batch", str(batch),
                    "--seed", str(seed), "--n-jitted-steps", str(n_jitted_steps)], env)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            fail(f"a worker exited (code {code}) without answering; its error is above")
        return json.loads(line)

    def steps(self, n: int) -> dict:
        """{"seconds", "loss", "minor_faults", "steps"} of (about) n back-to-back steps."""
        self.proc.stdin.write(json.dumps({"cmd": "steps", "n": n}) + "\n")
        return {"steps": n, **self._read()}

    def close(self):
        stop_worker(self.proc)


# ----------------------------------------------------------------------------- ours


class Ours:
    """Our compiled train step (as experiments/bench_train.py) from the same config; with
    `n_jitted_steps` > 1, that many steps per call (`lax.scan`, as `scoresde train` runs
    the CIFAR-10 configs: their default is 5), each on its own batch."""

    def __init__(self, nf: int, batch: int, seed: int, n_jitted_steps: int = 1):
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
        self.step = train.compile_step(train.make_train_step(loss_fn, kw["optimizer"], kw["ema_rate"]), n_jitted_steps)
        # The same batch as the reference worker (reference_torch.build): NHWC here; with
        # several steps per call, it and n - 1 more.
        rng = np.random.default_rng(seed)
        images = rng.uniform(-1, 1, (n_jitted_steps, batch) + tuple(shape)).astype(np.float32)
        self.x = train.put_batch(images, stacked=True) if n_jitted_steps > 1 else train.put_batch(images[0])
        self.n_jitted_steps = n_jitted_steps
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
            n_jitted_steps=n_jitted_steps,
            reduce_mean=bool(config.training.reduce_mean),
            ema_rate=float(kw["ema_rate"]),
            python=sys.executable,
        )
        self.loss = None

    def _one(self):
        self.state, metrics = self.step(self.state, self.x)
        self.loss = metrics["loss"] if self.n_jitted_steps == 1 else metrics["loss"][-1]
        return self.loss

    def steps(self, n: int) -> tuple[float, float]:
        return self.timed(self._one, n), float(self.loss)


def serve_ours(args):
    """Worker mode (`--serve-ours`): the protocol of `reference_torch.serve`, with our step.
    Asked for k steps with n per call, it makes max(1, round(k / n)) calls and says how many
    steps that was (`"steps"`)."""
    n = args.n_jitted_steps
    ours = Ours(args.nf, args.batch, args.seed, n)
    ours.steps(1)  # compiles
    print(json.dumps({"ready": ours.info}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        calls = max(1, round(int(msg["n"]) / n))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds, loss = ours.steps(calls)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps({"seconds": seconds, "loss": loss, "minor_faults": faults, "steps": calls * n}), flush=True)


# ----------------------------------------------------------------------------- main


def write_results(result: dict):
    from scoresde.cli import JEMALLOC_CONF

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".json", "w") as f:
        json.dump(result, f, indent=1)
    m, r, o, t = result["machine"], result["reference"], result["ours"], result["timing"]
    per, n_config = result["allocators"], result["config_n_jitted_steps"]
    summary = "\n".join(
        f"| {name} | {n} | {a['theirs']['s_per_step']:.4f} | {v['s_per_step']:.4f} | "
        f"{a['theirs']['faults_per_step']:,.0f} | {v['faults_per_step']:,.0f} | **{v['ratio_ours_over_theirs']:.3f}x** | "
        f"{min(v['ratio_rounds']):.2f}-{max(v['ratio_rounds']):.2f} |"
        for name, a in per.items() for n, v in a["ours"].items())
    rounds = "\n".join(
        f"| {name} | {i + 1} | {th:.4f} | " + " | ".join(f"{v['s_per_step_rounds'][i]:.4f}" for v in a["ours"].values())
        + " |" for name, a in per.items() for i, th in enumerate(a["theirs"]["s_per_step_rounds"]))
    ns = list(next(iter(per.values()))["ours"])
    boxed = ", ".join(f"ours under {a}: **{v:.3f}x**" for a, v in result["out_of_the_box_ratio"].items())
    text = f"""# Train step: the PyTorch reference against ours, side by side on the CPU

Command (from the repository root; set-up in the script's docstring):

    {result["command"]}

Machine: {m["cpu"]}, {m["cores"]} cores, no accelerator, {m["libc"]}, transparent huge pages
`{m["thp"]}`, {m["page_fault_us"]:.2f} us per page to fault in fresh memory (first touch of 256 MiB);
torch {r["torch"]} ({r["torch_threads"]} intra-op threads), jax {o["jax"]} ({o["backend"]} backend).
Load average {m["load_before"]:.1f} before, {m["load_after"]:.1f} after (the machine is shared).

Network: the reference's `{CONFIG}` config (DDPM++ continuous, VP SDE) with nf={o["nf"]}:
{r["params"]:,} parameters in both ({r["params"]} torch, {o["params"]} ours). Batch {o["batch"]},
{"x".join(map(str, o["shape"]))} images. Full train step: loss, backward, gradient clipping, Adam, EMA.
Reference: yang-song/score_sde_pytorch {result["reference_commit"] or "(commit unknown)"}, its `losses.get_step_fn`.
Ours: `train.compile_step(train.make_train_step(...), n_jitted_steps)`: n steps per call (`lax.scan`),
each on its own batch; the config's default is {n_config}.

Memory allocator set-ups (the same environment for both sides; see the script's docstring):
glibc (as it comes), jemalloc (`LD_PRELOAD` of {result["jemalloc"] or "(not run)"}, `MALLOC_CONF={JEMALLOC_CONF}`:
what the `scoresde` command line runs under where the library is installed), thp
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`){"" if "thp" in per else " (not run)"}.
{t["rounds"]} interleaved rounds (each set-up in turn: theirs, then ours for each n) of about
{t["steps_per_round"]} steps ({t["steps_per_round"]} calls of 1 step, or round({t["steps_per_round"]} / n) calls of n), after
{t["warmup_steps"]} warm-up steps each. Medians over rounds; page faults per step over all rounds.

| allocator | our n_jitted_steps | theirs s/step | ours s/step | theirs page faults/step | ours page faults/step | ours/theirs throughput | per-round ratios |
|---|---|---|---|---|---|---|---|
{summary}

As each runs this config out of the box (the reference under plain glibc; `scoresde train`
with n_jitted_steps={n_config}, under jemalloc where installed): {boxed}.

| allocator | round | theirs s/step | {" | ".join(f"ours n={n} s/step" for n in ns)} |
|---|---|---|{"---|" * len(ns)}
{rounds}
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


def page_fault_us(mib: int = 256) -> float:
    """Microseconds per page to fault in fresh anonymous memory here (first touch, `mib` MiB)."""
    import mmap

    import numpy as np

    size = mib << 20
    with mmap.mmap(-1, size) as m:
        pages = np.frombuffer(m, np.uint8)
        t = time.perf_counter()
        pages[::mmap.PAGESIZE] = 1
        seconds = time.perf_counter() - t
        del pages
    return seconds / (size // mmap.PAGESIZE) * 1e6


def transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().strip()
    except OSError:
        return "unavailable"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on each side after building/compiling")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each timed block")
    from scoresde.cli import JEMALLOC_PATHS

    system_jemalloc = next((q for q in JEMALLOC_PATHS if os.path.isfile(q)), None)
    p.add_argument("--allocators", nargs="+", choices=["glibc", "jemalloc", "thp"],
                   default=["glibc", "jemalloc"] if system_jemalloc else ["glibc"],
                   help="memory allocator set-ups, each for both sides (default: glibc, and jemalloc if installed)")
    p.add_argument("--jemalloc", default=system_jemalloc,
                   help="libjemalloc.so for the jemalloc set-up (default: the system's, if installed)")
    p.add_argument("--n-jitted-steps", nargs="+", type=int, default=[1, 5],
                   help="our steps per compiled call, each a worker (default: %(default)s; 5 is the CIFAR-10 "
                        "configs' default, what `scoresde train` runs for this config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON, help="python of the venv with torch")
    p.add_argument("--reference-dir", default=DEFAULT_REFERENCE_DIR)
    p.add_argument("--reference-commit", default="cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44",
                   help="recorded in the results (read from the reference's .git where it has one)")
    p.add_argument("--tiny", action="store_true", help="smoke test: nf 16, batch 4, 1 round of 2 steps; nothing recorded")
    p.add_argument("--serve-ours", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_ours:
        args.n_jitted_steps = args.n_jitted_steps[0]
        return serve_ours(args)
    if args.tiny:
        args.nf, args.batch, args.rounds, args.steps_per_round, args.warmup = 16, 4, 1, 2, 1
    for name in ("nf", "batch", "rounds", "steps_per_round", "threads"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.n_jitted_steps) < 1:
        fail(f"--n-jitted-steps must be at least 1, got {min(args.n_jitted_steps)}")
    jitted = sorted(set(args.n_jitted_steps))
    if args.warmup < 0 or not args.pause >= 0:
        fail(f"--warmup and --pause must be >= 0, got {args.warmup} and {args.pause}")
    allocators = list(dict.fromkeys(args.allocators))
    if not args.tiny and not {"glibc", "jemalloc"} <= set(allocators):
        fail("a recorded run needs both the glibc and jemalloc set-ups (the out-of-the-box comparison); "
             "--tiny runs any")

    # The set-up, checked before anything heavy: one line each.
    if not os.path.isdir(args.reference_dir):
        fail(f"reference code not found at {args.reference_dir}; {SETUP_HINT}")
    if not os.path.exists(args.torch_python):
        fail(f"no benchmark venv: {args.torch_python} does not exist; {SETUP_HINT}")
    if "jemalloc" in allocators and not (args.jemalloc and os.path.exists(args.jemalloc)):
        fail(f"the jemalloc set-up needs libjemalloc (--jemalloc PATH; e.g. apt install libjemalloc2), "
             f"got {args.jemalloc!r}")
    probe = subprocess.run([args.torch_python, "-c", "import torch, ml_collections"], capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        fail(f"{args.torch_python} cannot import torch and ml_collections ({last}); {SETUP_HINT}")

    load_before = os.getloadavg()[0]
    fault_us = page_fault_us()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load_before:.1f}; a page fault in fresh "
          f"memory costs {fault_us:.2f} us", flush=True)
    if load_before > 0.5 * os.cpu_count():
        print(f"warning: the machine is busy (load average {load_before:.1f} on {os.cpu_count()} cores); torch's "
              "OpenMP threads slow down far more than XLA's under oversubscription (seen here: 6x at --threads 2 "
              "with a load of 5), so the ratio is meaningful only on a quiet machine", flush=True)
    workers, started = {}, []  # every worker process, closed at the end whatever happens
    try:
        t0 = time.perf_counter()
        for name in allocators:
            env = allocator_env(name, args.jemalloc)
            started.append(Worker.reference(args.torch_python, args.reference_dir, args.nf, args.batch,
                                            args.threads, args.seed, env))
            pair = {"theirs": started[-1]}
            for n in jitted:
                started.append(Worker.ours(args.nf, args.batch, args.seed, n, env))
                pair[n] = started[-1]
            workers[name] = pair
            print(f"{name}: both sides built (ours compiled) after {time.perf_counter() - t0:.0f} s", flush=True)
        r, o = workers[allocators[0]]["theirs"].info, workers[allocators[0]][jitted[0]].info
        print(f"reference: torch {r['torch']}, {r['torch_threads']} threads, {r['params']:,} params; "
              f"ours: jax {o['jax']} ({o['backend']}), {o['params']:,} params", flush=True)
        if r["params"] != o["params"]:
            fail(f"parameter counts differ: reference {r['params']:,}, ours {o['params']:,}")
        if args.warmup:
            for w in started:
                w.steps(args.warmup)

        k = args.steps_per_round
        runs = {name: {side: [] for side in pair} for name, pair in workers.items()}
        for i in range(args.rounds):
            for name, pair in workers.items():
                for side, w in pair.items():
                    time.sleep(args.pause)
                    runs[name][side].append(w.steps(k))
                line = ", ".join(f"{'theirs' if side == 'theirs' else f'ours n={side}'} "
                                 f"{x[-1]['seconds'] / x[-1]['steps']:.4f} s/step "
                                 f"({x[-1]['minor_faults'] / x[-1]['steps']:,.0f} faults/step)"
                                 for side, x in runs[name].items())
                print(f"round {i + 1}/{args.rounds} {name}: {line}", flush=True)
    finally:
        for w in started:
            w.close()

    import numpy as np

    def summary(run):
        times = [x["seconds"] / x["steps"] for x in run]
        return dict(s_per_step=float(np.median(times)), s_per_step_rounds=times,
                    faults_per_step=sum(x["minor_faults"] for x in run) / sum(x["steps"] for x in run),
                    losses=[x["loss"] for x in run])

    per = {}
    for name, run in runs.items():
        theirs = summary(run["theirs"])
        ours = {str(n): summary(run[n]) for n in jitted}
        for n, v in ours.items():
            v["ratio_ours_over_theirs"] = theirs["s_per_step"] / v["s_per_step"]
            v["ratio_rounds"] = [a / b for a, b in zip(theirs["s_per_step_rounds"], v["s_per_step_rounds"])]
            print(f"{name}: median s/step over {args.rounds} rounds: theirs (PyTorch) {theirs['s_per_step']:.4f}, "
                  f"ours (JAX, n_jitted_steps={n}) {v['s_per_step']:.4f}; ours/theirs throughput = "
                  f"{v['ratio_ours_over_theirs']:.3f}x", flush=True)
        per[name] = dict(theirs=theirs, ours=ours)
    config_n = "5" if 5 in jitted else str(jitted[-1])
    out_of_the_box = {a: per["glibc"]["theirs"]["s_per_step"] / per[a]["ours"][config_n]["s_per_step"]
                      for a in ("glibc", "jemalloc") if "glibc" in per and a in per}
    print(f"as each runs this config out of the box (the reference under glibc; scoresde train, n_jitted_steps="
          f"{config_n}): " + ", ".join(f"ours under {a} {v:.3f}x" for a, v in out_of_the_box.items()), flush=True)
    if args.tiny:
        print("(--tiny: smoke test, nothing recorded)")
        return
    commit = reference_commit(args.reference_dir) or args.reference_commit
    result = dict(
        command="python " + shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:]),
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                     libc=" ".join(platform.libc_ver()), thp=transparent_huge_pages(), page_fault_us=fault_us,
                     load_before=load_before, load_after=os.getloadavg()[0]),
        reference_commit=commit,
        reference=r,
        ours=o,
        jemalloc=args.jemalloc if "jemalloc" in per else None,
        timing=dict(rounds=args.rounds, steps_per_round=k, warmup_steps=args.warmup, pause_s=args.pause),
        allocators=per,
        config_n_jitted_steps=int(config_n),
        out_of_the_box_ratio=out_of_the_box,
    )
    write_results(result)
    print(f"wrote {os.path.relpath(RESULTS, REPO_ROOT)}.json and .md")


if __name__ == "__main__":
    main()
