"""VAE benchmarks on MNIST (issue 2). Each run is a real `aigc train` + `aigc eval` subprocess; peak RSS
is that subprocess's ru_maxrss. Writes benchmarks/results/vae_mnist.{json,md} and prints the table.

  python benchmarks/vae_mnist.py [--data-dir ../shared/data/mnist] [--only continuous,binarized,reference]

Benchmarks:
  reference   pytorch/examples' VAE recipe re-run inside aigc in the same session (MLP 784-400-20,
              Adam 1e-3 constant, batch 128, 10 epochs = 4690 steps; grey levels in [0,1], BCE-sum + KL)
  continuous  the preset configs/vae-mnist.toml, same data and loss, a 120 s budget  (goal: test loss <= 100)
  binarized   the preset with binarize=dynamic, a 10-minute budget; IWAE NLL with k = 1000 (goal: <= 90)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

BENCHES = {
    "reference": dict(args=["--steps", "4690", "--set", "arch=mlp", "--set", "hidden=400", "--set", "layers=1",
                            "--set", "z_dim=20", "--set", "lr=1e-3", "--set", "schedule=constant",
                            "--set", "warmup_steps=0", "--set", "batch_size=128", "--config", "none"],
                      eval_k=1, goal=None, what="pytorch/examples VAE recipe (10 epochs) inside aigc"),
    "continuous": dict(args=["--minutes", "2"], eval_k=1, goal=("test_nelbo", 100.0),
                       what="preset, MNIST grey levels [0,1], BCE + KL, 120 s budget"),
    "binarized": dict(args=["--minutes", "10", "--set", "binarize=dynamic"], eval_k=1000, goal=("test_nll_iwae", 90.0),
                      what="preset, dynamically binarised MNIST, 10 min budget, IWAE k=1000"),
}


def run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; return (process, wall seconds, peak RSS in MB of that one process)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(proc.pid, 0)            # rusage of this child alone
        wall = time.perf_counter() - t0
        fo.seek(0), fe.seek(0)
        code = os.waitstatus_to_exitcode(status)
        return subprocess.CompletedProcess(cmd, code, fo.read(), fe.read()), wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--only", default="reference,continuous,binarized")
    ap.add_argument("--runs", default=str(ROOT / "bench_runs"))
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "vae_mnist.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    aigc = [sys.executable, "-m", "aigc"]
    for name in args.only.split(","):
        b = BENCHES[name]
        run_dir = Path(args.runs) / f"vae-mnist-{name}"
        train_args = list(b["args"])
        if "--config" in train_args:          # the reference must not inherit the preset
            i = train_args.index("--config")
            cfg = Path(args.runs) / "empty.toml"
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text("")
            train_args[i + 1] = str(cfg)
        print(f"[{name}] training ...", file=sys.stderr, flush=True)
        p, wall, peak_train = run(aigc + ["train", "vae", "--data", "mnist", "--data-dir", args.data_dir, "--out",
                                          str(run_dir), "--overwrite", "--quiet",
                                          "--set", "eval_every=0", "--set", "sample_every=0", *train_args])
        if p.returncode != 0:
            sys.exit(f"[{name}] training failed:\n{p.stderr[-3000:]}")
        summary = json.loads(p.stdout)
        print(f"[{name}] evaluating (k={b['eval_k']}) ...", file=sys.stderr, flush=True)
        p, eval_wall, peak_eval = run(aigc + ["eval", str(run_dir), "--k", str(b["eval_k"]), "--quiet"])
        if p.returncode != 0:
            sys.exit(f"[{name}] eval failed:\n{p.stderr[-3000:]}")
        ev = json.loads(p.stdout)
        row = {"what": b["what"], "train_wall_s": round(wall, 1), "train_steps": summary["step"],
               "train_loop_s": summary["elapsed_s"], "eval_wall_s": round(eval_wall, 1),
               "peak_rss_mb": round(max(peak_train, peak_eval)), **{k: ev[k] for k in
               ("test_nelbo", "test_nll_iwae", "iwae_k", "num_samples", "binarization") if k in ev}}
        if b["goal"]:
            key, target = b["goal"]
            row["goal"] = f"{key} <= {target}"
            row["goal_met"] = ev[key] <= target
        results[name] = row
        results["_machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                               "python": platform.python_version(), "torch": __import__("torch").__version__,
                               "date": time.strftime("%Y-%m-%d")}
        out_json.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps({name: row}, indent=1), flush=True)
    write_md(results)


def write_md(results: dict) -> None:
    lines = ["| benchmark | setting | steps | train wall (s) | test -ELBO (nats) | IWAE NLL (nats, k) | peak RSS (MB) | goal |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for name in ("reference", "continuous", "binarized"):
        r = results.get(name)
        if not r:
            continue
        iw = f"{r['test_nll_iwae']:.2f} (k={r['iwae_k']})" if r.get("iwae_k", 1) > 1 else "-"
        goal = f"{r['goal']}: {'met' if r['goal_met'] else 'NOT met'}" if "goal" in r else "-"
        lines.append(f"| {name} | {r['what']} | {r['train_steps']} | {r['train_wall_s']} | {r['test_nelbo']:.2f} | {iw} "
                     f"| {r['peak_rss_mb']} | {goal} |")
    m = results.get("_machine", {})
    lines.append(f"\nMachine: {m.get('cores')} cores, Python {m.get('python')}, torch {m.get('torch')}, {m.get('date')}. "
                 "Test -ELBO: one z per test image (10k MNIST test images). Train wall includes start-up and data loading.")
    (RESULTS / "vae_mnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
