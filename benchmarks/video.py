"""Video benchmarks on moving-shapes (16 frames of 32x32): the presets of video-gan and video-diffusion in a
20-minute budget, scored on 256 generated clips whose prompts are the evaluation captions in turn.

  python benchmarks/video.py [--only ROW,ROW] [--minutes 20] [--clips 256] [--table]

`speed`: the GAN's sampling time beside video diffusion's, measured in one process (speed_row).

Rows: `real` (the evaluation clips through the same detector: the ceiling), `gan-argline-seed0/1/2` (the video-gan
preset of issue 37 from three seeds: a sprite drawn on the least-squares line through 3D-conv where-maps, an object
discriminator, sub-pixel shifts and the matching-aware discriminator) and its frame-difference ablation at the same
budget, seed 0 (`gan-argline-nodiff`: no such term, `gan-argline-diffd`: the material's reading, a discriminator on
frame differences, where the preset reads it as G matching the size of real frame differences), `gan-sprite-*` (the
same with the line made by a linear layer, no 3D convolution in G: the preset before, LINE, with its ablation),
`gan-v3-seed0/1/2` (the preset before the sprite generator, V3: MoCoGAN-style motion codes, mode seeking 0.3),
`gan-v2-seed0/1/2` (V3 with mode seeking 1.0) and its frame-difference ablation (`gan-v2-nodiff`, `gan-v2-diffd`),
`diffusion-preset-quiet-seed0/1/2` (the video-diffusion preset from three seeds). All without progress evaluations
within the budget; the material's recipe as it was (TGAN generator, clip and frame-difference discriminators) keeps
its 2026-11-23 rows `gan`, `gan-nodiff`, `gan-diff0.3` (retired rows). Collapse: 16 clips for one prompt, the spread
of where the shape starts (`aigc.metrics.video.start_spread`) beside 16 real clips of that caption. Metrics: frame
accuracy (shape and color right in a frame), direction accuracy, temporal consistency, prompt accuracy, motion
smoothness, read off the pixels by `aigc.data.video.detect_shape_clips` (docs/evaluation.md). Results go to
benchmarks/results/video.json, where rows retired from this script keep their figures, command and commit; runs go
to bench_runs/ (not in git). What was tried and measured: docs/video.md."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import budget, provenance, rows_main, run, train_run  # noqa: E402

RUNS = ROOT / "bench_runs"
OUT = ROOT / "benchmarks" / "results" / "video.json"
QUIET = ["--set", "train.eval_every=0", "--set", "train.sample_every=0"]   # no progress evals/samples in the budget
def sets(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


V3 = sets('model.g_arch="motion"', "model.g_coords=true", "model.g_cbn=true", 'model.sprite_where="map"',
          "model.sprite_px=16", "model.image_d_width=0", "model.image_d_convs=0", "model.image_words=0",
          "model.crop_d=0", "model.crop_words=0", "model.d_subpixel=false", "model.mismatch=0",
          "model.aux_words=1.0")   # the video-gan preset from mode seeking 0.3 to the sprite generator (2026-12-04)
V2 = [*V3, *sets("model.mode_seeking=1.0")]     # the video-gan preset before it took mode seeking 0.3
ARGLINE = sets('model.sprite_where="argmax_line"', "model.g_coords=true", "model.g_cbn=true")  # = the preset
LINE = sets('model.sprite_where="line"', "model.g_coords=false", "model.g_cbn=false")  # the preset until argmax_line
TRAIN = {  # row -> (run folder, family, settings on top of the family's preset)
    **{f"gan-argline-seed{s}": (f"video-gan-argline-seed{s}-20min", "video-gan",
                                [*QUIET, *ARGLINE, "--seed", str(s)]) for s in (0, 1, 2)},
    "gan-argline-nodiff": ("video-gan-argline-nodiff-20min", "video-gan",
                           [*QUIET, *ARGLINE, *sets("model.frame_diff=0"), "--seed", "0"]),
    "gan-argline-diffd": ("video-gan-argline-diffd-20min", "video-gan",
                          [*QUIET, *ARGLINE, *sets("model.frame_diff_mode=d"), "--seed", "0"]),
    **{f"gan-sprite-seed{s}": (f"video-gan-sprite-seed{s}-20min", "video-gan", [*QUIET, *LINE, "--seed", str(s)])
       for s in (0, 1, 2)},
    "gan-sprite-nodiff": ("video-gan-sprite-nodiff-20min", "video-gan",
                          [*QUIET, *LINE, *sets("model.frame_diff=0"), "--seed", "0"]),
    "gan-sprite-diffd": ("video-gan-sprite-diffd-20min", "video-gan",
                         [*QUIET, *LINE, *sets("model.frame_diff_mode=d"), "--seed", "0"]),
    **{f"gan-v3-seed{s}": (f"video-gan-v3-seed{s}-20min", "video-gan", [*QUIET, *V3, "--seed", str(s)])
       for s in (0, 1, 2)},
    **{f"gan-v2-seed{s}": (f"video-gan-v2-seed{s}-20min", "video-gan", [*QUIET, *V2, "--seed", str(s)])
       for s in (0, 1, 2)},
    "gan-v2-nodiff": ("video-gan-v2-nodiff-20min", "video-gan", [*QUIET, *V2, *sets("model.frame_diff=0")]),
    "gan-v2-diffd": ("video-gan-v2-diffd-20min", "video-gan", [*QUIET, *V2, *sets("model.frame_diff_mode=d")]),
    **{f"diffusion-preset-quiet-seed{s}": (f"video-diffusion-preset-quiet-seed{s}-20min", "video-diffusion",
                                           [*QUIET, "--seed", str(s)]) for s in (0, 1, 2)},
}
NAMES = {"real": "real clips (detector ceiling)",
         **{f"gan-v3-seed{s}": f"video GAN, motion generator (the preset before the sprite one), seed {s}"
            for s in (0, 1, 2)},
         **{f"gan-sprite-seed{s}": f"video GAN, line sprite generator (the preset before argmax_line), object D, "
                                   f"sub-pixel shifts, matching-aware D, seed {s}" for s in (0, 1, 2)},
         **{f"gan-argline-seed{s}": f"video GAN preset: sprite drawn on the least-squares line through 3D-conv "
                                    f"where-maps (argmax_line), seed {s}" for s in (0, 1, 2)},
         "gan-argline-nodiff": "video GAN preset (as gan-argline-seed0) without the frame-difference term",
         "gan-argline-diffd": "video GAN preset (as gan-argline-seed0), frame-difference term read as a "
                              "discriminator on frame differences",
         "gan-sprite-nodiff": "video GAN, line sprite generator (as gan-sprite-seed0) without the frame-difference "
                              "term",
         "gan-sprite-diffd": "video GAN, line sprite generator (as gan-sprite-seed0), frame-difference term read as "
                             "a discriminator on frame differences",
         **{f"gan-v2-seed{s}": f"video GAN, motion generator with mode seeking 1.0, seed {s}"
            for s in (0, 1, 2)},
         "gan-v2-nodiff": "video GAN, motion generator with mode seeking 1.0, without the frame-difference term",
         "gan-v2-diffd": "video GAN, motion generator with mode seeking 1.0, frame-difference term read as a "
                         "discriminator on frame differences",
         "speed": "sampling time of the GAN and of video diffusion, one process",
         **{f"diffusion-preset-quiet-seed{s}": f"video diffusion preset, seed {s}" for s in (0, 1, 2)}}
KEYS = ("frame_accuracy", "shape_frame_accuracy", "color_frame_accuracy", "direction_accuracy",
        "temporal_consistency", "prompt_accuracy", "motion_smoothness", "mean_speed", "stray_share")
SHORT = ("frame_accuracy", "direction_accuracy", "temporal_consistency", "prompt_accuracy", "motion_smoothness",
         "stray_share")


def train(row: str, minutes: float) -> tuple[Path, dict]:
    name, family, args = TRAIN[row]
    out = RUNS / name
    return out, train_run(out, [family, "--data", "moving-shapes", *args], minutes, "clips")


def scored(recipe, data, num: int, **kw) -> dict:
    """The KEYS of `num` generated clips (seed 0) and the seconds it took to make them."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        result = recipe.generate_for_eval(data, num, **kw)
    secs = time.perf_counter() - t0
    q = data.score_result(result)
    return {**{k: q.get(k) for k in KEYS}, "num_clips": num, "sampling_s": round(secs, 1)}


