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
sign of the motion?); the issue-7 figures come from the 20-minute runs of benchmarks/video.py with --num 128.
For clips it also prints the drift of the mean x_0 estimate given the true captions: per direction, the slope
over frames 0-11 of the centroid of the brightness above the background, of the estimates averaged over the
clips of that direction, along the direction's axis and signed so that the captioned way is positive
(px/frame), next to the same for the true clips. At t = 999 the noisy clip shows nothing, so the best
estimate is the caption's mean clip, which drifts the captioned way (about 0.6 px/frame); a model that reads
the direction word at the highest noise levels drifts with it. And what reading it is worth there: the x_0
error of the best estimate at t = T (each caption's per-frame mean clip, over 8000 generated clips) with and
without the direction in the caption."""

from __future__ import annotations

import argparse
import functools
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

    ev = data.eval.attrs
    n = min(num, len(ev["color"]))
    x0 = data.eval.images[:n].float() / 255 * 2 - 1
    variants = with_one_wrong({k: ev[k][:n] for k in CLIP_ATTRS}, CLIP_ATTRS, g)
    reversed_ = ev["direction"][:n] ^ 1                           # left <-> right, up <-> down (DIRECTIONS order)
    variants["reversed direction"] = {**variants["true"], "direction": reversed_}
    return x0, CLIP_ATTRS, CLIP_TIMES, {name: shape_clip_captions(a) for name, a in variants.items()}


def mean_clip_drift(clips: torch.Tensor, direction: torch.Tensor, frames: int = 12) -> float:
    """Clips (n, C, T, H, W) in [-1, 1]: for each direction, the centroid of the brightness of the clips' mean
    along the direction's axis, fitted by a line over the first `frames` frames; the slopes (px/frame, signed
    so that the captioned way is positive) averaged over the directions present."""
    from aigc.data.video import STEPS

    slopes = []
    for d in direction.unique().tolist():
        m = ((clips[direction == d].mean(0) + 1) / 2).mean(0)[:frames]         # (T, H, W) mean brightness
        m = (m - m.flatten(1).median(1).values[:, None, None]).clamp(min=0)   # above each frame's background
        dx, dy = STEPS[d].tolist()
        profile = m.sum(1) if dx else m.sum(2)                                # (T, W) or (T, H) along the axis
        pos = torch.arange(profile.shape[1], dtype=profile.dtype)
        c = (profile * pos).sum(1) / profile.sum(1).clamp(min=1e-8)
        t = torch.arange(len(c), dtype=c.dtype) - (len(c) - 1) / 2
        slopes.append(float((c * t).sum() / (t * t).sum()) * (dx + dy))
    return sum(slopes) / len(slopes)


@functools.cache
def direction_worth(n: int = 8000) -> tuple[float, float]:
    """x_0 MSE of the per-frame mean clip of each caption (color, shape, direction) and of each caption with the
    direction left out (color, shape), over n generated moving-shapes clips: the best x_0 errors at t = T.
    The means come from one half of the clips and the errors from the other (in-sample means would favour
    the 72 captions over the 18). It depends on the data only: cached, computed once for all runs."""
    from aigc.data import video

    a = video.shape_clip_attributes(n, torch.Generator().manual_seed(0))
    x = video.render_shape_clips(a, 16).float() / 127.5 - 1
    fit, test = torch.arange(n) < n // 2, torch.arange(n) >= n // 2

    def mse(key: torch.Tensor) -> float:
        return sum(float(((x[test & (key == k)] - x[fit & (key == k)].mean(0)) ** 2).sum())
                   for k in key.unique()) / x[test].numel()

    key = a["color"] * 100 + a["shape"] * 10
    return mse(key + a["direction"]), mse(key)


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
        drift = {}
        with torch.no_grad():
            for t in times:
                tt = torch.full((num,), t)
                x_t = recipe.core.schedule.q_sample(x0, tt, recipe.core.noise(x0.shape, g, "cpu", torch.float32))
                mse, hats = {}, []
                for name, c in ids.items():
                    err = 0.0
                    for i in range(0, num, 50):             # in chunks: a clip is 16 images
                        part = slice(i, i + 50)
                        out = recipe.net(x_t[part], tt[part], c[part])
                        x0_hat = recipe.core.schedule.split(out, x_t[part], tt[part])[0].clamp(-1, 1)
                        err += F.mse_loss(x0_hat, x0[part], reduction="sum").item()
                        if name == "true" and what == "clips":
                            hats.append(x0_hat)
                    mse[name] = err / x0.numel()
                if hats:
                    drift[t] = mean_clip_drift(torch.cat(hats), data.eval.attrs["direction"][:num])
                print(f"| {t} | {mse['true']:.4f} | " + " | "
                                                        "".join(f"{mse[k] / mse['true']:.3f}x" for k in cols) + " |")
        if drift:
            print(f"\nmean-clip drift the captioned way (px/frame, frames 0-11): true clips "
                  f"{mean_clip_drift(x0, data.eval.attrs['direction'][:num]):.2f}; x_0 estimates "
                  + ", ".join(f"t = {t}: {v:.2f}" for t, v in drift.items()))
            best, blind = direction_worth()
            print(f"best x_0 MSE at t = T (per-frame mean clip of each caption, 8000 clips): {best:.4f} with the "
                  f"direction, {blind:.4f} without ({blind / best:.3f}x)")
        print()


if __name__ == "__main__":
    main()
