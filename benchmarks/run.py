"""The benchmark registry: the VAE and GAN rows below (an `aigc train` and an `aigc eval` each), and the
studies of the other families in their own scripts (REPORT); every row's JSON result carries its command,
date, commit and the machine's reference speed, and `--report` writes BENCHMARKS.md from all of them.

  python benchmarks/run.py                         # the default rows (about 60 minutes on 2 cores)
  python benchmarks/run.py --only vae-mnist-120s,gan-mnist-5min-seed0   # some rows
  python benchmarks/run.py --list
  python benchmarks/run.py --report                # only rewrite BENCHMARKS.md from benchmarks/results/*.json

Every row is a real `aigc train` then `aigc eval` subprocess; wall time includes start-up and data
loading; peak RSS is the larger of the two processes' own maximum resident set size (wait4)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "benchmarks.json"
MD = ROOT / "BENCHMARKS.md"
MNIST = str(ROOT.parent / "shared" / "data" / "mnist")


@dataclass
class Bench:
    name: str
    family: str
    dataset: str
    budget: list                       # --minutes M | --steps N
    what: str
    sets: list = field(default_factory=list)
    no_preset: bool = False            # start from the defaults, not configs/FAMILY-DATASET.toml
    eval_args: list = field(default_factory=list)
    goal: tuple | list | None = None   # (metric path, "<=" | ">=", value), or a list of them
    needs_mnist: bool = False
    default: bool = True               # part of a plain `python benchmarks/run.py`


BENCHES = [
    Bench("vae-mnist-reference", "vae", "mnist", ["--steps", "4690"],
          "pytorch/examples' VAE recipe re-run inside aigc: MLP 784-400-20, Adam 1e-3 constant, batch 128, "
          "10 epochs, grey levels in [0,1], BCE-sum + KL",
          sets=["arch=mlp", "hidden=400", "layers=1", "z_dim=20", "lr=1e-3", "schedule=constant", "warmup_steps=0",
                "batch_size=128"], no_preset=True, eval_args=["--k", "1"], needs_mnist=True),
    Bench("vae-mnist-120s", "vae", "mnist", ["--minutes", "2"],
          "preset vae-mnist, grey levels in [0,1], BCE-sum + KL, 120 s training budget",
          eval_args=["--k", "1"], goal=("test_nelbo", "<=", 100.0), needs_mnist=True),
    Bench("vae-mnist-binarized-10min", "vae", "mnist", ["--minutes", "10"],
          "preset vae-mnist, dynamically binarised, 10 min training budget, IWAE k=1000",
          sets=["binarize=dynamic"], eval_args=["--k", "1000"], goal=("test_nll_iwae", "<=", 90.0), needs_mnist=True),
    Bench("vae-mnist-binarized-20min", "vae", "mnist", ["--minutes", "20"],
          "as the 10 min row with a 20 min budget: how far a longer run goes (not in the default set)",
          sets=["binarize=dynamic"], eval_args=["--k", "1000"], needs_mnist=True, default=False),
    Bench("vae-shapes-3min", "vae", "shapes", ["--minutes", "3"],
          "preset vae-shapes (the demo's model), 3 min training budget, IWAE k=100 on 2000 images",
          eval_args=["--k", "100", "--num", "2000"]),
    Bench("gan-mnist-material-5min", "gan", "mnist", ["--minutes", "5"],
          "the material's MLP GAN as written (G 100-256-784 Tanh, D 784-256-1, LeakyReLU 0.2, Adam 2e-4 with "
          "PyTorch's default betas, batch 128, non-saturating loss, no EMA) with data scaled to [-1,1], 5 min",
          sets=["arch=mlp", "hidden=256", "layers=1", "z_dim=100", "lr=2e-4", "beta1=0.9", "schedule=constant",
                "warmup_steps=0", "ema=0.0", "batch_size=128"], no_preset=True, needs_mnist=True),
    *[Bench(f"gan-mnist-5min-seed{s}", "gan", "mnist", ["--minutes", "5", "--seed", str(s)],
            f"preset gan-mnist (DCGAN 32/32 wide with one extra 3x3 conv per resolution in G and D, hinge loss, "
            f"spectrally normalised D, Adam 2e-3 betas (0.5, 0.999) cosine, batch 64, EMA 0.999 of G), seed "
            f"{s}, 5 min",
            needs_mnist=True,
            goal=[("sample_quality.fid", "<=", 10.0), ("sample_quality.class_entropy", ">=", 2.25)]) for s in (0, 1,
                                                                                                               2)],
    Bench("gan-mnist-5min-plain-dcgan", "gan", "mnist", ["--minutes", "5"],
          "ablation, the earlier preset: as gan-mnist but Radford et al.'s one conv per resolution "
          "(g_convs = d_convs = 0) and Adam 2e-4, seed 0, 5 min",
          sets=["g_convs=0", "d_convs=0", "lr=2e-4"], needs_mnist=True),
    Bench("gan-mnist-class-5min", "gan", "mnist", ["--minutes", "5"],
          "preset gan-mnist with cond = class (a 16-d label embedding concatenated to z in G, projection "
          "discriminator), 5 min",
          sets=["cond=class"], needs_mnist=True, goal=("sample_quality.class_accuracy", ">=", 0.97)),
    Bench("gan-shapes-text-5min", "gan", "shapes", ["--minutes", "5"],
          "preset gan-shapes (DCGAN, hinge + spectral norm, cond = text via a small Transformer caption encoder "
          "in G and D, a caption-word classifier on D weighted 20 since 2026-12-04), 5 min, "
          "2000 samples on the eval split's captions", eval_args=["--num", "2000"]),
]

COLUMNS = [("test_nelbo", "test -ELBO"), ("test_nll_iwae", "IWAE NLL"), ("sample_quality.fid", "FID"),
           ("sample_quality.precision", "precision"), ("sample_quality.recall", "recall"),
           ("sample_quality.class_entropy", "class entropy"), ("sample_quality.class_accuracy", "class acc"),
           ("sample_quality.prompt_accuracy", "prompt acc"), ("images_per_s", "train img/s")]


def run(cmd: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command (in `env`, default this one's); return (process, wall seconds, peak RSS in MB of that one
    process)."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)            # rusage of this child alone
        wall = time.perf_counter() - t0
        fo.seek(0), fe.seek(0)
        return (subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), fo.read(), fe.read()),
                wall, usage.ru_maxrss / 1024)


def commit() -> str:
    """The checkout's commit, with "+changes" when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")


