"""Serving benchmark (issue 32): a bounded loopback load on `aigc serve`, and the decode path in-process.

  python benchmarks/serve.py [--data ../shared/data/tinyshakespeare/input.txt] [--requests 48] [--tokens 128]

model     the 4-layer 128-wide char GPT with a 64-token context, trained 30 steps on tiny-shakespeare (speed does not
          depend on the weights)
decode    in this process, one stream of 500 new tokens: aigc's engine (KV cache) against a nanoGPT-style loop that
          re-runs the cropped context every token, on the same weights; then 16 streams decoded together by the
          engine, as aggregate tokens/s (goals: single >= 1600 tokens/s, 16 streams >= 8x single); then the time of
          the steps that only decode (1 and 16 streams) apart from those that re-encode a full context
load      `aigc serve` in a subprocess on a free 127.0.0.1 port; 1, 4 and 16 concurrent clients (httpx, asyncio,
          in this process) share --requests streamed completions of --tokens tokens, each client waiting a seeded
          exponential think time (mean 50 ms) before each request. Per level: time to first token (TTFT) and
          inter-token latency (ITL) p50 / p99, output tokens/s and requests/s over the level's wall time, errors,
          and the server's peak RSS (VmHWM). The clients run on the same 2 cores as the server.
Results: benchmarks/results/serve.json; `--table` prints the markdown of the saved results."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import commit, machine, provenance  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "serve.json"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
MODEL = ["n_layer=4", "n_head=4", "n_embd=128", "block_size=64", "batch_size=8", "eval_batches=1"]


def train_model(data: Path, out: Path) -> Path:
    cmd = [sys.executable, "-m", "aigc", "train", "gpt", "--data", "text", "--data-dir", str(data), "--steps", "30",
           "--out", str(out), "--quiet", *[x for s in MODEL for x in ("--set", s)]]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"training failed:\n{p.stderr[-2000:]}")
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def decode_speed(run: Path, new_tokens: int = 500) -> dict:
    import torch

    from aigc.recipes import open_run
    from aigc.recipes.textgen import TextEngine, TextStream, row_seed
    from benchmarks.gpt_shakespeare import nanogpt_style_generate

    _, recipe = open_run(run, torch.device("cpu"))
    model, tok = recipe.model.eval(), recipe.tokenizer
    prompt = recipe.encode_prompt("ROMEO:")

    def streams_of(n: int) -> list[TextStream]:
        return [TextStream(list(prompt), new_tokens, 1.0, seed=row_seed(0, i)) for i in range(n)]

    def engine_run(n: int) -> float:
        streams = streams_of(n)
        t = time.perf_counter()
        TextEngine(model, tok, slots=n).run(streams)
        return sum(len(s.tokens) for s in streams) / (time.perf_counter() - t)

    engine_run(1)
    single = max(engine_run(1) for _ in range(3))
    nano = 0.0
    for rep in range(3):
        t = time.perf_counter()
        nanogpt_style_generate(model, torch.tensor([prompt]), new_tokens, generator=torch.Generator().manual_seed(rep))
        nano = max(nano, new_tokens / (time.perf_counter() - t))
    batch16 = max(engine_run(16) for _ in range(2))

    def step_split(n: int) -> tuple[float, float]:
        """Mean ms of a step that only decodes, and the run's share spent in the steps that re-encode a full
        context's last half (learned absolute positions: a stream that fills block_size starts over at 0)."""
        engine = TextEngine(model, tok, slots=n)
        engine.add(*streams_of(n))
        plain, reencode = [], []
        while engine.active:
            full = bool((engine.cache.pos[:len(engine.active)] >= engine.block).any())
            t = time.perf_counter()
            engine.step()
            (reencode if full else plain).append(time.perf_counter() - t)
        return 1000 * sum(plain) / len(plain), sum(reencode) / (sum(plain) + sum(reencode))

    (step1, share1), (step16, share16) = step_split(1), step_split(16)
    return {"single_tokens_per_s": round(single), "nanogpt_style_tokens_per_s": round(nano),
            "speedup_vs_nanogpt": round(single / nano, 2), "streams16_tokens_per_s": round(batch16),
            "streams16_over_single": round(batch16 / single, 2), "new_tokens": new_tokens,
            "decode_step_ms_1": round(step1, 3), "decode_step_ms_16": round(step16, 3),
            "decode_steps_16_over_1": round(16 * step1 / step16, 2),
            "reencode_share_1": round(share1, 3), "reencode_share_16": round(share16, 3),
            "threads": torch.get_num_threads(),
            "goals": "single >= 1600 tokens/s; 16 streams >= 8x single",
            "goal_met": single >= 1600 and batch16 >= 8 * single}


