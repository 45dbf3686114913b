"""Text GAN vs GPT on tiny-shakespeare, char-level (issue 5): why autoregressive models won for text.

  python benchmarks/text_gan.py [--data ../shared/data/tinyshakespeare/input.txt] [--minutes 5]

Needs the GPT runs of benchmarks/gpt_shakespeare.py (bench_runs/gpt-shakespeare-55s and -10min).
Trains `aigc train text-gan --data text` for --minutes, then scores 1000 sequences of 32 characters
from each source on the same measures:
  ngram_precision_n  share of the character n-grams of the samples found in the validation text
  distinct_4         distinct 4-grams / all 4-grams of the samples (diversity; repetition scores low)
  gpt_nll            nats per character that the 10-minute GPT assigns to each sequence on its own
Sources: real validation windows (the ceiling), uniformly random characters (the floor), the text GAN,
and GPTs (55 s and 10 min) sampled at temperature 1 from a newline. Results go to
benchmarks/results/text_gan.json and are printed as a markdown table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import commit, machine, provenance  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
OUT = ROOT / "benchmarks" / "results" / "text_gan.json"
GPT_RESULTS = ROOT / "benchmarks" / "results" / "gpt_shakespeare.json"
N, LENGTH = 1000, 32


def distinct_4(texts: list[str]) -> float:
    grams = [t[i:i + 4] for t in texts for i in range(len(t) - 3)]
    return round(len(set(grams)) / max(len(grams), 1), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--runs", default=str(ROOT / "bench_runs"))
    args = ap.parse_args()
    from aigc.evaluation import gpt_text_nll
    from aigc.generation import Request, generate
    from aigc.metrics.text import ngram_precision, ngram_set
    from aigc.recipes import open_run

    if not Path(args.data).is_file():
        sys.exit(f"tiny-shakespeare not found at {args.data} (pass --data)")
    gpt_runs = json.loads(GPT_RESULTS.read_text()) if GPT_RESULTS.exists() else {}
    if "10min" not in gpt_runs or not Path(gpt_runs["10min"]["run"]).is_dir():
        sys.exit("run benchmarks/gpt_shakespeare.py first: the GPT runs score the samples")
    run = Path(args.runs) / "text-gan-shakespeare"
    cmd = [sys.executable, "-m", "aigc", "train", "text-gan", "--data", "text", "--data-dir", args.data,
           "--minutes", str(args.minutes), "--out", str(run), "--overwrite", "--quiet"]
    print("training the text GAN ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    summary = json.loads(p.stdout)
    train_wall = time.perf_counter() - t0

    dev = torch.device("cpu")
    _, gan = open_run(run, dev)
    _, judge = open_run(Path(gpt_runs["10min"]["run"]), dev)
    _, gpt55 = open_run(Path(gpt_runs["55s"]["run"]), dev)
    data = judge.load_data(judge.cfg, Path(gpt_runs["10min"]["run"]))
    val = judge.tokenizer.decode(data.val.tolist())
    ref = {n: ngram_set(val, n) for n in (2, 3, 4)}
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(val) - LENGTH, (N,), generator=g).tolist()
    chars = sorted(set(val))
    torch.manual_seed(0)
    sources = {
        "real validation text": [val[s:s + LENGTH] for s in starts],
        "uniform random characters": ["".join(chars[i] for i in torch.randint(len(chars), (LENGTH,), generator=g))
                                      for _ in range(N)],
        f"text GAN ({args.minutes:g} min)": generate(gan, Request(num=N, temperature=1.0)).texts,
        "GPT 55 s": generate(gpt55, Request(num=N, max_new_tokens=LENGTH, temperature=1.0)).texts,
        "GPT 10 min": generate(judge, Request(num=N, max_new_tokens=LENGTH, temperature=1.0)).texts,
    }
    rows = {}
    for name, texts in sources.items():
        texts = [t[:LENGTH] for t in texts]
        rows[name] = {**ngram_precision(texts, ref), "distinct_4": distinct_4(texts), **gpt_text_nll(judge, texts),
                      "example": texts[0]}
    res = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "machine": machine(), "num_sequences": N,
           "length": LENGTH,
           "text_gan": {"run": str(run), "steps": summary["step"], "train_loop_s": summary["elapsed_s"],
                        "train_wall_s": round(train_wall, 1)},
           "judge": "the 10-min GPT of benchmarks/gpt_shakespeare.py (whole-val loss "
                    f"{gpt_runs['10min'].get('val_loss')})", "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(markdown(res))


def markdown(res: dict) -> str:
    lines = ["| source | 2-gram prec. | 3-gram prec. | 4-gram prec. | distinct 4-grams | GPT NLL (nats/char) | "
             "example |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in res["rows"].items():
        ex = r["example"].replace("\n", "⏎").replace("|", "\\|")
        lines.append(f"| {name} | {r['ngram_precision_2']} | {r['ngram_precision_3']} | {r['ngram_precision_4']} | "
                     f"{r['distinct_4']} | {r['gpt_nll']} | `{ex}` |")
    lines += ["", f"{res['num_sequences']} sequences of {res['length']} characters per source, judged by "
              f"{res['judge']}.", ""]
    return "\n".join(lines + provenance({"text-gan-vs-gpt": res}, {"text-gan-vs-gpt": "text GAN against GPT samples"},
                                         lambda k: "python benchmarks/text_gan.py"))

if __name__ == "__main__":
    main()
