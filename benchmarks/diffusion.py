"""Diffusion benchmarks (issue 6) on 2 CPU cores, each training run a 20-minute budget.

  python benchmarks/diffusion.py [--only ROW,ROW] [--minutes 20] [--data-dir ../shared/data/mnist]

Rows (each trains with `aigc train` in a subprocess unless its run exists, then measures in-process):
  mnist        ablation, the first MNIST preset (eps-prediction, width 48, plain loss, lr 1e-3): FID with DDIM-25
               on 10k samples vs the test split, and the time to draw 64 samples with DDIM-25
  mnist-ddpm   the same run: DDIM-25 vs 1000-step DDPM FID on the same number of samples (--ddpm-num, 500
               by default: 1000 steps x 10k samples would take ~3 hours here)
  mnist-steps  the same run: FID of DDIM with 25, 50, 100 steps and respaced DDPM with 100 (--ddpm-num samples)
  mnist-v      the mnist preset as it is now (v-prediction, min-SNR-5 loss weighting): FID with DDIM-25 on 10k
               samples, the time to draw 64 samples with DDIM-25, and DDIM-25 vs respaced DDPM-100 vs DDPM-1000
               on --ddpm-num samples
  mnist-v-ddpm the same run as mnist-v: FID with respaced DDPM-100 (the stochastic sampler) on 10k samples
  mnist-v-solvers  the same run: FID of DPM-Solver++(2M)-25 on 10k samples (beside mnist-v's DDIM-25); then
               DDIM-25, DPM-Solver++(2M)-25, DDIM-250 (near the exact ODE), respaced
               DDPM-100 and DDPM-1000 on --solver-num samples each (2000 by default; DDPM-1000 takes ~21 min),
               and each deterministic sampler's FID over DDPM-1000's
  mnist-v-eta  the same run: DDIM-25 at eta 0, 0.3, 0.6, 1.0 (fresh noise at each step) and DDPM-1000 on
               --solver-num samples each, and each DDIM's FID over DDPM-1000's
  mnist-v-plain  ablation, the preset before this one (v-prediction, width 48, plain loss, lr 1e-3): FID with
               DDIM-25 on 10k samples, and DDIM-25 vs respaced DDPM-100 on --ddpm-num samples
  mnist-class  class-conditional MNIST with the first preset (eps-prediction, width 48, plain loss, lr 1e-3):
               FID and class accuracy at guidance 1, 2, 3, 5 (2000 samples each) as a table and
               benchmarks/results/diffusion_guidance.png
  shapes       text-to-image shapes (preset configs/diffusion-shapes.toml) trained with the (color, shape)
               pairs "green triangle" and "yellow circle" held out: prompt accuracy and per-attribute accuracy
               on 1000 eval captions of seen pairs and 500 captions of held-out pairs, at guidance 1, 2, 3, 5
               (the results also keep two earlier preset versions as ablations, shapes-eps and shapes-nocoords)
FID = FID[mnist-clf-v1 features, N samples vs the 10k test images]. Results: benchmarks/results/diffusion.json."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aigc.generation import Request, generate, images_result  # noqa: E402
from benchmarks.run import provenance, rows_main, train_run  # noqa: E402

RUNS = ROOT / "bench_runs"
OUT = ROOT / "benchmarks" / "results" / "diffusion.json"
PLOT = ROOT / "benchmarks" / "results" / "diffusion_guidance.png"
MNIST = str(ROOT.parent / "shared" / "data" / "mnist")
GUIDANCE = (1.0, 2.0, 3.0, 5.0)
HOLDOUT = ["green triangle", "yellow circle"]

# the settings of the preset before this one (width 48, plain loss, lr 1e-3): the ablation rows keep them
EARLIER = ["--set", "model.width=48", "--set", "model.min_snr=0", "--set", "train.lr=1e-3"]
TRAIN = {
    "mnist": ("diffusion-mnist-20min", ["--data", "mnist", "--set", 'model.prediction="eps"', *EARLIER]),
    "mnist-v": ("diffusion-mnist-v-minsnr-20min", ["--data", "mnist"]),
    "mnist-v-plain": ("diffusion-mnist-v-20min", ["--data", "mnist", "--set", 'model.prediction="v"', *EARLIER]),
    "mnist-class": ("diffusion-mnist-class-20min", ["--data", "mnist", "--set", "model.cond=class",
                                                    "--set", 'model.prediction="eps"', *EARLIER]),
    "shapes": ("diffusion-shapes-holdout-20min", ["--data", "shapes", "--set", f"data.holdout={json.dumps(HOLDOUT)}"]),
}


def train(row: str, minutes: float, data_dir: str) -> tuple[Path, dict]:
    name, args = TRAIN[row]
    out = RUNS / name
    where = ["--data-dir", data_dir] if "mnist" in args else []
    info = train_run(out, ["diffusion", *args, *where], minutes, "img")
    ev = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    return out, {**info, "eval_loss": ev[-1].get("eval_loss") if ev else None}


def open_recipe(run_dir: Path):
    from aigc.recipes import open_run

    cfg, recipe = open_run(run_dir, torch.device("cpu"))
    data = recipe.load_data(cfg, run_dir)
    return cfg, recipe, data


def draw(recipe, data, num, seed=0, eta=None, **kw):
    """(an Images result of `num` evaluation samples drawn from seed `seed`, seconds); `eta`: DDIM's eta for
    these samples instead of the run's."""
    torch.manual_seed(seed)
    m = recipe.cfg.model
    own_eta, m.eta = m.eta, m.eta if eta is None else eta
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            result = recipe.generate_for_eval(data, num, **kw)
    finally:
        m.eta = own_eta
    return result, time.perf_counter() - t0


