"""Speed on a busy CPU (issue 31): training steps/s and GPT decode tokens/s alone, beside one `yes`, and beside a
second aigc training, with aigc's thread policy (aigc/threads.py) and with the count fixed at every core (torch's
default, which aigc used before the policy), both measured in the same run.

  python benchmarks/busy_cpu.py [--data-dir ../shared/data/mnist] [--steps 600]

training  `aigc train vae --data mnist` (the preset: MLP, batch 128) for --steps steps with evaluation, samples and
          checkpoints off; speed = steps / the training loop's seconds (the run's stop row, so start-up and the final
          evaluation do not count); alone: the better of 2 runs. "beside aigc": two identical commands started
          together, the slower one reported (their ends differ by well under a second, so the share they ran
          alone is small).
decode    one stream of 300 new tokens from a 4-layer 128-wide GPT (context 64, fresh weights), in this process,
          the best of 3; "beside aigc" runs it while a long VAE training of the same policy runs beside.
share     speed / the same policy's speed alone. Goal: with a second aigc process beside it, each keeps >= 40% of
          its idle speed (a fair share of 2 cores is 50%).
Results: benchmarks/results/busy_cpu.json; `--table` prints the markdown of the saved results."""

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
from benchmarks.run import MNIST, commit, machine, provenance  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "busy_cpu.json"
POLICIES = {"aigc": [], "all-cores": ["--set", f"train.threads={len(os.sched_getaffinity(0))}"]}
GOAL = 0.40


def train_cmd(data_dir: str, steps: int, policy: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "aigc", "train", "vae", "--data", "mnist", "--data-dir", data_dir, "--steps",
            str(steps), "--out", str(out), "--overwrite", "--quiet", "--set", "train.eval_every=0",
            "--set", "train.sample_every=0", "--set", "train.ckpt_every=0", *POLICIES[policy]]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}     # the policy decides


