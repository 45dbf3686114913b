"""`aigc` command line: wiring only (DESIGN.md 'Command line contract')."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aigc.errors import AigcError, Interrupted
from aigc.generation import MAX_NEW_TOKENS

FAMILY_HELP = "vae | gpt | gan | text-gan | diffusion | video-gan | video-diffusion | captioner | tts"
DATASET_HELP = ("mnist | shapes | images (images); moving-shapes | moving-mnist (video); text | code | sft | "
                "preferences (gpt)")


def unescape_stop(text: str) -> str:
    """`--stop "\\n"` typed in a shell arrives as backslash-n; read it as a newline (and \\t as a tab)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


class Finite(click.ParamType):
    """A float option that must be a finite number (click's FLOAT takes nan and inf)."""
    name = "number"

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = Finite()


def _echo_err(msg: str) -> None:
    if "aigc.train.dist" in sys.modules and not sys.modules["aigc.train.dist"].is_main():
        msg = f"[rank {sys.modules['aigc.train.dist'].RANK}] {msg}"
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="aigc")
def cli():
    """aigc: train, sample and evaluate generative models from scratch on your own machine.

    \b
    Quick start:
      aigc demo                                   # every family on built-in data, writes report.html
      aigc train vae --data mnist --data-dir DIR --minutes 2 --out runs/vae
      aigc sample runs/vae --num 64 --out samples.png
      aigc eval runs/vae
    """


