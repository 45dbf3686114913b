"""What each CLI command does, as plain functions (the CLI only parses arguments)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.errors import AigcError
from aigc.generation import Request, generate
from aigc.io import rundir
from aigc.io.samples import check_out, write_result
from aigc.recipes import build_config, open_run, recipe_class
from aigc.threads import ThreadPolicy
from aigc.train import Trainer, dist, pick_device


def _setup_torch(cfg: RunConfig) -> tuple[torch.device, ThreadPolicy]:
    """The device (joining the process group when torchrun started this process), and the CPU thread count: a
    rank's share of the cores under torchrun, else chosen from the cores other processes leave free."""
    device = dist.setup(cfg.train.device)
    policy = ThreadPolicy(cfg.train.threads or dist.threads_per_rank())
    policy.start()
    return (torch.device(device) if ":" in device else pick_device(device)), policy


def _load_data(cls, cfg: RunConfig, run_dir: Path | None = None):
    data = cls.load_data(cfg, run_dir)
    if data.note:
        print(f"note: {data.note}", file=sys.stderr)
    return data


def _prepare(cfg: RunConfig, data, init_from: Path | None = None):
    """The recipe (its weights initialised from the seeded global RNG, or from `init_from`) and the batcher:
    everything that can refuse the config or the data, before a run folder is touched."""
    cls = recipe_class(cfg.family)
    recipe = cls(cfg)
    if init_from is not None:
        recipe.init_from(init_from)
    return recipe, cls.make_batcher(data, dist.global_config(cfg))     # N processes: draws the global batch


def _fit(cfg: RunConfig, data, prepared, run_dir: Path, device, policy, quiet: bool, resume: bool,
         more_minutes: float | None = None, total_steps: int | None = None, stop_at: int | None = None) -> dict:
    recipe, batcher = prepared
    if dist.is_main():
        recipe.save_artifacts(run_dir, data)
    trainer = Trainer(recipe, data, batcher, cfg.train, run_dir, device, quiet=quiet, lrs=recipe.lrs, threads=policy)
    if resume:
        trainer.load()
        if total_steps is not None:
            cfg.train.steps = total_steps
        if more_minutes is not None:                   # --minutes on resume: M more minutes of training
            cfg.train.minutes = trainer.elapsed / 60 + more_minutes
        if dist.is_main():
            cfg.save(run_dir / rundir.CONFIG)
    summary = trainer.fit(stop_at=stop_at)
    if summary["stopped"] == "stop_at":
        return {"run": str(run_dir), **summary}
    final = trainer.finish()
    return {"run": str(run_dir), **summary, "final_eval": {k: v for k, v in final.items() if k != "kind"}}


def start_training(family, dataset, config_file, sets, flags, out, overwrite, quiet, stop_at=None,
                   init_from=None) -> dict:
    cfg = build_config(family, dataset, config_file, sets, flags)
    cls = recipe_class(family)
    device, policy = _setup_torch(cfg)
    path = dist.broadcast(rundir.plan_run_dir(out, family, dataset, overwrite) if dist.is_main() else None)
    init_dir = None
    if init_from:
        init_dir = rundir.check_run_dir(init_from)
        cls.adopt_init_config(cfg, init_dir, sets)
    torch.manual_seed(cfg.train.seed)
    data = _load_data(cls, cfg, init_dir)
    if cfg.train.steps <= 0 and cfg.train.minutes <= 0:
        raise AigcError("no training budget: give --steps N or --minutes M (or train.steps in the config)")
    prepared = _prepare(cfg, data, init_dir)
    if dist.is_main():
        run_dir = rundir.new_run_dir(path)
        cfg.save(run_dir / rundir.CONFIG)
        procs = (f", {dist.WORLD} processes x batch {cfg.data.batch_size} (global batch "
                 f"{cfg.data.batch_size * dist.WORLD})" if dist.WORLD > 1 else "")
        print(f"run folder: {run_dir}  ({family} on {dataset}, {data.describe()}, device {device}{procs})",
              file=sys.stderr)
    dist.barrier()
    run_dir = Path(path)
    return _fit(cfg, data, prepared, run_dir, device, policy, quiet, resume=False, stop_at=stop_at)


def resume_training(run, steps=None, minutes=None, device=None, quiet=False) -> dict:
    if minutes is not None and not minutes > 0:
        raise AigcError(f"--minutes must be > 0 (more minutes of training), got {minutes}")
    run_dir = rundir.check_run_dir(run)
    cfg, cls = _load_cfg(run_dir)
    if device:
        cfg.train.device = device
    dev, policy = _setup_torch(cfg)
    torch.manual_seed(cfg.train.seed)
    data = _load_data(cls, cfg, run_dir)
    if dist.is_main():
        print(f"resuming {run_dir}" + (f" on {dist.WORLD} processes" if dist.WORLD > 1 else ""), file=sys.stderr)
    return _fit(cfg, data, _prepare(cfg, data), run_dir, dev, policy, quiet, resume=True, more_minutes=minutes,
                total_steps=steps)


