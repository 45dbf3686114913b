"""Video benchmarks (issue 7) on 2 CPU cores: moving-shapes (16 frames, 32x32), a 20-minute budget per model.

  python benchmarks/video.py [--only ROW,ROW] [--minutes 20] [--clips 256] [--table | --reread]

Rows (each trains with `aigc train` in a subprocess unless its run exists, then measures in-process):
  real            the real evaluation clips through the same detector (the metrics' ceiling)
  gan             video-gan, preset configs/video-gan-moving-shapes.toml (with the frame-difference discriminator)
  gan-nodiff      the same with model.frame_diff=0 (no frame-difference discriminator): the ablation
  gan-diff0.3     the same with model.frame_diff=0.3 (a weaker frame-difference term)
  diffusion       video-diffusion, the preset configs/video-diffusion-moving-shapes.toml before 2026-11-25
                  (PRESET_BEFORE: every video-diffusion row trains on top of it): 8 clips per step, each trained
                  as a random 8-frame window (DDIM-25, guidance 2), also scored at guidance 1 and 3
  diffusion-b8    the same on whole 16-frame clips (model.train_frames=0): twice the frames per step
  diffusion-b16   whole clips, 16 per step: the previous preset
  diffusion-joint whole clips with joint image-video training: of 64 clips per step, 56 are cut to one frame
  diffusion-corr0.9  the preset with noise correlated 0.9 between frames (model.noise_corr, PYoCo's mixed prior)
  diffusion-shift3   the preset with the noise schedule's SNR divided by 9 (model.schedule_shift = 3)
  diffusion-shift6   the same with the SNR divided by 36 (model.schedule_shift = 6)
  diffusion-dir   shift 3 plus three changes aimed at the direction's sign: channel-separated 3D temporal
                  convolutions (model.temporal_conv), half the training windows starting at frame 0
                  (model.window_start0), and a SiLU on the embedding before each block's scale/shift (model.emb_act)
  diffusion-shift3-w0  shift 3 with half the training windows starting at frame 0 (model.window_start0 = 0.5)
  diffusion-shift3-w0-dpm  the rerun's model sampled with DPM-Solver++(2M), 25 steps (model.sampler), in place of DDIM
  diffusion-shift3-w0-act  shift3-w0 with a SiLU on the embedding before each block's scale/shift (model.emb_act),
                  alone: the row diffusion-dir changed it together with two other settings
  diffusion-shift3-w0-act-fmap  the act row with a caption map per frame (model.frame_map): the caption channels
                  of the input are a function of the caption and the frame's index, so the mean clip of a caption
                  (where the shape is likely to be in frame i: right of frame 0's place for "moving right") can be
                  drawn at the highest noise, where the noisy input shows nothing
  diffusion-shift3-w0-act-fmap-40min  the same trained for 40 minutes, twice the goal's budget: does the direction
                  come with more steps on this machine?
  diffusion-shift3-w0-fmap  shift3-w0 with frame_map and without emb_act, in the goal's 20 minutes
  diffusion-shift3-w0-fmap-dyn-3001steps  the fmap row with dynamic temporal filters (model.temporal_conv =
                  "dynamic"): each clip's depthwise 3x3x3 kernels are made from its caption and noise level, beside
                  the 1D convolution, so a direction word can tilt the space-time filters itself; trained the fmap
                  row's 3001 steps (about 30 minutes: a step cost 1.45x with the first kernel, a grouped conv3d),
                  to compare at equal steps
  diffusion-shift3-w0-fmap-dyn-2025steps  the same for 2025 steps: what the first kernel ran in 20 minutes
  diffusion-shift3-w0-fmap-dyn  the same in the goal's 20 minutes, with the faster kernel (three depthwise 2D
                  convolutions, one per frame offset: a step costs 1.19x the fmap row's); the preset's settings
                  since 2026-11-25
  diffusion-shift3-w0-fmap-dyn-quiet  the same 20 minutes with no progress evaluation or sample grid within them
                  (train.eval_every = train.sample_every = 0, as benchmarks/run.py trains the image models): each
                  took about 87 s of the budget at steps 1000 and 2000 (500 clips' loss, then 16 clips sampled)
  diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1  the quiet row trained again from another seed (--seed 1) and sampled
                  at guidance 3 (the preset's since late 2026-11-25): set and started before it was scored, to check that
                  the quiet row's figures at w = 3, the best of three guidances read afterwards, hold on a fresh model
  diffusion-shift3-w0-fmap-dyn-quiet-w3-eta1  the quiet row's model sampled at guidance 3 with DDIM eta = 1 (fresh
                  noise at every step, as DDPM) instead of 0: can stochastic steps undo the frames where a shape
                  splits in two or smears, the glitches left after the fit reading?
  diffusion-shift3-w0-fmap-dyn-quiet-w4  the quiet row's model sampled at guidance 4 (consistency rose with w)
  diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1-eta1  the seed-1 model sampled with eta = 1: eta was chosen on the
                  seed-0 model (row ...-quiet-w3-eta1), so this checks the choice on a model it was not chosen on
  diffusion-shift3-w0-fmap-dyn-w3-eta1  the preset's model trained with its progress evaluations (row
                  ...-fmap-dyn), sampled at guidance 3 with eta = 1: what a user of the preset gets in 20 minutes
  diffusion-preset-quiet-seed0, -seed1, -seed2  the preset as it is since late 2026-11-25 (PRESET_NOW:
                  guidance 3, DDIM eta = 1), 20 minutes with no progress evaluations, from seeds 0, 1 and 2, trained on
                  2026-11-25 on a machine that ran the same training step 2.2x faster than the earlier AMD EPYC rows
                  (about 0.19 s against 0.42 s; the same CPU name, the same torch 2.13.0): how often does the preset
                  meet the goals, and what do twice the steps in the same 20 minutes buy?
  diffusion-shift3-w0-fmap-dyn-quiet-ddim50  the quiet row's model (no new training) sampled with 50 DDIM steps: is
                  part of the inconsistency between frames the sampler's error rather than the model's?
  diffusion-shift3-w0-fmap-dyn-40min  the same for 40 minutes: does the sign stay while the shapes sharpen (the
                  40-minute fmap row had frame accuracy 0.94 and consistency 0.57, the sign at chance)?
  diffusion-shift3-w0-fmap-40min  the 40-minute row without model.emb_act: every run with emb_act is at chance on
                  the direction's axis, the Xeon shift3-w0 runs without it were not; same steps, one setting apart
  diffusion-shift3-w0-fmap-sep-40min  that row with channel-separated 3D temporal convolutions (model.temporal_conv
                  = "separated"): a depthwise 3x3x3 channel can be a filter tilted in space-time, and the caption's
                  scale on the channels can pick the left-tilted or the right-tilted ones
  diffusion-shift3-w0-b4  shift3-w0 with 4 clips per step instead of 8: about twice the steps in the same minutes
  diffusion-eps   the previous preset with eps-prediction, no caption map, no coordinate channels
  diffusion-shift3-w0-rerun  the same settings trained again (on another machine: see the table's note)
  diffusion-shift3-w0-win8  the rerun's model (no new training) sampled as it was trained: each denoising step
                  runs 8-frame windows starting at frames 0, 4 and 8 and averages them (model.sample_window = 8);
                  scored at the preset's guidance only
  diffusion-shift3-w0-rel  shift3-w0 with a learned bias per frame offset in the temporal attention
                  (model.temporal_pos = "relative", as in Video Diffusion Models)
  diffusion-shift3-w0-rel-win8  that model sampled in 8-frame windows: whole 16-frame clips use frame offsets
                  of 8 to 15, whose biases it never trained (they stay 0)
  diffusion-shift3-w0-st  shift3-w0 with space-time attention: the attention blocks attend over every pixel of
                  every frame of a clip at once (model.spacetime_attention = "all"), in place of per-frame spatial
                  plus per-pixel temporal attention (model.temporal_attention = false)
  diffusion-shift3-w0-stmid  shift3-w0 with space-time attention in the middle block only (model.spacetime_attention
                  = "mid"); the other attention blocks stay per frame, and the temporal attention stays
  diffusion-shift3-w0-st-win8  that model sampled in 8-frame windows: its attention then sees the 8 * 64 tokens
                  it was trained on, not the 16 * 64 of a whole clip
Each model row: training steps, clips/s and frames/s (the frames the network trains on), peak RSS of training,
the metrics of metrics/video.py on --clips clips whose prompts are the evaluation captions in turn, the time to
generate 16 clips in-process (clips/s), and the wall time and peak RSS of `aigc sample RUN --num 16` as a user
runs it.
The detector reads each frame's shape as its largest foreground component and counts the frames with specks of
noise outside it (stray frames); rows scored before 2026-11-24 read every foreground pixel as the shape (the strict
reading, marked in the tables), which one speck anywhere in a frame throws off. Rows scored since also give the
strict reading of the same clips, and their clips are kept as bench_runs/ROW[-wW]-clips.npz. Since 2026-11-25 the
detector told shapes by the nearest rendered template at the found box's size, not by fill and top-half ratios, and
later that day by a least-squares fit of the rendered shapes to the frame's brightness, each shape at its best
size and position (shapes.detect's shape_rule "fit"): generated shapes have soft edges that widen the box and cut
its corners. --reread read the kept clips again each time (rows without kept clips stay as scored); the rows carry
the older readings of the same clips under "template", "ratio" and "strict".
Results: benchmarks/results/video.json; runs in bench_runs/ (not in git)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import rows_main, run, train_run  # noqa: E402

RUNS = ROOT / "bench_runs"
# The video-diffusion preset before 2026-11-25 (the rows add their settings to it; the preset since is FMAP_DYN's,
# sampled at guidance 3 with DDIM eta = 1 since late 2026-11-25):
PRESET_BEFORE = ["--set", "model.schedule_shift=1", "--set", "model.window_start0=0", "--set", "model.frame_map=false",
                 "--set", 'model.temporal_conv="1d"', "--set", "model.guidance=2.0", "--set", "model.eta=0.0"]
WHOLE16 = ["--set", "model.train_frames=0", "--set", "data.batch_size=16"]     # the previous preset: whole clips
SHIFT3_W0 = ["--set", "model.schedule_shift=3", "--set", "model.window_start0=0.5"]   # row diffusion-shift3-w0
FMAP = [*SHIFT3_W0, "--set", "model.frame_map=true"]                        # row ...-fmap-40min
ACT_FMAP = [*FMAP, "--set", "model.emb_act=true"]                           # rows ...-act-fmap[-40min]
FMAP_DYN = [*FMAP, "--set", 'model.temporal_conv="dynamic"']                 # rows ...-fmap-dyn[-3001steps]
QUIET = ["--set", "train.eval_every=0", "--set", "train.sample_every=0"]   # no progress evals/samples in the budget
GUIDED = ["--set", "model.guidance=3.0"]                                   # the preset's guidance since late 2026-11-25
PRESET_NOW = [*FMAP_DYN, *GUIDED, "--set", "model.eta=1.0"]                  # the preset since late 2026-11-25
OUT = ROOT / "benchmarks" / "results" / "video.json"
TRAIN = {
    "gan": ("video-gan-20min", "video-gan", []),
    "gan-nodiff": ("video-gan-nodiff-20min", "video-gan", ["--set", "model.frame_diff=0"]),
    "gan-diff0.3": ("video-gan-diff0.3-20min", "video-gan", ["--set", "model.frame_diff=0.3"]),
    "diffusion": ("video-diffusion-w8-20min", "video-diffusion", []),
    "diffusion-b8": ("video-diffusion-b8-20min", "video-diffusion", ["--set", "model.train_frames=0"]),
    "diffusion-b16": ("video-diffusion-20min", "video-diffusion", [*WHOLE16]),
    "diffusion-joint": ("video-diffusion-joint-20min", "video-diffusion",
                        ["--set", "model.train_frames=0", "--set", "data.batch_size=64", "--set", "model.joint_images=56"]),
    "diffusion-corr0.9": ("video-diffusion-corr0.9-20min", "video-diffusion", ["--set", "model.noise_corr=0.9"]),
    "diffusion-shift3": ("video-diffusion-shift3-20min", "video-diffusion", ["--set", "model.schedule_shift=3"]),
    "diffusion-shift6": ("video-diffusion-shift6-20min", "video-diffusion", ["--set", "model.schedule_shift=6"]),
    "diffusion-shift3-w0": ("video-diffusion-shift3-w0-20min", "video-diffusion", [*SHIFT3_W0]),
    "diffusion-shift3-w0-rerun": ("video-diffusion-shift3-w0-rerun-20min", "video-diffusion", [*SHIFT3_W0]),
    "diffusion-shift3-w0-rel": ("video-diffusion-shift3-w0-rel-20min", "video-diffusion",
                                [*SHIFT3_W0, "--set", 'model.temporal_pos="relative"']),
    "diffusion-shift3-w0-st": ("video-diffusion-shift3-w0-st-20min", "video-diffusion",
                               [*SHIFT3_W0, "--set", 'model.spacetime_attention="all"',
                                "--set", "model.temporal_attention=false"]),
    "diffusion-shift3-w0-stmid": ("video-diffusion-shift3-w0-stmid-20min", "video-diffusion",
                                  [*SHIFT3_W0, "--set", 'model.spacetime_attention="mid"']),
    "diffusion-shift3-w0-act": ("video-diffusion-shift3-w0-act-20min", "video-diffusion",
                                [*SHIFT3_W0, "--set", "model.emb_act=true"]),
    "diffusion-shift3-w0-act-fmap": ("video-diffusion-shift3-w0-act-fmap-20min", "video-diffusion", ACT_FMAP),
    "diffusion-shift3-w0-act-fmap-40min": ("video-diffusion-shift3-w0-act-fmap-40min", "video-diffusion", ACT_FMAP),
    "diffusion-shift3-w0-fmap": ("video-diffusion-shift3-w0-fmap-20min", "video-diffusion", FMAP),
    "diffusion-shift3-w0-fmap-40min": ("video-diffusion-shift3-w0-fmap-40min", "video-diffusion", FMAP),
    "diffusion-shift3-w0-fmap-dyn": ("video-diffusion-shift3-w0-fmap-dyn-20min", "video-diffusion", FMAP_DYN),
    "diffusion-shift3-w0-fmap-dyn-3001steps": ("video-diffusion-shift3-w0-fmap-dyn-3001steps", "video-diffusion",
                                               [*FMAP_DYN, "--steps", "3001"]),
    "diffusion-shift3-w0-fmap-dyn-40min": ("video-diffusion-shift3-w0-fmap-dyn-40min", "video-diffusion", FMAP_DYN),
    "diffusion-shift3-w0-fmap-dyn-2025steps": ("video-diffusion-shift3-w0-fmap-dyn-2025steps", "video-diffusion",
                                               [*FMAP_DYN, "--steps", "2025"]),
    "diffusion-shift3-w0-fmap-dyn-quiet": ("video-diffusion-shift3-w0-fmap-dyn-quiet-20min", "video-diffusion",
                                           [*FMAP_DYN, *QUIET]),
    "diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1": ("video-diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1-20min",
                                                    "video-diffusion", [*FMAP_DYN, *QUIET, *GUIDED, "--seed", "1"]),
    "diffusion-preset-quiet-seed0": ("video-diffusion-preset-quiet-seed0-20min", "video-diffusion",
                                     [*PRESET_NOW, *QUIET, "--seed", "0"]),
    "diffusion-preset-quiet-seed1": ("video-diffusion-preset-quiet-seed1-20min", "video-diffusion",
                                     [*PRESET_NOW, *QUIET, "--seed", "1"]),
    "diffusion-preset-quiet-seed2": ("video-diffusion-preset-quiet-seed2-20min", "video-diffusion",
                                     [*PRESET_NOW, *QUIET, "--seed", "2"]),
    "diffusion-shift3-w0-fmap-sep-40min": ("video-diffusion-shift3-w0-fmap-sep-40min", "video-diffusion",
                                           [*FMAP, "--set", 'model.temporal_conv="separated"']),
    "diffusion-shift3-w0-b4": ("video-diffusion-shift3-w0-b4-20min", "video-diffusion",
                               [*SHIFT3_W0, "--set", "data.batch_size=4"]),
    "diffusion-dir": ("video-diffusion-dir-20min", "video-diffusion",
                      ["--set", "model.schedule_shift=3", "--set", 'model.temporal_conv="separated"',
                       "--set", "model.window_start0=0.5", "--set", "model.emb_act=true"]),
    "diffusion-eps": ("video-diffusion-eps-20min", "video-diffusion",
                      [*WHOLE16, "--set", 'model.prediction="eps"', "--set", "model.cond_map=0", "--set", "model.coords=false"]),
}
# Rows trained for another budget than --minutes: a diagnostic of how the metrics grow with training, over the goal's budget.
MINUTES = {"diffusion-shift3-w0-act-fmap-40min": 40, "diffusion-shift3-w0-fmap-40min": 40,
           "diffusion-shift3-w0-fmap-sep-40min": 40, "diffusion-shift3-w0-fmap-dyn-40min": 40,
           "diffusion-shift3-w0-fmap-dyn-3001steps": 60,    # caps: these train a fixed number of steps
           "diffusion-shift3-w0-fmap-dyn-2025steps": 60}
# Rows that sample another row's trained model differently (its run, no training): row -> (row, model settings).
RESAMPLED = {
    "diffusion-shift3-w0-win8": ("diffusion-shift3-w0-rerun", {"sample_window": 8}),
    "diffusion-shift3-w0-rel-win8": ("diffusion-shift3-w0-rel", {"sample_window": 8}),
    "diffusion-shift3-w0-st-win8": ("diffusion-shift3-w0-st", {"sample_window": 8}),
    "diffusion-shift3-w0-dpm": ("diffusion-shift3-w0-rerun", {"sampler": "dpm++2m"}),
    "diffusion-shift3-w0-fmap-dyn-quiet-ddim50": ("diffusion-shift3-w0-fmap-dyn-quiet", {"sample_steps": 50}),
    "diffusion-shift3-w0-fmap-dyn-quiet-w3-eta1": ("diffusion-shift3-w0-fmap-dyn-quiet", {"guidance": 3.0, "eta": 1.0}),
    "diffusion-shift3-w0-fmap-dyn-quiet-w4": ("diffusion-shift3-w0-fmap-dyn-quiet", {"guidance": 4.0}),
    "diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1-eta1": ("diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1", {"eta": 1.0}),
    "diffusion-shift3-w0-fmap-dyn-w3-eta1": ("diffusion-shift3-w0-fmap-dyn", {"guidance": 3.0, "eta": 1.0}),
}
KEYS = ("frame_accuracy", "shape_frame_accuracy", "color_frame_accuracy", "direction_accuracy",
        "temporal_consistency", "prompt_accuracy", "motion_smoothness", "mean_speed", "stray_share")
STRICT_KEYS = ("frame_accuracy", "direction_accuracy", "temporal_consistency", "prompt_accuracy")


def train(row: str, minutes: float) -> tuple[Path, dict]:
    name, family, args = TRAIN[row]
    out = RUNS / name
    if family == "video-diffusion":            # every row's settings are on top of the preset the rows were made with
        args = [*PRESET_BEFORE, *args]
    return out, train_run(out, [family, "--data", "moving-shapes", *args], MINUTES.get(row, minutes), "clips")


def scored(recipe, data, num: int, save: Path | None = None, **kw) -> dict:
    """Metrics of `num` generated clips (seed 0), read with the detector's component reading and, under
    "strict", with every foreground pixel read as the shape (how rows were scored before 2026-11-24).
    `save`: also write the clips there (npz `videos` uint8 (N, T, H, W, C), `prompts`), so that a later
    change of the detector can read them again without sampling again."""
    import numpy as np

    from aigc.io.images import video_to_uint8

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        videos, _, prompts = recipe.generate_for_eval(data, num, **kw)
    secs = time.perf_counter() - t0
    clips = video_to_uint8(videos)
    if save is not None:
        np.savez_compressed(save, videos=clips, prompts=np.array(prompts if prompts is not None else [], dtype=str))
    return {**read_both(data, torch.from_numpy(clips).permute(0, 4, 1, 2, 3), prompts), "num_clips": num,
            "sampling_s": round(secs, 1)}


def read_both(data, clips: torch.Tensor, prompts) -> dict:
    """The KEYS of uint8 clips (N, C, T, H, W) as the detector reads them now (largest component, shapes told
    by a least-squares fit of rendered shapes: the "fit" rule); STRICT_KEYS under "template" with shapes told
    by the nearest template at the box's size (how rows were scored on 2026-11-25), under "ratio" with shapes
    told by their fill and top-half ratios (2026-11-24 to 2026-11-25) and under "strict" with that rule and
    every foreground pixel read as the shape (before 2026-11-24)."""
    from aigc.evaluation import score_videos

    q = score_videos(data, clips, prompts)
    older = {"template": score_videos(data, clips, prompts, shape_rule="template"),
             "ratio": score_videos(data, clips, prompts, shape_rule="ratio"),
             "strict": score_videos(data, clips, prompts, component=False, shape_rule="ratio")}
    return {**{k: q.get(k) for k in KEYS}, "detector": "fit",
            **{name: {k: r.get(k) for k in STRICT_KEYS} for name, r in older.items()}}


def reread() -> None:
    """Read every row's kept clips (bench_runs/ROW[-wW]-clips.npz) again with the current detector and update
    their figures in the results file; rows without kept clips stay as they were scored. The readings stored
    before (the template rule's figures of 2026-11-25 and the ratio rule's) must come out the same from the
    files: a check that they hold the clips those figures came from."""
    import json

    import numpy as np

    from aigc.config import DataConfig
    from aigc.data import load_dataset

    results = json.loads(OUT.read_text())
    data = load_dataset(DataConfig(name="moving-shapes", num_eval=8))
    for row, r in results.items():
        if row == "machine" or not (RUNS / f"{row}-clips.npz").is_file():
            continue
        parts = [(r, RUNS / f"{row}-clips.npz")] + [
            (d, RUNS / f"{row}-w{float(w):g}-clips.npz") for w, d in r.get("by_guidance", {}).items()]
        for d, path in parts:
            if not path.is_file():                  # the guidance of the row's own figures: its main clips
                path = RUNS / f"{row}-clips.npz"
            z = np.load(path)
            videos, prompts = torch.from_numpy(z["videos"]).permute(0, 4, 1, 2, 3), [str(p) for p in z["prompts"]]
            new = read_both(data, videos, prompts or None)
            main = "template" if d.get("detector") == "template" else "fit"    # the rule of the row's own figures
            now = {"fit": {k: new.get(k) for k in STRICT_KEYS}, **new}
            for name, before in ((main, {k: d.get(k) for k in STRICT_KEYS}), ("ratio", d.get("ratio"))):
                if now[name] != before:
                    raise SystemExit(f"{path}: the {name} reading {now[name]} is not the stored {before}: not the same clips?")
            d.update({k: v for k, v in new.items() if k in d or k in ("detector", "template", "ratio")})
        print(row, {k: r.get(k) for k in STRICT_KEYS}, "template reading:", r["template"], flush=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")


def frames_per_s(recipe, cfg, info: dict) -> float:
    """Frames the generator / U-Net trained on per second (whole clips, windows, single frames)."""
    return round(info["steps"] * recipe.frames_per_step(cfg) / info["train_s"], 1)


def model_row(row: str, args) -> dict:
    from aigc.recipes import open_run

    base, sampling = RESAMPLED.get(row, (row, {}))
    run_dir, info = train(base, args.minutes)
    if sampling:                               # the training figures are the base row's
        info = {**info, "sampling": sampling}
    cfg, recipe = open_run(run_dir, torch.device("cpu"))
    for key, value in sampling.items():
        setattr(cfg.model, key, value)
    data = recipe.load_data(cfg, run_dir)
    out = {**info, "train_frames_per_s": frames_per_s(recipe, cfg, info),
           **scored(recipe, data, args.clips, save=RUNS / f"{row}-clips.npz")}
    if row.startswith("diffusion") and not sampling:
        out["by_guidance"] = {str(w): scored(recipe, data, args.clips, save=RUNS / f"{row}-w{w:g}-clips.npz", guidance=w)
                              for w in (1.0, 2.0, 3.0) if w != cfg.model.guidance}
        out["by_guidance"][str(cfg.model.guidance)] = {k: out[k] for k in (*KEYS, "num_clips", "sampling_s", "strict", "ratio", "template", "detector")}
    prompts = recipe.random_prompts(16, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        if hasattr(recipe, "sample_for"):
            recipe.sample_for(None, prompts, 16)
        else:
            recipe.clips_for(prompts, 16)
    secs = time.perf_counter() - t0
    out.update({"gen16_s": round(secs, 2), "gen_clips_per_s": round(16 / secs, 2)})
    if sampling:                               # `aigc sample` samples as the run's config says
        return out
    proc, wall, rss = run([sys.executable, "-m", "aigc", "sample", str(run_dir), "--num", "16", "--prompt",
                           "a red circle moving right", "--out", str(RUNS / f"{row}-16.gif")])
    if proc.returncode:
        raise SystemExit(f"sampling failed:\n{proc.stderr[-3000:]}")
    out.update({"cli_sample16_wall_s": round(wall, 1), "cli_sample16_peak_rss_mb": round(rss)})
    return out


def real_row(args) -> dict:
    from aigc.config import DataConfig
    from aigc.data import load_dataset

    data = load_dataset(DataConfig(name="moving-shapes", num_eval=args.clips))
    return {**read_both(data, data.eval["video"], data.eval["caption"]), "num_clips": args.clips}


ROWS = {"real": real_row, **{row: (lambda r: lambda a: model_row(r, a))(row) for row in (*TRAIN, *RESAMPLED)}}
NAMES = {"real": "real clips (detector ceiling)", "gan": "video GAN + frame-difference D",
         "gan-diff0.3": "video GAN, frame-difference D at weight 0.3", "gan-nodiff": "video GAN, no frame-difference D",
         "diffusion": "video diffusion (the preset before 2026-11-25): 8 clips per step as 8-frame windows (DDIM-25, w=2)",
         "diffusion-b8": "video diffusion, 8 whole 16-frame clips per step",
         "diffusion-b16": "video diffusion, 16 whole clips per step (the previous preset)",
         "diffusion-joint": "video diffusion, joint image-video: 8 whole clips + 56 single frames per step",
         "diffusion-corr0.9": "video diffusion, the preset with frame-correlated noise (model.noise_corr = 0.9)",
         "diffusion-shift3": "video diffusion, the preset with the noise schedule shifted (model.schedule_shift = 3)",
         "diffusion-shift6": "video diffusion, the preset with the noise schedule shifted more (model.schedule_shift = 6; 128 clips)",
         "diffusion-shift3-w0": "video diffusion, shift 3 with half the training windows starting at frame 0",
         "diffusion-shift3-w0-rerun": "the same, trained again on a slower machine",
         "diffusion-shift3-w0-win8": "that model sampled in half-overlapping 8-frame windows (model.sample_window = 8)",
         "diffusion-shift3-w0-rel": "shift 3, frame-0 windows and relative positions in the temporal attention",
         "diffusion-shift3-w0-rel-win8": "that model sampled in 8-frame windows (the offsets it was trained on)",
         "diffusion-shift3-w0-st": "shift 3, frame-0 windows and space-time attention (all frames' pixels at once)",
         "diffusion-shift3-w0-stmid": "shift 3, frame-0 windows and space-time attention in the middle block only",
         "diffusion-shift3-w0-st-win8": "that model sampled in 8-frame windows (the token count it was trained on)",
         "diffusion-shift3-w0-dpm": "the rerun's model sampled with DPM-Solver++(2M), 25 steps",
         "diffusion-shift3-w0-act": "shift 3, frame-0 windows and a SiLU on the embedding (model.emb_act)",
         "diffusion-shift3-w0-act-fmap": "the act row with a caption map per frame (model.frame_map)",
         "diffusion-shift3-w0-act-fmap-40min": "the same trained for 40 minutes (twice the budget; steps in 40 min, "
                                               "about 500 lost to other work on the CPU)",
         "diffusion-shift3-w0-fmap": "shift 3, frame-0 windows, frame_map, no emb_act",
         "diffusion-shift3-w0-fmap-dyn-3001steps": "the fmap row with space-time filters made from the caption "
                                                   "(model.temporal_conv = \"dynamic\"), its 3001 steps (30 min)",
         "diffusion-shift3-w0-fmap-dyn-2025steps": "the same, 2025 steps (what the first, slower kernel ran in 20 "
                                                   "minutes)",
         "diffusion-shift3-w0-fmap-dyn": "the same in 20 minutes (the faster kernel): the preset since 2026-11-25",
         "diffusion-shift3-w0-fmap-dyn-quiet": "the same in 20 minutes of training only (no progress evaluations or "
                                               "samples within them, as the image benchmarks train)",
         "diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1": "the same trained again from seed 1, sampled at guidance 3 "
                                                        "(DDIM-25, eta 0)",
         "diffusion-shift3-w0-fmap-dyn-quiet-w3-eta1": "the quiet model sampled at guidance 3 with DDIM eta = 1",
         "diffusion-shift3-w0-fmap-dyn-quiet-w4": "the quiet model sampled at guidance 4",
         "diffusion-shift3-w0-fmap-dyn-quiet-w3-seed1-eta1": "the seed-1 model sampled at guidance 3 with DDIM eta = 1",
         "diffusion-shift3-w0-fmap-dyn-w3-eta1": "the preset's model with progress evaluations (row ...-fmap-dyn), "
                                                 "sampled at guidance 3 with DDIM eta = 1",
         "diffusion-preset-quiet-seed0": "the preset since late 2026-11-25 (w = 3, eta 1), 20 minutes with no "
                                         "progress evaluations, seed 0, on a 2.2x faster machine (same CPU name)",
         "diffusion-preset-quiet-seed1": "the same from seed 1",
         "diffusion-preset-quiet-seed2": "the same from seed 2",
         "diffusion-shift3-w0-fmap-dyn-quiet-ddim50": "that model sampled with 50 DDIM steps instead of 25",
         "diffusion-shift3-w0-fmap-dyn-40min": "the same, 40 minutes (twice the budget)",
         "diffusion-shift3-w0-fmap-40min": "shift 3, frame-0 windows, frame_map, no emb_act, 40 minutes (twice the "
                                           "budget)",
         "diffusion-shift3-w0-fmap-sep-40min": "the same with channel-separated 3D temporal convolutions, 40 minutes",
         "diffusion-shift3-w0-b4": "shift 3, frame-0 windows, 4 clips per step (twice the steps)",
         "diffusion-dir": "video diffusion, shift 3 + 3D temporal convolutions + half the windows from frame 0 + "
                          "SiLU on the embedding",
         "diffusion-eps": "video diffusion, 16 whole clips per step, eps-prediction, no caption map or coordinates"}


def markdown(results: dict) -> str:
    f = lambda v: "-" if v is None else v                              # noqa: E731
    cpu = lambda r: r.get("machine", results.get("machine", {})).get("cpu")     # noqa: E731
    # the machine of the earliest trained rows (the real row's figures do not depend on the machine)
    first = cpu(next(results[k] for k in NAMES if "steps" in results.get(k, {})))
    mark = lambda r: " ‡" if cpu(r) != first else ""                   # noqa: E731
    strict = lambda r: "" if r.get("detector") in ("component", "template", "fit") else " §"   # noqa: E731
    lines = ["| model | steps (20 min unless the row says otherwise) | train clips/s / frames/s | train peak RSS MB | frame acc (shape+color) | shape | color | direction acc | "
             "temporal consistency | prompt acc | motion smoothness (px) | mean speed (px/frame) | stray frames | 16 clips | "
             "`aigc sample --num 16` wall / peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in NAMES:
        r = results.get(row)
        if not r:
            continue
        gen = f"{r['gen16_s']} s ({r['gen_clips_per_s']} clips/s)" if "gen16_s" in r else ""
        cli = f"{r['cli_sample16_wall_s']} s / {r['cli_sample16_peak_rss_mb']} MB" if "cli_sample16_wall_s" in r else ""
        lines.append(f"| {NAMES[row]}{strict(r)} | {f(r.get('steps'))}{mark(r)} | {f(r.get('train_clips_per_s'))} / "
                     f"{f(r.get('train_frames_per_s'))} | {f(r.get('train_peak_rss_mb'))} | "
                     + " | ".join(str(f(r.get(k))) for k in KEYS) + f" | {gen} | {cli} |")
    others = sorted({cpu(r) for k, r in results.items() if k in NAMES and cpu(r) != first})
    if others:
        lines += ["", f"‡ trained and measured on {', '.join(others)} (2 cores), the other rows on {first}: the same "
                  "20 minutes give a different number of steps, so compare ‡ rows with each other. Machines of one "
                  "name differ too: the diffusion-preset-quiet rows ran the same training step 2.2x faster than "
                  "the AMD EPYC rows before them (train clips/s); rows since carry a reference speed "
                  "(benchmarks/run.py reference_ms, 3.8 ms on that machine)."]
    if any(strict(r) for k, r in results.items() if k in NAMES):
        lines += ["", "§ scored before the detector read the largest foreground component: every foreground pixel "
                  "counted as the shape, so one speck of noise anywhere in a frame threw its reading off, and shapes "
                  "were told by their fill and top-half ratios (the ratio rule), which reads small squares and "
                  "triangles with a few missing pixels as circles. Their clips were not kept, and their runs are "
                  "gone or were not sampled again. The last table shows how much lower the older readings are on "
                  "the rows that have all three."]
    lines += ["", "| video diffusion model | guidance w | frame acc | direction acc | temporal consistency | prompt acc | "
              "motion smoothness | stray frames |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in NAMES:
        r = results.get(row, {})
        d = r.get("by_guidance", {})
        for w in sorted(d, key=float):
            lines.append(f"| {NAMES[row].split(' (DDIM')[0]}{strict(r)} | {w} | " + " | ".join(
                str(f(d[w].get(k))) for k in ("frame_accuracy", "direction_accuracy", "temporal_consistency",
                                              "prompt_accuracy", "motion_smoothness", "stray_share")) + " |")
    four = [row for row in NAMES if "template" in results.get(row, {})]
    if four:
        lines += ["", "The same clips read four ways, at the model's own guidance: now (largest component, shapes told "
                  "by a least-squares fit of rendered shapes to the brightness, each at its best size and position) / "
                  "template (shapes told by the rendered shape at the found box's size that overlaps most: the rows' "
                  "figures on 2026-11-25) / ratio (shapes told by fill and top-half ratios: 2026-11-24 to 2026-11-25) "
                  "/ strict (every foreground pixel, ratio rule: before 2026-11-24):",
                  "", "| model | stray frames | frame acc | direction acc | temporal consistency | prompt acc |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in four:
            r = results[row]
            lines.append(f"| {NAMES[row].split(' (DDIM')[0]} | {f(r.get('stray_share'))} | " + " | ".join(
                " / ".join(str(f(v.get(k))) for v in (r, r["template"], r["ratio"], r["strict"])) for k in STRICT_KEYS) + " |")
    return "\n".join(lines)


def main() -> None:
    import argparse

    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--reread", action="store_true")
    if first.parse_known_args()[0].reread:
        return reread()

    def add_args(ap):
        ap.add_argument("--clips", type=int, default=256, help="generated clips scored per model")
        ap.add_argument("--reread", action="store_true", help="read every row's kept clips again with the current "
                                                              "detector (no training or sampling) and exit")
    rows_main(__doc__, ROWS, OUT, markdown, add_args)


if __name__ == "__main__":
    main()
