"""Which XLA operations the network's forward + backward spends its CPU time in, from XLA's own trace.

    python experiments/profile_xla_ops.py                 # DDPM++ nf 32, batch 16: with and without the fusion barrier
    python experiments/profile_xla_ops.py --top 30
    python experiments/profile_xla_ops.py --tiny          # smoke test: nf 16, batch 2; nothing recorded

XLA:CPU records one trace event per executed operation when started with
`--xla_cpu_enable_xprof_traceme=true` (this script sets it before JAX starts). The gradient of
sum(output ** 2) of the reference's `vp/cifar10_ddpmpp_continuous` network (train mode, as in
`profile_layers.py`'s "net" piece) is compiled, run under `jax.profiler` for a few calls, and
each operation's events are summed per call and joined with the compiled HLO: its shape, the
number of operands of its fusion (a fused computation that reads many inputs is recomputing
elementwise work from them) and the layer it came from. Convolutions run asynchronously on
XLA's thread pool, so their events time only their dispatch: the table is for everything else.
Run twice, with `layers.fusion_barrier` (as shipped) and with it as the identity, to show what
it removes. Writes experiments/results/profile_xla_ops.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shlex
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scoresde  # noqa: E402,F401  (its XLA:CPU flag too)
from scoresde import configs, experiment  # noqa: E402
from scoresde.models import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_train_vs_reference import cpu_model  # noqa: E402

RESULTS = os.path.join(HERE, "results", "profile_xla_ops")
CONFIG = "vp/cifar10_ddpmpp_continuous"
KEPT_OPS = 200  # the costliest operations kept in the JSON (all of them count in the totals)


def hlo_instructions(text: str) -> dict:
    """name -> (shape, number of operands, op_name) of each instruction in compiled HLO text."""
    out = {}
    for m in re.finditer(r"\n\s*(?:ROOT )?%([\w.\-]+) = (\([^()]*\)|\S+) [\w\-]+\(([^\n]*)", text):  # tuple or array
        name, shape, rest = m.groups()
        call = rest.split("), ")[0]
        op_name = re.search(r'op_name="([^"]*)"', rest)
        out[name] = (shape, len(re.findall(r"%[\w.\-]+", call)), op_name.group(1) if op_name else "")
    return out


def layer_of(op_name: str) -> str:
    if not op_name:
        return "—"
    parts = [p for p in op_name.split("/") if not p.startswith(("jit(", "jvp(", "transpose("))]
    side = "backward" if "transpose(" in op_name else "forward"
    return side + " " + "/".join(parts[-3:])


def profile(nf: int, batch: int, calls: int, barrier: bool) -> dict:
    config = configs.get_config(CONFIG)
    configs.apply_overrides(config, [f"model.nf={nf}"])
    model = experiment.model_from_config(config)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, 32, 32, 3)), jnp.float32)
    t = jnp.asarray(rng.uniform(0, 1, batch), jnp.float32)
    key = jax.random.key(0)
    params = model.init({"params": key, "dropout": key}, x, t, train=False)["params"]

    def loss(p, k, x, t):
        return jnp.sum(jnp.square(model.apply({"params": p}, x, t, train=True, rngs={"dropout": k})))

    saved = layers.fusion_barrier
    if not barrier:
        layers.fusion_barrier = lambda v: v
    try:
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params, key, x, t).compile()
    finally:
        layers.fusion_barrier = saved
    info = hlo_instructions(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(params, key, x, t))
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, key, x, t))
        walls.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(calls):
            jax.block_until_ready(compiled(params, key, x, t))
        jax.profiler.stop_trace()
        path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in info:  # XLA's operations, not the runtime's own events
            per_op[e["name"]] += e["dur"] / 1e3 / calls  # microseconds -> ms per call
    ops = [dict(name=n, ms=ms, shape=info[n][0], operands=info[n][1], layer=layer_of(info[n][2]))
           for n, ms in per_op.most_common()]
    by_kind = collections.Counter()
    for op in ops:
        by_kind[re.sub(r"\.\d+$", "", op["name"])] += op["ms"]
    return dict(barrier=barrier, wall_ms=1e3 * float(np.median(walls)), traced_ms=sum(per_op.values()),
                fusions_over_20_operands=sum(1 for n, v in info.items() if "fusion" in n and v[1] > 20),
                operations=len(ops), ops=ops[:KEPT_OPS], by_kind=dict(by_kind.most_common()))


def write_results(result: dict, top: int):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".json", "w") as f:
        json.dump(result, f, indent=1)
    sections = []
    for run in result["runs"]:
        title = "with the fusion barrier (as shipped)" if run["barrier"] else "without it (`layers.fusion_barrier` as the identity)"
        rows = "\n".join(f"| {o['name']} | {o['ms']:.2f} | {o['shape']} | {o['operands']} | {o['layer']} |"
                         for o in run["ops"][:top])
        kinds = "\n".join(f"| {k} | {v:.1f} |" for k, v in list(run["by_kind"].items())[:12])
        sections.append(f"""## {title}

