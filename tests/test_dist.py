"""torchrun with gloo on CPU (--device cpu, also on a GPU machine): 2 processes with batch B/2 each take the
steps 1 process with batch B takes; a 2-process checkpoint resumes on 1 process; only rank 0 writes; a dead rank
ends the run instead of hanging it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform != "linux",
                                                   reason="torchrun not available")]

SHAPES = ["num_train=64", "num_eval=16", "batch_size=8"]
CASES = {   # family -> (dataset, --set values); fp32, no BatchNorm, no dropout: exact equivalence is expected
    "gpt": ("text", ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "batch_size=8"]),
    "vae": ("mnist", ["arch=mlp", "hidden=32", "z_dim=4", "batch_size=16"]),
    "diffusion": ("shapes", [*SHAPES, "cond=text", "width=8", "heads=2", "groups=4", "mults=[1, 2]", "p_uncond=0.2"]),
    "gan": ("mnist", ["arch=mlp", "g_width=16", "d_width=16", "z_dim=8", "batch_size=16"]),
}
COMMON = ["eval_every=0", "sample_every=0", "ckpt_every=0", "eval_batches=1", "log_every=1", "grad_clip=1.0"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def train(family, out, data_dir, procs: int, steps: int = 20, extra=(), timeout=300):
    """`aigc train` on `procs` processes with the case's global batch (data.batch_size is per process)."""
    dataset, sets = CASES[family]
    sets = [f"batch_size={int(s.split('=')[1]) // procs}" if s.startswith("batch_size=") else s for s in sets]
    args = ["train", family, "--data", dataset, "--steps", str(steps), "--out", str(out), "--quiet", "--device", "cpu",
            *[x for s in [*sets, *COMMON, *extra] for x in ("--set", s)]]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    launcher = [sys.executable, "-m", "aigc"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "aigc"]
    p = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env(), timeout=timeout)
    if p.returncode and EXIT_ABORT in p.stderr and finished(out):
        # A known fault (docs/distributed.md): a rank that has finished and written everything sometimes aborts
        # in C++ destructors at interpreter exit. The run's results are complete; the test reads them.
        warnings.warn(f"{family} on {procs} processes: a rank aborted at exit after finishing ({EXIT_ABORT})")
        p.returncode = 0
    return p


EXIT_ABORT = "terminate called without an active exception"


def finished(run) -> bool:
    path = run / "metrics.jsonl"
    return path.is_file() and any(json.loads(line) == {**json.loads(line), "kind": "stop", "stopped": "finished"}
                                  for line in path.read_text().splitlines())


def losses(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 60, encoding="utf-8")
    return path


@pytest.mark.parametrize("family", list(CASES))
def test_two_processes_take_the_steps_of_one(family, tmp_path, mnist_dir, corpus):
    data = {"text": corpus, "mnist": mnist_dir}.get(CASES[family][0])
    one, two = tmp_path / "one", tmp_path / "two"
    p1, p2 = train(family, one, data, 1), train(family, two, data, 2)
    assert p1.returncode == 0, p1.stderr[-2000:]
    assert p2.returncode == 0, p2.stderr[-2000:]
    a, b = losses(one), losses(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 21))
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if k not in ("kind", "step", "elapsed_s", "it_per_s", "lr") and isinstance(v, float):
                assert abs(v - rb[k]) <= max(1e-4, 1e-6 * abs(v)), (family, ra["step"], k, v, rb[k])   # fp32
    assert "2 processes x batch" in p2.stderr and p2.stdout.count('"run"') == 1     # rank 0 speaks
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 0 wrote, once
    assert '"world_size": 2' in (two / "metrics.jsonl").read_text()


def test_a_two_process_checkpoint_resumes_on_one(tmp_path, mnist_dir):
    run = tmp_path / "run"
    p = train("vae", run, mnist_dir, 2, steps=10)
    assert p.returncode == 0, p.stderr[-2000:]
    from safetensors.torch import load_file

    assert not any(k.startswith("module.") for k in load_file(str(run / "checkpoint" / "model.safetensors")))
    r = subprocess.run([sys.executable, "-m", "aigc", "train", "--resume", str(run), "--steps", "15", "--quiet"],
                       capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert losses(run)[-1]["step"] == 15


def test_a_dead_rank_ends_the_run(tmp_path, mnist_dir):
    """Rank 1 killed mid-run: torchrun stops every process and names the failed rank; nothing hangs."""
    dataset, sets = CASES["vae"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aigc",
           "train", "vae", "--data", dataset, "--data-dir", str(mnist_dir), "--minutes", "5", "--out",
           str(tmp_path / "run"), "--quiet", "--device", "cpu", *[x for s in [*sets, *COMMON] for x in ("--set", s)]]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "metrics.jsonl").is_file():          # training has started
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        time.sleep(1)
        ranks = {}
        for pid in subprocess.run(["pgrep", "-f", "aigc train vae"], capture_output=True, text=True).stdout.split():
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            rank = next((e.split(b"=")[1] for e in environ if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(pid)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=90)
        assert proc.returncode != 0 and time.time() - t0 < 90
        assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*exitcode\s*:\s*-9", err), err[-2000:]  # named
        assert "[rank0]: Traceback" not in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_saves_one_checkpoint_and_every_rank_exits(tmp_path, mnist_dir):
    dataset, sets = CASES["vae"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aigc",
           "train", "vae", "--data", dataset, "--data-dir", str(mnist_dir), "--minutes", "5", "--out", str(run),
           "--quiet", "--device", "cpu", *[x for s in [*sets, *COMMON] for x in ("--set", s)]]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").is_file():
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)                       # torchrun passes it on to both ranks
        _, err = proc.communicate(timeout=90)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        stops = [r for r in rows if r["kind"] == "stop"]
        assert [r["stopped"] for r in stops] == ["interrupted"], err[-2000:]
        assert [r["step"] for r in rows if r["kind"] == "checkpoint"] == [stops[0]["step"]]
        assert "checkpoint saved" in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
