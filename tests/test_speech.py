"""Speech: audio features (mel, Griffin-Lim, resampling, WAV), the espeak-ng datasets (deterministic, voice split,
held-out pairs), spoken digits through the image families as audio, the text-to-speech family's errors and the
word recogniser's metric."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from aigc.config import data_config
from aigc.data import load_dataset
from aigc.data.audio import MelSpec, from_image, resample, to_image
from aigc.errors import AigcError
from aigc.io.audio import read_wav, wav_bytes, write_wav

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


def tone(freq: float, seconds: float = 0.5, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_a_tone_lands_in_its_mel_band_and_griffin_lim_restores_the_spectrogram():
    mel = MelSpec()
    for freq in (300.0, 2000.0):
        spec = mel.encode(tone(freq)[None])[0]
        centres = mel.filters.argmax(1).float() * mel.sample_rate / mel.n_fft
        assert abs(centres[spec.mean(1).argmax()] - freq) < 0.1 * freq
    x = tone(440.0)[None] + 0.3 * tone(1300.0)[None]
    spec = mel.encode(x)
    back = mel.decode(spec, samples=x.shape[1])
    assert back.abs().max() <= 1
    assert (mel.encode(back) - spec).abs().mean() < 0.05            # the magnitudes survive the lost phase


def test_resampling_keeps_a_tone_and_the_length_ratio():
    x = tone(1000.0, 1.0, 22050)
    y = resample(x, 22050, 16000)
    assert len(y) == 16000
    peak = torch.fft.rfft(y).abs().argmax().item()                  # 1 Hz bins for 1 s
    assert abs(peak - 1000) <= 1


def test_wav_round_trip_and_bad_files(tmp_path):
    audio = np.sin(np.linspace(0, 100, 8000)).astype(np.float32) * 0.8
    path = write_wav(tmp_path / "a.wav", audio, 16000)
    back, rate = read_wav(path)
    assert rate == 16000 and np.abs(back - audio).max() < 1e-4
    assert read_wav(wav_bytes(audio, 8000))[1] == 8000
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    with pytest.raises(AigcError, match="cannot read .* as a PCM WAV file"):
        read_wav(tmp_path / "bad.wav")


def test_padding_is_trimmed_from_wav_files(tmp_path):
    from aigc.io.audio import trim_padding
    from aigc.io.samples import write_wavs

    short, long = tone(300.0, 0.01).numpy(), tone(300.0, 0.03).numpy()
    short[-1] = 0.0                                                     # one zero inside speech is not padding
    batch = np.stack([np.pad(short, (0, len(long) - len(short))), long])
    write_wavs(tmp_path / "u.wav", batch, 16000)
    assert len(read_wav(tmp_path / "u-000.wav")[0]) == len(short) - 1
    assert len(read_wav(tmp_path / "u-001.wav")[0]) == len(long)
    assert len(trim_padding(np.zeros(50, np.float32))) == 1
    assert MelSpec().encode(torch.from_numpy(trim_padding(np.zeros(50, np.float32)))[None]).shape[-1] >= 1


def test_the_recogniser_hears_each_utterance_without_its_padding(monkeypatch):
    """The word error rate reads every utterance as long as it was made, not padded to the batch's longest (a
    recogniser hears padded silence as words)."""
    import aigc.data.speech as speech
    import aigc.metrics.speech as metrics
    from aigc.generation import audio_result

    heard_lengths = []
    monkeypatch.setattr(speech.SpeechData, "recogniser", lambda self: (None, dict.fromkeys(
        ("wer_real_eval", "wer_real_griffin_lim", "wer_real_eval_holdout_pairs", "floor_utterances", "utterances"),
        0)))
    monkeypatch.setattr(metrics, "transcribe", lambda net, mels, words: heard_lengths.extend(map(len, mels)) or
                        ["one"] * len(mels))
    audio = torch.zeros(2, 16000)
    audio[0, :4000], audio[1] = tone(300.0, 0.25), tone(300.0, 1.0)
    data = speech.SpeechData("speech", None, None)
    data.score_result(audio_result(audio, 16000, prompts=["one", "one"]))
    frames = [len(speech.SPEECH_MEL.encode(a[None])[0].T) for a in (audio[0, :4000], audio[1])]
    assert heard_lengths == frames and frames[0] < frames[1] / 2


def test_tts_durations_do_not_depend_on_the_rest_of_the_batch():
    from aigc.models.tts import TTS, TTSConfig

    torch.manual_seed(0)
    model = TTS(TTSConfig(vocab_size=12, n_voices=2, n_mels=8, max_words=6, d_model=16, heads=2)).eval()
    for p in model.durations.parameters():                             # durations of a few frames, not ~0
        torch.nn.init.normal_(p, 0.5, 0.3)
    texts = [[0, 3, 0], [0, 4, 0, 5, 0, 6, 0, 7, 0]]
    batch = torch.full((2, 9), -1)
    for i, t in enumerate(texts):
        batch[i, :len(t)] = torch.tensor(t)
    voice, params = torch.tensor([0, 1]), torch.rand(2, 3)
    mel, frames = model.synthesize(batch, voice, params)
    alone, n = model.synthesize(batch[:1, :3], voice[:1], params[:1])
    assert int(frames[0]) == int(n[0]) > 0
    assert torch.allclose(mel[0, :int(n[0])], alone[0, :int(n[0])], atol=1e-5)


def test_log_mel_images_round_trip():
    spec = torch.rand(3, 32, 32)
    img = to_image(spec)
    assert img.dtype == torch.uint8 and img.shape == (3, 1, 32, 32)
    assert (from_image(img) - spec).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(img[:, 0, -1], (spec[:, 0] * 255).round().to(torch.uint8))   # low bands at the bottom


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    import aigc.data.speech as speech

    monkeypatch.setenv("AIGC_DATA", str(tmp_path))
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(AigcError, match="apt-get install espeak-ng"):
        load_dataset(data_config("spoken-digits", num_train=10, num_eval=10))


@needs_espeak
def test_spoken_digits_are_deterministic_and_split_by_voice(tmp_path, monkeypatch):
    from aigc.data.speech import HELD_OUT_VOICES, TRAIN_VOICES, cache_path, make_digits

    cfg = data_config("spoken-digits", num_train=20, num_eval=10)
    a, b = make_digits(cfg), make_digits(cfg)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert set(a["train_voices"]) <= set(TRAIN_VOICES) and set(a["eval_voices"]) <= set(HELD_OUT_VOICES)
    assert np.array_equal(a["train_labels"], np.arange(20) % 10)
    assert a["train_images"].shape == (20, 1, 32, 32) and a["train_images"].max() > 150
    ds = load_dataset(cfg)                                               # made once, then read from the cache
    assert cache_path("spoken-digits", cfg).is_file()
    assert torch.equal(ds.train.images, torch.from_numpy(a["train_images"]))


@needs_espeak
def test_speech_keeps_word_timings_and_holds_pairs_out_of_training():
    from aigc.data.speech import TOKENS, has_holdout

    ds = load_dataset(data_config("speech", num_train=30, num_eval=10))
    assert not any(has_holdout(t.split()) for t in ds.train.texts)
    assert sum(has_holdout(t.split()) for t in ds.eval.texts) == 5
    batch = ds.train.batch(torch.arange(4))
    for i in range(4):
        n = int(batch["token_len"][i])
        toks, frames = batch["tokens"][i, :n], batch["frames"][i, :n]
        assert int(frames.sum()) == int(batch["mel_len"][i])           # the timings cover every frame
        words = [TOKENS[t] for t in toks.tolist() if t > 0]
        assert " ".join(words) == batch["text"][i] and toks[0] == 0 and toks[-1] == 0
        assert (frames[toks > 0] > 3).all()                             # every word lasts some frames
        mel = batch["mel"][i, :n and int(batch["mel_len"][i])]
        word = toks > 0
        ends = frames.cumsum(0)
        loud = torch.stack([mel[e - f:e].mean() for e, f in zip(ends.tolist(), frames.tolist())])
        assert loud[word].min() > loud[~word].max()                     # words are louder than the pauses


def test_texts_the_models_cannot_speak_are_clear_errors():
    from aigc.data.speech import encode_text

    assert encode_text("Three red circles.") == encode_text("three red circles")
    with pytest.raises(AigcError, match="empty"):
        encode_text("   ")
    with pytest.raises(AigcError, match="unknown word 'purple'.*know 33 words: a blue"):
        encode_text("three purple circles")
    with pytest.raises(AigcError, match="has 9 words; this model speaks at most 8"):
        encode_text("one two three four five six seven eight nine", max_words=8)


def test_word_error_rate_counts_edits_over_reference_words():
    from aigc.metrics.speech import edit_distance, word_error_rate

    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert word_error_rate(["one two", "red circle"], ["one two", "a red circle"]) == pytest.approx(1 / 5)
    assert word_error_rate(["", ""], ["one", "two three"]) == 1.0


@needs_espeak
@pytest.mark.parametrize("family,sets", [
    ("diffusion", ["width=8", "heads=2", "groups=4", "mults=[1, 2]", "sample_steps=2"]),
    ("gan", ["g_width=8", "d_width=8", "z_dim=8"]),
])
def test_spoken_digits_train_and_sample_as_audio(family, sets, tmp_path):
    from aigc.generation import Request, generate
    from aigc.io.samples import write_result
    from aigc.recipes import build_config, recipe_class
    from aigc.train.trainer import Optimizers

    cfg = build_config(family, "spoken-digits", None, ["num_train=20", "num_eval=10", "batch_size=4", *sets],
                       {"train.steps": 1})
    cls = recipe_class(family)
    data = cls.load_data(cfg)
    recipe = cls(cfg)
    assert recipe.output == "audio" and cfg.model.cond == "class" and cfg.model.num_classes == 10
    recipe.train_step(next(iter(recipe.make_batcher(data, cfg))), Optimizers(recipe.param_groups(), cfg.train,
                                                                             torch.device("cpu")))
    result = generate(recipe, Request(num=3, label=7, seed=1))
    assert result.kind == "audio" and result.audio.shape == (3, 16000) and result.sample_rate == 16000
    assert result.labels.tolist() == [7, 7, 7] and result.spectrograms.shape == (3, 32, 32)
    first = write_result(result, tmp_path / "seven.wav")
    assert first.name == "seven-000.wav" and (tmp_path / "seven-002.wav").is_file()
    assert read_wav(first)[0].shape == (16000,)
    one = write_result(generate(recipe, Request(num=1, label=0)), tmp_path / "zero.wav")
    assert one.name == "zero.wav"
    write_result(result, tmp_path / "seven.png")
    with np.load(write_result(result, tmp_path / "seven.npz")) as f:
        assert f["audio"].dtype == np.float32 and int(f["sample_rate"]) == 16000 and f["labels"].tolist() == [7] * 3
    with pytest.raises(AigcError, match="out of range: this model knows classes 0..9"):
        generate(recipe, Request(num=1, label=10))
    score = data.score_result(generate(recipe, Request(num=4)))     # scored as audio: too few for FID here
    assert score["num_samples"] == 4 and "digit-classifier features" in score["features"]


@needs_espeak
def test_griffin_lim_keeps_what_a_classifier_hears():
    """Real audio of held-out voices through log-mel -> Griffin-Lim -> log-mel: a digit classifier trained on the
    real training split reads nearly all of it as it reads the original (the vocoder keeps the words; the word
    recogniser's own floor through Griffin-Lim is measured by benchmarks/speech.py)."""
    from aigc.data.speech import digit_images, to_audio
    from aigc.metrics.classifier import train_classifier

    ds = load_dataset(data_config("spoken-digits", num_train=400, num_eval=60))
    net = train_classifier(ds.train.images, ds.train.labels, 10, epochs=8, min_steps=300, max_steps=300)
    real = ds.eval.images
    again = digit_images(to_audio(real.float() / 255))
    with torch.no_grad():
        heard, heard_again = net(real.float() / 255).argmax(1), net(again.float() / 255).argmax(1)
    assert (heard == ds.eval.labels).float().mean() > 0.7               # it hears the held-out voices
    assert (heard_again == heard).float().mean() >= 0.9                 # and Griffin-Lim changes little of it


def test_audio_sample_files_are_checked(tmp_path):
    from aigc.evaluation import load_audio_npz

    good = tmp_path / "good.npz"
    np.savez(good, audio=np.zeros((3, 160), np.float32), sample_rate=np.int64(16000), labels=np.arange(3),
             prompts=np.array(["one", "two", "three"]))
    result = load_audio_npz(good)
    assert result.audio.shape == (3, 160) and result.labels.tolist() == [0, 1, 2] and result.prompts[2] == "three"
    np.savez(tmp_path / "bad.npz", audio=np.zeros((3, 160), np.float32))
    with pytest.raises(AigcError, match="needs 'audio' float32 \\[N,S\\] and 'sample_rate'"):
        load_audio_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "ints.npz", audio=np.zeros((3, 160), np.int16), sample_rate=np.int64(16000))
    with pytest.raises(AigcError, match="must be float"):
        load_audio_npz(tmp_path / "ints.npz")


