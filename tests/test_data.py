import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.config import data_config
from aigc.data import Batcher, load_dataset, shapes
from aigc.data.idx import read_idx, write_idx
from aigc.data.mnist import load_mnist
from aigc.errors import AigcError


# ---------------------------------------------------------------- IDX / MNIST
def test_idx_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    for name in ("x.idx", "x.idx.gz"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)


def test_idx_corrupt_files(tmp_path):
    good = tmp_path / "g.gz"
    write_idx(good, np.zeros((4, 28, 28), np.uint8))
    raw = good.read_bytes()
    (tmp_path / "trunc.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AigcError, match="corrupt or truncated"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "notgz.gz").write_bytes(b"hello world")
    with pytest.raises(AigcError, match="corrupt"):
        read_idx(tmp_path / "notgz.gz")
    with gzip.open(tmp_path / "magic.gz", "wb") as f:
        f.write(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(AigcError, match="magic"):
        read_idx(tmp_path / "magic.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:         # header promises more data than there is
        f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(AigcError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    labels = np.zeros(60, np.uint8)                              # a labels file whose magic says 3 dimensions
    with gzip.open(tmp_path / "ndim.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (60).to_bytes(4, "big") + labels.tobytes())
    with pytest.raises(AigcError, match=r"a 60 x 0 x 0 array \(0 bytes\) against 52 bytes") as e:
        read_idx(tmp_path / "ndim.gz")
    assert "5192416311228993536" not in str(e.value)
    with gzip.open(tmp_path / "dims.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 9]) + b"\x00" * 40)
    with pytest.raises(AigcError, match="says 9 dimensions"):
        read_idx(tmp_path / "dims.gz")


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(AigcError) as e:
        load_mnist(tmp_path, download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg


def test_mnist_loads_as_uint8_tensors(mnist_dir):
    m = load_mnist(mnist_dir, download=False)
    assert m["train_images"].dtype == torch.uint8 and m["train_images"].shape == (512, 1, 28, 28)
    assert m["test_labels"].dtype == torch.int64


def test_binarize_dynamic(mnist_dir):
    ds = load_dataset(data_config("mnist", dir=str(mnist_dir), binarize="dynamic"))
    assert set(ds.eval.images.unique().tolist()) <= {0, 255}               # binarised once
    again = load_dataset(data_config("mnist", dir=str(mnist_dir), binarize="dynamic"))
    assert torch.equal(ds.eval.images, again.eval.images)                 # with a fixed seed
    b = next(Batcher(ds, 64, seed=0))["image"]
    assert set(b.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- shapes
def test_shapes_spec():
    images, a = shapes.generate(600, seed=3)
    assert images.shape == (600, 3, 32, 32) and images.dtype == torch.uint8
    palette = {tuple(c) for c in shapes.COLORS.values()}
    for i in range(600):
        img = images[i]
        mask = img.sum(0) > 0
        colors = {tuple(img[:, y, x].tolist()) for y, x in mask.nonzero().tolist()}
        assert colors == {tuple(shapes.COLORS[shapes.COLOR_NAMES[a["color"][i]]])}    # one flat color, hard edges
        assert colors <= palette
        s = list(shapes.SIZES.values())[a["size"][i]]
        ys, xs = mask.nonzero(as_tuple=True)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        cx = shapes.GRID[a["position"][i] % 3] + a["jitter_x"][i]
        cy = shapes.GRID[a["position"][i] // 3] + a["jitter_y"][i]
        kind = shapes.SHAPES[a["shape"][i]]
        if kind == "square":
            assert mask.sum() == s * s and w == s and h == s
        if kind == "triangle":
            assert h == s and w == s
            assert mask[ys.min()].sum() == 2
            assert mask[ys.max()].sum() > mask[ys.min()].sum()             # apex on top, base at the bottom
        if kind == "circle":
            assert abs(mask.sum().item() - np.pi * s * s / 4) < 0.2 * s * s
        assert abs((xs.float().mean() + 0.5) - cx) <= 1.0                     # centred where it should be
        if kind != "circle":
            assert ys.min().item() == cy - s // 2 and ys.max().item() == cy + s // 2 - 1
    assert set(a["jitter_x"].tolist()) == {-1, 0, 1}


def test_shapes_captions_and_dropout():
    _, a = shapes.generate(50, seed=1)
    caps = shapes.captions(a, torch.arange(50))
    for i, c in enumerate(caps):
        assert c == (f"a {shapes.SIZE_NAMES[a['size'][i]]} {shapes.COLOR_NAMES[a['color'][i]]} "
                     f"{shapes.SHAPES[a['shape'][i]]} in the {shapes.POSITIONS[a['position'][i]]}")
    assert shapes.caption(0, 0, 0, 0) == "a small red circle in the top left"
    assert shapes.caption(0, 2, 1, 4, keep=(False, True, False, False)) == "a red shape"
    dropped = shapes.captions(a, torch.arange(50), dropout=0.5, generator=torch.Generator().manual_seed(0))
    assert any(len(c.split()) < 7 for c in dropped)
    assert all(set(c.split()) <= set(shapes.VOCAB) for c in dropped + caps)


def test_shapes_holdout_never_produced():
    _, a = shapes.generate(3000, seed=0, holdout=["green triangle", "yellow circle"])
    pairs = set(zip(a["color"].tolist(), a["shape"].tolist()))
    assert (shapes.COLOR_NAMES.index("green"), shapes.SHAPES.index("triangle")) not in pairs
    assert (shapes.COLOR_NAMES.index("yellow"), shapes.SHAPES.index("circle")) not in pairs
    assert len(pairs) == 18 - 2
    with pytest.raises(AigcError, match="holdout"):
        shapes.generate(10, seed=0, holdout=["purple triangle"])


def test_shapes_deterministic():
    a, _ = shapes.generate(100, seed=7)
    b, _ = shapes.generate(100, seed=7)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- image folders
def test_image_folder(tmp_path):
    for i in range(6):
        sub = tmp_path / ("cats" if i % 2 else "dogs")
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 60, 3), i * 40, np.uint8)).save(sub / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not an image")
    ds = load_dataset(data_config("images", dir=str(tmp_path), image_size=16, channels=1, val_fraction=0.34))
    assert ds.image_shape == (1, 16, 16)
    assert len(ds.train) + len(ds.eval) == 6
    assert "skipped 1" in ds.note
    assert ds.class_names == ["cats", "dogs"] and ds.train.labels is not None


def test_image_folder_errors(tmp_path):
    with pytest.raises(AigcError, match="no image files"):
        load_dataset(data_config("images", dir=str(tmp_path)))
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(AigcError, match="could be read"):
        load_dataset(data_config("images", dir=str(tmp_path)))
    with pytest.raises(AigcError, match="unknown dataset"):
        load_dataset(data_config("cifar"))


# ---------------------------------------------------------------- batcher
def test_batcher_epochs_and_state(mnist_dir):
    ds = load_dataset(data_config("mnist", dir=str(mnist_dir)))
    b = Batcher(ds, 100, seed=0)
    first = [next(b)["label"] for _ in range(3)]
    state = b.state_dict()
    rest = [next(b)["label"] for _ in range(4)]                     # crosses an epoch boundary (512 / 100)
    b2 = Batcher(ds, 100, seed=0)
    b2.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(rest, [next(b2)["label"] for _ in range(4)]))
    seen = torch.cat(first + rest[:2])
    assert len(seen) == 500                                          # an epoch has no repeats
    assert b.epoch == 1


def test_mnist_download_checks_md5(tmp_path, mnist_dir, monkeypatch):
    """The download path against a local HTTP server: good files are kept, a corrupt one is refused."""
    import functools
    import hashlib
    import http.server
    import shutil
    import threading

    from aigc.data import mnist

    served = tmp_path / "served"
    shutil.copytree(mnist_dir, served)
    md5 = {n: hashlib.md5((served / n).read_bytes()).hexdigest() for n in mnist.FILES}
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")          # md5 will not match
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(mnist, "MIRRORS", [f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(mnist, "FILES", md5)
        with pytest.raises(AigcError, match="t10k-labels-idx1-ubyte.gz"):
            load_mnist(tmp_path / "dl", download=True)
        assert (tmp_path / "dl" / "train-images-idx3-ubyte.gz").is_file()         # the good ones were kept
        assert not (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").exists()
        shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", served)             # mirror fixed: completes
        assert load_mnist(tmp_path / "dl", download=True)["test_labels"].shape == (128,)
    finally:
        server.shutdown()


def test_a_new_dataset_is_a_module_and_one_registry_line(tmp_path, monkeypatch):
    """What adding a dataset takes: a module with its Config and load(), and one line in DATASETS; then any
    image family trains on it and its option is a --set key."""
    from aigc.data import DATASETS, Entry
    from aigc.generation import Request, generate
    from aigc.recipes import build_config, recipe_class
    from aigc.train.trainer import Optimizers

    (tmp_path / "checkers.py").write_text('''
from dataclasses import dataclass

import torch

from aigc.data import Dataset, ImageConfig, Split, finish_images


@dataclass
class Config(ImageConfig):
    squares: int = 4                 # squares per side


def load(cfg):
    cell = 16 // cfg.squares
    board = ((torch.arange(16)[:, None] // cell + torch.arange(16) // cell) % 2 * 255).to(torch.uint8)
    images = board.expand(40, 1, 16, 16).clone()
    labels = torch.arange(40) % 2
    return finish_images(Dataset("checkers", Split(images[:32], labels[:32]), Split(images[32:], labels[32:]),
                                 num_classes=2), cfg)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(DATASETS, "checkers", Entry("images", "checkers"))
    cfg = build_config("vae", "checkers", None, ["squares=2", "arch=mlp", "hidden=8", "z_dim=2", "batch_size=8"], {})
    assert cfg.data.squares == 2
    cls = recipe_class("vae")
    data = cls.load_data(cfg)
    recipe = cls(cfg)
    recipe.train_step(next(iter(cls.make_batcher(data, cfg))), Optimizers(recipe.param_groups(), cfg.train,
                                                                         torch.device("cpu")))
    assert generate(recipe, Request(num=3)).images.shape == (3, 16, 16, 1)
