"""`aigc eval --samples` and sample-file validation, through real subprocesses."""

import json

import numpy as np
import pytest
from conftest import assert_clean_error, make_mnist_dir, run_cli

from aigc.data.idx import read_idx


@pytest.fixture(scope="module")
def mnist_big(tmp_path_factory):
    return make_mnist_dir(tmp_path_factory.mktemp("mnist_big"), n_train=1024, n_test=600, seed=1)


def _test_split(d):
    images = read_idx(d / "t10k-images-idx3-ubyte.gz")[..., None]             # (N, 28, 28, 1)
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def test_eval_samples_real_vs_noisy(tmp_path, mnist_big):
    images, labels = _test_split(mnist_big)
    np.savez(tmp_path / "real.npz", images=images[:512], labels=labels[:512])
    rng = np.random.default_rng(0)
    noisy = np.clip(images[:512].astype(int) + rng.integers(-120, 120, images[:512].shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "noisy.npz", images=noisy, labels=(labels[:512] + 1) % 10)
    p = run_cli("eval", "--samples", tmp_path / "real.npz", "--data", "mnist", "--data-dir", mnist_big,
                "--out", tmp_path / "r.json")
    assert p.returncode == 0, p.stderr
    real = json.loads(p.stdout)
    q = run_cli("eval", "--samples", tmp_path / "noisy.npz", "--data", "mnist", "--data-dir", mnist_big)
    assert q.returncode == 0, q.stderr
    noisy_r = json.loads(q.stdout)
    assert real["fid"] < noisy_r["fid"]
    assert real["class_accuracy"] > 0.9 and noisy_r["class_accuracy"] < real["class_accuracy"]
    assert real["features"] == "mnist-clf-v1" and real["num_samples"] == 512 and "fid_warning" in real
    assert json.loads((tmp_path / "r.json").read_text()) == real
    assert "training the mnist feature classifier" not in q.stderr          # second call reused the cache


def test_eval_shapes_prompts(tmp_path):
    from aigc.data import shapes

    images, a = shapes.generate(40, seed=5)
    prompts = shapes.captions(a, np.arange(40))
    arr = images.permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "s.npz", images=arr, prompts=np.array(prompts))
    p = run_cli("eval", "--samples", tmp_path / "s.npz", "--data", "shapes")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["prompt_accuracy"] == 1.0 and "skipped" in r["feature_metrics"]
    np.savez(tmp_path / "w.npz", images=arr, prompts=np.array(prompts[1:] + prompts[:1]))
    r = json.loads(run_cli("eval", "--samples", tmp_path / "w.npz", "--data", "shapes").stdout)
    assert r["prompt_accuracy"] < 0.2


@pytest.mark.parametrize("arrays,fragment", [
    ({"imgs": np.zeros((4, 28, 28, 1), np.uint8)}, "no 'images' array"),
    ({"images": np.zeros((4, 28, 28, 1), np.float32)}, "must be uint8"),
    ({"images": np.zeros((4, 28, 28), np.uint8)}, "must be uint8 [N,H,W,C]"),
    ({"images": np.zeros((4, 32, 32, 1), np.uint8)}, "but mnist images are"),
    ({"images": np.zeros((4, 28, 28, 1), np.uint8), "labels": np.array([0, 1])}, "'labels' must be"),
    ({"images": np.zeros((4, 28, 28, 1), np.uint8), "labels": np.array([0, 1, 2, 12])}, "labels must lie in 0..9"),
    ({"images": np.zeros((4, 28, 28, 1), np.uint8), "prompts": np.array(["a"] * 4)}, "needs the built-in 'shapes'"),
])
def test_eval_samples_bad_files(tmp_path, mnist_dir, arrays, fragment):
    np.savez(tmp_path / "x.npz", **arrays)
    assert_clean_error(run_cli("eval", "--samples", tmp_path / "x.npz", "--data", "mnist", "--data-dir", mnist_dir),
                       fragment)


def test_eval_bad_invocations(tmp_path, mnist_dir):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert_clean_error(run_cli("eval", "--samples", tmp_path / "bad.npz", "--data", "mnist", "--data-dir", mnist_dir),
                       "not a readable npz")
    assert_clean_error(run_cli("eval", "--samples", tmp_path / "none.npz", "--data", "mnist"), "not found")
    assert_clean_error(run_cli("eval", "--samples", tmp_path / "bad.npz"), "--data")
    assert_clean_error(run_cli("eval"), "aigc eval RUN")
    run = tmp_path / "run"                                        # a run folder that never saved a checkpoint
    run.mkdir()
    (run / "config.toml").write_text('family = "vae"\n')
    assert_clean_error(run_cli("eval", run), "no checkpoint")


def test_eval_images_without_labels_has_no_feature_metrics(tmp_path):
    from PIL import Image

    from aigc.config import data_config
    from aigc.data import load_dataset
    from aigc.errors import AigcError

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8)).save(d / f"{i}.png")
    data = load_dataset(data_config("images", dir=str(d), image_size=8))
    import torch

    out = data.score(torch.zeros(300, 3, 8, 8, dtype=torch.uint8))
    assert "fid" not in out and "no class labels" in out["feature_metrics"] and out["num_samples"] == 300
    with pytest.raises(AigcError, match="no class labels"):
        data.score(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.long))


def test_a_sample_file_with_python_objects_is_refused_in_aigcs_words(tmp_path):
    from aigc.errors import AigcError
    from aigc.evaluation import load_samples_npz

    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(AigcError, match="Python objects, which aigc never loads") as e:
        load_samples_npz(tmp_path / "objects.npz")
    assert "allow_pickle" not in str(e.value)