def model_row(row: str, args) -> dict:
    from aigc.generation import Request, generate
    from aigc.recipes import open_run

    speed = budget(args.minutes)
    run_dir, info = train(row, args.minutes)
    info.update(speed)
    cfg, recipe = open_run(run_dir, torch.device("cpu"))
    data = recipe.load_data(cfg, run_dir)
    out = {**info, "what": NAMES[row], "train_frames_per_s": round(info["steps"] * recipe.frames_per_step(cfg)
                                                                   / info["train_s"], 1),
           **scored(recipe, data, args.clips)}
    train_rows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                  if r.get("kind") == "train" and "diversity" in r]
    if train_rows:                       # the collapse detector's reading over the run (recipes/video.py)
        out["diversity_min"] = min(r["diversity"] for r in train_rows)
        out["diversity_last"] = train_rows[-1]["diversity"]
    if row.startswith("diffusion"):
        out["by_guidance"] = {str(w): scored(recipe, data, args.clips, guidance=w) for w in (1.0, 2.0, 3.0)}
    t0 = time.perf_counter()
    result = generate(recipe, Request(num=16, prompt=SPREAD_PROMPT, seed=0))
    secs = time.perf_counter() - t0
    out.update(spread_of(torch.from_numpy(result.videos).permute(0, 4, 1, 2, 3)))
    out.update({"gen16_s": round(secs, 2), "gen_clips_per_s": round(16 / secs, 2)})
    proc, wall, rss = run([sys.executable, "-m", "aigc", "sample", str(run_dir), "--num", "16", "--prompt",
                           "a red circle moving right", "--out", str(RUNS / f"{row}-16.gif")])
    if proc.returncode:
        raise SystemExit(f"sampling failed:\n{proc.stderr[-3000:]}")
    out.update({"cli_sample16_wall_s": round(wall, 1), "cli_sample16_peak_rss_mb": round(rss)})
    return out


