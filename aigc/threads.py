"""A fair share of a busy CPU: how many intra-op threads to use, from the cores other processes leave free.

PyTorch's CPU kernels run on OpenMP threads that spin while they wait for each other. With as many threads as
cores, that is fastest on an idle machine; but when a second process also wants those cores, the spinning threads
are descheduled mid-region and every parallel op waits for a thread that is not running. Measured on 2 cores
(docs/LOG.md, 2026-12-03): two VAE trainings started together each kept 21% of their idle speed, where a fair
share is 50%; with one thread each they kept 70%. Lowering OpenMP's spin (GOMP_SPINCOUNT, OMP_WAIT_POLICY)
shares more fairly but costs 24-57% on an idle machine, so it is not the policy.

The policy instead counts the cores other processes keep busy (from /proc/stat, minus this process's own CPU
time) and uses the cores left free, at least one: measured once at start-up and again every few seconds while
training, so two runs started together settle on one thread each, and a run alone gets every core back when
the other one ends. `train.threads = N > 0`, or OMP_NUM_THREADS in the environment, fixes the count instead.
Where /proc/stat cannot be read (not Linux), every core of the process's affinity is used, as before.

torch is imported lazily: this module is read by the CLI before anything heavy."""

from __future__ import annotations

import math
import os
import time
from typing import Callable

PROC_STAT = "/proc/stat"
HEADROOM = 0.3          # a core counts as free when others leave at least 0.7 of it idle
PROBE_S = 0.2           # the start-up measurement's window
INTERVAL_S = 2.0        # how often training re-measures


def process_cores() -> list[int]:
    """The CPUs this process may run on (its affinity; all CPUs where that cannot be asked)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_ticks(cores: list[int], path: str = PROC_STAT) -> int | None:
    """Clock ticks the given CPUs have spent busy (everything but idle and iowait) since boot; None if unknown."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted, total = {f"cpu{c}" for c in cores}, 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [int(v) for v in parts[1:9]]            # user nice system idle iowait irq softirq steal
            total += sum(values) - values[3] - values[4]
            wanted.discard(parts[0])
    return None if wanted else total


def own_cpu_s() -> float:
    """CPU seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


def requested_threads(setting: int = 0) -> int:
    """A count the user fixed: the setting when > 0, else OMP_NUM_THREADS when it is a positive number, else 0."""
    if setting > 0:
        return setting
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else 0


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class ThreadPolicy:
    """Chooses torch's intra-op thread count from the cores other processes leave free (see the module doc).

    `fixed` > 0 (or OMP_NUM_THREADS) pins the count; `reserve` cores are left to the process's other threads.
    `read_busy`, `own_cpu` and `clock` are injectable for tests."""

    def __init__(self, fixed: int = 0, interval: float = INTERVAL_S, cores: list[int] | None = None,
                 reserve: int = 0, read_busy: Callable[[list[int]], int | None] | None = None,
                 own_cpu: Callable[[], float] = own_cpu_s, clock: Callable[[], float] = time.monotonic,
                 apply: Callable[[int], None] = set_torch_threads):
        self.cores = cores if cores is not None else process_cores()
        self.fixed, self.interval, self.reserve = requested_threads(fixed), interval, reserve
        self._read = read_busy or busy_ticks
        self._own, self._clock, self._apply = own_cpu, clock, apply
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.threads = self.fixed if self.fixed > 0 else max(1, len(self.cores) - reserve)
        self.others: float | None = None        # cores other processes kept busy in the last window
        self._mark()

    def _mark(self) -> None:
        self._t, self._busy, self._own_s = self._clock(), self._read(self.cores), self._own()

    def measure(self) -> float | None:
        """Cores kept busy by other processes since the last mark (and start a new window); None if unknown."""
        t, busy, own = self._clock(), self._read(self.cores), self._own()
        if busy is None or self._busy is None or t <= self._t:
            self._mark()
            return None
        others = ((busy - self._busy) / self.hz - (own - self._own_s)) / (t - self._t)
        self._t, self._busy, self._own_s = t, busy, own
        return min(max(others, 0.0), float(len(self.cores)))

    def choose(self, others: float) -> int:
        """Threads for `others` busy cores: the free ones (a core counts when under HEADROOM of it is taken), less
        `reserve` cores kept for this process's other threads (a server's event loop)."""
        free = math.floor(len(self.cores) - others + HEADROOM)
        return max(1, min(len(self.cores) - self.reserve, free - self.reserve))

    def start(self, probe_s: float = PROBE_S, sleep: Callable[[float], None] = time.sleep) -> int:
        """The start-up decision: measure the other processes for `probe_s` while this one waits; set threads."""
        if self.fixed > 0:
            self._apply(self.fixed)
            return self.fixed
        self._mark()
        sleep(probe_s)
        return self._set(self.measure())

    def update(self) -> int | None:
        """Called often (every training step): re-measures once `interval` has passed. Returns the new thread
        count when it changed, else None."""
        if self.fixed > 0 or self._clock() - self._t < self.interval:
            return None
        before = self.threads
        now = self._set(self.measure())
        return now if now != before else None

    def _set(self, others: float | None) -> int:
        self.others = others
        if others is not None:
            self.threads = self.choose(others)
        self._apply(self.threads)
        return self.threads
