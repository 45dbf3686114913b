"""Shared fixtures. Two tiers (STYLE.md): a test that runs the CLI in a subprocess (it or one of its fixtures
calls `run_cli`) is marked `slow` here; long in-process tests, and tests whose fixture reaches the CLI through a
helper, carry the mark themselves. `pytest -m "not slow"` is the fast tier (about 20 s on 2 cores)."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aigc.data.idx import write_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def make_mnist_dir(folder: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """A tiny MNIST-shaped dataset: blurry strokes whose position depends on the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):
            r = 4 + 2 * int(y)
            images[i, r:r + 3, 6:22] = 255
            images[i, 6:22, r:r + 2] = 180
        images = np.clip(images.astype(int) + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def _private(variable: str, path: Path):
    """Point an environment variable at `path` for the session, then put it back."""
    old = os.environ.get(variable)
    os.environ[variable] = str(path)
    yield path
    if old is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = old


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Feature classifiers trained by tests go to a private cache, never the user's."""
    yield from _private("AIGC_CACHE", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session", autouse=True)
def private_data(tmp_path_factory):
    """Data made on first use (the speech datasets) goes to a private folder, never the user's."""
    yield from _private("AIGC_DATA", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return make_mnist_dir(tmp_path_factory.mktemp("mnist"))


def run_cli(*args, cwd=None, timeout=300, env_extra=None) -> subprocess.CompletedProcess:
    """Run `python -m aigc ARGS` in a real subprocess, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "aigc", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, no traceback, and the message says what is wrong."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    for f in fragments:
        assert f.lower() in out.lower(), f"{f!r} not in:\n{out}"


def gen(recipe, **request):
    """Generate through the generation contract, as `aigc sample` does."""
    from aigc.generation import Request, generate

    return generate(recipe, Request(**request))


def pytest_configure(config):
    """Under pytest-xdist every worker is a process of its own: one torch thread each, so that two workers on two
    cores do not oversubscribe them (OpenMP threads spin-wait: a 4 s test took 40 s beside another)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"          # aigc's thread policy (aigc/threads.py) keeps to it
        torch.set_num_threads(1)


def _runs_cli(fn) -> bool:
    try:
        return "run_cli(" in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


def pytest_collection_modifyitems(items):
    """Mark `slow` every test that runs the CLI itself or through one of its fixtures."""
    for item in items:
        fixtures = [d[-1].func for d in item._fixtureinfo.name2fixturedefs.values() if d]
        if any(_runs_cli(fn) for fn in [getattr(item, "function", None), *fixtures] if fn is not None):
            item.add_marker(pytest.mark.slow)