SPREAD_PROMPT = "a red circle moving right"


def spread_of(videos: torch.Tensor) -> dict:
    """start_spread of uint8 clips (N, C, T, H, W) made for SPREAD_PROMPT."""
    from aigc.data.video import detect_shape_clips
    from aigc.metrics.video import start_spread

    return start_spread(detect_shape_clips(videos))


def real_spread(n: int = 16) -> dict:
    """start_spread of n real clips of SPREAD_PROMPT (drawn by the dataset's own sampler, kept if they match)."""
    from aigc.data.video import make_shape_clips

    clips = make_shape_clips(4000, torch.Generator().manual_seed(0), 16)
    keep = [i for i, c in enumerate(clips["caption"]) if c == SPREAD_PROMPT][:n]
    return spread_of(clips["video"][keep])


def real_row(args) -> dict:
    from aigc.config import data_config
    from aigc.data import load_dataset

    data = load_dataset(data_config("moving-shapes", num_eval=args.clips))
    captions = data.eval.captions(torch.arange(len(data.eval)))
    q = data.score(data.eval.images, None, captions)
    return {"what": NAMES["real"], **{k: q.get(k) for k in KEYS}, "num_clips": args.clips, **real_spread()}


def speed_row(args) -> dict:
    """Sampling speed of the video GAN beside video diffusion's, in one process: 16 clips of SPREAD_PROMPT from
    the gan-argline-seed0 run (the preset) and from the video-diffusion preset trained 10 steps (sampling costs the
    same whatever the weights: the preset's sampler, steps and guidance), each timed 3 times, the fastest kept."""
    from aigc.generation import Request, generate
    from aigc.recipes import open_run

    gan_dir, diff_dir = RUNS / TRAIN["gan-argline-seed0"][0], RUNS / "video-diffusion-preset-10steps"
    if not (gan_dir / "checkpoint").is_dir():
        raise SystemExit("the speed row times the gan-argline-seed0 run: run that row first")
    if not (diff_dir / "checkpoint").is_dir():
        proc, _, _ = run([sys.executable, "-m", "aigc", "train", "video-diffusion", "--data", "moving-shapes",
                          "--steps", "10", *QUIET, "--out", str(diff_dir), "--quiet", "--overwrite"])
        if proc.returncode:
            raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    out = {"what": "16 clips, in process, fastest of 3"}
    for name, folder in (("gan", gan_dir), ("diffusion", diff_dir)):
        cfg, recipe = open_run(folder, torch.device("cpu"))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            generate(recipe, Request(num=16, prompt=SPREAD_PROMPT, seed=0))
            times.append(time.perf_counter() - t0)
        out[f"{name}_16_s"] = round(min(times), 3)
    out["diffusion_over_gan"] = round(out["diffusion_16_s"] / out["gan_16_s"])
    return out


