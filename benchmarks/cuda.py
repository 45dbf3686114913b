"""The CUDA paths: training speed of each family's preset on a GPU in fp32, with bf16 autocast (AMP, the
default on CUDA) and with AMP + torch.compile (`train.compile`), and the time of `aigc sample` there.

Run on a machine with an NVIDIA GPU (none of this runs in CI):

  python benchmarks/cuda.py --mnist DIR --text FILE --out results.json [--only ROW,ROW] [--steps N]

Each row trains `--steps` steps (no evaluations, samples or checkpoints in between) with the preset of its
family; `it_per_s` is the speed over the last logged window of 50 steps, which excludes start-up and the
compilation of the first steps; `wall_s` is the whole command's time, start-up and compilation included.
`sample_s` is `aigc sample RUN --num 64` as a user runs it (start-up included).

`--gap-steps 20000,60000 [--gap-batch B]` instead trains the MNIST diffusion preset for each number of steps
on the GPU and saves 2000 samples of each sampler in SAMPLERS (gap-STEPS.npz in --gap-dir): does the gap between
deterministic DDIM-25 and DDPM-1000 (issue 6) shrink as the model trains longer than a CPU's 20 minutes?
`--ddp` instead trains the gpt-text preset on one process and on 2 processes under torchrun (half the batch
each, the same global batch) with NCCL and with gloo (AIGC_DIST_BACKEND): with one GPU both ranks share it,
which NCCL may refuse; the row then keeps its error.
`--score-gap DIR` scores the gap files on this machine with the project's FID (mnist-clf-v1 features, the same
classifier as benchmarks/diffusion.py) and adds them to benchmarks/results/cuda.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aigc.io.rundir import read_metrics  # noqa: E402
from benchmarks.diffusion import SAMPLER_SETTINGS, draw  # noqa: E402
from benchmarks.run import machine, run  # noqa: E402

FAMILIES = {  # row: (family, data arguments, what a sample command needs)
    "diffusion-mnist": ("diffusion", ["--data", "mnist", "--data-dir", "{mnist}"], []),
    "diffusion-shapes": ("diffusion", ["--data", "shapes"], ["--prompt", "a red circle"]),
    "gpt-text": ("gpt", ["--data", "text", "--data-dir", "{text}"], ["--max-new-tokens", "256"]),
    "gan-mnist": ("gan", ["--data", "mnist", "--data-dir", "{mnist}"], []),
    "vae-mnist": ("vae", ["--data", "mnist", "--data-dir", "{mnist}"], []),
    "video-diffusion": ("video-diffusion", ["--data", "moving-shapes"], ["--prompt", "a red circle moving right"]),
    "video-gan": ("video-gan", ["--data", "moving-shapes"], []),
}
MODES = {"fp32": ["--set", "train.amp=false"], "amp": [], "amp+compile": ["--set", "train.compile=default"],
         "amp+cudagraphs": ["--set", "train.compile=reduce-overhead"]}
QUIET = ["--set", "train.eval_every=0", "--set", "train.sample_every=0", "--set", "train.ckpt_every=0"]


def aigc(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """`aigc ARGS` in a subprocess: (process, wall seconds)."""
    proc, wall, _ = run([sys.executable, "-m", "aigc", *args])
    return proc, wall


def row(name: str, mode: str, steps: int, paths: dict, runs: Path) -> dict:
    family, data, sample_args = FAMILIES[name]
    out = runs / f"{name}-{mode}"
    data = [a.format(**paths) for a in data]
    proc, wall = aigc(["train", family, *data, "--steps", str(steps), "--device", "cuda", *MODES[mode], *QUIET,
                       "--out", str(out), "--quiet", "--overwrite"])
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    rows = read_metrics(out)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    info = {"steps": train[-1]["step"], "it_per_s": train[-1]["it_per_s"], "wall_s": round(wall, 1),
            "eval_loss": evals[-1].get("eval_loss") if evals else None}
    if mode == "amp":
        kind = "s.txt" if name.startswith("gpt") else "s.gif" if name.startswith("video") else "s.png"
        proc, wall = aigc(["sample", str(out), "--num", "64", *sample_args, "--out", str(out / kind)])
        info["sample_s"] = round(wall, 1) if proc.returncode == 0 else proc.stderr[-500:]
    return info


def ddp_rows(text: str, steps: int, runs: Path) -> dict:
    """gpt-text on 1 process, then 2 processes (batch halved) with each backend: speed, final loss, backend."""
    import os

    import tomllib

    from benchmarks.dist import preset_batch

    batch = preset_batch("gpt", "text")
    out = {}
    for name, procs, backend in (("1 process", 1, None), ("2 processes nccl", 2, "nccl"),
                                 ("2 processes gloo", 2, "gloo")):
        folder = runs / f"ddp-{procs}-{backend}"
        args = ["train", "gpt", "--data", "text", "--data-dir", text, "--steps", str(steps), "--device", "cuda",
                "--set", f"data.batch_size={batch // procs}", *QUIET, "--out", str(folder), "--quiet", "--overwrite"]
        launcher = [sys.executable, "-m", "aigc"] if procs == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "aigc"]
        env = {**os.environ, **({"AIGC_DIST_BACKEND": backend} if backend else {})}
        proc, wall, _ = run([*launcher, *args], env=env)
        rows = read_metrics(folder) if (folder / "metrics.jsonl").is_file() else []
        stop = next((r for r in rows if r.get("kind") == "stop"), None)
        if proc.returncode or stop is None:
            lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
            out[name] = {"error": "\n".join(lines[-8:])[-1500:]}
        else:
            evals = [r for r in rows if r.get("kind") == "eval"]
            dist = next((r for r in rows if r.get("kind") == "dist"), {})
            block = tomllib.loads((folder / "config.toml").read_text())["model"]["block_size"]
            out[name] = {"steps": stop["step"], "train_loop_s": stop["elapsed_s"], "wall_s": round(wall, 1),
                         "tokens_per_s": round(stop["step"] * batch * block / stop["elapsed_s"]),
                         "val_loss": evals[-1].get("val_loss") if evals else None,
                         "backend": dist.get("backend"), "world_size": dist.get("world_size", 1)}
        print(name, out[name], flush=True)
    return out


SAMPLERS = ("ddim25", "ddim25_eta1.0", "dpm25",
            "ddpm1000")        # names in benchmarks/diffusion.py's SAMPLER_SETTINGS
GAP_NUM = 2000
RESULTS = ROOT / "benchmarks" / "results" / "cuda.json"


def gap_samples(steps: int, batch: int, mnist: str, runs: Path, out_dir: Path) -> dict:
    """Train the MNIST preset `steps` steps of `batch` images on the GPU (AMP), then GAP_NUM samples per
    sampler -> npz."""
    import numpy as np
    import torch

    from aigc.recipes import open_run

    out = runs / f"gap-{steps}"
    proc, wall = aigc(["train", "diffusion", "--data", "mnist", "--data-dir", mnist, "--steps", str(steps),
                       "--set", f"data.batch_size={batch}", "--device", "cuda", *QUIET, "--out", str(out), "--quiet",
                       "--overwrite"])
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    info = {"steps": steps, "batch_size": batch, "train_wall_s": round(wall, 1),
            "eval_loss": [r for r in read_metrics(out) if r.get("kind") == "eval"][-1].get("eval_loss")}
    cfg, recipe = open_run(out, torch.device("cuda"))
    data = recipe.load_data(cfg, out)
    arrays = {}
    for name in SAMPLERS:
        result, secs = draw(recipe, data, GAP_NUM, **SAMPLER_SETTINGS[name])
        info[f"{name}_sampling_s"] = round(secs, 1)
        arrays[name] = result.images
    np.savez_compressed(out_dir / f"gap-{steps}.npz", **arrays)
    return info


def score_gap(folder: Path, mnist: str) -> dict:
    """FID etc. of every gap-STEPS.npz in `folder` against the MNIST test split, with this machine's classifier."""
    import numpy as np
    import torch

    from aigc.config import data_config
    from aigc.data import load_dataset

    data = load_dataset(data_config("mnist", dir=mnist))
    out = {}
    for f in sorted(folder.glob("gap-*.npz"), key=lambda f: int(f.stem.split("-")[1])):
        arrays = np.load(f)
        scores = {}
        for name in arrays.files:
            u8 = torch.from_numpy(arrays[name]).permute(0, 3, 1, 2)
            q = data.score(u8)
            scores[name] = {k: q[k] for k in ("fid", "precision", "recall", "class_entropy", "num_samples")}
        scores["fid_over_ddpm1000"] = {k: round(scores[k]["fid"] / scores["ddpm1000"]["fid"], 3)
                                       for k in arrays.files if k != "ddpm1000"}
        out[f.stem.split("-")[1]] = scores
        print(f.stem, scores, flush=True)
    return out


