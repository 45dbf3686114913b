"""The fast tier: one skeleton for every family, in-process, on tiny configs and tiny data (pythae's checks).

Each family: it builds; a train step changes the weights; an eval step does not; save -> load gives the
same outputs; generate returns the declared kind and shape; a request field it does not take is a clear
error; the same request and seed give the same result."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc.errors import AigcError
from aigc.generation import Request, generate
from aigc.io import checkpoint as ckpt
from aigc.io.rundir import CHECKPOINT, CONFIG
from aigc.recipes import FAMILIES, build_config, open_run, recipe_class
from aigc.train.trainer import Optimizers

SHAPES = ["num_train=64", "num_eval=32", "batch_size=8"]
CLIPS = ["num_eval=4", "frames=4", "batch_size=2"]
TEXT = ["batch_size=4"]
# family -> (dataset, --set values, a request field it refuses, the kind's per-sample shape)
CASES = {
    "vae": ("mnist", ["arch=mlp", "hidden=16", "layers=1", "z_dim=4", "batch_size=8"], {"steps": 2}),
    "gan": ("mnist", ["arch=dcgan", "cond=class", "g_width=8", "d_width=8", "z_dim=8", "batch_size=8"],
            {"guidance": 2.0}),
    "diffusion": ("shapes", [*SHAPES, "cond=text", "width=8", "heads=2", "groups=4", "mults=[1, 2]", "sample_steps=2"],
                  {"top_k": 5}),
    "text-gan": ("text", [*TEXT, "seq_len=8", "hidden=16", "embd=8", "z_dim=8"], {"prompt": "ROMEO"}),
    "gpt": ("text", [*TEXT, "n_layer=1", "n_head=2", "n_embd=16", "block_size=16"], {"steps": 10}),
    "video-gan": ("moving-shapes", [*CLIPS, "g_width=8", "d_width=8", "z_dim=8"], {"guidance": 2.0}),
    "video-diffusion": ("moving-shapes", [*CLIPS, "width=16", "heads=2", "groups=4", "mults=[1, 2]", "sample_steps=2",
                                          "train_frames=2"], {"top_p": 0.5}),
    "captioner": ("shapes", [*SHAPES, "n_layer=1", "n_head=2", "n_embd=16", "enc_width=8", "grid=4", "block_size=12"],
                  {"steps": 2}),
    "tts": ("speech", ["num_train=20", "num_eval=10", "batch_size=4", "d_model=16", "enc_layers=1", "dec_layers=1",
                       "griffin_lim_iters=2"], {"label": 3}),
}
# what a family needs in every request beyond num and seed (a captioner: the images to caption)
NEEDS = {"captioner": lambda: {"num": None, "image": tuple(np.zeros((2, 32, 32, 3), np.uint8) + 200)}}


def test_every_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 40, encoding="utf-8")
    return path


def build(family: str, mnist_dir: Path, corpus: Path):
    dataset, sets, _ = CASES[family]
    data_dir = {"mnist": str(mnist_dir), "text": str(corpus)}.get(dataset)
    flags = {"data.dir": data_dir, "train.steps": 1}
    cfg = build_config(family, dataset, None, sets, flags)
    cls = recipe_class(family)
    torch.manual_seed(0)
    data = cls.load_data(cfg)
    return cfg, data, cls(cfg)


def payload(result):
    """What a result holds, as one array: images, clips or texts."""
    return np.asarray({"images": getattr(result, "images", None), "video": getattr(result, "videos", None),
                       "text": getattr(result, "texts", None), "audio": getattr(result, "audio", None)}[result.kind])


def weights(recipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ckpt.flat_state(recipe.modules).items()}


def save_run(recipe, cfg, folder: Path) -> Path:
    cfg.save(folder / CONFIG)
    ckpt.save_checkpoint(folder / CHECKPOINT, ckpt.flat_state(recipe.modules), None, {})
    return folder


PROGRAMS = {"tts": "espeak-ng"}       # a family whose data is made by a program the machine may lack


@pytest.mark.parametrize("family", list(CASES))
def test_family_skeleton(family, mnist_dir, corpus, tmp_path):
    if family in PROGRAMS and shutil.which(PROGRAMS[family]) is None:
        pytest.skip(f"{PROGRAMS[family]} is not installed (.ci/run installs it)")
    cfg, data, recipe = build(family, mnist_dir, corpus)
    assert recipe.output in ("text", "images", "video", "audio")
    run = tmp_path / "run"
    run.mkdir()
    recipe.save_artifacts(run, data)                   # as the trainer does first (text: the tokenizer)

    # a train step changes the weights
    before = weights(recipe)
    opt = Optimizers(recipe.param_groups(), cfg.train, torch.device("cpu"))
    out = recipe.train_step(next(iter(recipe.make_batcher(data, cfg))), opt)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.values())
    after = weights(recipe)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # an eval step does not
    for m in recipe.modules.values():
        m.eval()
    with torch.no_grad():
        recipe.evaluate(data, max_batches=1)
    assert all(torch.equal(after[k], v) for k, v in weights(recipe).items())

    # generate returns the declared kind and shape, the same for the same request and seed
    request = Request(**{"num": 2, "seed": 3, **NEEDS.get(family, dict)()})
    result = generate(recipe, request)
    assert result.kind == recipe.output
    if result.kind == "images":
        assert result.images.dtype == np.uint8 and result.images.shape == (2, *data.image_shape[1:],
                                                                           data.image_shape[0])
    elif result.kind == "video":
        c, t, h, w = data.video_shape
        assert result.videos.dtype == np.uint8 and result.videos.shape == (2, t, h, w, c)
    elif result.kind == "audio":
        assert result.audio.dtype == np.float32 and result.audio.ndim == 2 and len(result.audio) == 2
        assert np.abs(result.audio).max() <= 1 and result.sample_rate == 16000
    else:
        assert len(result.texts) == 2 and all(isinstance(t, str) for t in result.texts)
    assert np.array_equal(payload(generate(recipe, request)), payload(result))

    # save -> load gives the same outputs
    save_run(recipe, cfg, run)
    _, loaded = open_run(run, torch.device("cpu"), ema=False)
    assert all(torch.equal(after[k], v) for k, v in weights(loaded).items())
    assert np.array_equal(payload(generate(loaded, request)), payload(result))

    # a request field the family does not take is a clear error that names it
    field, value = next(iter(CASES[family][2].items()))
    with pytest.raises(AigcError, match="does not apply"):
        generate(recipe, Request(**{"num": 1, **NEEDS.get(family, dict)(), field: value}))


@pytest.mark.parametrize("field,value,words", [("guidance", float("nan"), "--guidance must be a finite number"),
                                               ("max_new_tokens", 10 ** 8, "--max-new-tokens must be in 1..")])
def test_non_finite_and_unbounded_request_values_are_refused(field, value, words, mnist_dir, corpus):
    family = "diffusion" if field == "guidance" else "gpt"
    _, _, recipe = build(family, mnist_dir, corpus)
    with pytest.raises(AigcError, match=words):
        generate(recipe, Request(num=1, **{field: value}))


def test_unknown_prompt_words_are_named(mnist_dir, corpus):
    _, _, recipe = build("diffusion", mnist_dir, corpus)
    with pytest.raises(AigcError, match="does not know 'big': leave it out or use words it knows: .*circle"):
        generate(recipe, Request(num=1, prompt="a big red circle"))


def test_a_bpe_vocabulary_below_its_byte_alphabet_is_an_error(corpus):
    from aigc.config import data_config
    from aigc.data.text import load_token_data

    with pytest.raises(AigcError, match="at least 257"):
        load_token_data(data_config("text", dir=str(corpus), tokenizer="bpe", vocab_size=10), 16)
