"""The thread policy (aigc/threads.py): threads from the cores other processes leave free."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from aigc.threads import ThreadPolicy, busy_ticks, requested_threads

STAT = """cpu  300 0 100 1000 10 0 0 0 0 0
cpu0 100 0 50 500 5 0 0 0 0 0
cpu1 200 0 50 500 5 0 0 0 0 0
intr 1 2 3
"""


def test_busy_ticks_reads_the_process_cores(tmp_path):
    (tmp_path / "stat").write_text(STAT)
    assert busy_ticks([0, 1], str(tmp_path / "stat")) == 400
    assert busy_ticks([1], str(tmp_path / "stat")) == 250
    assert busy_ticks([0, 2], str(tmp_path / "stat")) is None          # a core it cannot see: unknown
    assert busy_ticks([0], str(tmp_path / "missing")) is None


class Machine:
    """A fake clock, /proc/stat and process CPU time: `run(seconds, others, own)` advances them."""

    def __init__(self):
        self.t, self.busy, self.own, self.applied = 0.0, 0, 0.0, []

    def run(self, seconds, others, own=0.0):
        self.t += seconds
        self.busy += round((others + own) * seconds * 100)      # ticks at 100 Hz
        self.own += own * seconds

    def policy(self, fixed=0, interval=2.0):
        p = ThreadPolicy(fixed, interval=interval, cores=[0, 1], read_busy=lambda cores: self.busy,
                         own_cpu=lambda: self.own, clock=lambda: self.t, apply=self.applied.append)
        p.hz = 100
        return p


@pytest.fixture(autouse=True)
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_start_uses_the_cores_others_leave_free():
    m = Machine()
    p = m.policy()
    assert p.start(sleep=lambda s: m.run(s, others=0.0)) == 2
    assert p.start(sleep=lambda s: m.run(s, others=1.0)) == 1             # a `yes` beside it
    assert p.start(sleep=lambda s: m.run(s, others=2.0)) == 1             # never fewer than one
    assert p.start(sleep=lambda s: m.run(s, others=0.2)) == 2             # a little noise is not a process
    assert m.applied == [2, 1, 1, 2]


def test_update_re_measures_after_the_interval_and_subtracts_its_own_work():
    m = Machine()
    p = m.policy()
    p.start(sleep=lambda s: m.run(s, others=0.0))
    m.run(1.0, others=1.0, own=1.0)
    assert p.update() is None and p.threads == 2                          # interval not yet over
    m.run(1.5, others=1.0, own=1.0)
    assert p.update() == 1 and p.others == pytest.approx(1.0)             # a second training started
    m.run(2.5, others=1.0, own=1.0)
    assert p.update() is None and p.threads == 1                          # no change, nothing logged
    m.run(2.5, others=0.0, own=1.0)
    assert p.update() == 2                                                # it ended: every core back
    m.run(2.5, others=0.0, own=2.0)
    assert p.update() is None and p.threads == 2                          # its own two cores are not "others"


def test_reserve_leaves_cores_to_the_process_itself():
    m = Machine()
    p = m.policy()
    p.reserve = 1
    assert p.start(sleep=lambda s: m.run(s, others=0.0)) == 1                # 2 cores: one for the event loop
    p8 = ThreadPolicy(cores=list(range(8)), reserve=1, read_busy=lambda c: m.busy, own_cpu=lambda: m.own,
                      clock=lambda: m.t, apply=lambda n: None)
    p8.hz = 100
    assert p8.start(sleep=lambda s: m.run(s, others=1.0)) == 6


def test_a_fixed_count_is_kept():
    m = Machine()
    p = m.policy(fixed=3)
    assert p.start(sleep=lambda s: m.run(s, others=2.0)) == 3
    m.run(5, others=2.0)
    assert p.update() is None and m.applied == [3]


def test_omp_num_threads_fixes_the_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert requested_threads(0) == 1 and requested_threads(4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert requested_threads(0) == 0


def test_unknown_load_keeps_every_core():
    p = ThreadPolicy(cores=[0, 1], read_busy=lambda cores: None, apply=lambda n: None)
    assert p.start(sleep=lambda s: None) == 2 and p.others is None


@pytest.mark.slow
def test_two_trainings_at_once_both_finish(tmp_path, mnist_dir):
    """Two CPU-bound trainings started together with the thread policy on: both finish (their speed is
    measured by benchmarks/busy_cpu.py)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "aigc", "train", "vae", "--data", "mnist", "--data-dir", str(mnist_dir),
           "--steps", "150", "--quiet", "--set", "arch=mlp", "--set", "hidden=64", "--set", "batch_size=64",
           "--set", "eval_every=0", "--set", "sample_every=0", "--set", "ckpt_every=0", "--set", "eval_batches=1"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / name)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for name in ("a", "b"):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1] == {**rows[-1], "kind": "stop", "stopped": "finished", "step": 150}
