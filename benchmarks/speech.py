"""Speech benchmarks (issue 34), on speech synthesised by espeak-ng (not human speech):

  python benchmarks/speech.py [--only digits-diffusion,digits-gan,tts] [--minutes 20] [--num 2000] [--table]

Rows (runs go to bench_runs/speech/, results to benchmarks/results/speech.json):
  digits-diffusion  `aigc train diffusion --data spoken-digits` (preset: class-conditional), --minutes; `aigc eval RUN
                    --num N`: N generated clips (classes in equal shares) become audio by Griffin-Lim, their log-mels
                    are computed again from the audio and read by the digit classifier: class accuracy, FID on its
                    features vs the eval split (held-out voices). Floors beside them: the classifier on real
                    held-out-voice clips, on the same clips through log-mel + Griffin-Lim, and real-vs-real FID
                    (training voices vs held-out voices). Goal: class accuracy >= 0.95
  digits-gan        the same for `aigc train gan --data spoken-digits` (preset: class-conditional DCGAN)
  tts-scaled        the same, trained for --minutes x reference_ms / 3.9 (this machine's share of the issue's
                    budget, which is for a 3.9 ms machine)
  tts               `aigc train tts --data speech`, --minutes; `aigc eval RUN`: 500 utterances of the eval split's
                    texts that hold a word pair never trained on, spoken in training voices, transcribed by the word
                    recogniser: word error rate, beside its WER on real held-out-voice audio and on the same audio
                    through log-mel + Griffin-Lim. Real-time factor of synthesis (seconds of compute per second of
                    audio, model + Griffin-Lim, 64 utterances in one call, 2 threads). Goal: WER <= 0.10
Budgets are wall-clock minutes on this machine; `reference_ms` (benchmarks/run.py) says how fast it is (the issue's
budgets are for 3.9 ms: `budget_scaled_min` is the budget such a machine's speed ratio would allow)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import aigc_cli, budget, provenance, rows_main, train_run  # noqa: E402
from benchmarks.run import aigc_json as aigc  # noqa: E402

RUNS = ROOT / "bench_runs" / "speech"
OUT = ROOT / "benchmarks" / "results" / "speech.json"
IMG = ROOT / "docs" / "img"
GOALS = {"class_accuracy": 0.95, "word_error_rate": 0.10}
DIGIT_KEYS = ("class_accuracy", "fid", "real_vs_real_fid", "kid", "precision", "recall", "class_entropy",
              "classifier_test_accuracy", "num_samples", "fid_name", "features")


def digit_floors() -> dict:
    """The digit classifier on real held-out-voice clips as they are and through log-mel + Griffin-Lim."""
    from aigc.config import data_config
    from aigc.data import load_dataset
    from aigc.data.speech import digit_images, to_audio

    data = load_dataset(data_config("spoken-digits"))
    net, _ = data.classifier()
    real = data.eval.images
    again = digit_images(to_audio(real.float() / 255))
    with torch.no_grad():
        acc = [float((net(x.float() / 255).argmax(1) == data.eval.labels).float().mean()) for x in (real, again)]
    return {"real_heldout_voices": round(acc[0], 4), "real_through_griffin_lim": round(acc[1], 4),
            "num_real": len(real)}


def digits_row(family: str, args) -> dict:
    out = RUNS / f"{family}-spoken-digits"
    speed = budget(args.minutes)
    train = train_run(out, [family, "--data", "spoken-digits"], args.minutes, "clips")
    ev = aigc("eval", out, "--num", args.num, "--quiet")
    q = ev["sample_quality"]
    t0 = time.perf_counter()
    aigc_cli("sample", out, "--num", 100, "--seed", 0, "--out", RUNS / f"{family}-samples.npz")
    sample_s = time.perf_counter() - t0
    aigc_cli("sample", out, "--label", 7, "--num", 8, "--seed", 0, "--out", IMG / f"speech-{family}-seven.png")
    return {**speed, **train, "command": f"aigc train {family} --data spoken-digits --minutes {args.minutes}; "
                                         f"aigc eval RUN --num {args.num}",
            **{k: q[k] for k in DIGIT_KEYS if k in q}, "floors": digit_floors(),
            "sample_100_wall_s": round(sample_s, 1), "goal_met": q.get("class_accuracy", 0) >= GOALS["class_accuracy"]}


def tts_row(args, scaled: bool = False) -> dict:
    """`scaled`: train for the issue's budget scaled by this machine's reference_ms / 3.9 (the budget a machine of
    the issue's speed would spend on the same compute)."""
    from aigc.generation import Request, generate
    from aigc.recipes import open_run

    out = RUNS / ("tts-speech-scaled" if scaled else "tts-speech")
    speed = budget(args.minutes)
    minutes = speed["budget_scaled_min"] if scaled else args.minutes
    if scaled and (out / "config.toml").is_file():
        from aigc.config import read_toml

        minutes = read_toml(out / "config.toml")["train"]["minutes"]     # the budget it was trained with
    train = train_run(out, ["tts", "--data", "speech"], minutes, "utterances")
    ev = aigc("eval", out, "--quiet")
    q = ev["sample_quality"]
    torch.set_num_threads(2)
    _, recipe = open_run(out, torch.device("cpu"))
    texts = ["three red circles", "seven three one nine", "a large green triangle in the top left",
             "a small yellow circle in the center"]
    generate(recipe, Request(num=2, prompt=texts[0]))                      # warm-up
    t0 = time.perf_counter()
    result = generate(recipe, Request(num=64, prompt="a large yellow circle in the bottom right"))
    compute = time.perf_counter() - t0
    seconds = float((abs(result.audio) > 0).sum()) / result.sample_rate
    aigc_cli("sample", out, "--prompt", texts[2], "--num", 4, "--seed", 0, "--out", IMG / "speech-tts.png")
    return {**speed, **train, "train_minutes": minutes,
            "command": f"aigc train tts --data speech --minutes {minutes}; aigc eval RUN",
            "word_error_rate": q["word_error_rate"], "wer_real_eval": q["wer_real_eval"],
            "wer_real_griffin_lim": q["wer_real_griffin_lim"],
            "wer_real_eval_holdout_pairs": q["wer_real_eval_holdout_pairs"], "num_samples": q["num_samples"],
            "eval_mel_loss": ev.get("eval_mel_loss"), "eval_duration_loss": ev.get("eval_duration_loss"),
            "real_time_factor": round(compute / seconds, 4), "rtf_audio_s": round(seconds, 1),
            "examples": q["examples"], "goal_met": q["word_error_rate"] <= GOALS["word_error_rate"]}


def markdown(results: dict) -> str:
    lines = ["Speech synthesised by espeak-ng (not human speech). Budgets: wall-clock minutes on 2 CPU cores.", "",
             "| row | budget min (scaled to this machine); trained | steps "
             "| class accuracy (floor: real / through Griffin-Lim) | FID (real-vs-real) "
             "| WER (floor: real / through Griffin-Lim) | RTF | goal |",
             "|---|---|---:|---|---|---|---|---|"]
    for name, r in results.items():
        if name not in ROWS:
            continue
        b = f"{r['budget_min']} min ({r['budget_scaled_min']}); trained {r.get('train_minutes', r['budget_min'])}"
        if "class_accuracy" in r:
            f = r["floors"]
            lines.append(f"| {name} | {b} | {r['steps']} | {r['class_accuracy']:.3f} "
                         f"({f['real_heldout_voices']:.3f} / {f['real_through_griffin_lim']:.3f}) | "
                         f"{r['fid']:.2f} ({r['real_vs_real_fid']:.2f}) | | | "
                         f"{'met' if r['goal_met'] else 'not met'} |")
        else:
            pairs = r.get("wer_real_eval_holdout_pairs", float("nan"))
            lines.append(f"| {name} | {b} | {r['steps']} | | | {r['word_error_rate']:.3f} ({r['wer_real_eval']:.3f} / "
                         f"{r['wer_real_griffin_lim']:.3f}; held-out pairs {pairs:.3f}) | "
                         f"{r['real_time_factor']:.3f} | {'met' if r['goal_met'] else 'not met'} |")
    for name in ["tts-scaled" if "tts-scaled" in results else "tts"]:
        if name in results:
            lines += ["", "What the recogniser heard (first utterances of the evaluation):", ""]
            lines += [f"- \"{e['text']}\" -> \"{e['heard']}\"" for e in results[name]["examples"][:5]]
    lines += [""] + provenance({k: v for k, v in results.items() if k in ROWS}, {k: k for k in ROWS},
                               lambda k: f"python benchmarks/speech.py --only {k}")
    return "\n".join(lines)


ROWS = {"digits-diffusion": lambda a: digits_row("diffusion", a), "digits-gan": lambda a: digits_row("gan", a),
        "tts": tts_row, "tts-scaled": lambda a: tts_row(a, scaled=True)}

if __name__ == "__main__":
    def add(ap):
        ap.add_argument("--num", type=int, default=2000, help="generated clips scored per spoken-digits row")

    rows_main(__doc__, ROWS, OUT, markdown, add)