def markdown(results: dict) -> str:
    """The README tables from cuda.json: it/s per preset and mode (one column per speed run's modes), and the
    sampler gap of the GPU-trained MNIST models."""
    out = []
    for i, speed in enumerate(results.get("speed_runs", []), 1):
        m = speed["machine"]
        modes = [mode for mode in MODES if any(k.endswith(" " + mode) for k in speed["rows"])]
        out += [f"Speed run {i} ({m['gpu']}, torch {m['torch']}; {speed.get('note', '')}): training it/s over "
                f"the last "
                "50 of 300 steps (whole command's wall s in brackets: start-up and compilation)", "",
                "| preset | " + " | ".join(modes) + " | `aigc sample --num 64` s |",
                "|---|" + "---:|" * (len(modes) + 1)]
        for name in FAMILIES:
            cells = [speed["rows"].get(f"{name} {mode}") for mode in modes]
            if not any(cells):
                continue
            text = [f"{c['it_per_s']} ({c['wall_s']})" if c and "it_per_s" in c else "-" for c in cells]
            sample = next((c["sample_s"] for c in cells if c and "sample_s" in c), "-")
            out.append(f"| {name} | " + " | ".join(text) + f" | {sample} |")
        out.append("")
    ddp = results.get("ddp")
    if ddp:
        out += [f"torchrun on CUDA ({ddp['machine']['gpu']}, {ddp['date']}; `--ddp`): the {ddp['preset']}, "
                f"{ddp['steps']} steps; 2 processes share the one GPU", "",
                "| setting | backend | tokens/s | training s | final val loss |", "|---|---|---:|---:|---:|"]
        for name, r in ddp["rows"].items():
            if "error" in r:
                out.append(f"| {name} | - | failed: {r['error']} | | |")
            else:
                out.append(f"| {name} | {r['backend'] or '-'} | {r['tokens_per_s']} | {r['train_loop_s']} | "
                           f"{r['val_loss']} |")
        out.append("")
    gap = results.get("sampler_gap")
    if gap:
        out += ["MNIST diffusion preset trained on the GPU (AMP), 2000 samples per sampler, FID scored on "
                f"{gap['scored_on']['cpu']} with the MNIST classifier of benchmarks/diffusion.py:", "",
                "| steps x batch | DDIM-25 FID | DDIM-25 eta=1 | DPM-Solver++(2M) 25 | DDPM-1000 | DDIM-25 / "
                "DDPM-1000 | "
                "DPM-25 / DDPM-1000 |", "|---|---:|---:|---:|---:|---:|---:|"]
        for steps, r in gap["runs"].items():
            ratio = r["fid_over_ddpm1000"]
            out.append(f"| {steps} x {r['batch_size']} | {r['ddim25']['fid']} | {r['ddim25_eta1.0']['fid']} | "
                       f"{r['dpm25']['fid']} | {r['ddpm1000']['fid']} | {ratio['ddim25']} | {ratio['dpm25']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist")
    ap.add_argument("--text")
    ap.add_argument("--out", help="where the speed rows go (JSON)")
    ap.add_argument("--gap-steps", help="comma-separated step counts: the sampler-gap runs instead of speed rows")
    ap.add_argument("--gap-batch", type=int, default=64, help="the sampler-gap runs' batch size (preset: 64)")
    ap.add_argument("--gap-dir", help="where the sampler-gap runs write gap-STEPS.npz and gap.json")
    ap.add_argument("--score-gap", metavar="DIR", help="score DIR/gap-*.npz here, into " + str(RESULTS))
    ap.add_argument("--ddp", action="store_true", help="the torchrun rows on CUDA instead of the speed rows")
    ap.add_argument("--runs", default="/tmp/aigc-cuda-runs")
    ap.add_argument("--only", default=",".join(FAMILIES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--table", action="store_true", help="print the README tables of " + str(RESULTS))
    args = ap.parse_args()
    import torch

    if args.table:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    if args.score_gap:
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        gap_dir = Path(args.score_gap)
        trained = json.loads((gap_dir / "gap.json").read_text())
        scores = score_gap(gap_dir, args.mnist)
        results["sampler_gap"] = {"trained_on": trained["machine"], "scored_on": machine(),
                                  "runs": {k: {**trained["runs"][k], **v} for k, v in scores.items()}}
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        return
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark measures the CUDA paths")
    results = {"machine": {**machine(), "gpu": torch.cuda.get_device_name(0)}, "rows": {}}
    if args.gap_steps:
        gap_dir = Path(args.gap_dir)
        results["runs"] = {}
        for steps in map(int, args.gap_steps.split(",")):
            results["runs"][str(steps)] = gap_samples(steps, args.gap_batch, args.mnist, Path(args.runs), gap_dir)
            print(steps, results["runs"][str(steps)], flush=True)
            (gap_dir / "gap.json").write_text(json.dumps(results, indent=1))
        return
    if args.ddp:
        results["ddp"] = ddp_rows(args.text, args.steps, Path(args.runs))
        Path(args.out).write_text(json.dumps(results, indent=1))
        return
    for name in args.only.split(","):
        for mode in args.modes.split(","):
            r = row(name, mode, args.steps, {"mnist": args.mnist, "text": args.text}, Path(args.runs))
            results["rows"][f"{name} {mode}"] = r
            print(name, mode, r, flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