def provenance(rows: dict, names: dict, command_of) -> list[str]:
    """One line per row: its command, date, commit and the reference speed of the machine it ran on (rows
    measured before rows carried these name the commit that first stored them)."""
    lines = []
    for key, r in rows.items():
        m = r.get("machine") or {}
        ref = f"reference {m['reference_ms']} ms" if m.get("reference_ms") else "reference speed not measured"
        when = " · ".join(x for x in (r.get("date"), f"commit {r['commit']}" if r.get("commit") else
                                      f"first stored in {r['stored_in']}" if r.get("stored_in") else None) if x)
        what = f" ({names[key]})" if names.get(key) else ""
        lines.append(f"- `{key}`{what}: `{command_of(key)}` · {when or 'date unknown'} · {m.get('cpu', '?')}, {ref}")
    return lines


def dig(d: dict, path: str):
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def machine() -> dict:
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "reference_ms": reference_ms()}


def reference_ms() -> float:
    """The machine's speed on a fixed piece of work: milliseconds for a 3x3 convolution's forward and backward
    pass on (64, 32, 16, 16) features, 2 threads, the best of 5 rounds of 10. Machines sold under one CPU name
    ran the same training step at speeds 2.2x apart (the video benchmark's AMD EPYC rows), so rows carry this."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, 16, 16, generator=g, requires_grad=True)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            conv(x).square().mean().backward()
        best = min(best, (time.perf_counter() - t0) / 10 * 1000)
    torch.set_num_threads(threads)
    return round(best, 2)


TRAIN_COST = ("train_wall_s", "train_peak_rss_mb")     # known only to the process that trained the run


REFERENCE_MS = 3.9                   # the machine the issues' budgets are for (its reference_ms)


def aigc_cli(*args) -> subprocess.CompletedProcess:
    """`python -m aigc ARGS` (printed first); exits with its stderr when it fails."""
    cmd = [sys.executable, "-m", "aigc", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    p, wall, _ = run(cmd)
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    p.wall_s = round(wall, 1)
    return p


def aigc_json(*args) -> dict:
    """`python -m aigc ARGS` that prints JSON (eval): the JSON plus wall_s."""
    p = aigc_cli(*args)
    return {**json.loads(p.stdout), "wall_s": p.wall_s}


def budget(minutes: float) -> dict:
    """An issue's budget in minutes beside this machine's reference_ms and the budget scaled to it (the minutes a
    3.9 ms machine's compute takes here)."""
    ref = reference_ms()
    return {"budget_min": minutes, "reference_ms": ref, "budget_scaled_min": round(minutes * ref / REFERENCE_MS, 1)}


def train_run(out: Path, train_args: list[str], minutes: float, unit: str) -> dict:
    """`aigc train TRAIN_ARGS --minutes M --out OUT` unless OUT already holds a checkpoint; then only what the
    run's metrics say. Returns run, steps, train_s, train_{unit}_per_s (from the batch size), and the
    TRAIN_COST figures when it trained."""
    info = {}
    if not (out / "checkpoint").is_dir():
        cmd = [sys.executable, "-m", "aigc", "train", *train_args, "--minutes", str(minutes), "--out", str(out),
               "--quiet", "--overwrite"]
        print("$", " ".join(cmd), flush=True)
        proc, wall, rss = run(cmd)
        if proc.returncode:
            raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
        info = {"train_wall_s": round(wall, 1), "train_peak_rss_mb": round(rss)}
    from aigc.config import read_toml

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("kind") == "train"][-1]
    batch = read_toml(out / "config.toml")["data"]["batch_size"]
    return {**info, "run": str(out.relative_to(ROOT)), "steps": last["step"], "train_s": last["elapsed_s"],
            f"train_{unit}_per_s": round(last["step"] * batch / last["elapsed_s"], 1)}


