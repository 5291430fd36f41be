"""Where our CPU time goes against the PyTorch reference, layer by layer, under XLA flag variants.

    python experiments/profile_layers.py                    # batch 16, nf 32, 5 rounds, 4 XLA variants
    python experiments/profile_layers.py --net-variants all # the whole network under every variant too
    python experiments/profile_layers.py --variants default xnnpack --net-variants all --cases 'conv|net'
    python experiments/profile_layers.py --extra-variant NAME=--xla_cpu_experimental_xnn_fusion_type=...
    python experiments/profile_layers.py --tiny             # smoke test: small network, 1 round; nothing recorded
    python experiments/profile_layers.py --cases '^conv' --variants default --out experiments/results/profile_conv

Run it with the package's venv (`.venv/bin/python`); it starts the reference side itself in
the benchmark venv (`--torch-python`, default `.bench-venv/bin/python`) with the reference
code in `.reference/score_sde_pytorch` (set-up: `experiments/bench_train_vs_reference.py`).
Compiling dominates: XLA takes seconds per residual block and, at nf 32, about two minutes
for the whole network's forward + backward plus the optimizer update, per variant. So by
default the whole network and the optimizer run under the default variant only (about 4
minutes in all on 2 cores); `--net-variants all` (or some names) compiles them under the
other variants too, about 2 minutes more each. Run it on a quiet machine.

`bench_train_vs_reference.py` finds our full DDPM++ train step slower than the reference's
on the CPU at one step per call (0.95x under glibc, 0.98x with both under jemalloc; 1.21x and 1.16x at the config's 5 steps per call, `experiments/results/bench_train_vs_reference.md`; `import scoresde` sets an XLA:CPU flag first, see its `__init__`, which a
variant can undo: `--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`). This splits the network into its pieces and times each
alone, forward + backward: the gradient of sum(output ** 2) with respect to the inputs and
the parameters (ours: `jax.jit(jax.value_and_grad(...))`, blocked on after every call;
theirs: `torch.autograd.grad` of the same sum), float32, train mode (dropout 0.1 on, as in
training), at the shapes of the reference's `vp/cifar10_ddpmpp_continuous` config with
`model.nf` (32) and the batch (16) overridden. That config (ch_mult (1, 2, 2, 2), 4 res
blocks, attention at 16x16, resblock_type 'biggan', fir=False) has 32 channels at 32x32
and 64 at 16x16, 8x8 and 4x4; its up path concatenates skips (64 -> 32 at 32x32,
128 -> 64 below), and it resamples with BigGAN blocks (naive average-pool /
nearest-neighbour, non-FIR) rather than with the Downsample/Upsample modules.

The pieces (`make_cases`; every one built from each side's own code):

  conv3x3     one 3x3 convolution (ours `layers.conv3x3`, theirs `layers.ddpm_conv3x3`)
              at 32x32 32->32 and 64->32, 16x16 64->64 and 128->64, 4x4 64->64; and
              conv3x3_fwd, the 32x32 32->32, 64->32 and 16x16 128->64 ones forward only (no
              gradient; torch under no_grad), which splits a convolution's time into
              forward and backward
  groupnorm   GroupNorm with the reference's min(C // 4, 32) groups, eps 1e-6
  biggan      one ResnetBlockBigGANpp with the time embedding (what this config's network
              is made of) at 32x32 32->32, 32x32 64->32, 16x16 128->64, 4x4 64->64;
              biggan_down (32x32 -> 16x16) and biggan_up (16x16 -> 32x32), the network's
              resampling
  ddpmpp      one ResnetBlockDDPMpp with the time embedding at 32x32 32->32 (the DDPM
              block; not in this config's network, which uses BigGAN blocks)
  attn        AttnBlockpp at 16x16
  naive_down / naive_up   the non-FIR resampling alone (`naive_downsample_2d`, `naive_upsample_2d`)
  temb        the time embedding: sinusoidal embedding of t * 999, Dense, swish, Dense
  net         the whole network (NCSNpp), forward + backward w.r.t. x and the parameters
  optimizer   the update alone: clipping (global norm 1), Adam with the warmup learning
              rate, EMA 0.9999 (ours: the optimizer of `experiment.train_kwargs` and the EMA
              of `train.make_train_step`, jitted with the state donated; theirs:
              `losses.optimization_manager` and `ExponentialMovingAverage.update`)

Our side runs once per XLA flag variant, each in its own process (XLA_FLAGS is read at
start-up): default (""), onednn ("--xla_cpu_use_onednn=true"), onednn_custom_call
("--xla_cpu_experimental_onednn_custom_call=true") and xnnpack ("--xla_cpu_use_xnnpack=true");
`--variants` picks some, `--extra-variant NAME=FLAGS` adds others (`--net-variants`: those that
also run the whole network and the optimizer). A variant whose process
fails, or a piece that fails to compile under it, is recorded with its error and skipped. For
each piece and variant the JSON also keeps the compile time and what the optimized HLO holds
(custom-call targets, fusion kinds, convolution/dot counts, mentions of onednn/xnn/ynn), which
shows whether a flag changed the program at all.

All processes (torch in the benchmark venv, one per variant here) build, compile and warm
up first (two untimed calls each; the second sets how many back-to-back calls make a timed
block of about `--block-seconds`), then are timed in interleaved rounds: for each piece,
torch and every variant in turn (the order rotated each round), a short pause before each
block, the processes not being timed blocked on a pipe. Threads: torch
`set_num_threads(--threads)` (default: all cores); XLA's pool is sized from the CPU
affinity, so with `--threads` below the core count our processes are pinned to that many
cores. Reported per piece: milliseconds per call (median over rounds; best and every round
in the JSON) and the ratio torch ms / ours ms (above 1: ours is faster), plus how often the
piece's exact shape occurs in the network and that many calls as a share of the whole
network's time (pieces overlap: a block contains its convolutions and GroupNorms).

Writes `experiments/results/profile_layers.{json,md}` with the machine (CPU model, cores),
the jax, jaxlib, flax and torch versions, the exact command, and the load average before and
after. `--tiny` (nf 8, ch_mult (1, 2), 1 res block, batch 2, one piece of each kind, 1 round) writes
to a fresh temporary directory instead and records nothing.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import platform
import queue
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_train_vs_reference import (  # noqa: E402
    DEFAULT_REFERENCE_DIR, DEFAULT_TORCH_PYTHON, REPO_ROOT, cpu_model, stop_worker)
RESULTS = os.path.join(HERE, "results", "profile_layers")
CONFIG = "vp/cifar10_ddpmpp_continuous"
SETUP_HINT = "see the set-up in the docstring of experiments/bench_train_vs_reference.py"

VARIANTS = {  # name -> XLA_FLAGS of our process
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}


def fail(message: str):
    sys.exit(f"profile_layers: {message}")



# ----------------------------------------------------------------------------- the pieces


def net_layout(nf, ch_mult, num_res_blocks, attn_resolutions, image_size, channels):
    """How often each piece, by exact shape, occurs in the network (DDPM++: BigGAN blocks,
    fir=False, no progressive paths), as keys of `case_key`."""
    count = collections.Counter()

    def block(res, cin, cout, mode=""):
        count[("biggan" + (f"_{mode}" if mode else ""), res, cin, cout)] += 1
        out = res * 2 if mode == "up" else res // 2 if mode == "down" else res
        count[("groupnorm", res, cin, cin)] += 1
        if mode:
            count[(f"naive_{mode}", res, cin, cin)] += 2  # h and the shortcut
        count[("conv3x3", out, cin, cout)] += 1
        count[("groupnorm", out, cout, cout)] += 1
        count[("conv3x3", out, cout, cout)] += 1
        return out

    def attn(res, c):
        count[("attn", res, c, c)] += 1
        count[("groupnorm", res, c, c)] += 1

    levels = len(ch_mult)
    res, cin = image_size, nf
    count[("conv3x3", res, channels, nf)] += 1
    hs = [nf]
    for i in range(levels):
        for _ in range(num_res_blocks):
            block(res, cin, nf * ch_mult[i])
            cin = nf * ch_mult[i]
            if res in attn_resolutions:
                attn(res, cin)
            hs.append(cin)
        if i != levels - 1:
            res = block(res, cin, cin, "down")
            hs.append(cin)
    block(res, cin, cin)
    attn(res, cin)
    block(res, cin, cin)
    for i in reversed(range(levels)):
        for _ in range(num_res_blocks + 1):
            block(res, cin + hs.pop(), nf * ch_mult[i])
            cin = nf * ch_mult[i]
        if res in attn_resolutions:
            attn(res, cin)
        if i != 0:
            res = block(res, cin, cin, "up")
    assert not hs
    count[("groupnorm", res, cin, cin)] += 1
    count[("conv3x3", res, cin, channels)] += 1
    count[("temb", 0, 0, 0)] = count[("net", 0, 0, 0)] = count[("optimizer", 0, 0, 0)] = 1
    return count


def case_key(case):
    return (case["kind"], case["res"], case["cin"], case["cout"])


def make_cases(m: dict) -> list[dict]:
    """The pieces at this network's shapes (m: nf, ch_mult, attn_resolutions, image_size, channels)."""
    nf, mult, size = m["nf"], m["ch_mult"], m["image_size"]
    res = [size // 2 ** i for i in range(len(mult))]
    ch = [nf * k for k in mult]
    attn_level = next((i for i, r in enumerate(res) if r in m["attn_resolutions"]), 1)
    cases = []

    def add(kind, r=0, cin=0, cout=None, label=None):
        cout = cin if cout is None else cout
        name = label or (f"{kind} {r}x{r} {cin}->{cout}" if cin != cout else f"{kind} {r}x{r} {cin}")
        if all(c["name"] != name for c in cases):  # shallow networks repeat shapes
            cases.append(dict(name=name, kind=kind, res=r, cin=cin, cout=cout))

    add("conv3x3", res[0], ch[0], ch[0])
    add("conv3x3_fwd", res[0], ch[0], ch[0])
    add("conv3x3", res[0], 2 * ch[0], ch[0])
    add("conv3x3_fwd", res[0], 2 * ch[0], ch[0])
    add("conv3x3", res[1], ch[1], ch[1])
    add("conv3x3", res[1], 2 * ch[1], ch[1])
    add("conv3x3_fwd", res[1], 2 * ch[1], ch[1])
    add("conv3x3", res[-1], ch[-1], ch[-1])
    add("groupnorm", res[0], ch[0])
    add("groupnorm", res[1], ch[1])
    add("biggan", res[0], ch[0], ch[0])
    add("biggan", res[0], 2 * ch[0], ch[0])
    add("biggan", res[1], 2 * ch[1], ch[1])
    add("biggan", res[-1], ch[-1], ch[-1])
    add("ddpmpp", res[0], ch[0], ch[0])
    add("attn", res[attn_level], ch[attn_level])
    add("biggan_down", res[0], ch[0])
    add("biggan_up", res[1], ch[1])
    add("naive_down", res[0], ch[0])
    add("naive_up", res[1], ch[1])
    add("temb", label=f"temb (sinusoidal {nf} -> Dense {4 * nf} -> Dense {4 * nf})")
    add("net", label="net (NCSNpp DDPM++, whole)")
    add("optimizer", label="optimizer (clip + Adam + EMA)")
    return cases


def shape_label(case, batch, m) -> str:
    kind, r, cin, cout = case["kind"], case["res"], case["cin"], case["cout"]
    if kind == "temb":
        return f"{batch}"
    if kind == "net":
        return f"{batch}x{m['image_size']}x{m['image_size']}x{m['channels']}"
    if kind == "optimizer":
        return "all parameters"
    out_r = r * 2 if kind in ("biggan_up", "naive_up") else r // 2 if kind in ("biggan_down", "naive_down") else r
    return f"{batch}x{r}x{r}x{cin} -> {out_r}x{out_r}x{cout}"


def input_arrays(case, batch, m, seed):
    """The same inputs for both sides (NHWC numpy; torch permutes to NCHW)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kind, r, cin = case["kind"], case["res"], case["cin"]
    temb = rng.standard_normal((batch, 4 * m["nf"])).astype(np.float32)
    t = (rng.uniform(1e-5, 1.0, (batch,)) * 999).astype(np.float32)  # DDPM++ continuous labels: t * 999
    if kind == "temb":
        return dict(t=t)
    if kind in ("net", "optimizer"):
        size, c = m["image_size"], m["channels"]
        return dict(x=rng.uniform(-1, 1, (batch, size, size, c)).astype(np.float32), t=t)
    x = rng.standard_normal((batch, r, r, cin)).astype(np.float32)
    return dict(x=x, temb=temb) if kind in ("biggan", "biggan_up", "biggan_down", "ddpmpp") else dict(x=x)


# ----------------------------------------------------------------------------- workers (both venvs)


def hlo_markers(text: str) -> dict:
    """What an optimized HLO module holds: custom calls, fusion kinds (and the library fusions
    named in backend configs, as __ynn_fusion), the convolutions left to XLA's own emitter and
    their windows (a weight gradient is a convolution whose window is the whole image), dots,
    and mentions of onednn / xnn / ynn: did a flag change the program?"""
    conv_lines = [line for line in text.splitlines() if re.search(r"\sconvolution\(", line)]
    program = re.sub(r",? metadata=\{[^}]*\}", "", text)  # without source locations: comparable across processes
    return dict(
        hlo_sha1=hashlib.sha1(program.encode()).hexdigest(),
        custom_calls=dict(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))),
        fusion_kinds=dict(collections.Counter(re.findall(r"kind=(k\w+)", text))),
        library_fusions=dict(collections.Counter(re.findall(r'"kind":"(__\w+)"', text))),
        convolutions=len(conv_lines),
        conv_windows=dict(collections.Counter(m for line in conv_lines
                                              for m in re.findall(r"window=\{size=(\S+?)[ }]", line))),
        dots=len(re.findall(r"\sdot\(", text)),
        library_mentions=dict(collections.Counter(m.lower() for m in re.findall(r"(?i)onednn|xnn|ynn", text))),
    )


def random_params(shapes, seed):
    """Parameters of these shapes without running (and compiling) the initializers: GroupNorm
    scales 1, biases 0, weights N(0, 1 / fan_in). The values do not change the timings."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return jnp.ones(s.shape, s.dtype)
        if name in ("bias", "b"):
            return jnp.zeros(s.shape, s.dtype)
        fan_in = math.prod(s.shape[:-1]) or 1
        return jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(fan_in), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def build_jax_case(case, setup):
    """(call() -> outputs, chained, info): our piece, compiled."""
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import numpy as np
    import optax

    from scoresde import configs, experiment
    from scoresde.models import count_params, layers
    from scoresde.models import up_or_down_sampling as updown

    m, batch, seed = setup["model"], setup["batch"], setup["seed"]
    kind, cout = case["kind"], case["cout"]
    act = layers.get_act("swish")
    arrays = {k: jnp.asarray(v) for k, v in input_arrays(case, batch, m, seed).items()}
    key = jax.random.PRNGKey(seed)

    class Piece(nn.Module):
        fn: object

        @nn.compact
        def __call__(self, *xs):
            return self.fn(*xs)

    def block(**kw):
        def fn(x, temb):
            return layers.ResnetBlockBigGANpp(act=act, out_ch=cout, dropout=0.1, fir=False, skip_rescale=True,
                                              init_scale=0.0, **kw)(x, temb, True)
        return fn

    def temb_fn(t):
        h = layers.get_timestep_embedding(t, m["nf"])
        h = nn.Dense(4 * m["nf"], kernel_init=layers.default_init())(h)
        return nn.Dense(4 * m["nf"], kernel_init=layers.default_init())(act(h))

    config = configs.get_config(CONFIG)
    configs.apply_overrides(config, setup["overrides"])
    fns = {
        "conv3x3": lambda x: layers.conv3x3(x, cout),
        "conv3x3_fwd": lambda x: layers.conv3x3(x, cout),
        "groupnorm": lambda x: layers.group_norm(x),
        "biggan": block(),
        "biggan_down": block(down=True),
        "biggan_up": block(up=True),
        "ddpmpp": lambda x, temb: layers.ResnetBlockDDPMpp(act=act, out_ch=cout, dropout=0.1, skip_rescale=True,
                                                           init_scale=0.0)(x, temb, True),
        "attn": lambda x: layers.AttnBlockpp(skip_rescale=True, init_scale=0.0)(x),
        "naive_down": lambda x: updown.naive_downsample_2d(x, 2),
        "naive_up": lambda x: updown.naive_upsample_2d(x, 2),
        "temb": temb_fn,
    }

    if kind == "optimizer":
        model = experiment.model_from_config(config)
        kw = experiment.train_kwargs(config)
        optimizer, rate = kw["optimizer"], kw["ema_rate"]
        x, t = arrays["x"], arrays["t"]
        shapes = jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, x, t, train=False))["params"]
        params = random_params(shapes, seed)
        noise = np.random.default_rng(seed + 1)
        grads = jax.tree.map(lambda s: jnp.asarray(1e-3 * noise.standard_normal(s.shape), jnp.float32), shapes)

        def update(state, grads):
            p, opt_state, ema = state
            updates, opt_state = optimizer.update(grads, opt_state, p)
            p = optax.apply_updates(p, updates)
            ema = jax.tree.map(lambda e, q: e * rate + q * (1.0 - rate), ema, p)  # as train.make_train_step
            return p, opt_state, ema

        state = [(params, optimizer.init(params), random_params(shapes, seed))]  # distinct buffers, donated
        t0 = time.perf_counter()
        compiled = jax.jit(update, donate_argnums=(0,)).lower(state[0], grads).compile()
        compile_s = time.perf_counter() - t0

        def call():
            state[0] = compiled(state[0], grads)
            return state[0]

        return call, True, dict(compile_s=compile_s, params=count_params(params), markers=hlo_markers(compiled.as_text()))

    if kind == "net":
        model = experiment.model_from_config(config)
        inputs = (arrays["x"], arrays["t"])  # the labels are an argument too (not folded), without a gradient
        wrt = 1
        params = random_params(jax.eval_shape(
            lambda: model.init({"params": key, "dropout": key}, *inputs, train=False))["params"], seed)

        def loss(p, k, x, labels):
            out = model.apply({"params": p}, x, labels, train=True, rngs={"dropout": k})
            return jnp.sum(jnp.square(out))
    else:
        piece = Piece(fns[kind])
        inputs = tuple(arrays.values())
        wrt = len(inputs)
        params = random_params(jax.eval_shape(
            lambda: piece.init({"params": key, "dropout": key}, *inputs)).get("params", {}), seed)

        def loss(p, k, *xs):
            return jnp.sum(jnp.square(piece.apply({"params": p}, *xs, rngs={"dropout": k})))

    argnums = (0,) + tuple(range(2, 2 + wrt))  # the parameters and the inputs (the key is argument 1)
    fn = loss if kind.endswith("_fwd") else jax.value_and_grad(loss, argnums=argnums)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, key, *inputs).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: compiled(params, key, *inputs)), False, dict(
        compile_s=compile_s, params=count_params(params), markers=hlo_markers(compiled.as_text()))


