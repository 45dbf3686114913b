"""Where a training step's time goes, for any family's preset: the batcher alone, the recipe's train_step
alone, the EMA update alone (each timed with the device synchronised), then torch.profiler over whole
trainer steps, sorted by self CPU time (and CUDA time on a GPU).

  python benchmarks/profile_step.py diffusion --data mnist --data-dir DIR [--device cuda] [--set KEY=VALUE]"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, n: int, device: torch.device) -> float:
    """Mean milliseconds of fn() over n calls, the device synchronised before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family")
    ap.add_argument("--data", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--steps", type=int, default=30, help="steps profiled (after as many warm-up steps)")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()

    from aigc.recipes import build_config, recipe_class
    from aigc.train import Trainer, pick_device

    cfg = build_config(args.family, args.data, None, args.sets, {"data.dir": args.data_dir})
    for key in ("eval_every", "sample_every", "ckpt_every"):
        setattr(cfg.train, key, 0)
    cfg.train.steps = 10 ** 6
    device = pick_device(args.device)
    cls = recipe_class(args.family)
    data = cls.load_data(cfg, None)
    recipe = cls(cfg)
    run_dir = Path(tempfile.mkdtemp())
    recipe.save_artifacts(run_dir, data)
    batcher = cls.make_batcher(data, cfg)
    trainer = Trainer(recipe, data, batcher, cfg.train, run_dir, device, quiet=True, lrs=getattr(recipe, "lrs", None))
    trainer.fit(stop_at=args.steps)                                       # warm-up (and compilation)

    from aigc.train.trainer import _to_device

    print(f"{args.family} on {args.data}, device {device}, amp {trainer.amp}, compile {cfg.train.compile}")
    print(f"batcher:        {timed(lambda: next(batcher), args.steps, device):7.2f} ms per batch")
    batch = _to_device(next(batcher), device)

    def step():
        with trainer._autocast():
            recipe.train_step(batch, trainer.opt)
    print(f"train_step:     {timed(step, args.steps, device):7.2f} ms (one batch again and again)")
    if trainer.ema is not None:
        print(f"EMA update:     {timed(lambda: trainer.ema.update(10 ** 4), args.steps, device):7.2f} ms")
    t0 = time.perf_counter()
    trainer.fit(stop_at=trainer.step + args.steps)
    print(f"fit():          {(time.perf_counter() - t0) / args.steps * 1000:7.2f} ms per step (its final checkpoint "
          "and loss plot included, spread over the steps)")

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        trainer.fit(stop_at=trainer.step + args.steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows // 2))


if __name__ == "__main__":
    main()
