"""Does a text-to-image shapes diffusion model read each attribute of its caption?

  python benchmarks/condition_use.py RUN [RUN ...] [--raw] [--num 500]

For 500 evaluation images, at several noise levels t, the model's x_0 estimate from x_t is compared with the
true image (mean squared error, x_0 in [-1, 1]) when it is given the image's own full caption, and when the
caption names a different position, color, shape or size (everything else the same). The ratio
MSE(wrong caption) / MSE(true caption) says how much the model relies on that attribute at that t: 1.00 means
it ignores it. The README's eps vs v figures come from this script: both 20-minute shapes runs of
benchmarks/diffusion.py, --raw (the weights before EMA), --num 300."""

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


def main() -> None:
    from aigc.data import shapes
    from aigc.recipes import open_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA ones")
    ap.add_argument("--num", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for run in args.runs:
        cfg, recipe = open_run(run, torch.device("cpu"), ema=not args.raw)
        if cfg.model.cond != "text" or cfg.data.name != "shapes":
            raise SystemExit(f"{run}: not a text-conditioned shapes diffusion run")
        data = recipe.load_data(cfg, run)
        ev = data.eval.attrs
        n = min(args.num, len(ev["color"]))
        x0 = data.eval.batch(torch.arange(n))["image"] * 2 - 1
        g = torch.Generator().manual_seed(0)
        true = {k: ev[k][:n] for k in ATTRS}
        variants = {"true": true}
        for k, m in ATTRS.items():              # the same attributes with `k` moved to another value
            variants[k] = {**true, k: (true[k] + torch.randint(1, m, (n,), generator=g)) % m}
        ids = {name: recipe.vocab.encode(shapes.captions(a, torch.arange(n))) for name, a in variants.items()}
        print(f"{run} ({'raw' if args.raw else 'EMA'} weights, {n} images): x_0 MSE with the true caption, "
              "and the ratio when one attribute is wrong")
        print("| t | MSE (true caption) | " + " | ".join(f"wrong {k}" for k in ATTRS) + " |")
        print("|---:|---:|" + "---:|" * len(ATTRS))
        with torch.no_grad():
            for t in TIMES:
                tt = torch.full((n,), t)
                noise = torch.randn(x0.shape, generator=g)
                x_t = recipe.schedule.q_sample(x0, tt, noise)
                mse = {}
                for name, c in ids.items():
                    out = recipe.net(x_t, tt, c)
                    mse[name] = F.mse_loss(recipe.schedule.split(out, x_t, tt)[0].clamp(-1, 1), x0).item()
                print(f"| {t} | {mse['true']:.4f} | " + " | ".join(f"{mse[k] / mse['true']:.3f}x" for k in ATTRS) + " |")
        print()


if __name__ == "__main__":
    main()
