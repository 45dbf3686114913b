"""What each CLI command does, as plain functions (the CLI only parses arguments)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.data import Batcher, load_dataset
from aigc.errors import AigcError
from aigc.io import rundir
from aigc.io.images import save_grid, save_npz
from aigc.recipes import build_config, open_run, recipe_class
from aigc.train import Trainer, pick_device


def _setup_torch(cfg: RunConfig) -> torch.device:
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    return pick_device(cfg.train.device)


def _resolve_data(cfg: RunConfig):
    """Load the dataset and write its resolved image shape into the config (so the run can be rebuilt)."""
    data = load_dataset(cfg.data)
    c, h, _ = data.image_shape
    cfg.data.channels, cfg.data.image_size = c, h
    if data.note:
        print(f"note: {data.note}", file=sys.stderr)
    return data


def _fit(cfg: RunConfig, data, run_dir: Path, device, quiet: bool, resume: bool, more_minutes: float | None = None,
         total_steps: int | None = None, stop_at: int | None = None) -> dict:
    recipe = recipe_class(cfg.family)(cfg)
    batcher = Batcher(data, cfg.data.batch_size, cfg.train.seed)
    trainer = Trainer(recipe, data, batcher, cfg.train, run_dir, device, quiet=quiet, lrs=getattr(recipe, "lrs", None))
    if resume:
        trainer.load()
        if total_steps is not None:
            cfg.train.steps = total_steps
        if more_minutes is not None:                   # --minutes on resume: M more minutes of training
            cfg.train.minutes = trainer.elapsed / 60 + more_minutes
        cfg.save(run_dir / rundir.CONFIG)
    summary = trainer.fit(stop_at=stop_at)
    if summary["stopped"] == "stop_at":
        return {"run": str(run_dir), **summary}
    final = trainer.finish()
    return {"run": str(run_dir), **summary, "final_eval": {k: v for k, v in final.items() if k != "kind"}}


def start_training(family, dataset, config_file, sets, flags, out, overwrite, quiet, stop_at=None) -> dict:
    cfg = build_config(family, dataset, config_file, sets, flags)
    torch.manual_seed(cfg.train.seed)
    device = _setup_torch(cfg)
    data = _resolve_data(cfg)
    if cfg.train.steps <= 0 and cfg.train.minutes <= 0:
        raise AigcError("no training budget: give --steps N or --minutes M (or train.steps in the config)")
    run_dir = rundir.new_run_dir(out, family, dataset, overwrite)
    cfg.save(run_dir / rundir.CONFIG)
    print(f"run folder: {run_dir}  ({family} on {dataset}, {len(data.train)} training examples, device {device})",
          file=sys.stderr)
    return _fit(cfg, data, run_dir, device, quiet, resume=False, stop_at=stop_at)


def resume_training(run, steps=None, minutes=None, device=None, quiet=False) -> dict:
    run_dir = rundir.check_run_dir(run)
    cfg, _ = _load_cfg(run_dir)
    if device:
        cfg.train.device = device
    torch.manual_seed(cfg.train.seed)
    dev = _setup_torch(cfg)
    data = _resolve_data(cfg)
    print(f"resuming {run_dir}", file=sys.stderr)
    return _fit(cfg, data, run_dir, dev, quiet, resume=True, more_minutes=minutes, total_steps=steps)


def _load_cfg(run_dir: Path):
    from aigc.config import load_run_config, read_toml

    family = read_toml(run_dir / rundir.CONFIG).get("family", "?")
    cls = recipe_class(family)
    return load_run_config(run_dir / rundir.CONFIG, cls.ModelConfig), cls


def sample_run(run, num, out, prompt=None, label=None, steps=None, guidance=None, seed=0, what="samples",
               ema=True, device="auto") -> Path:
    out = Path(out)
    if out.suffix not in (".png", ".npz"):
        raise AigcError(f"--out must end in .png (a grid) or .npz (arrays), got '{out.name}'")
    run_dir = rundir.check_run_dir(run)
    cfg, recipe = open_run(run_dir, pick_device(device), ema=ema)
    torch.manual_seed(seed)
    with torch.no_grad():
        if what == "samples":
            result = recipe.generate(num, label=label, prompt=prompt, steps=steps, guidance=guidance)
        else:
            if not hasattr(recipe, "reconstructions"):
                raise AigcError(f"--what {what} is only for the VAE family")
            data = load_dataset(cfg.data)
            images = recipe.reconstructions(data, num) if what == "reconstructions" else \
                recipe.interpolations(data, pairs=max(1, num // 10))
            result = {"images": images}
    if out.suffix == ".png":
        nrow = 10 if what == "interpolation" else (16 if what == "reconstructions" else None)
        return save_grid(out, result["images"], nrow=nrow)
    return save_npz(out, result["images"], labels=result.get("labels"), prompts=result.get("prompts"))


def eval_run(run, num=None, k=1000, out=None, device="auto", quiet=False, sample_num=None) -> dict:
    """The family's own measures (recipe.full_eval) on `num` eval examples (default: all), plus, for
    image models, sample-quality metrics on `sample_num` (default: num, else 10000) generated samples."""
    from aigc.evaluation import score_images
    from aigc.io.images import to_uint8

    run_dir = rundir.check_run_dir(run)
    cfg, recipe = open_run(run_dir, pick_device(device))
    data = load_dataset(cfg.data)
    from tqdm import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(0)
    total = min(num or len(data.eval), len(data.eval))
    with torch.no_grad(), tqdm(total=total, disable=quiet, unit="img", desc="eval", file=sys.stderr) as bar:
        result = recipe.full_eval(data, num=num, k=k, progress=bar.update)
    if hasattr(recipe, "generate_for_eval"):
        n = sample_num or num or 10000
        images, labels, prompts = recipe.generate_for_eval(data, n)
        images = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
        if data.binarize:                             # compare with the grey test images the classifier knows
            import dataclasses

            data = load_dataset(dataclasses.replace(cfg.data, binarize="none"))
        try:
            quality = score_images(data, images, labels, prompts)
        except AigcError as e:                        # e.g. an unlabelled image folder: no feature classifier
            quality = {"feature_metrics": f"skipped: {e}"}
        result["sample_quality"] = quality
    result = {"family": cfg.family, "dataset": cfg.data.name, "run": str(run_dir),
              "step": _last_step(run_dir), **result, "eval_seconds": round(time.perf_counter() - t0, 1)}
    _write_json(result, run_dir / rundir.EVAL, out)
    return result


def eval_samples(path, dataset, data_dir=None, out=None) -> dict:
    from aigc.config import DataConfig
    from aigc.evaluation import eval_samples_file, load_samples_npz

    samples = load_samples_npz(Path(path))            # a bad file is reported before any data is loaded
    data = load_dataset(DataConfig(name=dataset, dir=data_dir or ""))
    result = eval_samples_file(Path(path), data, samples)
    _write_json(result, None, out)
    return result


def _write_json(result: dict, *paths) -> None:
    text = json.dumps(result, indent=1) + "\n"
    for p in paths:
        if p:
            Path(p).write_text(text)


def _last_step(run_dir: Path) -> int:
    rows = rundir.read_metrics(run_dir)
    return max((r.get("step", 0) for r in rows), default=0)


def list_runs(folder: Path) -> str:
    if not folder.is_dir():
        raise AigcError(f"no runs folder at {folder}")
    lines = [f"{'run':40s} {'family':8s} {'data':8s} {'step':>8s} {'minutes':>8s}  last eval"]
    for d in sorted(p for p in folder.iterdir() if (p / rundir.CONFIG).is_file()):
        from aigc.config import read_toml

        c = read_toml(d / rundir.CONFIG)
        rows = rundir.read_metrics(d)
        last = next((r for r in reversed(rows) if r.get("kind") == "eval"), {})
        train = next((r for r in reversed(rows) if r.get("kind") == "train"), {})
        ev = ", ".join(f"{k}={v}" for k, v in last.items() if k not in ("kind", "step", "elapsed_s"))
        lines.append(f"{d.name:40s} {c.get('family', '?'):8s} {c.get('data', {}).get('name', '?'):8s} "
                     f"{train.get('step', 0):>8d} {train.get('elapsed_s', 0) / 60:>8.1f}  {ev}")
    return "\n".join(lines) if len(lines) > 1 else f"no runs under {folder}"