def rows_main(doc: str, rows: dict, out: Path, markdown, add_args=None) -> None:
    """The command line of a benchmark script: --only ROW,ROW (default all), --minutes, --table (print
    `markdown(results)` of the saved JSON), plus `add_args(parser)`. Each row is `rows[name](args) -> dict`,
    written to `out` as soon as it is done. A row whose run already existed keeps the TRAIN_COST figures
    of the earlier result for the same run and step count."""
    import torch

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(rows), help="comma-separated rows: " + ", ".join(rows))
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--table", action="store_true", help="only print the markdown tables of the saved results")
    if add_args:
        add_args(ap)
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(out.read_text())))
        return
    torch.set_num_threads(2)
    results = json.loads(out.read_text()) if out.is_file() else {}
    here, before = machine(), results.get("machine")
    if before:                                 # rows measured before rows carried their machine: the file's
        for name, r in results.items():
            if name != "machine" and isinstance(r, dict):
                r.setdefault("machine", before)
    results["machine"] = here                  # the machine of the latest rows; each row keeps its own
    for row in args.only.split(","):
        if row not in rows:
            raise SystemExit(f"unknown row '{row}'; rows: {', '.join(rows)}")
        t0 = time.perf_counter()
        new = rows[row](args)
        before = results.get(row, {})
        if all(new.get(k) == before.get(k) for k in ("run", "steps")) and "run" in new:
            new = {**{k: before[k] for k in TRAIN_COST if k in before}, **new}
        results[row] = {**new, "bench_wall_s": round(time.perf_counter() - t0, 1), "machine": here,
                        "date": time.strftime("%Y-%m-%d"), "commit": commit()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(row, json.dumps(results[row], indent=1), flush=True)


def run_bench(b: Bench, runs: Path, data_dir: str) -> dict:
    aigc = [sys.executable, "-m", "aigc"]
    run_dir = runs / b.name
    cmd = aigc + ["train", b.family, "--data", b.dataset, "--out", str(run_dir), "--overwrite", "--quiet", *b.budget,
                  "--set", "eval_every=0", "--set", "sample_every=0"]
    if b.needs_mnist:
        cmd += ["--data-dir", data_dir]
    if b.no_preset:
        empty = runs / "empty.toml"
        empty.write_text("")
        cmd += ["--config", str(empty)]
    for s in b.sets:
        cmd += ["--set", s]
    print(f"[{b.name}] training ...", file=sys.stderr, flush=True)
    p, wall, rss_train = run(cmd)
    if p.returncode != 0:
        sys.exit(f"[{b.name}] training failed:\n{p.stderr[-3000:]}")
    summary = json.loads(p.stdout)
    print(f"[{b.name}] evaluating ...", file=sys.stderr, flush=True)
    p, eval_wall, rss_eval = run(aigc + ["eval", str(run_dir), "--quiet", *b.eval_args])
    if p.returncode != 0:
        sys.exit(f"[{b.name}] eval failed:\n{p.stderr[-3000:]}")
    ev = json.loads(p.stdout)
    sys.path.insert(0, str(ROOT))
    from aigc.config import read_toml

    batch = read_toml(run_dir / "config.toml")["data"]["batch_size"]
    ev["images_per_s"] = round(summary["step"] * batch / max(summary["elapsed_s"], 1e-9)) if b.dataset in (
        "mnist", "shapes") else None
    row = {"family": b.family, "dataset": b.dataset, "budget": " ".join(b.budget), "what": b.what,
           "command": " ".join(["aigc", *cmd[3:]]), "commit": commit(),
           "train_wall_s": round(wall, 1), "train_loop_s": summary["elapsed_s"], "train_steps": summary["step"],
           "eval_wall_s": round(eval_wall, 1), "peak_rss_mb": round(max(rss_train, rss_eval)),
           "date": time.strftime("%Y-%m-%d"), "machine": machine(), "eval": ev}
    if b.goal:
        goals = b.goal if isinstance(b.goal, list) else [b.goal]
        met = []
        for key, op, target in goals:
            value = dig(ev, key)
            met.append(value is not None and (value <= target if op == "<=" else value >= target))
        row["goal"] = " and ".join(f"{k.split('.')[-1]} {op} {t}" for k, op, t in goals)
        row["goal_met"] = all(met)
    return row


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def vae_gan_table(results: dict) -> str:
    head = ["benchmark", "budget", "steps", "train wall s", "peak RSS MB", *[c for _, c in COLUMNS], "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in BENCHES:
        r = results.get(b.name)
        if not r:
            continue
        ev = r["eval"]
        cells = [b.name, r["budget"], str(r["train_steps"]), fmt(r["train_wall_s"]), str(r["peak_rss_mb"])]
        for key, _ in COLUMNS:
            v = dig(ev, key)
            if key == "test_nll_iwae" and v is not None:
                v = "-" if ev.get("iwae_k", 1) == 1 else f"{v:.2f} (k={ev['iwae_k']})"
            cells.append(fmt(v) if not isinstance(v, str) else v)
        cells.append(f"{r['goal']}: {'**met**' if r['goal_met'] else '**NOT met**'}" if "goal" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    floor = dig(next((r["eval"] for r in results.values() if r.get("dataset") == "mnist"), {}),
                "sample_quality.real_vs_real_fid")
    known = {b.name: b for b in BENCHES}
    lines += ["", *provenance({k: results[k] for k in known if k in results}, {k: b.what for k, b in known.items()},
                              lambda k: results[k].get("command") or f"python benchmarks/run.py --only {k}"), "",
              f"*test -ELBO*: negative evidence lower bound, one z per test image, nats per image (for grey levels "
              f"pytorch/examples' \"BCE + KL\" test loss). *IWAE NLL*: the importance-weighted bound with k samples. "
              f"*FID / precision / recall / class entropy*: 10,000 generated samples (2,000 for shapes) against the "
              f"test split (held-out split for shapes), on the 128-d features of a small classifier aigc trains once "
              f"on the real training split (`mnist-clf-v1`, `shapes-clf-v1`): **not Inception FID**; real train vs "
              f"test scores FID {fmt(floor)} on the MNIST features. *class acc*: the classifier reads the requested "
              f"label; *prompt acc*: shape, color, size and position read off the pixels all match the caption; "
              f"*train img/s*: steps x batch / training-loop seconds (a GAN step is one D and one G update)."]
    return "\n".join(lines)


# The sections of BENCHMARKS.md: (title, results file, the module whose markdown(results) renders it, how to run)
REPORT = [
    ("VAE and GAN (MNIST, shapes)", "benchmarks.json", None, "python benchmarks/run.py [--only ROW]"),
    ("GPT on tiny-shakespeare", "gpt_shakespeare.json", "benchmarks.gpt_shakespeare",
     "python benchmarks/gpt_shakespeare.py (about 13 minutes)"),
    ("Text GAN against GPT", "text_gan.json", "benchmarks.text_gan", "python benchmarks/text_gan.py"),
    ("Diffusion (MNIST, shapes)", "diffusion.json", "benchmarks.diffusion",
     "python benchmarks/diffusion.py [--only ROW] (20-minute runs)"),
    ("Video (moving-shapes)", "video.json", "benchmarks.video",
     "python benchmarks/video.py [--only ROW] (20-minute runs)"),
    ("Preference tuning", "preference.json", "benchmarks.preference",
     "python benchmarks/preference.py (about 2 hours)"),
    ("Image-to-text (captioner)", "captioner.json", "benchmarks.captioner",
     "python benchmarks/captioner.py [--only ROW] (about 80 minutes)"),
    ("Speech (spoken digits, text-to-speech)", "speech.json", "benchmarks.speech",
     "python benchmarks/speech.py [--only ROW] (three 20-minute runs, about 75 minutes)"),
    ("Serving", "serve.json", "benchmarks.serve", "python benchmarks/serve.py (about 3 minutes)"),
    ("Distributed training", "dist.json", "benchmarks.dist", "python benchmarks/dist.py (about 5 minutes)"),
    ("On a busy CPU", "busy_cpu.json", "benchmarks.busy_cpu", "python benchmarks/busy_cpu.py (about 10 minutes)"),
    ("On a GPU", "cuda.json", "benchmarks.cuda", "python benchmarks/cuda.py on a CUDA machine"),
]


def write_report() -> str:
    """BENCHMARKS.md from every results file of REPORT."""
    import importlib

    sys.path.insert(0, str(ROOT))
    parts = ["# Benchmarks", "",
             "Generated by `python benchmarks/run.py --report` from `benchmarks/results/*.json`; do not edit by hand. "
             "Every row names its command, date, commit and machine. Budgets are wall-clock minutes on 2 CPU cores; "
             "machines of this kind differ in speed by up to 4x, so each row carries the machine's reference speed "
             "(`reference_ms`: a fixed 3x3 convolution's forward and backward, benchmarks/run.py) and a budget means "
             "minutes on a machine at about 3.9 ms (scale by reference_ms / 3.9 elsewhere). What the figures mean and "
             "what was tried: docs/.", ""]
    for title, file, module, how in REPORT:
        path = RESULTS.parent / file
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        body = vae_gan_table(results) if module is None else importlib.import_module(module).markdown(results)
        parts += [f"## {title}", "", f"`{how}`", "", body, ""]
    text = "\n".join(parts)
    MD.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=MNIST, help="folder with the MNIST IDX gz files")
    ap.add_argument("--only", help="comma-separated benchmark names")
    ap.add_argument("--runs", default=str(ROOT / "bench_runs"), help="where the run folders go")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md from the results files")
    args = ap.parse_args()
    if args.report:
        write_report()
        print(f"wrote {MD}")
        return
    if args.list:
        for b in BENCHES:
            print(f"{b.name:28s} {b.what}")
        return
    names = args.only.split(",") if args.only else [b.name for b in BENCHES if b.default]
    unknown = set(names) - {b.name for b in BENCHES}
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; see --list")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    for b in BENCHES:
        if b.name not in names:
            continue
        results[b.name] = run_bench(b, runs, args.data_dir)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps({b.name: {k: v for k, v in results[b.name].items() if k != "eval"}}, indent=1), flush=True)
    write_report()
    print(f"wrote {MD}")


if __name__ == "__main__":
    main()
