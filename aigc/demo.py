"""`aigc demo`: train every available family on built-in data (nothing downloaded) and write one
self-contained report folder: report.html with samples, loss curves and metrics beside PNGs.
A family joins the demo by adding an entry to DEMOS."""

from __future__ import annotations

import html
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aigc.errors import AigcError
from aigc.generation import Request
from aigc.io.samples import write_result
from aigc.run import eval_run, sample_run, start_training


@dataclass
class DemoEntry:
    name: str                        # folder name inside the report
    title: str
    family: str
    dataset: str
    share: float                     # share of the demo's time budget
    sets: list = field(default_factory=list)
    extras: list = field(default_factory=list)   # extra sample kinds (VAE: reconstructions, interpolation)
    eval_args: dict = field(default_factory=dict)
    blurb: str = ""
    prompts: list = field(default_factory=list)  # language models: sampled once per prompt
    image_prompts: list = field(default_factory=list)  # text-to-image / text-to-video: one small grid per prompt
    video: bool = False                          # samples are clips: animated GIF grids
    speech_prompts: list = field(default_factory=list)  # text-to-speech: one WAV and its spectrogram per prompt
    needs: str = ""                              # a program the entry's data is made with; skipped without it


DEMOS = [
    DemoEntry("diffusion-shapes", "Text-to-image diffusion on shapes (32x32 RGB)", "diffusion", "shapes", 0.3,
              sets=["eval_every=0", "sample_every=0", "ckpt_every=1000"],
              extras=["trajectory"],
              eval_args={"num": 2000, "sample_num": 2000},
              image_prompts=["a large red circle in the center", "a small blue square in the top left",
                             "a yellow triangle", "a large green square in the bottom right"],
              blurb="A DDPM: a small U-Net learns to predict the noise added to training images at 1000 noise levels, "
                    "reading the caption through a small Transformer text encoder; captions are dropped 10% of the "
                    "time so the same network is also unconditional, and samples use classifier-free guidance "
                    "(scale 3) "
                    "with 25 DDIM steps. The trajectory rows show x_T (pure noise) turning into x_0 step by step. "
                    "Prompt accuracy reads shape, color, size and position back off the pixels."),
    DemoEntry("video-diffusion-moving-shapes", "Text-to-video diffusion on moving-shapes (16 frames, 32x32 RGB)",
              "video-diffusion", "moving-shapes", 0.15, video=True,
              sets=["eval_every=0", "sample_every=0", "ckpt_every=500"],
              eval_args={"num": 100, "sample_num": 64},
              image_prompts=["a red circle moving right", "a blue square moving down"],
              blurb="The image U-Net run on every frame, with a temporal convolution after each block and attention "
                    "across frames, denoises clips; it trains on random 8-frame windows of the clips (each frame told "
                    "its index in the clip) and samples whole 16-frame clips. The caption enters through a small "
                    "Transformer text encoder, which also makes depthwise space-time filters for each clip (so the "
                    "direction word can tilt them), and samples use classifier-free guidance. A few minutes on "
                    "a CPU is too "
                    "short for clean motion (see benchmarks/video.py for 20-minute figures); the metrics read shape, "
                    "color and direction back off the pixels of every frame."),
    DemoEntry("gan-shapes", "Text-to-image GAN on shapes (32x32 RGB)", "gan", "shapes", 0.15,
              sets=["eval_every=0", "sample_every=0", "ckpt_every=1000"],
              eval_args={"num": 2000, "sample_num": 2000},
              image_prompts=["a large red circle in the center", "a small blue square in the top left",
                             "a yellow triangle", "a large green square in the bottom right"],
              blurb="A DCGAN whose generator and projection discriminator each read the caption through a small "
                    "Transformer text encoder (non-saturating loss, EMA of the generator). The big grid uses random "
                    "captions; each small grid shows 16 samples of one prompt. Prompt accuracy reads shape, color, "
                    "size and position back off the pixels."),
    DemoEntry("vae-shapes", "VAE on shapes (32x32 RGB)", "vae", "shapes", 0.1,
              sets=["eval_every=0", "sample_every=0", "ckpt_every=500"],
              extras=["reconstructions", "interpolation"],
              eval_args={"num": 1000, "k": 100, "sample_num": 2000},
              blurb="An MLP VAE (Bernoulli decoder on logits, beta = 1) trained on the built-in shapes. "
                    "Samples are decoded from z ~ N(0, I); reconstructions show test images (odd columns) and "
                    "their reconstructions (even columns); each interpolation row decodes a straight line between "
                    "the posterior means of two test images."),
    DemoEntry("tts-speech", "Text-to-speech on synthesised speech (espeak-ng voices, 16 kHz)", "tts", "speech", 0.1,
              sets=["eval_every=0", "sample_every=0", "ckpt_every=1000"], needs="espeak-ng",
              eval_args={"num": 100, "sample_num": 100},
              speech_prompts=["three red circles", "seven three one nine", "a large green triangle in the top left"],
              blurb="A FastSpeech-2-style model: word tokens through a Transformer encoder, a duration per word "
                    "(learned from the data's known word timings), each word repeated for its frames, a Transformer "
                    "decoder to log-mel frames, and Griffin-Lim to audio. The data is synthesised by espeak-ng on "
                    "first use (it is not human speech); the word error rate is a recogniser's, trained on real "
                    "synthesised speech, on utterances of word pairs the model never heard together."),
    DemoEntry("gpt-code", "GPT on Python code (the standard library)", "gpt", "code", 0.2,
              sets=["ckpt_every=500"], eval_args={},
              prompts=["def ", "class ", "import "],
              blurb="A 4-layer decoder-only Transformer with a byte-level BPE tokenizer, pre-trained on the "
                    "running Python's own standard library (about 4 MB of source). Continuations of each prompt "
                    "are sampled with temperature 0.8 and top-k 50; the metrics are on the last 10% of the corpus."),
]


