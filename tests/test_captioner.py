"""Image-to-text: the captioner's decoding, captioned image folders (metadata.jsonl), caption metrics, captions as
a judge of text-to-image samples, and a text-to-image run and a captioner run trained from one small folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from aigc.config import data_config
from aigc.data import load_dataset
from aigc.data.shapes import write_folder
from aigc.errors import AigcError
from aigc.generation import Request, generate
from aigc.recipes import build_config, recipe_class

TINY = ["n_layer=1", "n_head=2", "n_embd=16", "enc_width=8", "grid=4", "block_size=12"]


def tiny_captioner(dataset="shapes", sets=(), data_dir=None):
    sets = [*TINY, *sets] + (["num_train=64", "num_eval=32", "batch_size=8"] if dataset == "shapes" else [])
    cfg = build_config("captioner", dataset, None, sets, {"data.dir": data_dir, "train.steps": 1})
    cls = recipe_class("captioner")
    torch.manual_seed(0)
    data = cls.load_data(cfg)
    recipe = cls(cfg)
    recipe.tokenizer = data.tokenizer                # what save_artifacts sets when training starts
    return cfg, data, recipe


def test_evaluation_decodes_free_running_not_by_teacher_forcing():
    """A decoder that repeats its input token scores perfectly under teacher forcing (it is handed the reference)
    but says nothing when it reads its own output: evaluation must see the empty captions."""
    _, data, recipe = tiny_captioner()
    V = recipe.cfg.model.vocab_size

    def repeat_last(idx, memory):
        return torch.nn.functional.one_hot(idx, V).float() * 10

    recipe.model.decoder.forward = repeat_last
    tokens = recipe.token_batch(data.eval.captions(torch.arange(4)))
    teacher = repeat_last(tokens[:, 1:-1].clamp(min=0), None).argmax(-1)      # fed the reference from position 1
    assert torch.equal(teacher, tokens[:, 1:-1].clamp(min=0))                 # ... it would read as perfect
    out = recipe.full_eval(data, num=16)
    assert out["caption_accuracy"] == 0.0 and out["bleu4"] == 0.0
    assert all(e["caption"] == "" for e in out["examples"])


def test_beam_of_one_is_greedy_and_beams_are_captions():
    _, data, recipe = tiny_captioner()
    x = data.eval.batch(torch.arange(6))["image"]
    recipe.model.eval()
    with torch.no_grad():
        greedy = recipe.model.sample(x)
        assert recipe.model.beam_search(x, beam=1, alpha=0.0) == greedy
        beams = recipe.model.beam_search(x, beam=3)
    eos = recipe.cfg.model.eos
    assert len(beams) == 6 and all(eos not in b and len(b) <= recipe.cfg.model.block_size for b in beams)


def test_shapes_caption_scores_and_the_held_out_pairs_apart():
    data = load_dataset(data_config("shapes", num_train=32, num_eval=400, holdout=["green triangle"]))
    index = torch.arange(400)
    right = data.eval.captions(index)
    out = data.score_captions(right, index)
    assert out["caption_accuracy"] == 1.0 and out["bleu4"] == 100.0 and out["exact_match"] == 1.0
    assert out["num_seen"] + out["num_holdout"] == 400 and out["num_holdout"] > 0
    wrong = [c.replace("green", "red") for c in right]
    out = data.score_captions(wrong, index)
    assert out["caption_accuracy_holdout"] == 0.0 and out["caption_accuracy_seen"] < 1.0
    assert out["color_accuracy"] < 1.0 and out["shape_accuracy"] == 1.0


def test_moving_shapes_captions_are_scored_by_direction():
    data = load_dataset(data_config("moving-shapes", num_eval=50, frames=4))
    index = torch.arange(50)
    right = data.eval.captions(index)
    assert data.score_captions(right, index)["caption_accuracy"] == 1.0
    flipped = [c.replace("left", "right") if "left" in c else c.replace("right", "left") for c in right]
    out = data.score_captions(flipped, index)
    assert out["direction_accuracy"] < 1.0 and out["color_accuracy"] == 1.0


def test_captions_judge_agrees_with_the_detector():
    from aigc.data.shapes import captions
    from aigc.data.shapes import generate as render

    data = load_dataset(data_config("shapes", num_train=32, num_eval=32))
    images, attrs = render(40, seed=5)
    prompts = captions(attrs, torch.arange(40))
    out = data.judge_captions(images, prompts, prompts)             # a captioner that reads every image right
    assert out["judge_agreement"] == 1.0 and out["caption_judge_accuracy"] == 1.0
    assert out["detector_prompt_accuracy"] == 1.0 and out["color_agreement"] == 1.0
    mislabelled = prompts[1:] + prompts[:1]                         # prompts that do not match the images
    out = data.judge_captions(images, mislabelled, prompts)         # both judges say wrong: they agree
    assert out["caption_judge_accuracy"] < 0.2 and out["judge_agreement"] == 1.0
    blind = ["a shape"] * 40                                        # a captioner that says nothing
    out = data.judge_captions(images, prompts, blind)
    assert out["caption_judge_accuracy"] == 0.0 and out["judge_agreement"] == 0.0


# ---------------------------------------------------------------- captioned folders
def test_metadata_reader_good_missing_file_bad_line_missing_text_and_unreadable(tmp_path):
    folder = tmp_path / "pics"
    caps = write_folder(folder, 20, seed=1)
    data = load_dataset(data_config("images", dir=str(folder)))
    assert data.text_tokens == "bpe" and data.text_vocab
    assert len(data.train) + len(data.eval) == 20
    assert set(data.train.captions(torch.arange(len(data.train)))) <= set(caps)

    meta = folder / "metadata.jsonl"
    good = meta.read_text()
    meta.write_text(good + json.dumps({"file_name": "nope.png", "text": "a cat"}) + "\n")
    with pytest.raises(AigcError, match=r"metadata.jsonl:21: image file not found: .*nope.png"):
        load_dataset(data_config("images", dir=str(folder)))
    meta.write_text(good.replace("\n", "\n{oops\n", 1))
    with pytest.raises(AigcError, match=r"metadata.jsonl:2: not valid JSON"):
        load_dataset(data_config("images", dir=str(folder)))
    meta.write_text(good + json.dumps({"file_name": "00000.png"}) + "\n")
    with pytest.raises(AigcError, match=r"metadata.jsonl:21: expected an object with string fields \"file_name\", "
                                        r"\"text\""):
        load_dataset(data_config("images", dir=str(folder)))

    meta.write_text(good + json.dumps({"file_name": "00001.png", "text": "  "}) + "\n")
    with pytest.raises(AigcError, match=r"metadata.jsonl:21: \"text\" is empty"):
        load_dataset(data_config("images", dir=str(folder)))

    meta.write_text(good)
    (folder / "00003.png").write_bytes(b"not a png")                  # undecodable: skipped and counted
    (folder / "extra.png").write_bytes((folder / "00004.png").read_bytes())   # not in metadata: left out
    data = load_dataset(data_config("images", dir=str(folder)))
    assert len(data.train) + len(data.eval) == 19
    assert "skipped 1 unreadable" in data.note and "left out 1 image" in data.note


def test_captioner_refuses_uncaptioned_data(tmp_path):
    folder = tmp_path / "plain"
    write_folder(folder, 8)
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(AigcError, match="needs captioned data.*metadata.jsonl"):
        tiny_captioner("images", data_dir=str(folder))
    with pytest.raises(AigcError, match="reads images or clips"):
        build_config("captioner", "text", None, [], {})
        recipe_class("captioner").load_data(build_config("captioner", "text", None, [], {}))


def test_caption_tokens_take_any_prompt():
    from aigc.data.tokenizers import CaptionTokens

    tok = CaptionTokens.train(["a red circle in the top", "a blue square in the left"] * 20)
    again = CaptionTokens(tok.merges)
    texts = ["a red circle", "A purple elephant, dancing!", ""]
    assert torch.equal(tok.encode(texts), again.encode(texts))
    ids = tok.encode(texts)
    assert ids[0].count_nonzero() == 3 and ids[1].count_nonzero() > 3 and ids[2].count_nonzero() == 0
    assert tok.problem("anything at all") is None and tok.problem("  ") is not None


def aigc(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aigc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_text_to_image_and_captioner_from_one_captioned_folder(tmp_path):
    folder = tmp_path / "pics"
    write_folder(folder, 48, seed=2)
    t2i = aigc("train", "diffusion", "--data", "images", "--data-dir", folder, "--steps", 2, "--out", tmp_path / "t2i",
               "--quiet", "--set", "cond=text", "--set", "width=8", "--set", "heads=2", "--set", "groups=4",
               "--set", "mults=[1, 2]", "--set", "sample_steps=2", "--set", "batch_size=8")
    assert t2i.returncode == 0, t2i.stderr
    p = aigc("sample", tmp_path / "t2i", "--num", 2, "--prompt", "a purple elephant", "--out", tmp_path / "s.npz")
    assert p.returncode == 0, p.stderr
    cap = aigc("train", "captioner", "--data", "images", "--data-dir", folder, "--steps", 3, "--out", tmp_path / "cap",
               "--quiet", *[a for s in TINY for a in ("--set", s)], "--set", "batch_size=8")
    assert cap.returncode == 0, cap.stderr
    p = aigc("sample", tmp_path / "cap", "--image", folder / "00000.png", "--image", tmp_path / "s.npz",
             "--beam", 2, "--out", tmp_path / "caps.jsonl")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in (tmp_path / "caps.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [str(folder / "00000.png"), f"{tmp_path / 's.npz'}[0]",
                                          f"{tmp_path / 's.npz'}[1]"]
    assert all(isinstance(r["text"], str) for r in rows)
    p = aigc("eval", tmp_path / "cap", "--quiet")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"bleu4", "exact_match", "teacher_forced_loss", "decoding"} <= set(out) and out["num_samples"] == 4
    p = aigc("eval", tmp_path / "t2i", "--num", 8, "--captioner", tmp_path / "cap", "--quiet")
    assert p.returncode == 0, p.stderr
    judge = json.loads(p.stdout)["caption_judge"]
    assert {"caption_judge_bleu4", "caption_judge_exact_match"} <= set(judge) and judge["num_samples"] == 8
    p = aigc("sample", tmp_path / "cap", "--image", tmp_path / "missing.png")
    assert p.returncode != 0 and "image file not found" in p.stderr and "Traceback" not in p.stderr


def test_clip_captioner_reads_a_gif(tmp_path):
    from aigc.io.images import save_gif

    cfg, data, recipe = tiny_captioner("moving-shapes", ["num_eval=4", "frames=4", "batch_size=2"])
    clips = (data.eval.images.permute(0, 2, 3, 4, 1)).numpy()                 # (N, T, H, W, C)
    save_gif(tmp_path / "clip.gif", clips[:1])
    out = generate(recipe, Request(image=(str(tmp_path / "clip.gif"), clips[1])))
    assert len(out.texts) == 2 and out.images[0].endswith("clip.gif")
    with pytest.raises(AigcError, match="one frame"):
        from PIL import Image

        Image.fromarray(clips[0, 0]).save(tmp_path / "still.png")
        generate(recipe, Request(image=(str(tmp_path / "still.png"),)))
    with pytest.raises(AigcError, match=r"set top_p \(--top-p\) to ask for more than one"):
        generate(recipe, Request(num=2, image=(clips[0],)))
    assert len(generate(recipe, Request(num=3, top_p=0.9, image=(clips[0],))).texts) == 3


@pytest.mark.parametrize("bad", [np.zeros((32, 32), np.uint8), np.zeros((4, 32, 32, 3), np.float32)])
def test_bad_arrays_are_clear_errors(bad):
    _, _, recipe = tiny_captioner()
    with pytest.raises(AigcError, match=r"expected uint8 \[H,W,C\]"):
        generate(recipe, Request(image=(bad,)))


def test_word_dropout_hides_previous_tokens_in_training_only():
    _, data, recipe = tiny_captioner(sets=["word_dropout=1.0"])
    seen = []
    recipe.model.decoder.wte.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    batch = data.eval.batch(torch.arange(4))
    tokens = recipe.token_batch(batch["caption"])
    eos = recipe.cfg.model.eos
    recipe.model.train()
    recipe.model.loss(batch["image"], tokens)
    assert (seen[-1][:, 1:] == eos).all() and (seen[-1][:, 0] == eos).all()
    recipe.model.eval()
    recipe.model.loss(batch["image"], tokens)
    assert torch.equal(seen[-1], tokens[:, :-1].clamp(min=0))                 # evaluation sees the caption
