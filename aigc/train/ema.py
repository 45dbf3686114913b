"""Exponential moving average of weights (Polyak averaging), kept beside the trained modules."""

from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.modules, self.decay = modules, decay
        self.shadow = {name: [p.detach().clone() for p in self._tensors(m)] for name, m in modules.items()}

    @staticmethod
    def _named(m: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        # what state_dict saves (parameters and persistent buffers), in its order, so EMA weights use the
        # same names as model.safetensors; a tied tensor appears once; floats are averaged, integers copied
        out, seen = [], set()
        for k, v in m.state_dict(keep_vars=True).items():
            if id(v) not in seen:
                seen.add(id(v))
                out.append((k, v))
        return out

    @classmethod
    def _tensors(cls, m: torch.nn.Module) -> list[torch.Tensor]:
        return [v for _, v in cls._named(m)]

    @torch.no_grad()
    def update(self, step: int) -> None:
        # warm-up of the decay (as in tf.train.ExponentialMovingAverage with num_updates): early weights
        # are forgotten quickly instead of dragging the average towards the random initialisation
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, m in self.modules.items():
            live, avg = self._tensors(m), self.shadow[name]
            floats = [(a, p) for a, p in zip(avg, live) if a.is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [p for _, p in floats], 1.0 - decay)
            for a, p in zip(avg, live):
                if not a.is_floating_point():
                    a.copy_(p)

    def state(self) -> dict[str, torch.Tensor]:
        """Shadow weights flattened as {'module.key': tensor}: the same keys as model.safetensors."""
        return {f"{name}.{k}": a.detach().cpu().contiguous()
                for name, m in self.modules.items() for (k, _), a in zip(self._named(m), self.shadow[name])}

    def load(self, flat: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, m in self.modules.items():
                for (k, _), a in zip(self._named(m), self.shadow[name]):
                    a.copy_(flat[f"{name}.{k}"])

    @contextlib.contextmanager
    def applied(self):
        """Temporarily swap the EMA weights into the live modules."""
        backup = {name: [t.detach().clone() for t in self._tensors(m)] for name, m in self.modules.items()}
        try:
            with torch.no_grad():
                for name, m in self.modules.items():
                    for t, a in zip(self._tensors(m), self.shadow[name]):
                        t.copy_(a)
            yield
        finally:
            with torch.no_grad():
                for name, m in self.modules.items():
                    for t, b in zip(self._tensors(m), backup[name]):
                        t.copy_(b)
