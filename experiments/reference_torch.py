"""The reference PyTorch train step (yang-song/score_sde_pytorch), built from its own code.

Used by `experiments/bench_train_vs_reference.py` (which runs this file as a worker in
the torch benchmark venv); it also runs alone:

    .bench-venv/bin/python experiments/reference_torch.py --nf 32 --batch 16 --steps 5

Set-up (not committed; see `experiments/bench_train_vs_reference.py` for the details):
the reference's tree exported to `.reference/score_sde_pytorch/`, and a venv
`.bench-venv` with torch (CPU), ml-collections, numpy and scipy.

What is built, exactly as the reference's `run_lib.train` does, with nothing of ours:

- config: its `configs/vp/cifar10_ddpmpp_continuous.py` (DDPM++ continuous, VP SDE,
  reduce_mean=True), with `model.nf` and `training.batch_size` overridden and
  `config.device` set to the CPU;
- model: `models.utils.create_model` (`NCSNpp`, wrapped in `DataParallel` as the
  reference does; on a CPU-only torch that wrapper calls the module directly);
- `models.ema.ExponentialMovingAverage`, `losses.get_optimizer` (Adam),
  `losses.optimization_manager` (warmup, `clip_grad_norm_`, `optimizer.step`),
  `sde_lib.VPSDE`, and `losses.get_step_fn(train=True)`: zero_grad, loss, backward,
  clip, Adam, step += 1, EMA update.

The one work-around: `models/up_or_down_sampling.py` does `from op import upfirdn2d` at
import time, and the reference's `op` package compiles CUDA kernels when imported. That
op is used only with `fir=True` (NCSN++); DDPM++ has `fir=False`. A stub `op` module is
put into `sys.modules` first; its functions raise if ever called.

Worker protocol (`--serve`): one JSON line on stdout once built (`{"ready": ...}` or
`{"error": "..."}`), then for each line `{"cmd": "steps", "n": k}` on stdin it runs k
train steps and answers `{"seconds": ..., "loss": ..., "minor_faults": ...}` (the page faults
the process took meanwhile); `{"cmd": "quit"}` ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import types

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REFERENCE_DIR = os.path.join(REPO_ROOT, ".reference", "score_sde_pytorch")
REFERENCE_CONFIG = "configs/vp/cifar10_ddpmpp_continuous.py"


class SetupError(RuntimeError):
    """Something the benchmark needs is missing (one line, for the user)."""


def _stub_cuda_op():
    """An `op` module standing in for the reference's CUDA extension package (FIR only)."""

    def unavailable(name):
        def fn(*args, **kwargs):
            raise RuntimeError(f"op.{name}: the reference's CUDA op is stubbed out in this benchmark "
                               "(it is needed only with model.fir=True; DDPM++ has fir=False)")
        return fn

    op = types.ModuleType("op")
    op.__doc__ = "Stub of score_sde_pytorch's CUDA `op` package (experiments/reference_torch.py)."
    for name in ("upfirdn2d", "fused_leaky_relu", "FusedLeakyReLU"):
        setattr(op, name, unavailable(name))
    sys.modules["op"] = op


def _import_reference(reference_dir: str):
    if not os.path.isfile(os.path.join(reference_dir, REFERENCE_CONFIG)):
        raise SetupError(f"reference code not found: {os.path.join(reference_dir, REFERENCE_CONFIG)} is missing; "
                         "fetch yang-song/score_sde_pytorch and export it to .reference/score_sde_pytorch "
                         "(see experiments/bench_train_vs_reference.py)")
    try:
        import torch  # noqa: F401
        import ml_collections  # noqa: F401
    except ImportError as err:
        raise SetupError(f"{err.name or err} is not installed in {sys.executable}; create the benchmark venv: "
                         "python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 "
                         "ml-collections numpy scipy") from None
    if reference_dir not in sys.path:
        sys.path.insert(0, reference_dir)
    _stub_cuda_op()
    import importlib.util

    import losses
    import sde_lib
    from models import ncsnpp  # noqa: F401  (registers 'ncsnpp')
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage

    spec = importlib.util.spec_from_file_location("reference_config", os.path.join(reference_dir, REFERENCE_CONFIG))
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    return types.SimpleNamespace(losses=losses, sde_lib=sde_lib, mutils=mutils,
                                 ExponentialMovingAverage=ExponentialMovingAverage,
                                 get_config=config_module.get_config)