ROWS = {"real": real_row, **{row: (lambda r: lambda a: model_row(r, a))(row) for row in TRAIN}, "speed": speed_row}


def markdown(results: dict) -> str:
    f = lambda v: "-" if v is None else v                              # noqa: E731
    lines = ["| row | steps | train frames/s | frame acc | shape | color | direction acc | temporal consistency | "
             "prompt acc | motion smoothness (px) | mean speed (px/frame) | stray frames | "
             "`aigc sample --num 16` wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in ROWS:
        r = results.get(row)
        if r and row != "speed":
            cli = f"{r['cli_sample16_wall_s']} s" if "cli_sample16_wall_s" in r else "-"
            lines.append(f"| {row} | {f(r.get('steps'))} | {f(r.get('train_frames_per_s'))} | "
                         + " | ".join(str(f(r.get(k))) for k in KEYS) + f" | {cli} |")
    lines += ["", f"Collapse check and speed: 16 clips of '{SPREAD_PROMPT}' (seed 0); where the shape starts "
              "(spread in px, distinct start pixels) against 16 real clips of that caption; generation time in "
              "process; budget: the issue's minutes and, for a 3.9 ms machine's compute, this machine's share.", "",
              "| row | start spread (px) | distinct starts | 16 clips (s) | clips/s | reference_ms | "
              "budget for 3.9 ms (min) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in ROWS:
        r = results.get(row)
        if r and "start_spread_px" in r:
            lines.append(f"| {row} | {f(r.get('start_spread_px'))} | {r['distinct_starts']} | {f(r.get('gen16_s'))} | "
                         f"{f(r.get('gen_clips_per_s'))} | {f(r.get('reference_ms'))} | "
                         f"{f(r.get('budget_scaled_min'))} |")
    sp = results.get("speed")
    if sp:
        lines += ["", f"Sampling speed ({sp['what']}): the GAN {sp['gan_16_s']} s, video diffusion (its preset's "
                  f"sampler) {sp['diffusion_16_s']} s: {sp['diffusion_over_gan']}x."]
    lines += ["", "| video diffusion row | guidance w | " + " | ".join(SHORT) + " |",
              "|---|---:|" + "---:|" * len(SHORT)]
    for row in ROWS:
        for w, d in sorted(results.get(row, {}).get("by_guidance", {}).items(), key=lambda p: float(p[0])):
            lines.append(f"| {row} | {w} | " + " | ".join(str(f(d.get(k))) for k in SHORT) + " |")
    lines += ["", *provenance({k: results[k] for k in ROWS if k in results}, NAMES,
                              lambda k: f"python benchmarks/video.py --only {k}")]
    retired = [k for k, r in results.items() if k not in ROWS and isinstance(r, dict) and "what" in r]
    if retired:
        lines += ["", "Retired rows (settings since changed or removed; the command is how the row was trained, on "
                  "top of the preset of its commit; figures as stored):", "",
                  "| retired row | what | steps | " + " | ".join(SHORT) + " "
                                                                          "|", "|---|---|---:|" + "---:|" * len(SHORT)]
        for k in retired:
            r = results[k]
            lines.append(f"| {k} | {r['what']} | {f(r.get('steps'))} | " + " | ".join(str(f(r.get(x))) for x in SHORT)
                         + " |")
        lines += ["", *provenance({k: results[k] for k in retired}, {}, lambda k: results[k].get("command", "-"))]
    return "\n".join(lines)


def main() -> None:
    def add_args(ap):
        ap.add_argument("--clips", type=int, default=256, help="generated clips scored per model")
    rows_main(__doc__, ROWS, OUT, markdown, add_args)


if __name__ == "__main__":
    main()
