"""Data-parallel training on one 2-core machine (issue 33): 1 process x 2 threads against 2 processes x 1 thread
(torchrun, gloo), the same global batch and steps, so the two runs take the same steps (aigc/train/dist.py).

  python benchmarks/dist.py [--data ../shared/data/tinyshakespeare/input.txt] [--gpt-steps 300] [--diffusion-steps 60]

gpt        the gpt-text preset on tiny-shakespeare: tokens/s = steps x batch x block_size / training-loop seconds,
           and the whole-validation loss at the end (the same steps, so the same loss is expected: the time to it
           is the training time)
diffusion  the diffusion-shapes preset: images/s = steps x batch / training-loop seconds, and the final eval loss
Each row is one run per setting, started one after the other. Results: benchmarks/results/dist.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import commit, machine, provenance  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "dist.json"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def preset_batch(family: str, dataset: str) -> int:
    import tomllib

    return tomllib.loads((ROOT / "aigc" / "configs" / f"{family}-{dataset}.toml").read_text())["data"]["batch_size"]


def run(family: str, dataset: str, steps: int, out: Path, procs: int, data: str | None) -> dict:
    """The preset's global batch on `procs` processes (data.batch_size is per process: the preset's / procs)."""
    args = ["train", family, "--data", dataset, "--steps", str(steps), "--out", str(out), "--quiet",
            "--set", f"data.batch_size={preset_batch(family, dataset) // procs}",
            "--set", "train.eval_every=0", "--set", "train.sample_every=0", "--set", "train.ckpt_every=0"]
    if data:
        args += ["--data-dir", data]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs)}
    launcher = [sys.executable, "-m", "aigc"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "aigc"]
    t0 = time.perf_counter()
    p = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"{family} x{procs} failed:\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stop = next(r for r in rows if r["kind"] == "stop")
    final = [r for r in rows if r["kind"] == "eval"][-1]
    import tomllib

    cfg = tomllib.loads((out / "config.toml").read_text())
    per_step = cfg["data"]["batch_size"] * procs * (cfg["model"]["block_size"] if family == "gpt" else 1)
    key = "val_loss" if family == "gpt" else "eval_loss"
    return {"processes": procs, "threads_each": 2 // procs, "steps": stop["step"], "train_loop_s": stop["elapsed_s"],
            "per_s": round(stop["step"] * per_step / stop["elapsed_s"], 1), "final_loss": final.get(key),
            "wall_s": round(wall, 1), "batch_per_process": cfg["data"]["batch_size"],
            "global_batch": cfg["data"]["batch_size"] * procs}


def markdown(res: dict) -> str:
    lines = ["| model | setting | steps | training s | throughput | final loss | ratio to 1 x 2 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, unit in (("gpt", "tokens/s"), ("diffusion", "images/s")):
        if name not in res:
            continue
        base = res[name]["runs"][0]["per_s"]
        for r in res[name]["runs"]:
            lines.append(f"| {name} | {r['processes']} process x {r['threads_each']} thread | {r['steps']} | "
                         f"{r['train_loop_s']} | {r['per_s']} {unit} | {r['final_loss']} | "
                         f"{r['per_s'] / base:.2f} |")
    lines += ["", "Same global batch and steps in both settings (2 processes: data.batch_size half the preset's, "
              "gradients "
              "averaged by all-reduce over gloo); final loss: whole validation split (gpt), eval loss "
              "(diffusion).", ""]
    rows = {k: {**res[k], "machine": res["machine"], "date": res["date"], "commit": res["commit"]}
            for k in ("gpt", "diffusion") if k in res}
    what = {"gpt": "gpt-text preset", "diffusion": "diffusion-shapes preset"}
    return "\n".join(lines + provenance(rows, what, lambda k: "python benchmarks/dist.py"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--gpt-steps", type=int, default=300)
    ap.add_argument("--diffusion-steps", type=int, default=60)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(OUT.read_text())))
        return
    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": commit()}
    with tempfile.TemporaryDirectory() as d:
        for name, dataset, steps, data in (("gpt", "text", args.gpt_steps, args.data),
                                           ("diffusion", "shapes", args.diffusion_steps, None)):
            res[name] = {"runs": [run(name, dataset, steps, Path(d) / f"{name}-{p}", p, data) for p in (1, 2)]}
            print(json.dumps(res[name]), file=sys.stderr, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