# ------------------------------------------------------------------------------------------ train
@cli.command()
@click.argument("family", required=False)
@click.option("--data", "dataset", help=f"dataset: {DATASET_HELP}")
@click.option("--data-dir", type=click.Path(), help="folder holding the dataset's files")
@click.option("--minutes", type=FINITE, help="wall-clock training budget")
@click.option("--steps", type=int, help="number of optimiser steps (with --resume: the run's total)")
@click.option("--out", type=click.Path(), help="run folder to create (default runs/FAMILY-DATASET-TIME)")
@click.option("--config", "config_file", type=click.Path(), help="TOML config (replaces the preset)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config key (TOML value)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="default: auto")
@click.option("--seed", type=int, help="random seed (default 0)")
@click.option("--resume", type=click.Path(), help="continue the run in this folder exactly where it stopped")
@click.option("--init-from", type=click.Path(), help="gpt: start from this trained run's weights and tokenizer")
@click.option("--overwrite", is_flag=True, help="replace an existing --out folder")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(family, dataset, data_dir, minutes, steps, out, config_file, sets, device, seed, resume, init_from,
          overwrite, quiet):
    """Train FAMILY on a dataset, or continue a run with --resume RUN.

    \b
    FAMILY: vae | gpt | gan | text-gan | diffusion | video-gan | video-diffusion | captioner | tts.
    Without --config, the preset configs/FAMILY-DATASET.toml is used when there is one.
    \b
      aigc train gpt --data text --data-dir input.txt --minutes 10
      aigc train gpt --data code --set tokenizer=bpe --minutes 5        # the Python standard library
      aigc train gpt --init-from runs/gpt --data sft --data-dir chat.jsonl --steps 300
    """
    from aigc.run import resume_training, start_training

    if resume:
        given = [n for n, v in (("FAMILY", family), ("--data", dataset), ("--data-dir", data_dir), ("--out", out),
                                ("--config", config_file), ("--set", sets), ("--seed", seed),
                                ("--init-from", init_from)) if v]
        if given:
            raise AigcError(f"--resume takes its settings from RUN/config.toml; drop {', '.join(given)}")
        result = resume_training(resume, steps=steps, minutes=minutes, device=device, quiet=quiet)
    else:
        if not family:
            raise AigcError(f"say which family to train: aigc train FAMILY --data DATASET (FAMILY: {FAMILY_HELP})")
        if not dataset:
            raise AigcError(f"say which data to train on: --data {DATASET_HELP}")
        flags = {"data.dir": data_dir, "train.minutes": minutes, "train.steps": steps, "train.device": device,
                 "train.seed": seed}
        result = start_training(family, dataset, config_file, list(sets), flags, out, overwrite, quiet,
                                init_from=init_from)
    from aigc.train import dist

    if dist.is_main():                            # under torchrun, rank 0 speaks for the run
        click.echo(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------------ sample
@cli.command()
@click.argument("run", type=click.Path())
@click.option("--num", type=click.IntRange(1, 100000), default=None,
              help="how many samples (images 64, clips 16, text 1, audio 8; speech of a --prompt 1)")
@click.option("--out", type=click.Path(), help="FILE.png (grid) or FILE.npz (arrays); video: FILE.gif or FILE.npz; "
              "text: FILE.txt, FILE.jsonl (one JSON object per sample), default stdout; audio: FILE.wav, FILE.npz, "
              "FILE.png (spectrograms)")
@click.option("--prompt", help="text prompt (language models, text-conditional models)")
@click.option("--prompt-file", type=click.Path(), help="read the prompt from this UTF-8 file")
@click.option("--label", type=int, help="class label (class-conditional models)")
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="captioners: an image to caption (repeatable): PNG/JPEG, an npz sample file, or a GIF for a "
                   "clip model")
@click.option("--beam", type=click.IntRange(1, 64), help="captioners: beam search of this width (default: greedy)")
@click.option("--voice", help="text-to-speech: one of the model's voices (default: drawn from the seed per sample)")
@click.option("--steps", type=int, help="sampler steps (diffusion)")
@click.option("--guidance", type=FINITE, help="classifier-free guidance scale (conditional diffusion): 1 = "
                                             "conditional, "
                                               "0 = unconditional, >1 guided")
@click.option("--sampler", help="diffusion sampler: ddim (the default) or dpm++2m (deterministic, second "
                                "order), both with "
                                  "--steps model.sample_steps unless given; ddpm (ancestral, --steps T unless given)")
@click.option("--frames", type=int, help="video: frames per clip (the model makes the count it was trained on)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--what", type=click.Choice(["samples", "reconstructions", "interpolation", "trajectory"]),
              default="samples", show_default=True,
              help="VAE: reconstructions of test images or latent interpolations; diffusion: the denoising "
                   "trajectory x_T -> x_0")
@click.option("--max-new-tokens", type=click.IntRange(1, MAX_NEW_TOKENS),
              help="text: tokens to generate (default 500)")
@click.option("--temperature", type=FINITE, help="text: 0 = greedy (default 0.8; text GAN 1)")
@click.option("--top-k", type=int, help="text: sample among the k most likely tokens")
@click.option("--top-p", type=FINITE, help="text, captions: nucleus sampling, the smallest set with probability >= p")
@click.option("--stop", multiple=True, help="text: stop a sample at this string (repeatable; \\n and \\t are "
                                            "read as newline/tab)")
@click.option("--best-of", type=click.IntRange(1, 1024), help="text: draw N samples per sample asked for and keep "
                                                                "the one the --judge scores highest")
@click.option("--judge", help="best-of-N: 'lexicon' (the built-in sentiment judge) or a reward-model RUN "
                              "(gpt, objective=reward)")
@click.option("--stream", is_flag=True, help="text: print tokens as they are produced")
@click.option("--no-ema", is_flag=True, help="use the raw weights even when EMA weights exist")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
def sample(run, num, out, prompt, prompt_file, label, images, beam, voice, steps, guidance, sampler, frames, seed,
           what, max_new_tokens, temperature, top_k, top_p, stop, best_of, judge, stream, no_ema, device):
    """Generate samples from a trained RUN: a PNG grid or npz for image models, an animated GIF grid or npz
    for video models, text for language models, captions of --image files for captioners (one line per image:
    file, tab, caption), WAV files (FILE-000.wav ... for several), npz or a spectrogram PNG for audio models. An
    option the model does not take is an error."""
    from aigc.generation import Request
    from aigc.run import sample_run

    if prompt_file:
        if prompt is not None:
            raise AigcError("give --prompt or --prompt-file, not both")
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AigcError(f"cannot read --prompt-file {prompt_file}: {e}") from None
    request = Request(num=num, seed=seed, prompt=prompt, label=label, image=tuple(images), beam=beam, voice=voice,
                      steps=steps,
                      guidance=guidance, sampler=sampler, frames=frames, what=what, temperature=temperature,
                      top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, stop=tuple(map(unescape_stop, stop)),
                      best_of=best_of, judge=judge)
    echo = (lambda piece: click.echo(piece, nl=False)) if stream else None
    result, path = sample_run(run, request, out=out, ema=not no_ema, device=device, stream=echo)
    if result.kind == "text":
        if stream:
            click.echo()
        elif not out and result.images is not None:             # captions: one line per image
            click.echo("\n".join(f"{name}\t{text}" for name, text in zip(result.images, result.texts)))
        elif not out:
            click.echo("\n\n".join(result.texts))
        if out:
            click.echo(f"wrote {path}", err=True)
    elif result.kind == "audio" and out.endswith(".wav") and len(result.audio) > 1:
        last = path.name.replace("-000.wav", f"-{len(result.audio) - 1:03d}.wav")
        click.echo(f"wrote {len(result.audio)} files: {path} ... {last}")
    else:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--out", type=click.Path(), required=True,
              help="FILE.jsonl for the training pairs; the held-out pairs go to FILE.eval.jsonl")