def build_torch_case(case, setup, ref):
    """(call() -> outputs, chained, info): the reference's piece."""
    import numpy as np
    import torch
    import torch.nn as nn
    from models import layers as rlayers
    from models import layerspp
    from models import up_or_down_sampling as rud

    m, batch, seed = setup["model"], setup["batch"], setup["seed"]
    kind, cin, cout, nf = case["kind"], case["cin"], case["cout"], m["nf"]
    torch.manual_seed(seed)
    arrays = input_arrays(case, batch, m, seed)

    def tensor(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t

    class Fn(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *xs):
            return self.fn(*xs)

    class TimeEmbedding(nn.Module):  # as in NCSNpp.forward: get_timestep_embedding, Linear, act, Linear
        def __init__(self):
            super().__init__()
            self.act = nn.SiLU()
            self.Dense_0 = nn.Linear(nf, 4 * nf)
            self.Dense_1 = nn.Linear(4 * nf, 4 * nf)
            for d in (self.Dense_0, self.Dense_1):
                d.weight.data = rlayers.default_init()(d.weight.shape)
                nn.init.zeros_(d.bias)

        def forward(self, t):
            return self.Dense_1(self.act(self.Dense_0(rlayers.get_timestep_embedding(t, nf))))

    config = ref.get_config()
    config.model.nf = nf
    config.model.ch_mult = tuple(m["ch_mult"])
    config.model.num_res_blocks = m["num_res_blocks"]
    config.model.attn_resolutions = tuple(m["attn_resolutions"])
    config.training.batch_size = batch
    config.device = torch.device("cpu")

    if kind in ("net", "optimizer"):
        model = ref.mutils.create_model(config)  # NCSNpp (in DataParallel, which calls it directly on a CPU)
        params = [p for p in model.parameters() if p.requires_grad]
        n_params = int(sum(p.numel() for p in params))
        if kind == "optimizer":
            optimizer = ref.losses.get_optimizer(config, model.parameters())
            optimize_fn = ref.losses.optimization_manager(config)
            ema = ref.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
            gen = torch.Generator().manual_seed(seed + 1)
            for p in params:
                p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
            step = [0]

            def call():  # as the reference's train step after backward()
                optimize_fn(optimizer, model.parameters(), step=step[0])
                step[0] += 1
                ema.update(model.parameters())
            return call, True, dict(params=n_params)
        x = tensor(arrays["x"]).requires_grad_(True)
        labels = tensor(arrays["t"])
        inputs, call_inputs = [x], [x, labels]
    else:
        act = nn.SiLU()
        if kind in ("conv3x3", "conv3x3_fwd"):
            module = rlayers.ddpm_conv3x3(cin, cout)
        elif kind == "groupnorm":
            module = nn.GroupNorm(num_groups=min(cin // 4, 32), num_channels=cin, eps=1e-6)
        elif kind in ("biggan", "biggan_up", "biggan_down"):
            module = layerspp.ResnetBlockBigGANpp(act=act, in_ch=cin, out_ch=cout, temb_dim=4 * nf,
                                                  up=kind == "biggan_up", down=kind == "biggan_down", dropout=0.1,
                                                  fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.)
        elif kind == "ddpmpp":
            module = layerspp.ResnetBlockDDPMpp(act=act, in_ch=cin, out_ch=cout, temb_dim=4 * nf, dropout=0.1,
                                                skip_rescale=True, init_scale=0.)
        elif kind == "attn":
            module = layerspp.AttnBlockpp(channels=cin, skip_rescale=True, init_scale=0.)
        elif kind == "naive_down":
            module = Fn(lambda x: rud.naive_downsample_2d(x, factor=2))
        elif kind == "naive_up":
            module = Fn(lambda x: rud.naive_upsample_2d(x, factor=2))
        elif kind == "temb":
            module = TimeEmbedding()
        else:
            raise ValueError(f"unknown piece {kind!r}")
        model = module.train()
        params = [p for p in model.parameters() if p.requires_grad]
        n_params = int(sum(p.numel() for p in params))
        inputs = [tensor(a).requires_grad_(True) for a in arrays.values()]
        call_inputs = inputs

    wrt = inputs + params

    if kind.endswith("_fwd"):
        def call():
            with torch.no_grad():
                return model(*call_inputs).square().sum()
        return call, False, dict(params=n_params)

    def call():
        out = model(*call_inputs)
        return torch.autograd.grad(out.square().sum(), wrt)

    return call, False, dict(params=n_params)


def worker(side: str):
    """A worker process: reads its set-up (one JSON line), builds every piece, then times on request."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol; anything printed goes to stderr
    os.dup2(2, 1)

    def send(msg):
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    setup = json.loads(sys.stdin.readline())
    threads = setup["threads"]
    info = dict(python=sys.executable, pid=os.getpid())
    if side == "torch":
        sys.path.insert(0, HERE)
        import reference_torch

        try:
            ref = reference_torch._import_reference(setup["reference_dir"])
        except reference_torch.SetupError as err:
            send({"fatal": str(err)})
            return 1
        import torch

        torch.set_num_threads(threads)
        config = ref.get_config()
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_interop_threads=torch.get_num_interop_threads(),
                    reference_config=dict(ch_mult=list(config.model.ch_mult),
                                          attn_resolutions=list(config.model.attn_resolutions),
                                          resblock_type=config.model.resblock_type, fir=bool(config.model.fir),
                                          image_size=config.data.image_size))
        build = lambda case: build_torch_case(case, setup, ref)  # noqa: E731

        def block_until_ready(x):
            return x
    else:
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):  # XLA sizes its thread pool from the affinity mask
            os.sched_setaffinity(0, cpus[:threads])
        sys.path.insert(0, REPO_ROOT)
        import scoresde  # noqa: F401  (its XLA:CPU flag, set before JAX starts: scoresde/__init__.py)
        import flax
        import jax
        import jaxlib

        info.update(jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__,
                    backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                    cpus=len(os.sched_getaffinity(0)))
        build = lambda case: build_jax_case(case, setup)  # noqa: E731
        block_until_ready = jax.block_until_ready

    pieces = {}
    for case in setup["cases"]:
        name = case["name"]
        send({"building": name})
        try:
            t0 = time.perf_counter()
            call, chained, extra = build(case)
            build_s = time.perf_counter() - t0
            block_until_ready(call())  # warm-up
            t0 = time.perf_counter()
            block_until_ready(call())
            est = time.perf_counter() - t0
        except Exception as err:  # a piece that fails to build or compile: recorded, skipped
            msg = f"{type(err).__name__}: {err}"
            send({"case": name, "ok": False, "error": msg[:2000]})
            continue
        pieces[name] = (call, chained)
        send({"case": name, "ok": True, "est_s": est, "build_s": build_s, **extra})
    send({"ready": info})

    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        call, chained = pieces[msg["case"]]
        n = int(msg["n"])
        try:
            t0 = time.perf_counter()
            if chained:  # each call consumes the last one's (donated) state: block once at the end
                out = None
                for _ in range(n):
                    out = call()
                block_until_ready(out)
            else:
                for _ in range(n):
                    block_until_ready(call())
            send({"seconds": time.perf_counter() - t0})
        except Exception as err:
            send({"error": f"{type(err).__name__}: {err}"[:2000]})
    return 0


# ----------------------------------------------------------------------------- orchestration


class Worker:
    """One worker process (torch or one XLA variant), its protocol lines read by a thread."""

    def __init__(self, name, cmd, env, setup):
        self.name, self.cmd, self.env, self.setup = name, cmd, env, setup
        self.excluded: list[str] = []  # pieces that killed an earlier process of this worker
        self.crashes: dict[str, str] = {}
        self.restarts = 0
        self._start()

    def _start(self):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1, env=self.env)
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        setup = dict(self.setup, cases=[c for c in self.setup["cases"] if c["name"] not in self.excluded])
        self.proc.stdin.write(json.dumps(setup) + "\n")
        self.proc.stdin.flush()
        self.current = None  # the piece being built
        self.pieces: dict[str, dict] = {}
        self.info = None
        self.fatal = None
        self.died = None  # while timing

    def _pump(self):
        for line in self.proc.stdout:
            try:
                self.queue.put(json.loads(line))
            except ValueError:
                pass
        self.queue.put(None)

    def stderr_tail(self, n=15) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return "\n".join(self.stderr.read().strip().splitlines()[-n:])

    def poll_build(self) -> bool:
        """Handle the build messages waiting; True once this worker is ready or dead for good."""
        while True:
            try:
                msg = self.queue.get_nowait()
            except queue.Empty:
                return False
            if msg is None:  # the process died while building
                code = self.proc.wait()
                if self.fatal:  # it said why
                    return True
                tail = self.stderr_tail()
                if self.current is not None and self.restarts < 3:
                    self.crashes[self.current] = f"the process died building it (exit {code}): {tail[-1500:]}"
                    self.excluded.append(self.current)
                    self.restarts += 1
                    print(f"  [{self.name}] died building {self.current!r} (exit {code}); restarting without it",
                          flush=True)
                    self._start()
                    return False
                self.fatal = f"the process exited (code {code}) before it was ready: {tail[-1500:]}"
                return True
            if "fatal" in msg:
                self.fatal = msg["fatal"]
            elif "building" in msg:
                self.current = msg["building"]
            elif "case" in msg:
                self.pieces[msg.pop("case")] = msg
                self.current = None
            elif "ready" in msg:
                self.info = msg["ready"]
                return True

    def ok(self, name) -> bool:
        return (self.fatal is None and self.died is None and self.info is not None
                and self.pieces.get(name, {}).get("ok", False))

    def time(self, name, n) -> float | None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "time", "case": name, "n": n}) + "\n")
            self.proc.stdin.flush()
            msg = self.queue.get()
        except OSError:
            msg = None
        if msg is None:
            self.proc.wait()
            self.died = f"the process died timing {name!r} (exit {self.proc.returncode}): {self.stderr_tail()[-1500:]}"
            self.pieces[name].update(ok=False, error=self.died)
            print(f"  [{self.name}] {self.died.splitlines()[0]}", flush=True)
            return None
        if "error" in msg:
            self.pieces[name].update(ok=False, error=msg["error"])
            return None
        return msg["seconds"]

    def close(self):
        stop_worker(self.proc)


def median(values):
    s = sorted(values)
    n = len(s)
    return None if not n else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def fmt_ms(ms):
    if ms is None:
        return "—"
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def write_results(result: dict, path: str):
    with open(path + ".json", "w") as f:
        json.dump(result, f, indent=1)
    m, r = result["machine"], result["run"]
    variants = [v for v in result["variants"] if result["variants"][v]["status"] == "ok"]
    torch_info = result["torch"]["info"] or {}
    jax_info = next((result["variants"][v]["info"] for v in variants), {}) or {}

    head = "| piece | shape (NHWC in -> out) | in net | params | torch ms | " + " | ".join(
        f"ours {v} ms (torch/ours)" for v in variants) + " |"
    rows = [head, "|" + "---|" * (5 + len(variants))]
    for c in result["cases"]:
        t = c["torch"]
        params = str(t.get("params", "—"))
        ours_params = {c["ours"][v].get("params") for v in variants if c["ours"].get(v, {}).get("params") is not None}
        if ours_params and ours_params != {t.get("params")}:
            params = f"{t.get('params')} vs {sorted(ours_params)} (differ!)"
        cells = []
        for v in variants:
            o = c["ours"].get(v, {})
            if o.get("ms") is None:
                cells.append("error" if o.get("error") else "—")
            else:
                ratio = f" ({t['ms'] / o['ms']:.2f}x)" if t.get("ms") else ""
                cells.append(f"{fmt_ms(o['ms'])}{ratio}")
        rows.append(f"| {c['name']} | {c['shape']} | {c['in_net'] or '—'} | {params} | "
                    f"{fmt_ms(t.get('ms')) if t.get('ms') is not None else ('error' if t.get('error') else '—')} | "
                    + " | ".join(cells) + " |")

    net = next((c for c in result["cases"] if c["kind"] == "net"), None)
    share_rows = []
    if net and net["torch"].get("ms"):
        with_net = [v for v in variants if net["ours"].get(v, {}).get("ms")]
        share_head = "| piece | in net | torch: count x ms, % of net | " + " | ".join(
            f"ours {v}: count x ms, % of net" for v in with_net) + " |"
        share_rows = [share_head, "|" + "---|" * (3 + len(with_net))]
        for c in result["cases"]:
            if not c["in_net"] or c["kind"] in ("net", "optimizer"):
                continue

            def share(side_ms, net_ms):
                if side_ms is None or not net_ms:
                    return "—"
                total = c["in_net"] * side_ms
                return f"{fmt_ms(total)} ({100 * total / net_ms:.0f}%)"
            cells = [share(c["ours"].get(v, {}).get("ms"), net["ours"][v]["ms"]) for v in with_net]
            share_rows.append(f"| {c['name']} | {c['in_net']} | {share(c['torch'].get('ms'), net['torch']['ms'])} | "
                              + " | ".join(cells) + " |")

    vrows = ["| variant | XLA_FLAGS | status | compile s (all pieces) | optimized HLO the same as default's | "
             "HLO of the first conv3x3 piece |", "|---|---|---|---|---|---|"]
    first_conv = next((c for c in result["cases"] if c["kind"] == "conv3x3"), None)
    for name, v in result["variants"].items():
        compile_s = sum(c["ours"].get(name, {}).get("compile_s") or 0 for c in result["cases"])
        hlo = "—"
        if first_conv and first_conv["ours"].get(name, {}).get("markers"):
            mk = first_conv["ours"][name]["markers"]
            windows = ", ".join(f"{k} x{n}" for k, n in mk.get("conv_windows", {}).items())
            parts = [f"{mk['convolutions']} convolution" + (f" (windows {windows})" if windows else "")]
            parts += [f"custom-call {k} x{n}" for k, n in mk["custom_calls"].items()]
            parts += [f"{k} x{n}" for k, n in mk.get("library_fusions", {}).items()]
            parts += [f"{k} x{n}" for k, n in mk["fusion_kinds"].items()]
            hlo = ", ".join(parts)
        status = v["status"] if v["status"] == "ok" else f"{v['status']}: {(v.get('error') or '')[:200]}"
        status = status.replace("|", "/").replace("\n", " ")
        same = [(c["ours"].get(name, {}).get("markers") or {}).get("hlo_sha1")
                == (c["ours"].get("default", {}).get("markers") or {}).get("hlo_sha1")
                for c in result["cases"] if (c["ours"].get(name, {}).get("markers") or {}).get("hlo_sha1")
                and (c["ours"].get("default", {}).get("markers") or {}).get("hlo_sha1")]
        same = "—" if name == "default" or not same else f"{sum(same)} of {len(same)} pieces"
        vrows.append(f"| {name} | `{v['flags'] or '(none)'}` | {status} | {compile_s:.1f} | {same} | {hlo} |")

    errors = []
    for c in result["cases"]:
        for side, e in [("torch", c["torch"].get("error"))] + [(v, c["ours"].get(v, {}).get("error"))
                                                              for v in variants]:
            if e:
                errors.append(f"- {c['name']}, {side}: {e[:300]}".replace("\n", " "))

    text = f"""# Forward + backward per layer: the PyTorch reference against ours, on the CPU

Command (from the repository root; set-up in `experiments/bench_train_vs_reference.py`):

    {result["command"]}

Machine: {m["cpu"]}, {m["cores"]} cores, no accelerator; load average {m["load_before"]:.2f} before,
{m["load_after"]:.2f} after (the machine is shared). torch {torch_info.get("torch", "?")} ({torch_info.get("torch_threads", "?")}
intra-op threads); jax {jax_info.get("jax", "?")}, jaxlib {jax_info.get("jaxlib", "?")}, flax {jax_info.get("flax", "?")}
({jax_info.get("backend", "?")} backend, {jax_info.get("cpus", "?")} cores for XLA's pool).

Shapes: the reference's `{CONFIG}` config with nf={r["model"]["nf"]}, ch_mult {tuple(r["model"]["ch_mult"])},
{r["model"]["num_res_blocks"]} res blocks, attention at {tuple(r["model"]["attn_resolutions"])}; batch {r["batch"]}, float32,
train mode (dropout on). Each piece: the gradient of sum(output ** 2) w.r.t. its inputs and
parameters (ours `jax.jit(jax.value_and_grad(...))`, theirs `torch.autograd.grad`); the optimizer
row is the update alone. Reference: yang-song/score_sde_pytorch {result["reference_commit"] or ""}.

{r["rounds"]} interleaved rounds (torch and each XLA variant in turn, rotated each round), blocks of
about {r["block_seconds"]} s of back-to-back calls after 2 warm-up calls; milliseconds per call,
median over rounds (best and all rounds in the JSON). torch/ours above 1: ours is faster.
"in net": how often the piece's exact shape occurs in this network. —: not run (the whole
network and the optimizer run only under {", ".join(r["net_variants"]) or "none"}: `--net-variants`).

{chr(10).join(rows)}

## Share of the whole network

Each piece's count in the network x its time, as a share of the whole network's forward +
backward on the same side. Rows overlap (a block contains its convolutions and GroupNorms),
and a piece timed alone pays a dispatch the network does not: a first-order guide.

{chr(10).join(share_rows) if share_rows else "(no whole-network time)"}

## XLA flag variants

{chr(10).join(vrows)}

The same optimized HLO does not rule out other kernels at run time: XLA's CPU runtime picks
its convolution and dot implementations after the HLO passes.

{("## Errors" + chr(10) + chr(10) + chr(10).join(errors)) if errors else "No piece failed."}
"""
    with open(path + ".md", "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block-seconds", type=float, default=0.1,
                   help="length of a timed block of back-to-back calls (at least one call)")
    p.add_argument("--pause", type=float, default=0.03, help="seconds of rest before each timed block")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads on both sides (default: all cores)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="XLA flag variants for our side")
    p.add_argument("--extra-variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="another variant: its name and XLA_FLAGS (repeatable)")
    p.add_argument("--net-variants", nargs="+", default=["default"], metavar="NAME",
                   help="the variants that also compile and time the whole network and the optimizer "
                        "(each adds about 2 minutes of compiling at nf 32); 'all': every variant, 'none': none")
    p.add_argument("--cases", default=None, help="regular expression: only the pieces whose names match")
    p.add_argument("--out", default=RESULTS, help="results path without extension (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON, help="python of the venv with torch")
    p.add_argument("--reference-dir", default=DEFAULT_REFERENCE_DIR)
    p.add_argument("--reference-commit", default="cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44",
                   help="recorded in the results (read from the reference's .git where it has one)")
    p.add_argument("--tiny", action="store_true",
                   help="smoke test: nf 8, ch_mult (1, 2), 1 res block, batch 2, one piece of each kind, "
                        "1 round; results to a temporary directory")
    p.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)

    shallow = []
    if args.tiny:
        args.nf, args.batch, args.rounds = 8, 2, 1
        args.block_seconds, args.pause = 0.02, 0.01
        shallow = ["model.ch_mult=(1, 2)", "model.num_res_blocks=1"]
    variants = {name: VARIANTS[name] for name in args.variants}
    for item in args.extra_variant:
        name, sep, flags = item.partition("=")
        if not sep or not name:
            fail(f"--extra-variant wants NAME=FLAGS, got {item!r}")
        variants[name] = flags
    net_variants = (list(variants) if args.net_variants == ["all"] else
                    [] if args.net_variants == ["none"] else args.net_variants)
    unknown = [v for v in net_variants if v not in variants]
    if unknown:
        fail(f"--net-variants {unknown} are not among the variants run ({', '.join(variants)})")
    if "XLA_FLAGS" in os.environ:
        print(f"note: XLA_FLAGS={os.environ['XLA_FLAGS']!r} in the environment is replaced by each variant's flags",
              flush=True)

    if not os.path.isdir(args.reference_dir):
        fail(f"reference code not found at {args.reference_dir}; {SETUP_HINT}")
    if not os.path.exists(args.torch_python):
        fail(f"no benchmark venv: {args.torch_python} does not exist; {SETUP_HINT}")

    sys.path.insert(0, REPO_ROOT)
    from scoresde import configs

    overrides = [f"model.nf={args.nf}", f"training.batch_size={args.batch}"] + shallow
    config = configs.get_config(CONFIG)
    base = dict(ch_mult=list(config.model.ch_mult), attn_resolutions=list(config.model.attn_resolutions),
                resblock_type=config.model.resblock_type, fir=bool(config.model.fir), image_size=config.data.image_size)
    configs.apply_overrides(config, overrides)
    model = dict(nf=args.nf, ch_mult=list(config.model.ch_mult), num_res_blocks=config.model.num_res_blocks,
                 attn_resolutions=list(config.model.attn_resolutions), image_size=config.data.image_size,
                 channels=config.data.num_channels, resblock_type=config.model.resblock_type, fir=config.model.fir)
    if model["resblock_type"].lower() != "biggan" or model["fir"]:
        fail(f"{CONFIG} is expected to use BigGAN blocks without FIR (the pieces assume it)")
    cases = make_cases(model)
    if args.tiny and not args.cases:  # one piece of each kind
        cases = [c for i, c in enumerate(cases) if all(d["kind"] != c["kind"] for d in cases[:i])]
    if args.cases:
        cases = [c for c in cases if re.search(args.cases, c["name"])]
    if not net_variants:
        cases = [c for c in cases if c["kind"] not in ("net", "optimizer")]
    if not cases:
        fail(f"no piece matches --cases {args.cases!r}" if args.cases else "no piece to run")
    layout = net_layout(model["nf"], model["ch_mult"], model["num_res_blocks"], model["attn_resolutions"],
                        model["image_size"], model["channels"])
    setup = dict(cases=cases, model=model, batch=args.batch, seed=args.seed, threads=args.threads,
                 overrides=overrides, reference_dir=args.reference_dir)

    load_before = os.getloadavg()[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load_before:.2f}", flush=True)
    if load_before > 0.5 * os.cpu_count():
        print(f"warning: the machine is busy (load average {load_before:.1f} on {os.cpu_count()} cores); the "
              "ratios are meaningful only on a quiet machine", flush=True)
    print(f"{len(cases)} pieces x (torch + {len(variants)} XLA variants: {', '.join(variants)}; the whole network "
          f"and the optimizer under {', '.join(net_variants) or 'none'}); building and compiling in parallel ...", flush=True)

    t_start = time.perf_counter()
    script = os.path.abspath(__file__)
    base_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workers = {"torch": Worker("torch", [args.torch_python, script, "--worker", "torch"], base_env, setup)}
    for name, flags in variants.items():
        env = dict(base_env, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
        mine = [c for c in cases if name in net_variants or c["kind"] not in ("net", "optimizer")]
        workers[name] = Worker(name, [sys.executable, script, "--worker", "jax"], env, dict(setup, cases=mine))
    try:
        pending = set(workers)
        while pending:
            for name in list(pending):
                if workers[name].poll_build():
                    pending.discard(name)
                    w = workers[name]
                    done = sum(1 for c in w.pieces.values() if c.get("ok"))
                    if w.fatal:
                        print(f"  [{name}] failed: {w.fatal.splitlines()[-1] if w.fatal else ''}", flush=True)
                    else:
                        compile_s = sum(c.get("compile_s", 0) for c in w.pieces.values())
                        print(f"  [{name}] ready: {done}/{len(w.setup['cases'])} pieces built"
                              + (f", {compile_s:.1f} s compiling" if name != "torch" else "")
                              + f" ({time.perf_counter() - t_start:.0f} s)", flush=True)
            time.sleep(0.05)
        if workers["torch"].fatal:
            fail(f"the reference worker failed: {workers['torch'].fatal}")
        theirs = workers["torch"].info["reference_config"]
        if theirs != base:
            print(f"warning: the reference's config differs from ours: {theirs} vs {base}", flush=True)

        # k calls per block, per side and piece
        live = [w for w in workers.values() if not w.fatal]
        ks = {(w.name, c["name"]): max(1, min(200, round(args.block_seconds / max(w.pieces[c["name"]]["est_s"], 1e-6))))
              for w in live for c in cases if w.ok(c["name"])}
        est = args.rounds * sum(k * workers[n].pieces[c]["est_s"] + args.pause for (n, c), k in ks.items())
        print(f"timing: {args.rounds} rounds, about {est:.0f} s", flush=True)
        times = collections.defaultdict(list)  # (worker, case) -> ms per call, per round
        for rnd in range(args.rounds):
            order = live[rnd % len(live):] + live[:rnd % len(live)]
            for c in cases:
                for w in order:
                    if not w.ok(c["name"]):
                        continue
                    k = ks[(w.name, c["name"])]
                    time.sleep(args.pause)
                    s = w.time(c["name"], k)
                    if s is not None:
                        times[(w.name, c["name"])].append(1000 * s / k)
            print(f"round {rnd + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        for w in workers.values():
            w.close()
    load_after = os.getloadavg()[0]

    # ------------------------------------------------------------------ assemble, print, write
    out_cases = []
    for c in cases:
        entry = dict(c, shape=shape_label(c, args.batch, model), in_net=layout.get(case_key(c), 0))
        for side in ["torch"] + list(variants):
            w = workers[side]
            piece = dict(w.pieces.get(c["name"], {}))
            if w.fatal:
                piece = dict(ok=False, error=f"worker failed: {w.fatal}")
            elif c["name"] in w.crashes:
                piece = dict(ok=False, error=w.crashes[c["name"]])
            rounds_ms = times.get((side, c["name"]), [])
            piece.update(ms=median(rounds_ms), best_ms=min(rounds_ms) if rounds_ms else None, rounds_ms=rounds_ms,
                         calls_per_block=ks.get((side, c["name"])))
            if side == "torch":
                entry["torch"] = piece
            else:
                entry.setdefault("ours", {})[side] = piece
        out_cases.append(entry)

    names = [c["name"] for c in cases]
    width = max(len(n) for n in names)
    ok_variants = [v for v in variants if not workers[v].fatal]
    print()
    print(f"{'piece':<{width}}  {'torch ms':>9}  " + "  ".join(f"{v[:18]:>18}" for v in ok_variants))
    for e in out_cases:
        cells = []
        for v in ok_variants:
            o = e["ours"][v]
            if o["ms"] is None:
                cells.append(f"{'error' if o.get('error') else '—':>18}")
            else:
                ratio = f" ({e['torch']['ms'] / o['ms']:.2f}x)" if e["torch"]["ms"] else ""
                cells.append(f"{fmt_ms(o['ms']) + ratio:>18}")
        tms = e["torch"]["ms"]
        print(f"{e['name']:<{width}}  {fmt_ms(tms) if tms is not None else 'error':>9}  " + "  ".join(cells))
    print("(ms per call, median over rounds; in brackets torch ms / ours ms, above 1: ours faster)")
    print(f"load average {load_before:.2f} before, {load_after:.2f} after; {time.perf_counter() - t_start:.0f} s")

    variant_info = {}
    for name, flags in variants.items():
        w = workers[name]
        status = "failed" if w.fatal else "ok"
        variant_info[name] = dict(flags=flags, status=status, error=w.fatal, info=w.info,
                                  crashed_pieces=w.crashes, restarts=w.restarts, died_while_timing=w.died)
    commit = None
    try:
        out = subprocess.run(["git", "-C", args.reference_dir, "rev-parse", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0 and os.path.isdir(os.path.join(args.reference_dir, ".git")):
            commit = out.stdout.strip()
    except OSError:
        pass
    result = dict(
        command="python " + shlex.join([os.path.relpath(script, REPO_ROOT)] + sys.argv[1:]),
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                     load_before=load_before, load_after=load_after),
        reference_commit=commit or args.reference_commit,
        run=dict(config=CONFIG, overrides=overrides, model=model, batch=args.batch, rounds=args.rounds,
                 block_seconds=args.block_seconds, pause_s=args.pause, threads=args.threads, seed=args.seed,
                 net_variants=net_variants, tiny=args.tiny, wall_s=time.perf_counter() - t_start),
        torch=dict(info=workers["torch"].info),
        variants=variant_info,
        cases=out_cases,
    )
    if args.tiny:
        path = os.path.join(tempfile.mkdtemp(prefix="profile_layers_"), "profile_layers")
    else:
        path = args.out
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_results(result, path)
    print(f"wrote {path}.json and .md" + (" (--tiny: a temporary directory, nothing recorded)" if args.tiny else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