def _load_cfg(run_dir: Path):
    from aigc.config import load_run_config, read_toml

    family = read_toml(run_dir / rundir.CONFIG).get("family", "?")
    cls = recipe_class(family)
    return load_run_config(run_dir / rundir.CONFIG, cls.ModelConfig), cls


def sample_run(run, request: Request, out=None, ema: bool = True, device: str = "auto", stream=None):
    """Generate from a trained RUN through the generation contract; write the result to `out` when given
    (text: optional). Returns (result, path written or None)."""
    run_dir = rundir.check_run_dir(run)
    ThreadPolicy().start()
    cfg, recipe = open_run(run_dir, pick_device(device), ema=ema)
    check_out(recipe.output, out)                       # a bad --out is reported before any work
    if stream is not None and recipe.output != "text":
        raise AigcError(f"--stream prints text as it is made; this {recipe.describe_model()} makes {recipe.output}")
    result = generate(recipe, request, stream)
    return result, write_result(result, out)


def eval_run(run, num=None, k=1000, out=None, device="auto", quiet=False, sample_num=None, captioner=None) -> dict:
    """The family's own measures (recipe.full_eval) on `num` eval examples (default: all), plus the dataset's
    sample-quality metrics on `sample_num` (default: num, else recipe.EVAL_SAMPLES) generated samples; with a
    `captioner` run, its captions of text-conditional samples judged against their prompts (`caption_judge`)."""
    from tqdm import tqdm

    run_dir = rundir.check_run_dir(run)
    cap_dir = rundir.check_run_dir(captioner) if captioner else None
    if out:
        rundir.check_writable(out)                    # before the work, so that its result is not lost
    ThreadPolicy().start()
    cfg, recipe = open_run(run_dir, pick_device(device))
    if cap_dir is not None and not (recipe.EVAL_SAMPLES and "prompt" in recipe.accepts()):
        raise AigcError(f"--captioner judges the samples of a text-conditional image or video model; this "
                        f"{recipe.describe_model()} makes none")
    data = recipe.load_data(cfg, run_dir)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.no_grad(), tqdm(disable=quiet, desc="eval", file=sys.stderr) as bar:
        result = recipe.full_eval(data, num=num, k=k, progress=bar.update)
        samples = recipe.generate_for_eval(data, sample_num or num or recipe.EVAL_SAMPLES) if recipe.EVAL_SAMPLES \
            else None
    if samples is not None:                      # outside no_grad: the feature classifier may train first
        result["sample_quality"] = data.score_result(samples)
    if cap_dir is not None:
        result["caption_judge"] = judge_by_captions(cap_dir, samples, data, pick_device(device))
    result = {"family": cfg.family, "dataset": cfg.data.name, "run": str(run_dir),
              "step": _last_step(run_dir), **result, "eval_seconds": round(time.perf_counter() - t0, 1)}
    _write_json(result, run_dir / rundir.EVAL, out)
    return result


def judge_by_captions(cap_dir: Path, samples, data, device) -> dict:
    """Caption text-conditional samples with the captioner run `cap_dir` and let the dataset compare the captions
    with the prompts (and, for shapes, with its detector): the judge that still works on a user's own data."""
    _, cap = open_run(cap_dir, device)
    if "image" not in cap.accepts():
        raise AigcError(f"--captioner {cap_dir} is a {cap.describe_model()}, not a captioner")
    arrays = samples.images if samples.kind == "images" else samples.videos
    captions = generate(cap, Request(image=tuple(arrays))).texts
    report = data.judge_captions(samples.channels_first(), samples.prompts, captions)
    return {**report, "captioner": str(cap_dir), "decoding": cap.decoding_name(),
            "examples": [{"prompt": p, "caption": c} for p, c in zip(samples.prompts[:5], captions[:5])]}


def eval_samples(path, dataset, data_dir=None, out=None) -> dict:
    from aigc.evaluation import eval_samples_file

    if out:
        rundir.check_writable(out)
    result = eval_samples_file(Path(path), dataset, data_dir)
    _write_json(result, None, out)
    return result


def _write_json(result: dict, *paths) -> None:
    text = json.dumps(result, indent=1) + "\n"
    for p in paths:
        if p:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
            Path(p).write_text(text)


def _last_step(run_dir: Path) -> int:
    rows = rundir.read_metrics(run_dir)
    return max((r.get("step", 0) for r in rows), default=0)


