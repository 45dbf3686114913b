"""What each CLI command does, as plain functions (the CLI only parses arguments)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.data import load_dataset
from aigc.errors import AigcError
from aigc.io import rundir
from aigc.io.images import save_grid, save_npz
from aigc.recipes import build_config, open_run, recipe_class
from aigc.train import Trainer, pick_device


def _setup_torch(cfg: RunConfig) -> torch.device:
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    return pick_device(cfg.train.device)


def _load_data(cls, cfg: RunConfig, run_dir: Path | None = None):
    data = cls.load_data(cfg, run_dir)
    if data.note:
        print(f"note: {data.note}", file=sys.stderr)
    return data


def _fit(cfg: RunConfig, data, run_dir: Path, device, quiet: bool, resume: bool, more_minutes: float | None = None,
         total_steps: int | None = None, stop_at: int | None = None, init_from: Path | None = None) -> dict:
    cls = recipe_class(cfg.family)
    recipe = cls(cfg)
    if init_from is not None:
        recipe.init_from(init_from)
    recipe.save_artifacts(run_dir, data)
    batcher = cls.make_batcher(data, cfg)
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


def start_training(family, dataset, config_file, sets, flags, out, overwrite, quiet, stop_at=None,
                   init_from=None) -> dict:
    cfg = build_config(family, dataset, config_file, sets, flags)
    cls = recipe_class(family)
    init_dir = None
    if init_from:
        init_dir = rundir.check_run_dir(init_from)
        if not hasattr(cls, "init_from"):
            raise AigcError(f"--init-from is not supported for the {family} family")
        cls.adopt_init_config(cfg, init_dir, sets)
    torch.manual_seed(cfg.train.seed)
    device = _setup_torch(cfg)
    data = _load_data(cls, cfg, init_dir)
    if cfg.train.steps <= 0 and cfg.train.minutes <= 0:
        raise AigcError("no training budget: give --steps N or --minutes M (or train.steps in the config)")
    run_dir = rundir.new_run_dir(out, family, dataset, overwrite)
    cfg.save(run_dir / rundir.CONFIG)
    print(f"run folder: {run_dir}  ({family} on {dataset}, {data.describe()}, device {device})", file=sys.stderr)
    return _fit(cfg, data, run_dir, device, quiet, resume=False, stop_at=stop_at, init_from=init_dir)


def resume_training(run, steps=None, minutes=None, device=None, quiet=False) -> dict:
    run_dir = rundir.check_run_dir(run)
    cfg, cls = _load_cfg(run_dir)
    if device:
        cfg.train.device = device
    torch.manual_seed(cfg.train.seed)
    dev = _setup_torch(cfg)
    data = _load_data(cls, cfg, run_dir)
    print(f"resuming {run_dir}", file=sys.stderr)
    return _fit(cfg, data, run_dir, dev, quiet, resume=True, more_minutes=minutes, total_steps=steps)


def _load_cfg(run_dir: Path):
    from aigc.config import load_run_config, read_toml

    family = read_toml(run_dir / rundir.CONFIG).get("family", "?")
    cls = recipe_class(family)
    return load_run_config(run_dir / rundir.CONFIG, cls.ModelConfig), cls


def sample_run(run, num, out=None, prompt=None, label=None, steps=None, guidance=None, seed=0, what="samples",
               ema=True, device="auto", sampler=None, frames=None, **text_options):
    """Images: write a PNG grid or npz to `out` and return its path; video: an animated GIF grid or npz.
    Text: return the samples as a list of strings (and write them to `out` when given)."""
    run_dir = rundir.check_run_dir(run)
    cfg, recipe = open_run(run_dir, pick_device(device), ema=ema)
    if recipe.output == "text":
        if steps is not None or guidance is not None or label is not None or sampler is not None or what != "samples" \
                or frames is not None:
            raise AigcError("--steps, --guidance, --sampler, --label, --frames and --what do not apply to a language model")
        defaults = {"max_new_tokens": 500, "temperature": 0.8}
        texts = recipe.generate_text(prompt or "", num=num or 1, seed=seed, **{**defaults, **text_options})
        if out:
            Path(out).write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        return texts
    if text_options:
        raise AigcError("--stream, --stop, --top-k, --top-p, --temperature and --max-new-tokens are options of "
                        "language models")
    if sampler is not None and not getattr(recipe, "has_sampler", False):
        raise AigcError(f"--sampler is an option of diffusion models, not of the {cfg.family} family")
    diffusion = {"sampler": sampler} if sampler is not None else {}
    if recipe.output == "video":
        return _sample_video(recipe, num or 16, out, prompt, label, steps, guidance, seed, what, frames, diffusion)
    if frames is not None:
        raise AigcError("--frames is an option of video models")
    num = num or (8 if what == "trajectory" else 64)
    if out is None:
        raise AigcError("--out FILE.png or FILE.npz is required for image models")
    out = Path(out)
    if out.suffix not in (".png", ".npz"):
        raise AigcError(f"--out must end in .png (a grid) or .npz (arrays), got '{out.name}'")
    torch.manual_seed(seed)
    nrow = None
    with torch.no_grad():
        if what == "samples":
            result = recipe.generate(num, label=label, prompt=prompt, steps=steps, guidance=guidance, **diffusion)
        elif what == "trajectory":
            if not hasattr(recipe, "trajectory"):
                raise AigcError("--what trajectory is only for the diffusion family")
            result = recipe.trajectory(num, label=label, prompt=prompt, steps=steps, guidance=guidance, **diffusion)
            nrow = result["nrow"]
        else:
            if not hasattr(recipe, "reconstructions"):
                raise AigcError(f"--what {what} is only for the VAE family")
            data = recipe.load_data(cfg)
            images = recipe.reconstructions(data, num) if what == "reconstructions" else \
                recipe.interpolations(data, pairs=max(1, num // 10))
            result = {"images": images}
    if out.suffix == ".png":
        nrow = nrow or (10 if what == "interpolation" else (16 if what == "reconstructions" else None))
        return save_grid(out, result["images"], nrow=nrow)
    return save_npz(out, result["images"], labels=result.get("labels"), prompts=result.get("prompts"))


def _sample_video(recipe, num, out, prompt, label, steps, guidance, seed, what, frames, diffusion) -> Path:
    from aigc.io.images import save_gif, video_to_uint8

    if out is None:
        raise AigcError("--out FILE.gif or FILE.npz is required for video models")
    out = Path(out)
    if out.suffix not in (".gif", ".npz"):
        raise AigcError(f"--out must end in .gif (an animated grid) or .npz (arrays) for video, got '{out.name}'")
    if what != "samples":
        raise AigcError(f"--what {what} is for image models; a video model writes clips")
    torch.manual_seed(seed)
    with torch.no_grad():
        result = recipe.generate(num, label=label, prompt=prompt, steps=steps, guidance=guidance, frames=frames,
                                 **diffusion)
    videos = video_to_uint8(result["videos"])
    if out.suffix == ".gif":
        return save_gif(out, videos)
    return save_npz(out, videos, prompts=result.get("prompts"), key="videos")


def eval_run(run, num=None, k=1000, out=None, device="auto", quiet=False, sample_num=None) -> dict:
    """The family's own measures (recipe.full_eval) on `num` eval examples (default: all), plus, for
    image models, sample-quality metrics on `sample_num` (default: num, else 10000) generated samples."""
    from tqdm import tqdm

    from aigc.evaluation import score_images
    from aigc.io.images import to_uint8

    run_dir = rundir.check_run_dir(run)
    cfg, recipe = open_run(run_dir, pick_device(device))
    data = recipe.load_data(cfg, run_dir)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.no_grad(), tqdm(disable=quiet, desc="eval", file=sys.stderr) as bar:
        result = recipe.full_eval(data, num=num, k=k, progress=bar.update)
    if recipe.output == "video":
        from aigc.evaluation import score_videos
        from aigc.io.images import video_to_uint8

        n = sample_num or num or recipe.EVAL_CLIPS
        videos, _, prompts = recipe.generate_for_eval(data, n)
        videos = torch.from_numpy(video_to_uint8(videos)).permute(0, 4, 1, 2, 3)
        result["sample_quality"] = score_videos(data, videos, prompts)
    elif hasattr(recipe, "generate_for_eval"):
        n = sample_num or num or 10000
        images, labels, prompts = recipe.generate_for_eval(data, n)
        images = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
        if getattr(data, "binarize", False):          # compare with the grey test images the classifier knows
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
    from aigc.data import VIDEO_DATASETS
    from aigc.evaluation import eval_samples_file, load_samples_npz, load_videos_npz

    load = load_videos_npz if dataset in VIDEO_DATASETS else load_samples_npz
    samples = load(Path(path))                        # a bad file is reported before any data is loaded
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