def scored(recipe, data, num, seed=0, eta=None, **kw) -> dict:
    """Sample-quality scores of `num` samples (see `draw`)."""
    result, secs = draw(recipe, data, num, seed, eta, **kw)
    q = data.score_result(result)
    keep = ("fid", "precision", "recall", "class_accuracy", "class_entropy", "num_samples")
    return {**{k: q[k] for k in keep if k in q}, "sampling_s": round(secs, 1)}


def sampling_time_64(recipe) -> tuple[float, list[float]]:
    """The best of 3 wall times of drawing 64 samples with DDIM-25, and all 3."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate(recipe, Request(num=64, sampler="ddim", steps=25))
        times.append(time.perf_counter() - t0)
    return round(min(times), 2), [round(t, 2) for t in times]


def row_mnist(args) -> dict:
    run_dir, info = train("mnist", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    info["ddim25_10k"] = scored(recipe, data, 10000, sampler="ddim", steps=25)
    info["ddim25_64_samples_s"], info["ddim25_64_samples_s_all"] = sampling_time_64(recipe)
    return info


SAMPLER_SETTINGS = {"ddim25": dict(sampler="ddim", steps=25), "ddim50": dict(sampler="ddim", steps=50),
                    "ddim100": dict(sampler="ddim", steps=100), "ddpm100": dict(sampler="ddpm", steps=100),
                    "ddpm1000": dict(sampler="ddpm", steps=1000), "dpm25": dict(sampler="dpm++2m", steps=25),
                    "ddim250": dict(sampler="ddim", steps=250),
                    **{f"ddim25_eta{e}": dict(sampler="ddim", steps=25, eta=e) for e in (0.3, 0.6, 1.0)}}


def score_samplers(info: dict, recipe, data, num: int, names: tuple[str, ...]) -> None:
    """info[name] = the scores of `num` samples drawn with each SAMPLER_SETTINGS[name] from the same model."""
    for name in names:
        info[name] = scored(recipe, data, num, **SAMPLER_SETTINGS[name])
        print(name, info[name], flush=True)


def row_mnist_ddpm(args) -> dict:
    run_dir, info = train("mnist", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    score_samplers(info, recipe, data, args.ddpm_num, ("ddim25", "ddpm1000"))
    info["ddim_vs_ddpm_fid_ratio"] = round(info["ddim25"]["fid"] / info["ddpm1000"]["fid"], 3)
    return info


def row_mnist_steps(args) -> dict:
    """The same model, --ddpm-num samples per sampler setting: how FID moves with the number of steps."""
    run_dir, info = train("mnist", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    score_samplers(info, recipe, data, args.ddpm_num, ("ddim25", "ddim50", "ddim100", "ddpm100"))
    return info


def row_mnist_v(args) -> dict:
    """The MNIST preset as it is now: FID with DDIM-25 on 10k samples, the 64-sample time, and DDIM-25 vs
    respaced DDPM-100 vs DDPM-1000 on --ddpm-num samples from the same model."""
    run_dir, info = train("mnist-v", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    info["ddim25_10k"] = scored(recipe, data, 10000, sampler="ddim", steps=25)
    print("ddim25_10k", info["ddim25_10k"], flush=True)
    info["ddim25_64_samples_s"], info["ddim25_64_samples_s_all"] = sampling_time_64(recipe)
    score_samplers(info, recipe, data, args.ddpm_num, ("ddim25", "ddpm100", "ddpm1000"))
    info["ddim_vs_ddpm_fid_ratio"] = round(info["ddim25"]["fid"] / info["ddpm1000"]["fid"], 3)
    return info


def row_mnist_v_ddpm(args) -> dict:
    """The preset's run: FID with respaced DDPM-100 on 10k samples (DDPM-1000 on 10k would take ~100 minutes)."""
    run_dir, info = train("mnist-v", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    info["ddpm100_10k"] = scored(recipe, data, 10000, sampler="ddpm", steps=100)
    return info


def row_mnist_v_solvers(args) -> dict:
    """The preset's run, --solver-num samples per sampler: is the DDIM-25 gap to DDPM-1000 discretisation error
    (which a second-order solver and more steps remove) or the ODE's own gap to the stochastic sampler?"""
    run_dir, info = train("mnist-v", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    info["dpm25_10k"] = scored(recipe, data, 10000, sampler="dpm++2m", steps=25)
    print("dpm25_10k", info["dpm25_10k"], flush=True)
    score_samplers(info, recipe, data, args.solver_num, ("ddim25", "dpm25", "ddim250", "ddpm100", "ddpm1000"))
    info["fid_over_ddpm1000"] = {k: round(info[k]["fid"] / info["ddpm1000"]["fid"], 3) for k in ("ddim25", "dpm25",
                                                                                                 "ddim250")}
    return info


def row_mnist_v_eta(args) -> dict:
    """The preset's run, --solver-num samples per sampler: DDIM-25 with fresh noise at each step (eta > 0, DDIM
    eq. 16) against deterministic DDIM-25 and DDPM-1000. With an imperfect model the deterministic ODE lags the
    stochastic sampler (row mnist-v-solvers); does some noise at 25 steps close the gap?"""
    run_dir, info = train("mnist-v", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    names = ("ddim25", "ddim25_eta0.3", "ddim25_eta0.6", "ddim25_eta1.0", "ddpm1000")
    score_samplers(info, recipe, data, args.solver_num, names)
    info["fid_over_ddpm1000"] = {k: round(info[k]["fid"] / info["ddpm1000"]["fid"], 3) for k in names[:-1]}
    return info


def row_mnist_v_plain(args) -> dict:
    """The preset before min-SNR weighting: FID with DDIM-25 on 10k samples, DDIM-25 vs respaced DDPM-100 on
    --ddpm-num samples."""
    run_dir, info = train("mnist-v-plain", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    info["ddim25_10k"] = scored(recipe, data, 10000, sampler="ddim", steps=25)
    score_samplers(info, recipe, data, args.ddpm_num, ("ddim25", "ddpm100"))
    return info


def row_mnist_class(args) -> dict:
    run_dir, info = train("mnist-class", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    info["guidance"] = {str(w): scored(recipe, data, 2000, guidance=w) for w in GUIDANCE}
    plot_guidance(info["guidance"])
    return info


def holdout_prompts(n: int) -> list[str]:
    from aigc.data import shapes

    g = torch.Generator().manual_seed(7)
    attrs = shapes.sample_attributes(20 * n, g)
    held = shapes.parse_holdout(HOLDOUT)
    idx = torch.tensor([i for i, (c, s) in enumerate(zip(attrs["color"].tolist(), attrs["shape"].tolist()))
                        if (c, s) in held][:n])
    return shapes.captions(attrs, idx)


def row_shapes(args) -> dict:
    from aigc.data import shapes

    run_dir, info = train("shapes", args.minutes, args.data_dir)
    _, recipe, data = open_recipe(run_dir)
    held = shapes.parse_holdout(HOLDOUT)
    ev = data.eval.attrs
    seen_idx = torch.tensor([i for i, (c, s) in enumerate(zip(ev["color"].tolist(), ev["shape"].tolist()))
                             if (c, s) not in held][:1000])
    sets = {"seen": data.eval.captions(seen_idx), "held_out": holdout_prompts(500)}
    info["guidance"] = {}
    for w in GUIDANCE:
        res = {}
        for name, prompts in sets.items():
            torch.manual_seed(0)
            t0 = time.perf_counter()
            with torch.no_grad():
                images = recipe.core.sample_for(prompts=prompts, guidance=w)
            u8 = images_result(images).channels_first()
            res[name] = {**shapes.prompt_accuracy(u8, prompts), "num_samples": len(prompts),
                         "sampling_s": round(time.perf_counter() - t0, 1)}
        info["guidance"][str(w)] = res
        print(w, json.dumps(res), flush=True)
    return info


def plot_guidance(table: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [float(w) for w in table]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([table[w]["fid"] for w in table], [table[w]["class_accuracy"] for w in table], "o-")
    for w, r in table.items():
        ax.annotate(f"w={float(w):g}", (r["fid"], r["class_accuracy"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("FID [mnist-clf-v1, 2000 samples vs test] (lower is better)")
    ax.set_ylabel("class accuracy of samples")
    ax.set_title(f"classifier-free guidance w = {', '.join(f'{w:g}' for w in ws)}")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    plt.close(fig)


def markdown(results: dict) -> str:
    """The README / closing-note tables from diffusion.json."""
    out = []
    models = (("mnist-v", "the preset: v-prediction, width 32, min-SNR-5 loss weighting, lr 2e-3"),
              ("mnist-v-plain", "ablation: v-prediction, width 48, plain loss, lr 1e-3 (the previous preset)"),
              ("mnist", "ablation: eps-prediction, width 48, plain loss, lr 1e-3 (the first preset)"))
    if any(k in results for k, _ in models):
        out += ["MNIST unconditional, 20-minute budget:", "",
                "| model | steps | train img/s | FID (10k, DDIM-25) | precision | recall | class entropy | "
                "64 samples DDIM-25 | goal |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for key, what in models:
            if key not in results:
                continue
            r = results[key]
            q, t64 = r["ddim25_10k"], r.get("ddim25_64_samples_s")
            goal = f"DDIM-25 FID <= 5: {'met' if q['fid'] <= 5 else '**NOT met**'}"
            if t64 is not None:
                goal += f"; <= 5 s: {'met' if t64 <= 5 else '**NOT met**'}"
            out.append(f"| {what} | {r['steps']} | {r['train_img_per_s']} | {q['fid']} | {q['precision']} | "
                       f"{q['recall']} | {q['class_entropy']} | {f'{t64} s' if t64 is not None else '-'} | {goal} |")
        out.append("")
    for key, field, what in (("mnist-v-ddpm", "ddpm100_10k", "respaced DDPM, 100 steps"),
                             ("mnist-v-solvers", "dpm25_10k", "DPM-Solver++(2M), 25 steps")):
        if key in results:
            q = results[key][field]
            out += [f"The preset's model sampled with {what}: FID (10k) {q['fid']}, precision {q['precision']}, "
                    f"recall {q['recall']}, class entropy {q['class_entropy']} ({q['sampling_s']} s; "
                    f"FID <= 5: {'met' if q['fid'] <= 5 else '**NOT met**'})", ""]
    names = {"ddim25": "DDIM, 25 steps", **{f"ddim25_eta{e}": f"DDIM, 25 steps, eta = {e}" for e in (0.3, 0.6, 1.0)},
             "ddim50": "DDIM, 50 steps", "ddim100": "DDIM, 100 steps",
             "ddpm100": "respaced DDPM, 100 steps", "ddpm1000": "DDPM, 1000 steps",
             "dpm25": "DPM-Solver++(2M), 25 steps", "ddim250": "DDIM, 250 steps"}
    for key, what in (("mnist-v", "the preset"), ("mnist-v-solvers", "the preset"), ("mnist-v-plain",
                                                                                     "previous preset"),
                      ("mnist-ddpm", "eps-prediction"), ("mnist-steps", "eps-prediction"),
                      ("mnist-v-eta", "the preset trained again, {steps} steps")):
        if key not in results:
            continue
        r = results[key]
        what = what.format(steps=r["steps"])
        out += [f"| sampler ({what}, same model) | samples | FID | precision | recall | sampling s |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {names[k]} | {r[k]['num_samples']} | {r[k]['fid']} | {r[k]['precision']} | {r[k]['recall']} | "
                f"{r[k]['sampling_s']} |" for k in names if k in r]
        if "ddim_vs_ddpm_fid_ratio" in r:
            ratio = r["ddim_vs_ddpm_fid_ratio"]
            out.append(f"\nDDIM-25 / DDPM-1000 FID = {ratio} (goal: within 15%, i.e. <= 1.15: "
                       f"{'met' if ratio <= 1.15 else '**NOT met**'})")
        if "fid_over_ddpm1000" in r:
            out += ["", *(f"- {names[k]} / DDPM-1000 FID = {ratio} (within 15%: "
                          f"{'yes' if ratio <= 1.15 else '**no**'})"
                          for k, ratio in r["fid_over_ddpm1000"].items())]
        out.append("")
    if "mnist-class" in results:
        r = results["mnist-class"]
        out += [f"Class-conditional MNIST ({r['steps']} steps, {r['train_img_per_s']} img/s; 2000 samples per row):",
                "",
                "| guidance w | FID | precision | recall | class accuracy | class entropy "
                "|", "|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {float(w):g} | {q['fid']} | {q['precision']} | {q['recall']} | {q['class_accuracy']} | "
                f"{q['class_entropy']} |"
                for w, q in r["guidance"].items()]
        out.append("")
    shapes_rows = {"shapes": "preset: v-prediction, caption map and coordinate channels",
                   "shapes-eps": "ablation: eps-prediction, coordinate channels, no caption map",
                   "shapes-nocoords": "ablation: eps-prediction, no coordinate channels, no caption map"}
    for key, what in shapes_rows.items():
        if key not in results:
            continue
        r = results[key]
        out += [f"Text-to-image shapes, {what}; held out: {', '.join(HOLDOUT)} ({r['steps']} steps, "
                f"{r['train_img_per_s']} img/s; 1000 seen-pair prompts, 500 held-out-pair prompts):", "",
                "| guidance w | prompt acc (seen) | shape | color | size | position | prompt acc (held out) | "
                "shape | color | size | position |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w, g in r["guidance"].items():
            cells = []
            for k in ("seen", "held_out"):
                q = g[k]
                cells += [q["prompt_accuracy"], q["shape_accuracy"], q["color_accuracy"], q["size_accuracy"],
                          q["position_accuracy"]]
            out.append(f"| {float(w):g} | " + " | ".join(map(str, cells)) + " |")
        out.append("")
    rows = {k: results[k] for k in ROWS if k in results}
    out += provenance(rows, {}, lambda k: f"python benchmarks/diffusion.py --only {k}  # trains: "
                      + rows[k].get("command", "(none: it samples the model of the row it is named after)"))
    return "\n".join(out)


ROWS = {"mnist": row_mnist, "mnist-ddpm": row_mnist_ddpm, "mnist-steps": row_mnist_steps, "mnist-v": row_mnist_v,
        "mnist-v-ddpm": row_mnist_v_ddpm, "mnist-v-solvers": row_mnist_v_solvers, "mnist-v-eta": row_mnist_v_eta,
        "mnist-v-plain": row_mnist_v_plain,
        "mnist-class": row_mnist_class, "shapes": row_shapes}


def main() -> None:
    def add_args(ap):
        ap.add_argument("--data-dir", default=MNIST)
        ap.add_argument("--ddpm-num", type=int, default=500)
        ap.add_argument("--solver-num", type=int, default=2000)

    rows_main(__doc__, ROWS, OUT, markdown, add_args)


if __name__ == "__main__":
    main()
