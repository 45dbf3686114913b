"""Text-to-video metrics on moving-shapes, from attributes read off the pixels (data/video.py).

    frame_accuracy        share of frames whose detected shape and color match the prompt (over all
                          frames of all clips; attributes the prompt does not name always match)
    direction_accuracy    share of clips whose detected direction (where the shape first moves 1.5 px
                          from its start) is the one the prompt names (clips whose prompt names one);
                          axis_accuracy counts a move on the named axis as right (left/right, up/down),
                          so direction / axis accuracy is how often the sign is right along a right axis
    temporal_consistency  share of clips with a shape in every frame and the same shape and color in all
    stray_share           share of frames with foreground pixels outside the detected shape (specks of noise:
                          the detector reads the largest foreground component, see shapes.detect; 0 for real clips)
    prompt_accuracy       share of clips that are right in every frame and in direction
    motion_smoothness     spread (std over the clip) of the per-frame displacement of the shape's box
                          centre, in px, averaged over the temporally consistent clips (0 for real clips,
                          which move exactly 1 px per frame); mean_speed is the mean displacement (real: 1).
                          Both are None when no clip is consistent: a clip of noise, detected as one box
                          filling the canvas, "moves" 0 px and would otherwise look perfectly smooth.
    start_spread          (`start_spread`) for clips of one prompt: the spread (root of the summed variances of
                          x and y, px) of where the shape is in the first frame, and how many distinct start
                          pixels there are: a collapsed generator starts every clip at the same place."""

from __future__ import annotations

import torch


def clip_metrics(det: dict[str, torch.Tensor], requested: dict[str, torch.Tensor] | None = None) -> dict:
    """det: per-frame color, shape, cx, cy, found (N, T) and per-clip direction (N,); requested: color,
    shape, direction (N,) with -1 where the prompt does not name the attribute (None: unconditional)."""
    found = det["found"]
    all_found = found.all(1)
    same = lambda k: (det[k] == det[k][:, :1]).all(1)                  # noqa: E731
    consistent = all_found & same("shape") & same("color")
    d = torch.stack([det["cx"].diff(dim=1), det["cy"].diff(dim=1)], -1).norm(dim=-1)   # (N, T-1)
    out = {"temporal_consistency": round(float(consistent.double().mean()), 4),
           "shape_found": round(float(found.double().mean()), 4)}
    if "stray" in det:
        out["stray_share"] = round(float(det["stray"].double().mean()), 4)
    out["motion_smoothness"] = round(float(d[consistent].std(1).mean()), 4) if consistent.any() else None
    out["mean_speed"] = round(float(d[consistent].mean()), 4) if consistent.any() else None
    if requested is None:
        return out
    ok_frames = torch.ones_like(found)
    for key in ("shape", "color"):
        want = requested[key][:, None]
        ok = det[key] == want
        if (want >= 0).any():
            named = (want >= 0).expand_as(ok)
            out[f"{key}_frame_accuracy"] = round(float(ok[named].double().mean()), 4)
        ok_frames &= ok | (want < 0)
    out["frame_accuracy"] = round(float(ok_frames.double().mean()), 4)
    want = requested["direction"]
    dir_ok = (det["direction"] == want) | (want < 0)
    if (want >= 0).any():
        out["direction_accuracy"] = round(float((det["direction"] == want)[want >= 0].double().mean()), 4)
        on_axis = (det["direction"] >= 0) & (det["direction"] // 2 == want // 2)   # left/right = 0, 1; up/down = 2, 3
        out["axis_accuracy"] = round(float(on_axis[want >= 0].double().mean()), 4)
    out["prompt_accuracy"] = round(float((ok_frames.all(1) & dir_ok).double().mean()), 4)
    return out


def start_spread(det: dict[str, torch.Tensor]) -> dict:
    """Where the shape is in frame 0 of clips made for one prompt (clips with no shape there are left out)."""
    found = det["found"][:, 0]
    cx, cy = det["cx"][found, 0].double(), det["cy"][found, 0].double()
    n = int(found.sum())
    spread = float((cx.var(unbiased=False) + cy.var(unbiased=False)).sqrt()) if n > 1 else None
    distinct = len({(round(float(a)), round(float(b))) for a, b in zip(cx, cy)})
    return {"start_spread_px": None if spread is None else round(spread, 2), "distinct_starts": distinct,
            "clips_with_a_start": n}
