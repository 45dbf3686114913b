"""Prompt accuracy: does each generated sample show what its prompt asked for?

`detected` and `requested` are {attribute: int64 (N,)} with -1 in `requested` where the prompt does
not name that attribute (e.g. 'a red circle' names no size or position). A sample counts as
correct when every named attribute matches; per-attribute accuracies are over the samples whose
prompt names that attribute."""

from __future__ import annotations

import torch


def prompt_accuracy(detected: dict[str, torch.Tensor], requested: dict[str, torch.Tensor]) -> dict[str, float]:
    n = len(next(iter(requested.values())))
    all_ok = torch.ones(n, dtype=torch.bool)
    out = {}
    for key, want in requested.items():
        named = want >= 0
        ok = detected[key] == want
        all_ok &= ok | ~named
        if named.any():
            out[f"{key}_accuracy"] = round(float(ok[named].double().mean()), 4)
    out["prompt_accuracy"] = round(float(all_ok.double().mean()), 4)
    return out