Forward + backward: {run['wall_ms']:.0f} ms per call (median, untraced); traced operations other than
convolutions' dispatch: {run['traced_ms']:.0f} ms per call. Fusions reading more than 20 operands:
{run['fusions_over_20_operands']}.

| operation | ms per call | shape | operands | layer |
|---|---|---|---|---|
{rows}

| kind | ms per call |
|---|---|
{kinds}
""")
    text = f"""# Where XLA:CPU spends the network's forward + backward, per operation

Command (from the repository root):

    {result['command']}

Machine: {result['machine']}; jax {result['jax']}. Network: the reference's `{CONFIG}` config with
nf={result['nf']}, batch {result['batch']}, train mode; the gradient of sum(output ** 2). Per-operation
events of XLA's own trace (`--xla_cpu_enable_xprof_traceme=true`), summed over {result['calls']} calls and divided
by them; convolutions show only their dispatch (they run on XLA's thread pool). A fusion's
"operands" is how many arrays it reads: a large number is elementwise work recomputed from them.
The trace itself slows the run.

{chr(10).join(sections)}"""
    with open(RESULTS + ".md", "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--calls", type=int, default=3, help="traced calls (and untimed ones) per variant")
    p.add_argument("--top", type=int, default=15, help="operations listed per variant")
    p.add_argument("--tiny", action="store_true", help="smoke test: nf 16, batch 2, 1 call; nothing recorded")
    args = p.parse_args()
    if args.tiny:
        args.nf, args.batch, args.calls = 16, 2, 1
    for name in ("nf", "batch", "calls", "top"):
        if getattr(args, name) < 1:
            sys.exit(f"profile_xla_ops: --{name} must be >= 1")
    if jax.default_backend() != "cpu":
        sys.exit(f"profile_xla_ops: profiles XLA's CPU backend; JAX's default here is {jax.default_backend()}")
    runs = []
    for barrier in (True, False):
        run = profile(args.nf, args.batch, args.calls, barrier)
        runs.append(run)
        print(f"barrier {barrier}: {run['wall_ms']:.0f} ms per forward + backward; fusions over 20 operands: "
              f"{run['fusions_over_20_operands']}; top: " + ", ".join(f"{o['name']} {o['ms']:.1f} ms ({o['operands']} operands)"
                                                                   for o in run["ops"][:3]), flush=True)
    if args.tiny:
        print("(--tiny: smoke test, nothing recorded)")
        return
    write_results(dict(
        command="python " + shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:]),
        machine=f"{cpu_model()}, {os.cpu_count()} cores, no accelerator",
        jax=jax.__version__, nf=args.nf, batch=args.batch, calls=args.calls, runs=runs), args.top)
    print(f"wrote {os.path.relpath(RESULTS, REPO_ROOT)}.json and .md")


if __name__ == "__main__":
    main()