@click.option("--prompts", type=click.IntRange(1), default=3000, show_default=True,
              help="training prompts to sample (all held-out prompts are used)")
@click.option("--per-prompt", type=click.IntRange(2, 64), default=8, show_default=True,
              help="completions per prompt; the best and worst judged make the pair")
@click.option("--max-new-tokens", type=click.IntRange(1, 10000), default=32, show_default=True)
@click.option("--data-dir", type=click.Path(), help="the play to take prompts from (default: the run's corpus)")
@click.option("--seed", type=int, default=0, show_default=True)
def pairs(run, out, prompts, per_prompt, max_new_tokens, data_dir, seed):
    """Make preference pairs for the built-in task from a gpt RUN's own samples: prompts end with a speaker's
    name in a play (tiny-shakespeare), the lexicon sentiment judge ranks the completions (temperature 1), the
    most positive becomes `chosen`, the least `rejected`. Prompts from the corpus's last 10% are held out.

    \b
    Then:  aigc train gpt --init-from RUN --data preferences --data-dir FILE.jsonl \\
               --set objective=dpo --set eval_file=FILE.eval.jsonl --set judge=lexicon --minutes 10"""
    from aigc.run import make_pairs

    click.echo(json.dumps(make_pairs(run, Path(out), prompts, per_prompt, max_new_tokens, data_dir, seed), indent=1))


# ------------------------------------------------------------------------------------------ eval
@cli.command(name="eval")
@click.argument("run", type=click.Path(), required=False)
@click.option("--num", type=click.IntRange(1),
              help="test examples and generated samples to use (default: all / 10000)")
@click.option("--k", "iwae_k", type=click.IntRange(1), default=1000, show_default=True,
              help="VAE: importance samples for the IWAE bound")
@click.option("--samples", "samples_file", type=click.Path(), help="score this npz sample file instead of a run")
@click.option("--data", "dataset", help="with --samples: the dataset to compare against (mnist | shapes | "
                                        "images | moving-shapes | moving-mnist)")
@click.option("--data-dir", type=click.Path(), help="with --samples: folder of the dataset's files")
@click.option("--captioner", type=click.Path(), help="text-to-image/video RUN: also caption its samples with this "
                                                    "captioner run and judge the captions against the prompts")
