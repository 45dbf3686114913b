"""One generic training loop; it knows no model family.

A *recipe* (duck-typed, see `TrainerHooks`) owns the modules and says what one step does; the
trainer owns everything around it: device, optimisers (AdamW), warm-up + cosine learning rate,
gradient clipping, EMA, AMP, torch.compile, the step/time budget, periodic eval/samples/checkpoints,
the metrics log, the progress bar, signals and exact resume.

Exact resume: the checkpoint holds the weights, EMA weights, optimiser states, the global torch RNG
state and the batcher's position and RNG. Evaluation and sampling run under `fork_rng` with a
fixed seed, so they neither consume nor depend on the training RNG stream. On CPU, N steps + resume
to 2N steps is therefore bit-identical to 2N steps in one go (tests/test_trainer.py)."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from aigc.config import COMPILE_MODES
from aigc.errors import AigcError, Interrupted, NonFiniteLoss, check_choice
from aigc.io import checkpoint as ckpt
from aigc.io.rundir import CHECKPOINT, LOSS_PNG, METRICS, SAMPLES, read_metrics
from aigc.train import dist
from aigc.train.ema import EMA
from aigc.train.plots import plot_metrics


class TrainerHooks(Protocol):
    """What the trainer needs from a recipe."""

    modules: dict[str, torch.nn.Module]          # everything saved in model.safetensors

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]: ...   # one optimiser per entry
    def ema_modules(self) -> dict[str, torch.nn.Module]: ...              # what EMA averages
    def train_step(self, batch: dict, opt: "Optimizers") -> dict[str, torch.Tensor]: ...
    def evaluate(self, data, max_batches: int | None) -> dict[str, float]: ...
    def save_samples(self, path: Path) -> None: ...


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise AigcError(f"unknown device '{name}'; valid: auto, cpu, cuda, mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise AigcError("--device cuda asked for, but this PyTorch build sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AigcError("--device mps asked for, but MPS is not available here")
    return torch.device(name)


class Optimizers:
    """One AdamW per parameter group. `update(name, loss)` = check, backward, clip, step, zero_grad."""

    def __init__(self, groups: dict[str, list], cfg, device: torch.device):
        self.cfg = cfg
        self.params = {name: [p for p in ps if p.requires_grad] for name, ps in groups.items()}
        fused = device.type == "cuda"
        self.opts = {}
        for name, ps in self.params.items():
            # no weight decay on biases and norm gains (1-d tensors), as in GPT-2 / nanoGPT
            decay = [p for p in ps if p.dim() >= 2]
            no_decay = [p for p in ps if p.dim() < 2]
            self.opts[name] = torch.optim.AdamW(
                [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)
        self.grad_norms: dict[str, torch.Tensor] = {}
        self.lr_scale = 1.0

    def set_lr(self, scale: float, lrs: dict[str, float] | None = None) -> None:
        self.lr_scale = scale
        for name, opt in self.opts.items():
            base = (lrs or {}).get(name, self.cfg.lr)
            for g in opt.param_groups:
                g["lr"] = base * scale

    def update(self, name: str, loss: torch.Tensor) -> None:
        if name not in self.opts:
            raise KeyError(f"no optimiser '{name}'; have {list(self.opts)}")
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(f"the '{name}' loss became {loss.item()}")
        with torch.autocast(loss.device.type, enabled=False):     # backward outside autocast, as advised
            loss.backward()
        dist.average_gradients(self.params[name])                 # N processes: before clipping (no-op for 1)
        if self.cfg.grad_clip > 0:
            self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(self.params[name], self.cfg.grad_clip)
        self.opts[name].step()
        self.opts[name].zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.opts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.opts.items():
            opt.load_state_dict(state[name])


def lr_scale(step: int, progress: float, warmup_steps: int, min_ratio: float, schedule: str = "cosine") -> float:
    """Linear warm-up over `warmup_steps`, then cosine from 1 to `min_ratio` over the budget's progress
    (a step budget, a time budget, whichever is further along), or constant."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    p = min(max(progress, 0.0), 1.0)
    return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@contextlib.contextmanager
