#!/usr/bin/env python
"""Convert pytorch-fid's FID Inception weights to scoresde's `.npz`.

    python scripts/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth \
        ~/.cache/scoresde/fid_inception_v3.npz

The input is the PyTorch state dict published in the pytorch-fid GitHub releases
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth).
Needs only NumPy and PyTorch (to read the `.pth`); the name mapping itself,
`convert_state_dict`, works on NumPy arrays:

    X.conv.weight (O, I, kh, kw)  -> params/X/conv/kernel (kh, kw, I, O)
    X.bn.weight / X.bn.bias       -> params/X/bn/scale / params/X/bn/bias
    X.bn.running_mean / _var      -> batch_stats/X/bn/mean / batch_stats/X/bn/var
    fc.weight (1008, 2048)        -> params/fc/kernel (2048, 1008); fc.bias -> params/fc/bias

with the dots of X turned into slashes; `num_batches_tracked` is dropped.
"""

import argparse
import os

import numpy as np

_RENAMES = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
}


def convert_state_dict(state_dict):
    """{torch name: array} -> {"params/..." or "batch_stats/...": float32 array}."""
    out = {}
    for name, value in state_dict.items():
        value = np.asarray(value, np.float32)
        if name.endswith("num_batches_tracked"):
            continue
        if name in ("fc.weight", "fc.bias"):
            out["params/fc/" + ("kernel" if name == "fc.weight" else "bias")] = value.T
            continue
        module, _, leaf = name.rpartition(".")
        module, _, layer = module.rpartition(".")
        key = f"{layer}.{leaf}"
        if key not in _RENAMES or not module:
            raise KeyError(f"unexpected entry in the state dict: {name!r}")
        collection, suffix = _RENAMES[key]
        if leaf == "weight" and layer == "conv":
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        out[f"{collection}/{module.replace('.', '/')}/{suffix}"] = value
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pth", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("out", nargs="?", default="~/.cache/scoresde/fid_inception_v3.npz")
    args = parser.parse_args(argv)

    import torch  # only needed to read the .pth

    state_dict = torch.load(args.pth, map_location="cpu", weights_only=True)
    arrays = convert_state_dict({k: v.detach().cpu().numpy() for k, v in state_dict.items()})
    out = os.path.expanduser(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        np.savez(f, **arrays)
    n = sum(v.size for k, v in arrays.items() if k.startswith("params/"))
    print(f"wrote {len(arrays)} arrays ({n:,} parameters) to {out}")


if __name__ == "__main__":
    main()
