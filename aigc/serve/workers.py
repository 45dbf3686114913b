"""One worker thread per served model, fed by a bounded queue; the HTTP handlers only wait for its events.

A worker knows no family: it holds a recipe and generates through the generation contract.
- `TextWorker`, for recipes with a text engine (`recipe.text_engine()`): continuous batching. Waiting requests
  join the running batch between steps while slots are free; each step makes one token for every running stream,
  and a stream whose client went away (`job.cancel()`) leaves the batch at the next step.
- `Worker`, for every other recipe: one request at a time through `generate(recipe, request, progress=...)`; the
  progress callback raises Cancelled when the job was cancelled, so a diffusion sampler stops within one step.

Events go to the job's `emit(event)` (thread-safe; the server hands in a function that puts them on an asyncio
queue): ("text", i, piece), ("progress", done, total), ("done", payload), ("error", exception)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from aigc.errors import AigcError, Cancelled
from aigc.generation import Request, generate

GLOBAL_RNG = threading.Lock()        # generate() seeds torch's global generator: one seeded generation at a time


class QueueFull(AigcError):
    """The model's queue is full (HTTP 429)."""


@dataclass
class Job:
    """One request. Events reach it through `emit(event)`, or, when it has an asyncio `loop` and `queue`, are put
    on that queue (a text worker then delivers all of a step's events with one wake-up of the loop)."""
    request: Request
    emit: Callable[[tuple], None] | None = None
    loop: object = None
    queue: object = None
    streams: list = field(default_factory=list)        # text: the TextStreams of this request
    cancelled: bool = False

    def __post_init__(self):
        if self.emit is None:
            self.emit = lambda ev: self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    def cancel(self) -> None:
        self.cancelled = True
        for s in self.streams:
            s.cancelled = True


@dataclass
class Stats:
    """Counters for /metrics (read without a lock: each is written by one thread)."""
    generated_tokens: int = 0
    cancelled: int = 0
    completed: int = 0
    failed: int = 0
    busy_s: float = 0.0


class Worker:
    """Runs one job at a time through `generate`."""

    def __init__(self, name: str, recipe, max_queue: int = 16):
        self.name, self.recipe = name, recipe
        self.queue: queue.Queue[Job] = queue.Queue(max_queue)
        self.stats = Stats()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"aigc-worker-{name}", daemon=True)
        self.thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet started)."""
        return self.queue.qsize()

    @property
    def running(self) -> int:
        return 0

    @property
    def max_n(self) -> int:
        """The most samples one request may ask for (text: the slots decoded together)."""
        return 1 << 30

    def submit(self, job: Job) -> Job:
        try:
            if self.depth >= self.queue.maxsize:         # depth also counts a job taken out to wait for slots
                raise queue.Full
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"model '{self.name}' has {self.queue.maxsize} requests waiting; try again "
                            f"shortly") from None
        return job

    def stop(self) -> None:
        """Stop taking jobs and wait for the one in hand (a thread left running torch at exit aborts Python)."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        if job.cancelled:
            self.stats.cancelled += 1
            return

        def progress(done: int, total: int) -> None:
            if job.cancelled:
                raise Cancelled("the client went away")
            job.emit(("progress", done, total))

        t0 = time.perf_counter()
        try:
            with GLOBAL_RNG:
                result = generate(self.recipe, job.request, progress=progress)
        except Cancelled:
            self.stats.cancelled += 1
            job.emit(("error", Cancelled("cancelled")))
        except Exception as e:              # noqa: BLE001 - handed to the request, which answers for it
            self.stats.failed += 1
            job.emit(("error", e))
        else:
            self.stats.completed += 1
            job.emit(("done", result))
        finally:
            self.stats.busy_s += time.perf_counter() - t0