@click.option("--out", type=click.Path(), help="also write the JSON here")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def eval_(run, num, iwae_k, samples_file, dataset, data_dir, captioner, out, device, quiet):
    """Evaluate a trained RUN (or a --samples FILE.npz); prints one JSON object, saved as RUN/eval.json.

    \b
    Image metrics use features of a small classifier that aigc trains once per dataset on its
    real training split and caches: FID[mnist-clf-v1, N samples vs test] is not Inception FID.
    """
    from aigc.run import eval_run, eval_samples

    if samples_file:
        if run:
            raise AigcError("give either RUN or --samples FILE, not both")
        if not dataset:
            raise AigcError("--samples needs --data DATASET to compare against")
        result = eval_samples(samples_file, dataset, data_dir, out)
    else:
        if not run:
            raise AigcError("say what to evaluate: aigc eval RUN, or aigc eval --samples FILE.npz --data DATASET")
        result = eval_run(run, num=num, k=iwae_k, out=out, device=device, quiet=quiet, captioner=captioner)
    click.echo(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------------ demo
@cli.command()
@click.option("--out", default="aigc-demo", show_default=True, type=click.Path(), help="report folder")
@click.option("--minutes", type=FINITE, default=5.0, show_default=True, help="total training budget")
@click.option("--overwrite", is_flag=True, help="replace an existing report folder")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--dry-run", is_flag=True, help="smoke run: a few steps per family and small evaluations")
def demo(out, minutes, overwrite, quiet, dry_run):
    """Train every available family on built-in data (no download) and write OUT/report.html."""
    from aigc.demo import run_demo

    report = run_demo(Path(out), minutes, overwrite, quiet, dry_run)
    click.echo(f"wrote {report}")


# ------------------------------------------------------------------------------------------ serve
@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (keep 127.0.0.1 unless "
              "you add --api-key)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $AIGC_API_KEY)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--slots", type=click.IntRange(1, 256), default=16, show_default=True,
              help="text streams decoded together per model (continuous batching)")
@click.option("--queue", "max_queue", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="requests waiting per model before the server answers 429")
@click.option("--max-tokens", type=click.IntRange(1, MAX_NEW_TOKENS), default=2048, show_default=True,
              help="the most new tokens one request may ask for")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="seconds a request may take before it is stopped (504)")
@click.option("--history", default="serve-history", show_default=True, type=click.Path(),
              help="folder for the history of generations (SQLite + files) that the page shows")
@click.option("--no-history", is_flag=True, help="keep no history")
def serve(runs, host, port, api_key, device, slots, max_queue, max_tokens, timeout, history, no_history):
    """Serve trained RUNs over an OpenAI-compatible HTTP API and a web page at http://HOST:PORT/
    (text: /v1/completions, /v1/chat/completions; images: /v1/images/generations; video: /v1/videos/generations;
    /v1/models, /health, /metrics)."""
    from aigc.serve import serve as run_server
    from aigc.serve.app import Limits

    run_server(list(runs), host, port, api_key, device, slots, max_queue, None if no_history else history,
               Limits(max_tokens=max_tokens, default_tokens=min(256, max_tokens), timeout_s=timeout))


# ------------------------------------------------------------------------------------------ runs
@cli.command()
@click.argument("folder", default="runs", type=click.Path())
def runs(folder):
    """List the runs under FOLDER (default: runs) with their progress and last metrics."""
    from aigc.run import list_runs

    click.echo(list_runs(Path(folder)))


# ------------------------------------------------------------------------------------------ cache
@cli.command()
@click.argument("kind", required=False)
@click.option("--clear", is_flag=True, help="remove the entries (they are rebuilt when next needed)")
@click.option("--older-than", type=click.FloatRange(min=0), metavar="DAYS",
              help="with --clear: only entries last used more than DAYS days ago")
def cache(kind, clear, older_than):
    """List aigc's caches (token streams, feature classifiers) under AIGC_CACHE (default ~/.cache/aigc), or
    clear them: all, one KIND (tokens | classifiers), or those unused for DAYS."""
    from aigc.io import cache as caches

    if older_than is not None and not clear:
        raise AigcError("--older-than selects what --clear removes: add --clear")
    if clear:
        n, size = caches.clear(kind, older_than)
        click.echo(f"removed {n} cache entries ({caches.human(size)}) from {caches.cache_root()}")
    else:
        click.echo(caches.listing(kind))


def main(argv=None) -> None:
    ok = False
    try:
        _main(argv)
        ok = True
    finally:
        if "aigc.train.dist" in sys.modules:
            sys.modules["aigc.train.dist"].teardown(wait=ok)


def _main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="aigc", standalone_mode=False)
    except click.exceptions.Abort:
        _echo_err("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Interrupted as e:
        _echo_err(str(e))
        sys.exit(130)
    except AigcError as e:
        _echo_err(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        _echo_err("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except RuntimeError as e:             # under torchrun: a collective failed because another rank went away
        dist = sys.modules.get("aigc.train.dist")
        if dist is None or dist.WORLD == 1:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _echo_err(f"error: another process of this run stopped or cannot be reached ({first[:200]}); "
                  f"torchrun's summary names the rank that failed")
        sys.exit(1)
    except OSError as e:                  # a file or folder the system refused: say which, without a traceback
        where = f" {e.filename}" if e.filename else ""
        _echo_err(f"error: cannot use{where}: {e.strerror or e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