@needs_espeak
def test_tts_from_the_command_line(tmp_path):
    from conftest import assert_clean_error, run_cli

    run = tmp_path / "tts"
    p = run_cli("train", "tts", "--data", "speech", "--steps", "2", "--out", run, "--quiet", "--set", "num_train=20",
                "--set", "num_eval=10", "--set", "batch_size=4", "--set", "d_model=16", "--set", "griffin_lim_iters=2")
    assert p.returncode == 0, p.stderr
    p = run_cli("sample", run, "--prompt", "Three red circles", "--voice", "m3", "--out", tmp_path / "s.wav")
    assert p.returncode == 0 and (tmp_path / "s.wav").is_file(), p.stderr
    p = run_cli("sample", run, "--num", "2", "--out", tmp_path / "two.wav")
    assert "wrote 2 files" in p.stdout and (tmp_path / "two-001.wav").is_file()
    assert_clean_error(run_cli("sample", run, "--label", "3", "--out", tmp_path / "x.wav"), "--label does not apply")
    assert_clean_error(run_cli("sample", run, "--prompt", "three big circles", "--out", tmp_path / "x.wav"),
                       "unknown word 'big'")
    assert_clean_error(run_cli("sample", run, "--prompt", "one", "--out", tmp_path / "x.mp3"), ".wav or .npz or .png")