def loop_speed(run_dir: Path) -> tuple[float, list[int]]:
    """(steps/s of the training loop, the thread counts the policy switched to)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stop = next(r for r in rows if r.get("kind") == "stop")
    return stop["step"] / stop["elapsed_s"], [r["threads"] for r in rows if r.get("kind") == "threads"]


def trainings(n: int, args, policy: str, tmp: Path) -> list[tuple[float, list[int]]]:
    """`n` identical trainings started together; each one's loop speed."""
    outs = [tmp / f"{policy}-{i}" for i in range(n)]
    procs = [subprocess.Popen(train_cmd(args.data_dir, args.steps, policy, o), env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            sys.exit(f"training failed:\n{err[-2000:]}")
    return [loop_speed(o) for o in outs]


class Beside:
    """A neighbour process for the length of a `with` block: `yes`, or a long aigc training."""

    def __init__(self, what: str, args=None, policy: str = "aigc", tmp: Path | None = None):
        self.what, self.args, self.policy, self.tmp = what, args, policy, tmp

    def __enter__(self):
        if self.what == "yes":
            self.proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
            time.sleep(0.5)
        elif self.what == "aigc":
            out = self.tmp / f"neighbour-{self.policy}"
            self.proc = subprocess.Popen(train_cmd(self.args.data_dir, 10 ** 6, self.policy, out), env=env(),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not (out / "metrics.jsonl").is_file():          # in its training loop
                time.sleep(0.2)
                if self.proc.poll() is not None:
                    sys.exit("the neighbouring training failed to start")
            time.sleep(3)
        else:
            self.proc = None
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def decode_speed(new_tokens: int = 300) -> float:
    """Tokens/s of one stream (the best of 3), through the sampler `aigc sample` uses, with the thread count the
    policy picks at start-up (as `aigc sample` does)."""
    import torch

    from aigc.models.gpt import GPT, GPTConfig
    from aigc.recipes.textgen import sample_tokens
    from aigc.threads import ThreadPolicy

    ThreadPolicy().start()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)).eval()
    prompt = [[1, 2, 3, 4]]
    sample_tokens(model, prompt, 30, seed=0)
    best = float("inf")
    for rep in range(3):
        t = time.perf_counter()
        sample_tokens(model, prompt, new_tokens, seed=rep)
        best = min(best, time.perf_counter() - t)
    return new_tokens / best


def measure(args) -> dict:
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for policy in POLICIES:
            print(f"[{policy}] training alone, beside yes, beside a second training ...", file=sys.stderr, flush=True)
            alone, th_alone = max(trainings(1, args, policy, tmp)[0] for _ in range(2))     # the better of 2
            with Beside("yes"):
                (yes, th_yes), = trainings(1, args, policy, tmp)
            pair = trainings(2, args, policy, tmp)
            slower, th_pair = min(pair)
            rows[f"train-{policy}"] = {
                "steps": args.steps, "alone_steps_per_s": round(alone, 1), "beside_yes_steps_per_s": round(yes, 1),
                "beside_aigc_steps_per_s": [round(s, 1) for s, _ in pair], "share_beside_yes": round(yes / alone, 3),
                "share_beside_aigc": round(slower / alone, 3),
                "thread_switches": {"alone": th_alone, "beside_yes": th_yes, "beside_aigc": [t for _, t in pair]}}
            print(f"[{policy}] decoding alone, beside yes, beside a training ...", file=sys.stderr, flush=True)
            speeds = {}
            for what in ("alone", "yes", "aigc"):
                with Beside(what, args, policy, tmp):
                    speeds[what] = decode_speed()
            rows[f"decode-{policy}"] = {
                "new_tokens": 300, "alone_tokens_per_s": round(speeds["alone"]),
                "beside_yes_tokens_per_s": round(speeds["yes"]), "beside_aigc_tokens_per_s": round(speeds["aigc"]),
                "share_beside_yes": round(speeds["yes"] / speeds["alone"], 3),
                "share_beside_aigc": round(speeds["aigc"] / speeds["alone"], 3)}
    here, stamp = machine(), {"date": time.strftime("%Y-%m-%d"), "commit": commit()}
    for r in rows.values():
        r.update(machine=here, **stamp, goal=f"share_beside_aigc >= {GOAL}", goal_met=r["share_beside_aigc"] >= GOAL)
    return rows


def markdown(res: dict) -> str:
    lines = ["| row | alone | beside `yes` | beside a 2nd aigc training | share beside `yes` | share beside aigc | "
             "goal (>= 40% beside aigc) |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in res.items():
        unit = "steps/s" if name.startswith("train") else "tokens/s"
        key = "steps_per_s" if unit == "steps/s" else "tokens_per_s"
        pair = r[f"beside_aigc_{key}"]
        pair = " / ".join(map(str, pair)) if isinstance(pair, list) else pair
        lines.append(f"| {name} | {r[f'alone_{key}']} {unit} | {r[f'beside_yes_{key}']} | {pair} | "
                     f"{100 * r['share_beside_yes']:.0f}% | {100 * r['share_beside_aigc']:.0f}% | "
                     f"{'met' if r['goal_met'] else '**not met**'} |")
    lines += ["", "*aigc*: the thread policy (threads = the cores other processes leave free, re-measured every 2 s "
              "while training); *all-cores*: `train.threads` fixed at every core (torch's default, aigc before "
              "the policy). Training: the VAE preset, speed of the training loop; decode: one stream from a 4x128 "
              "GPT with the threads the policy picks at start-up (the row names the policy of the training beside "
              "it). Share: "
              "speed / the same row's speed alone.", ""]
    what = {k: ("" if k.startswith("train") else "the training beside it: ") +
            ("thread policy" if k.endswith("aigc") else "every core, fixed") for k in res}
    return "\n".join(lines + provenance(res, what, lambda k: "python benchmarks/busy_cpu.py"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=MNIST, help="folder with the MNIST IDX gz files")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--table", action="store_true", help="only print the markdown of the saved results")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(OUT.read_text())))
        return
    rows = measure(args)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