def _signals_to_flag(flag: dict):
    def handler(signum, frame):
        if flag.get("signal"):                       # a second Ctrl-C while saving is ignored
            return
        flag["signal"] = signum
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    def __init__(self, recipe: TrainerHooks, data, batcher, cfg, run_dir: Path, device: torch.device,
                 quiet: bool = False, lrs: dict[str, float] | None = None, threads=None):
        """`cfg` is a TrainConfig; `lrs` optional per-optimiser base learning rates (e.g. TTUR); `threads` an
        optional aigc.threads.ThreadPolicy, re-measured during training (a change is logged)."""
        self.recipe, self.data, self.batcher, self.cfg = recipe, data, batcher, cfg
        self.run_dir, self.device, self.quiet, self.lrs = Path(run_dir), device, quiet, lrs
        self.threads = threads if device.type == "cpu" else None
        if cfg.steps <= 0 and cfg.minutes <= 0:
            raise AigcError("no training budget: give --steps N or --minutes M")
        check_choice("train.schedule", cfg.schedule, ("cosine", "constant"))
        check_choice("train.compile", cfg.compile, COMPILE_MODES)
        for m in recipe.modules.values():
            m.to(device)
            if cfg.compile != "none":    # in place (nn.Module.compile): parameter names, EMA, checkpoints unchanged
                m.compile(mode=cfg.compile)
        self.opt = Optimizers(recipe.param_groups(), cfg, device)
        self.ema = EMA(recipe.ema_modules(), cfg.ema) if cfg.ema > 0 else None
        self.step, self.elapsed = 0, 0.0
        self.amp = cfg.amp and device.type == "cuda"

    # ------------------------------------------------------------------ checkpoint
    def save(self) -> None:
        if not dist.is_main():                       # rank 0 writes the run folder
            return
        state = {
            "step": self.step, "elapsed": self.elapsed,
            "optimizers": self.opt.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "batcher": self.batcher.state_dict(),
            "world_size": dist.WORLD,
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        ema = self.ema.state() if self.ema is not None else None
        ckpt.save_checkpoint(self.run_dir / CHECKPOINT, ckpt.flat_state(self.recipe.modules), ema, state)
        self._log({"kind": "checkpoint", "step": self.step, "elapsed_s": round(self.elapsed, 2)})

    def load(self) -> None:
        folder = self.run_dir / CHECKPOINT
        ckpt.load_flat_state(self.recipe.modules, ckpt.load_weights(folder), str(folder))
        state = ckpt.load_state(folder)
        self.opt.load_state_dict(state["optimizers"])
        if self.ema is not None:
            ema_path = folder / ckpt.EMA
            if ema_path.is_file():
                self.ema.load(ckpt.load_weights(folder, ema=True))
        self.batcher.load_state_dict(state["batcher"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self._trim_metrics()

    def _trim_metrics(self) -> None:
        """Drop log rows written after the checkpoint (a crash between saves): the resumed run logs them again."""
        path = self.run_dir / METRICS
        if path.is_file() and dist.is_main():
            rows = read_metrics(self.run_dir)
            keep = [r for r in rows if r.get("step", 0) <= self.step]
            if len(keep) != len(rows):
                path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    # ------------------------------------------------------------------ helpers
    def progress(self, elapsed: float | None = None) -> float:
        elapsed = self.elapsed if elapsed is None else elapsed
        p = 0.0
        if self.cfg.steps > 0:
            p = max(p, self.step / self.cfg.steps)
        if self.cfg.minutes > 0:
            p = max(p, elapsed / (self.cfg.minutes * 60))
        return p

    def _log(self, row: dict) -> None:
        if not dist.is_main():
            return
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    @contextlib.contextmanager
    def _eval_mode(self, use_ema: bool = True):
        """Eval mode, EMA weights if any, no grad, and a private RNG stream (fixed seed) so that
        evaluation neither perturbs nor depends on training randomness."""
        modes = {n: m.training for n, m in self.recipe.modules.items()}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.cfg.seed + 12345)
            for m in self.recipe.modules.values():
                m.eval()
            try:
                with (self.ema.applied() if (use_ema and self.ema) else contextlib.nullcontext()):
                    yield
            finally:
                for n, m in self.recipe.modules.items():
                    m.train(modes[n])

    def evaluate(self, final: bool = False) -> dict:
        with self._eval_mode(), self._autocast():
            metrics = self.recipe.evaluate(self.data, None if final else self.cfg.eval_batches)
        row = {"kind": "eval", "step": self.step, "elapsed_s": round(self.elapsed, 2), **metrics}
        self._log(row)
        return row

    def samples(self) -> None:
        with self._eval_mode(), self._autocast():
            self.recipe.save_samples(self.run_dir / SAMPLES / f"step_{self.step:07d}.png")

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _every(self, n: int) -> bool:
        return n > 0 and self.step % n == 0

    def plot(self) -> None:
        if not dist.is_main():
            return
        plot_metrics(read_metrics(self.run_dir), self.run_dir / LOSS_PNG, title=self.run_dir.name)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_at: int | None = None) -> dict:
        """Train until the budget is spent (or, for tests and tools, until step `stop_at`, which
        behaves like an interrupt without the error); returns a summary. Raises AigcError on
        interrupt / NaN (after saving, resp. keeping, the checkpoint) saying how to continue."""
        cfg, flag = self.cfg, {}
        for m in self.recipe.modules.values():
            m.train()
        if self.progress() >= 1.0:
            return {"step": self.step, "elapsed_s": self.elapsed, "stopped": "budget already spent"}
        bar = tqdm(total=cfg.steps or None, initial=self.step, disable=self.quiet or not dist.is_main(),
                   dynamic_ncols=True,
                   unit="it", mininterval=0.5 if sys.stderr.isatty() else 30, file=sys.stderr)
        if dist.WORLD > 1:                           # the run records its world size (and in trainer_state)
            self._log({"kind": "dist", "step": self.step, "world_size": dist.WORLD,
                       "backend": torch.distributed.get_backend()})
        sums: dict[str, torch.Tensor] = {}
        count, t_log, step_log = 0, time.perf_counter(), self.step
        t0, elapsed0 = time.perf_counter(), self.elapsed
        last_good = self.step if (self.run_dir / CHECKPOINT / "model.safetensors").is_file() else None
        stopped = "budget"
        with _signals_to_flag(flag):
            while True:
                if cfg.compile == "reduce-overhead":   # CUDA graphs: this step may overwrite the last one's outputs
                    torch.compiler.cudagraph_mark_step_begin()
                batch = _to_device(dist.shard(next(self.batcher)), self.device)
                self.opt.set_lr(lr_scale(self.step, self.progress(), cfg.warmup_steps, cfg.min_lr_ratio,
                                         cfg.schedule), self.lrs)
                try:
                    with self._autocast(), dist.sharded():
                        out = self.recipe.train_step(batch, self.opt)
                except NonFiniteLoss as e:
                    bar.close()
                    self._log({"kind": "error", "step": self.step, "error": str(e)})
                    self.plot()
                    kept = (f"The last good checkpoint (step {last_good}) is kept in {self.run_dir / CHECKPOINT}."
                            if last_good is not None else "No checkpoint had been written yet.")
                    raise NonFiniteLoss(
                        f"{e} at step {self.step}; training stopped. {kept} Start a new run with a lower "
                        f"train.lr or train.grad_clip=1.0 (--overwrite replaces this one); --resume would "
                        f"continue with the same settings.") from None
                self.step += 1
                self.elapsed = elapsed0 + time.perf_counter() - t0
                if self.threads is not None and (n := self.threads.update()) is not None:
                    self._log({"kind": "threads", "step": self.step, "threads": n,
                               "others_busy_cores": round(self.threads.others, 2)})
                if self.ema is not None:
                    self.ema.update(self.step)
                for k, v in out.items():
                    v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                bar.update(1)
                done, sig = self.progress() >= 1.0, flag.get("signal")
                if dist.WORLD > 1:                   # one decision for all ranks: the budget, a signal
                    done, signalled = dist.any_rank([done, bool(sig)], self.device)
                    sig = (sig or signal.SIGTERM) if signalled else None      # SIGTERM: another rank's signal
                if self._every(cfg.log_every) or done:
                    now = time.perf_counter()
                    means = dist.mean_over_ranks({k: v / count for k, v in sums.items()}, self.device)
                    row = {"kind": "train", "step": self.step, "elapsed_s": round(self.elapsed, 2),
                           **{k: round(float(v), 6) for k, v in means.items()},
                           "lr": cfg.lr * self.opt.lr_scale,
                           "it_per_s": round((self.step - step_log) / (now - t_log), 2)}
                    self._log(row)
                    sums, count, t_log, step_log = {}, 0, now, self.step
                    if cfg.minutes > 0 and not cfg.steps:
                        bar.total = max(self.step, int(self.step / max(self.progress(), 1e-9)))
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                     if k not in ("kind", "step", "elapsed_s", "it_per_s")}, refresh=False)
                if self._every(cfg.ckpt_every) and not done:
                    self.save()
                    last_good = self.step
                if self._every(cfg.eval_every) and not done and dist.is_main():
                    self.evaluate()
                if self._every(cfg.sample_every) and not done and dist.is_main():
                    self.samples()
                if stop_at is not None and self.step >= stop_at:
                    stopped = "stop_at"
                    break
                if done or sig:
                    if sig:
                        stopped = "interrupted"
                    break
            bar.close()
            self.save()                              # also on interrupt: nothing is lost
        self.plot()
        self._log({"kind": "stop", "step": self.step, "elapsed_s": round(self.elapsed, 2), "stopped": stopped})
        if stopped == "interrupted":
            name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
            raise Interrupted(f"{name} received: checkpoint saved at step {self.step} in {self.run_dir}; "
                              f"continue with: aigc train --resume {self.run_dir}")
        return {"step": self.step, "elapsed_s": round(self.elapsed, 2), "stopped": stopped}

    def finish(self) -> dict:
        """End-of-run work: a full evaluation and a sample grid (with EMA weights if any), on rank 0."""
        if not dist.is_main():
            return {}
        row = self.evaluate(final=True)
        self.samples()
        self.plot()
        self._log({"kind": "stop", "step": self.step, "elapsed_s": round(self.elapsed, 2), "stopped": "finished"})
        return row