async def load_level(url: str, clients: int, requests: int, tokens: int, seed: int) -> dict:
    import httpx

    ttft, itl, errors, done_tokens = [], [], 0, 0
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    async def client(i: int, n: int, http: httpx.AsyncClient):
        nonlocal errors, done_tokens
        rnd = random.Random(seed * 1000 + i)
        for _ in range(n):
            await asyncio.sleep(rnd.expovariate(1 / 0.05))
            body = {"model": "model", "prompt": "ROMEO:", "max_tokens": tokens, "stream": True,
                    "seed": rnd.randrange(2 ** 31)}
            t0 = time.perf_counter()
            last, count = None, 0
            try:
                async with http.stream("POST", url + "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        errors += 1
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        now = time.perf_counter()
                        if json.loads(line[6:])["choices"][0]["text"]:
                            if last is None:
                                ttft.append(now - t0)
                            else:
                                itl.append(now - last)
                            last, count = now, count + 1
                done_tokens += count
            except httpx.HTTPError:
                errors += 1

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, n, http) for i, n in enumerate(per_client)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": requests, "tokens_per_request": tokens, "wall_s": round(wall, 2),
            "ttft_ms_p50": round(1000 * pct(ttft, 0.5), 1), "ttft_ms_p99": round(1000 * pct(ttft, 0.99), 1),
            "itl_ms_p50": round(1000 * pct(itl, 0.5), 2), "itl_ms_p99": round(1000 * pct(itl, 0.99), 2),
            "tokens_per_s": round(done_tokens / wall), "requests_per_s": round((requests - errors) / wall, 2),
            "errors": errors}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def load(run: Path, requests: int, tokens: int) -> dict:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    server = subprocess.Popen([sys.executable, "-m", "aigc", "serve", str(run), "--port", str(port), "--no-history",
                               "--slots", "16", "--queue", "256"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if server.poll() is not None:
                sys.exit(f"the server failed:\n{server.stderr.read()[-2000:]}")
        levels = [asyncio.run(load_level(url, c, requests, tokens, seed=c)) for c in (1, 4, 16)]
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    return {"levels": levels, "server_peak_rss_mb": rss}


def split(d: dict) -> str:
    if "decode_step_ms_16" not in d:
        return ""
    return (f" Steps that only decode: {d['decode_step_ms_1']} ms for one stream, {d['decode_step_ms_16']} ms for 16 "
            f"({d['decode_steps_16_over_1']}x); the steps that re-encode a full context's last half take "
            f"{100 * d['reencode_share_1']:.0f}% of one stream's run and {100 * d['reencode_share_16']:.0f}% of "
            f"16 streams'.")


def markdown(res: dict) -> str:
    d = res["decode"]
    lines = [f"Decode path (in-process, one stream of {d['new_tokens']} tokens, 4x128 char GPT, context 64): "
             f"**{d['single_tokens_per_s']} tokens/s** against {d['nanogpt_style_tokens_per_s']} for a nanoGPT-style "
             f"loop on the same weights ({d['speedup_vs_nanogpt']}x); 16 streams decoded together: "
             f"{d['streams16_tokens_per_s']} tokens/s = **{d['streams16_over_single']}x** a single stream. "
             f"Goals ({d['goals']}): {'met' if d['goal_met'] else '**not met**'}." + split(d), "",
             "| clients | requests | TTFT p50 / p99 ms | ITL p50 / p99 ms | tokens/s | requests/s | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in res["load"]["levels"]:
        lines.append(f"| {lv['clients']} | {lv['requests']} x {lv['tokens_per_request']} tokens | "
                     f"{lv['ttft_ms_p50']} / "
                     f"{lv['ttft_ms_p99']} | {lv['itl_ms_p50']} / {lv['itl_ms_p99']} | {lv['tokens_per_s']} | "
                     f"{lv['requests_per_s']} | {lv['errors']} |")
    lines += ["", f"`aigc serve` over loopback HTTP, streamed completions; the clients share the server's 2 cores. "
              f"Server peak RSS {res['load']['server_peak_rss_mb']} MB.", ""]
    rows = {"decode": {**d, **res["stamp"]}, "load": {**res["load"], **res["stamp"]}}
    what = {"decode": "engine vs nanoGPT-style, 1 and 16 streams", "load": "1 / 4 / 16 concurrent clients"}
    return "\n".join(lines + provenance(rows, what, lambda k: "python benchmarks/serve.py"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    ap.add_argument("--table", action="store_true", help="only print the markdown of the saved results")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(OUT.read_text())))
        return
    if not Path(args.data).is_file():
        sys.exit(f"tiny-shakespeare not found at {args.data} (pass --data)")
    with tempfile.TemporaryDirectory() as d:
        run = train_model(Path(args.data), Path(d) / "model")
        decode = decode_speed(run)
        print(json.dumps(decode), file=sys.stderr, flush=True)
        served = load(run, args.requests, args.tokens)
    res = {"decode": decode, "load": served,
           "stamp": {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": commit()}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