def list_runs(folder: Path) -> str:
    if not folder.is_dir():
        raise AigcError(f"no runs folder at {folder}")
    from aigc.config import read_toml

    lines = [f"{'run':32s} {'family':15s} {'data':13s} {'step':>7s} {'ckpt':>7s} {'minutes':>7s} {'budget':>10s} "
             f"{'status':12s} last eval"]
    for d in sorted(p for p in folder.iterdir() if (p / rundir.CONFIG).is_file()):
        c = read_toml(d / rundir.CONFIG)
        rows = rundir.read_metrics(d)
        last = next((r for r in reversed(rows) if r.get("kind") == "eval"), {})
        train = next((r for r in reversed(rows) if r.get("kind") == "train"), {})
        ckpt = next((r["step"] for r in reversed(rows) if r.get("kind") == "checkpoint"), "-")
        t = c.get("train", {})
        budget = f"{t['steps']} steps" if t.get("steps") else f"{t.get('minutes', 0):g} min"
        ev = ", ".join(f"{k}={v}" for k, v in last.items() if k not in ("kind", "step", "elapsed_s"))
        lines.append(f"{d.name:32s} {c.get('family', '?'):15s} {c.get('data', {}).get('name', '?'):13s} "
                     f"{train.get('step', 0):>7d} {ckpt:>7} {train.get('elapsed_s', 0) / 60:>7.1f} {budget:>10s} "
                     f"{run_status(rows):12s} {ev}")
    return "\n".join(lines) if len(lines) > 1 else f"no runs under {folder}"


def run_status(rows: list[dict]) -> str:
    """finished | interrupted | nan-stopped | budget (stopped before its final evaluation) | stop_at |
    running? (training rows after the last stop: still training, or killed)."""
    last = next((r for r in reversed(rows) if r.get("kind") in ("train", "stop", "error")), {})
    if last.get("kind") == "error":
        return "nan-stopped"
    if last.get("kind") == "stop":
        return last.get("stopped", "?")
    return "running?" if last else "not started"


def make_pairs(run, out: Path, num_prompts: int, per_prompt: int, max_new_tokens: int, data_dir=None,
               seed: int = 0) -> dict:
    """The built-in preference task's pairs from RUN's own samples, judged by the sentiment lexicon
    (aigc/data/preferences.py): `out` gets pairs of training prompts, OUT.eval.jsonl those of held-out prompts."""
    from aigc.data import preferences as P
    from aigc.data.text import read_corpus
    from aigc.metrics.sentiment import LexiconJudge, judge_report
    from aigc.recipes.preference import sample_completions

    run_dir = rundir.check_run_dir(run)
    if out.suffix != ".jsonl":
        raise AigcError(f"--out must end in .jsonl, got {out}")
    rundir.check_writable(out)
    ThreadPolicy().start()
    cfg, recipe = open_run(run_dir, pick_device("cpu"))
    if cfg.family != "gpt" or cfg.data.name not in ("text", "sft") or cfg.model.objective != "lm":
        raise AigcError(f"{run_dir} is not a gpt language model trained on text (the built-in preference task "
                        "samples one trained on a play such as tiny-shakespeare)")
    folder = data_dir or cfg.data.dir
    text = "".join(read_corpus("text", folder, "strict")[0])
    train_prompts, held = P.task_prompts(text)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train_prompts), generator=g)[:num_prompts].tolist()
    judge = LexiconJudge()
    rows, first = {}, []
    for name, prompts, s in (("train", [train_prompts[i] for i in sorted(pick)], seed), ("eval", held, seed + 1)):
        ids = [recipe.encode_prompt(p) for p in prompts]
        streams = sample_completions(recipe.model, recipe.tokenizer, ids, per_prompt, max_new_tokens, s)
        texts = [x.text for x in streams]
        rewards = judge([], texts)
        k = per_prompt
        rows[name] = P.pairs_from_samples(prompts, [texts[i * k:(i + 1) * k] for i in range(len(prompts))],
                                          [rewards[i * k:(i + 1) * k] for i in range(len(prompts))])
        if name == "eval":
            first = rewards[::k]
    eval_out = out.with_suffix(".eval.jsonl")
    P.write_jsonl(out, rows["train"])
    P.write_jsonl(eval_out, rows["eval"])
    print(f"wrote {len(rows['train'])} pairs to {out} and {len(rows['eval'])} held-out pairs to {eval_out}",
          file=sys.stderr)
    return {"run": str(run_dir), "pairs": str(out), "eval_pairs": str(eval_out), "train_pairs": len(rows["train"]),
            "held_out_pairs": len(rows["eval"]), "train_prompts": len(pick), "held_out_prompts": len(held),
            "per_prompt": per_prompt, "max_new_tokens": max_new_tokens, "temperature": 1.0, "judge": "lexicon",
            "base_model_on_held_out": judge_report(first),
            "next": f"aigc train gpt --init-from {run_dir} --data preferences --data-dir {out} --set objective=dpo "
                    f"--set eval_file={eval_out} --set judge=lexicon --minutes 10"}
