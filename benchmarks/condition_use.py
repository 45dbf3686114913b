"""Does a text-to-image shapes (or text-to-video moving-shapes) diffusion model read each attribute of its
caption?

  python benchmarks/condition_use.py RUN [RUN ...] [--raw] [--num 500]

For 500 evaluation images, at several noise levels t, the model's x_0 estimate from x_t is compared with the
true image (mean squared error, x_0 in [-1, 1]) when it is given the image's own full caption, and when the
caption names a different position, color, shape or size (everything else the same). The ratio
MSE(wrong caption) / MSE(true caption) says how much the model relies on that attribute at that t: 1.00 means
it ignores it. The README's eps vs v figures come from this script: both 20-minute shapes runs of
benchmarks/diffusion.py, --raw (the weights before EMA), --num 300.
For a moving-shapes video run the attributes are direction, color and shape, on evaluation clips (x_0 error
over all frames), plus the reversed direction alone (left <-> right, up <-> down: does the model read the
sign of the motion?); the issue-7 figures come from the 20-minute runs of benchmarks/video.py with --num 128."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMES = (500, 900, 970, 999)
ATTRS = {"position": 9, "color": 6, "shape": 3, "size": 2}      # attribute -> number of values
CLIP_TIMES = (300, 600, 800, 900, 950, 980, 999)
CLIP_ATTRS = {"direction": 4, "color": 6, "shape": 3}


def with_one_wrong(true: dict, attrs: dict, g: torch.Generator) -> dict:
    """{"true": the attributes, k: the same attributes with `k` moved to another of its values} for every k."""
    n = len(next(iter(true.values())))
    return {"true": true, **{k: {**true, k: (true[k] + torch.randint(1, m, (n,), generator=g)) % m}
                             for k, m in attrs.items()}}


def shapes_variants(data, num: int, g: torch.Generator):
    """x_0 (up to `num` images in [-1, 1]), the attribute counts, the noise levels, and each variant's captions."""
    from aigc.data import shapes

    ev = data.eval.attrs
    n = min(num, len(ev["color"]))
    x0 = data.eval.batch(torch.arange(n))["image"] * 2 - 1
    variants = with_one_wrong({k: ev[k][:n] for k in ATTRS}, ATTRS, g)
    return x0, ATTRS, TIMES, {name: shapes.captions(a, torch.arange(n)) for name, a in variants.items()}


def clip_variants(data, num: int, g: torch.Generator):
    """The same for moving-shapes clips (n, C, T, H, W): direction, color and shape."""
    from aigc.data.video import shape_clip_captions

    ev = data.eval["attrs"]
    n = min(num, len(ev["color"]))
    x0 = data.eval["video"][:n].float() / 255 * 2 - 1
    variants = with_one_wrong({k: ev[k][:n] for k in CLIP_ATTRS}, CLIP_ATTRS, g)
    reversed_ = ev["direction"][:n] ^ 1                           # left <-> right, up <-> down (DIRECTIONS order)
    variants["reversed direction"] = {**variants["true"], "direction": reversed_}
    return x0, CLIP_ATTRS, CLIP_TIMES, {name: shape_clip_captions(a) for name, a in variants.items()}


def main() -> None:
    from aigc.recipes import open_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA ones")
    ap.add_argument("--num", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for run in args.runs:
        cfg, recipe = open_run(run, torch.device("cpu"), ema=not args.raw)
        if cfg.model.cond != "text" or cfg.data.name not in ("shapes", "moving-shapes"):
            raise SystemExit(f"{run}: not a text-conditioned shapes or moving-shapes diffusion run")
        data = recipe.load_data(cfg, run)
        g = torch.Generator().manual_seed(0)
        make = shapes_variants if cfg.data.name == "shapes" else clip_variants
        x0, attrs, times, captions = make(data, args.num, g)
        num = len(x0)
        ids = {name: recipe.vocab.encode(c) for name, c in captions.items()}
        what = "images" if x0.dim() == 4 else "clips"
        print(f"{run} ({'raw' if args.raw else 'EMA'} weights, {num} {what}): x_0 MSE with the true caption, "
              "and the ratio when one attribute is wrong")
        cols = [k for k in captions if k != "true"]
        print("| t | MSE (true caption) | " + " | ".join(f"wrong {k}" if k in attrs else k for k in cols) + " |")
        print("|---:|---:|" + "---:|" * len(cols))
        with torch.no_grad():
            for t in times:
                tt = torch.full((num,), t)
                x_t = recipe.schedule.q_sample(x0, tt, recipe.noise(x0.shape, g, "cpu", torch.float32))
                mse = {}
                for name, c in ids.items():
                    err = 0.0
                    for i in range(0, num, 50):             # in chunks: a clip is 16 images
                        part = slice(i, i + 50)
                        out = recipe.net(x_t[part], tt[part], c[part])
                        x0_hat = recipe.schedule.split(out, x_t[part], tt[part])[0].clamp(-1, 1)
                        err += F.mse_loss(x0_hat, x0[part], reduction="sum").item()
                    mse[name] = err / x0.numel()
                print(f"| {t} | {mse['true']:.4f} | " + " | ".join(f"{mse[k] / mse['true']:.3f}x" for k in cols) + " |")
        print()


if __name__ == "__main__":
    main()