def build(nf: int = 32, batch: int = 16, threads: int | None = None, seed: int = 0,
          reference_dir: str = DEFAULT_REFERENCE_DIR, device: str = "cpu"):
    """The reference's train step on a fixed batch, on `device` ("cpu" or "cuda"):
    returns (step() -> loss tensor, info)."""
    ref = _import_reference(reference_dir)
    import numpy as np
    import torch

    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(seed)

    config = ref.get_config()
    config.model.nf = nf
    config.training.batch_size = batch
    config.device = torch.device(device)
    assert config.model.fir is False, "DDPM++ has fir=False; the CUDA FIR op is stubbed out"

    # As run_lib.train: model, EMA, optimizer, state; SDE; optimize_fn; train step.
    score_model = ref.mutils.create_model(config)
    ema = ref.ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
    optimizer = ref.losses.get_optimizer(config, score_model.parameters())
    state = dict(optimizer=optimizer, model=score_model, ema=ema, step=0)
    sde = ref.sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                            N=config.model.num_scales)
    optimize_fn = ref.losses.optimization_manager(config)
    train_step_fn = ref.losses.get_step_fn(sde, train=True, optimize_fn=optimize_fn,
                                           reduce_mean=config.training.reduce_mean,
                                           continuous=config.training.continuous,
                                           likelihood_weighting=config.training.likelihood_weighting)

    size, channels = config.data.image_size, config.data.num_channels
    # The same batch as the JAX side (`bench_train_vs_reference.make_batch`): centered data
    # in [-1, 1], NHWC there, NCHW here (run_lib permutes and scales the same way).
    images = np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(config.device)

    def step():
        return train_step_fn(state, x)

    info = dict(
        params=int(sum(p.numel() for p in score_model.parameters())),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        batch=batch,
        nf=nf,
        shape=[size, size, channels],
        config=REFERENCE_CONFIG,
        reduce_mean=bool(config.training.reduce_mean),
        python=sys.executable,
    )
    return step, info


def time_steps(step, n: int):
    """(seconds for n back-to-back steps, last loss); `.item()` waits for a GPU to finish."""
    t = time.perf_counter()
    for _ in range(n):
        loss = step()
    loss = float(loss.item())
    return time.perf_counter() - t, loss


def serve(args):
    out = sys.stdout
    try:
        step, info = build(args.nf, args.batch, args.threads, args.seed, args.reference_dir)
    except SetupError as err:
        print(json.dumps({"error": str(err)}), file=out, flush=True)
        return 1
    except Exception as err:  # anything else while building: one line for the parent
        print(json.dumps({"error": f"building the reference train step failed: {type(err).__name__}: {err}"}),
              file=out, flush=True)
        return 1
    print(json.dumps({"ready": info}), file=out, flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds, loss = time_steps(step, int(msg["n"]))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps({"seconds": seconds, "loss": loss, "minor_faults": faults}), file=out, flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3, help="timed steps (standalone)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (standalone)")
    p.add_argument("--reference-dir", default=DEFAULT_REFERENCE_DIR)
    p.add_argument("--serve", action="store_true", help="worker mode for bench_train_vs_reference.py")
    args = p.parse_args()
    if args.serve:
        return serve(args)
    try:
        step, info = build(args.nf, args.batch, args.threads, args.seed, args.reference_dir)
    except SetupError as err:
        sys.exit(f"reference_torch: {err}")
    print(json.dumps(info))
    time_steps(step, args.warmup)
    seconds, loss = time_steps(step, args.steps)
    print(f"reference train step: {seconds / args.steps:.4f} s/step ({args.batch * args.steps / seconds:.1f} img/s), "
          f"loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