class TextWorker(Worker):
    """Continuous batching over a text engine (`recipe.text_engine(slots)`)."""

    def __init__(self, name: str, recipe, engine, max_queue: int = 16):
        self.engine = engine
        self.waiting: list[Job] = []
        self.jobs: dict[int, Job] = {}                  # id(stream) -> its job, for the running streams
        super().__init__(name, recipe, max_queue)

    @property
    def depth(self) -> int:
        return self.queue.qsize() + len(self.waiting)

    @property
    def running(self) -> int:
        return len(self.engine.active)

    @property
    def max_n(self) -> int:
        return self.engine.cache.slots

    def submit(self, job: Job) -> Job:
        if (job.request.num or 1) > self.max_n:                 # before a stream is made for each
            raise AigcError(f"n must be at most {self.max_n} for this server (its batch size)")
        job.streams = self.recipe.text_streams(job.request)      # bad prompts fail here, in the request
        return super().submit(job)

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel()
        super().stop()

    def _loop(self) -> None:
        engine = self.engine
        while not self._stop.is_set():
            self._admit(block=not engine.active)
            if not engine.active:
                continue
            t0 = time.perf_counter()
            try:
                changed = engine.step()
            except Exception as e:          # noqa: BLE001 - a bug: fail the running requests, keep serving
                for job in {id(j): j for j in self.jobs.values()}.values():
                    job.emit(("error", e))
                    self.stats.failed += 1
                engine.active.clear()
                engine.cache.n = 0
                self.jobs.clear()
                continue
            self.stats.busy_s += time.perf_counter() - t0
            self.stats.generated_tokens += sum(1 for s in changed if s.finish != "cancelled")
            events = []
            for s in changed:
                job = self.jobs.get(id(s))
                if job is None:
                    continue
                piece = s.take()
                if piece:
                    events.append((job, ("text", job.streams.index(s), piece)))
                if s.finish is not None:
                    del self.jobs[id(s)]
                    events += [(job, ev) for ev in self._finished(job)]
            deliver(events)

    def _admit(self, block: bool) -> None:
        """Move queued jobs into the batch while their streams fit. At most one job waits outside the queue (the
        next one, for free slots), so the queue's bound is what a client sees."""
        while True:
            if not self.waiting:
                try:
                    self.waiting.append(self.queue.get(timeout=0.2) if block else self.queue.get_nowait())
                except queue.Empty:
                    return
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.pop(0)
                self.stats.cancelled += 1
                job.emit(("error", Cancelled("cancelled")))
                continue
            if self.engine.free < len(job.streams):
                return
            self.waiting.pop(0)
            self.engine.add(*job.streams)
            for s in job.streams:
                self.jobs[id(s)] = job
            block = False

    def _finished(self, job: Job) -> list[tuple]:
        """The job's last event, once all its streams have finished."""
        if any(s.finish is None for s in job.streams):
            return []
        if job.cancelled or any(s.finish == "cancelled" for s in job.streams):
            self.stats.cancelled += 1
            return [("error", Cancelled("cancelled"))]
        self.stats.completed += 1
        return [("done", job.streams)]


def deliver(events: list[tuple[Job, tuple]]) -> None:
    """Hand events to their jobs: one call into each event loop for all of its jobs' events."""
    by_loop: dict[int, tuple] = {}
    for job, ev in events:
        if job.queue is None:
            job.emit(ev)
        else:
            by_loop.setdefault(id(job.loop), (job.loop, []))[1].append((job.queue, ev))
    for loop, items in by_loop.values():
        loop.call_soon_threadsafe(_put_all, items)


def _put_all(items) -> None:
    for q, ev in items:
        q.put_nowait(ev)


def make_worker(name: str, recipe, max_queue: int, slots: int, threads=None) -> Worker:
    """A TextWorker when the recipe has a text engine, else a Worker."""
    engine = recipe.text_engine(slots, threads)
    if engine is not None:
        return TextWorker(name, recipe, engine, max_queue)
    return Worker(name, recipe, max_queue)