def _metric_rows(result: dict) -> str:
    rows = []
    for k, v in result.items():
        if k in ("run", "family", "dataset"):
            continue
        rows.append(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>")
    return "\n".join(rows)


DRY_RUN = {"steps": 20, "eval": {"num": 100, "k": 10, "sample_num": 300}, "video_eval": {"num": 32, "sample_num": 8},
           "sets": {"shapes": ["num_train=2000", "num_eval=500"], "code": ["max_chars=300000", "data.vocab_size=512"],
                    "moving-shapes": ["num_eval=32", "sample_steps=4", "frames=8"],
                    "speech": ["num_train=40", "num_eval=10", "d_model=32", "griffin_lim_iters=8"]}}


def run_demo(out: Path, minutes: float, overwrite: bool = False, quiet: bool = False, dry_run: bool = False) -> Path:
    """Train each DEMOS entry for its share of `minutes` (dry_run: a few steps and small evaluations,
    to check the whole path quickly), then write out/report.html."""
    if minutes <= 0:
        raise AigcError("--minutes must be positive")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise AigcError(f"{out} already exists; pass --overwrite to replace it")
        if not (out / "report.html").exists() and not (out / "runs").exists():
            raise AigcError(f"refusing to overwrite {out}: it does not look like an aigc demo folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sections = []
    for e in DEMOS:
        if e.needs and shutil.which(e.needs) is None:
            print(f"[demo] {e.title}: skipped ({e.needs} is not installed)", file=sys.stderr)
            sections.append(f"<section><h2>{html.escape(e.title)}</h2><p>Skipped: {html.escape(e.needs)} is not "
                            "installed.</p></section>")
            continue
        print(f"[demo] {e.title}: training for {minutes * e.share:.1f} min", file=sys.stderr)
        run = out / "runs" / e.name
        budget = {"train.steps": DRY_RUN["steps"]} if dry_run else {"train.minutes": minutes * e.share}
        sets = e.sets + (DRY_RUN["sets"].get(e.dataset, []) if dry_run else [])
        summary = start_training(e.family, e.dataset, None, sets, budget, str(run), False, quiet)
        images, texts, sounds = {}, [], []
        ext = "gif" if e.video else "png"
        if e.speech_prompts:
            for i, prompt in enumerate(e.speech_prompts):
                result, wav = sample_run(run, Request(prompt=prompt, seed=i), out / f"{e.name}-{i}.wav")
                png = out / f"{e.name}-{i}.png"
                write_result(result, png)
                sounds.append((prompt, wav, png))
        elif e.prompts:
            for i, prompt in enumerate(e.prompts):
                result, _ = sample_run(run, Request(prompt=prompt, seed=i, max_new_tokens=200, temperature=0.8,
                                                    top_k=50))
                texts.append((prompt, result.texts[0]))
        else:
            images["samples"] = sample_run(run, Request(num=16 if e.video else 64), out / f"{e.name}-samples.{ext}")[1]
        for i, prompt in enumerate(e.image_prompts):
            images[f"prompt: {prompt}"] = sample_run(run, Request(num=4 if e.video else 16, prompt=prompt),
                                                     out / f"{e.name}-prompt{i}.{ext}")[1]
        for kind in e.extras:
            images[kind] = sample_run(run, Request(num=8 if kind == "trajectory" else 80, what=kind),
                                      out / f"{e.name}-{kind}.png")[1]
        shutil.copy(run / "loss.png", out / f"{e.name}-loss.png")
        images["loss curves"] = out / f"{e.name}-loss.png"
        dry_eval = DRY_RUN["video_eval" if e.video else "eval"]
        result = eval_run(run, quiet=quiet, **(dry_eval if dry_run and not e.prompts else e.eval_args))
        result["train_steps"], result["train_seconds"] = summary["step"], summary["elapsed_s"]
        figs = "\n".join(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(k)}">'
                         f"<figcaption>{html.escape(k)}</figcaption></figure>" for k, p in images.items())
        pre = "".join(f"<h3>prompt <code>{html.escape(p)}</code></h3>"
                      f"<pre><b>{html.escape(p)}</b>{html.escape(t)}</pre>"
                      for p, t in texts)
        pre += "".join(f'<figure><figcaption>&ldquo;{html.escape(p)}&rdquo;</figcaption><audio controls '
                       f'src="{html.escape(w.name)}"></audio><br><img src="{html.escape(s.name)}" '
                       f'alt="spectrogram of {html.escape(p)}"></figure>' for p, w, s in sounds)
        sections.append(f"<section><h2>{html.escape(e.title)}</h2><p>{html.escape(e.blurb)}</p>{pre}"
                        f'<div class="figs">{figs}</div>'
                        f"<table><tr><th>metric</th><th>value</th></tr>{_metric_rows(result)}</table></section>")
        (out / f"{e.name}-metrics.json").write_text(json.dumps(result, indent=1))
    total = time.time() - t0
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aigc demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
.figs{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0}} img{{max-width:520px;image-rendering:pixelated}}
pre{{background:#f6f6f6;padding:.6em;white-space:pre-wrap;max-width:1000px}}
table{{border-collapse:collapse;margin-top:1em}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style>
</head><body><h1>aigc demo</h1>
<p>Every available family trained from scratch on built-in data, {total / 60:.1f} minutes in all on this machine\
{" (dry run: a few steps only)" if dry_run else ""}.
Metrics are defined in the metric tables; nothing here was picked by hand.</p>
<p id="image-check" data-ok="">checking that every image loaded ...</p>
{''.join(sections)}
<script>
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0);
  const el = document.getElementById("image-check");
  el.textContent = bad.length ? `${{bad.length}} of ${{imgs.length}} images failed to load: ` +
    bad.map(i => i.getAttribute("src")).join(", ") : `all ${{imgs.length}} images loaded`;
  el.dataset.ok = bad.length ? "no" : "yes";
}});
</script>
</body></html>
"""
    report = out / "report.html"
    report.write_text(page)
    return report
