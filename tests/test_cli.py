"""Every command through a real subprocess, with tiny configs; bad input gives a clear error."""

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, assert_clean_error, run_cli

TINY = ["--set", "arch=mlp", "--set", "hidden=32", "--set", "z_dim=4", "--set", "batch_size=32",
        "--set", "eval_batches=1", "--set", "log_every=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    run = tmp_path_factory.mktemp("runs") / "vae"
    p = run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 20, "--out", run, "--quiet",
                *TINY)
    assert p.returncode == 0, p.stderr
    return run


def test_train_writes_run_directory(trained):
    for f in ("config.toml", "checkpoint/model.safetensors", "checkpoint/trainer_state.pt", "metrics.jsonl",
              "loss.png"):
        assert (trained / f).exists(), f
    assert list((trained / "samples").glob("*.png"))
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" and "test_nelbo" in r for r in rows)
    assert "image_size = 28" in (trained / "config.toml").read_text()


def test_sample_png_npz_and_extras(trained, tmp_path):
    assert run_cli("sample", trained, "--num", 9, "--out", tmp_path / "s.png").returncode == 0
    p = run_cli("sample", trained, "--num", 5, "--out", tmp_path / "s.npz")
    assert p.returncode == 0, p.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["images"].dtype == np.uint8 and z["images"].shape == (5, 28, 28, 1)
    for what in ("reconstructions", "interpolation"):
        p = run_cli("sample", trained, "--num", 20, "--what", what, "--out", tmp_path / f"{what}.png")
        assert p.returncode == 0, p.stderr
    a = run_cli("sample", trained, "--num", 4, "--seed", 3, "--out", tmp_path / "a.npz")
    b = run_cli("sample", trained, "--num", 4, "--seed", 3, "--out", tmp_path / "b.npz")
    assert a.returncode == b.returncode == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


def test_eval_prints_json_and_saves(trained, tmp_path):
    p = run_cli("eval", trained, "--num", 32, "--k", 20, "--out", tmp_path / "e.json", "--quiet")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["iwae_k"] == 20 and r["num_samples"] == 32
    assert r["test_nll_iwae"] <= r["test_nelbo"] + 1.0
    assert json.loads((trained / "eval.json").read_text()) == r == json.loads((tmp_path / "e.json").read_text())


def test_runs_lists_each_run_with_family_data_and_step(trained):
    p = run_cli("runs", trained.parent)
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith(trained.name + " "))
    # name, family, data, step, checkpoint step, minutes, budget ("20 steps"), status
    cells = row.split()
    assert cells[1:5] == ["vae", "mnist", "20", "20"] and cells[6:9] == ["20", "steps", "finished"], row


def test_resume_to_more_steps(tmp_path, mnist_dir):
    run = tmp_path / "r"
    assert run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 10, "--out", run,
                   "--quiet", *TINY).returncode == 0
    p = run_cli("train", "--resume", run, "--steps", 15, "--quiet")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["step"] == 15


def test_sigterm_saves_checkpoint(tmp_path, mnist_dir):
    run = tmp_path / "sig"
    proc = subprocess.Popen([sys.executable, "-m", "aigc", "train", "vae", "--data", "mnist", "--data-dir",
                             str(mnist_dir), "--steps", "1000000", "--out", str(run), "--quiet", *TINY,
                             "--set", "ckpt_every=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    assert (run / "checkpoint" / "model.safetensors").exists()


# ---------------------------------------------------------------- bad input: clear errors
def test_missing_data_dir(tmp_path):
    p = run_cli("train", "vae", "--data", "mnist", "--data-dir", tmp_path / "nope", "--steps", 1,
                "--out", tmp_path / "o", "--set", "download=false")
    assert_clean_error(p, "train-images-idx3-ubyte.gz", "--data-dir")


def test_corrupt_gz(tmp_path, mnist_dir):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(mnist_dir, d)
    raw = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 3])
    p = run_cli("train", "vae", "--data", "mnist", "--data-dir", d, "--steps", 1, "--out", tmp_path / "o")
    assert_clean_error(p, "corrupt or truncated", "train-images")


@pytest.mark.parametrize("args,fragments", [
    (["train", "vea", "--data", "mnist", "--steps", "1"],
     ["unknown family 'vea'", "valid: captioner, diffusion, gan, gpt, text-gan, tts, vae"]),
    (["train", "vae", "--data", "cifar", "--steps", "1"], ["unknown dataset 'cifar'", "mnist"]),
    (["train", "vae", "--data", "mnist", "--steps", "1", "--set", "z_dimm=3"], ["unknown config key", "z_dim"]),
    (["train", "vae", "--data", "mnist", "--steps", "1", "--set", "lr=fast"], ["wrong type for train.lr"]),
    (["train", "vae", "--data", "mnist"], ["budget"]),
    (["train", "vae", "--data", "mnist", "--steps", "1", "--config", "missing.toml"], ["config file not found"]),
])
def test_bad_arguments(tmp_path, mnist_dir, args, fragments):
    p = run_cli(*args, "--data-dir", mnist_dir, "--out", tmp_path / "o")
    assert_clean_error(p, *fragments)


def test_resume_on_non_run(tmp_path):
    assert_clean_error(run_cli("train", "--resume", tmp_path), "not an aigc run")
    assert_clean_error(run_cli("train", "--resume", tmp_path / "none"), "not found")


def test_existing_out_refused_unless_overwrite(trained, mnist_dir):
    p = run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 1, "--out", trained, *TINY)
    assert_clean_error(p, "already exists", "--overwrite")
    assert (trained / "checkpoint" / "model.safetensors").exists()          # nothing lost


def test_sample_bad_input(trained, tmp_path):
    assert_clean_error(run_cli("sample", trained, "--out", tmp_path / "x.jpg"), ".png", ".npz")
    assert_clean_error(run_cli("sample", trained, "--label", 3, "--out", tmp_path / "x.png"), "unconditional")
    assert_clean_error(run_cli("sample", tmp_path, "--out", tmp_path / "x.png"), "not an aigc run")


def test_empty_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    p = run_cli("train", "vae", "--data", "images", "--data-dir", tmp_path / "imgs", "--steps", 1, "--out",
                tmp_path / "o")
    assert_clean_error(p, "no image files")


def test_images_folder_trains(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (d / "junk.png").write_bytes(b"xx")
    p = run_cli("train", "vae", "--data", "images", "--data-dir", d, "--steps", 3, "--out", tmp_path / "o",
                "--quiet", "--set", "image_size=16", *TINY)
    assert p.returncode == 0, p.stderr
    assert "skipped 1" in p.stderr


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    p = run_cli("demo", "--out", out, "--dry-run", "--quiet", timeout=400)
    assert p.returncode == 0, p.stderr
    return out / "report.html"


# Both demo tests share one module-scoped demo run (2 to 4 minutes): the group keeps them on one xdist worker
# (pyproject's addopts has --dist loadgroup), else each worker would build the demo for itself.
@pytest.mark.xdist_group("demo")
def test_demo_report(demo_report):
    import re

    out, page = demo_report.parent, demo_report.read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 4 and all((out / s).is_file() for s in srcs)
    assert "test_nll_iwae" in page and "fid_name" in page
    assert_clean_error(run_cli("demo", "--out", out, "--minutes", 0.1), "--overwrite")


@pytest.mark.xdist_group("demo")
def test_demo_report_renders_in_chromium(demo_report, tmp_path):
    """Headless Chromium loads the page; its own script reports whether every image decoded."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                        demo_report.as_uri()], capture_output=True, text=True, timeout=120)
    check = re.search(r'<p id="image-check" data-ok="(\w*)">([^<]*)</p>', p.stdout)
    assert check, p.stdout[-2000:] + p.stderr[-2000:]
    assert check.group(1) == "yes", check.group(2)
    assert re.match(r"all \d+ images loaded", check.group(2))


# ---------------------------------------------------------------- robustness (issue 31, first part)
def _snapshot(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", ["batch_size=0", "lr=nan", "lr=-1", "warmup_steps=-5"])
def test_overwrite_with_a_bad_setting_keeps_the_old_run(trained, mnist_dir, bad):
    before = _snapshot(trained)
    p = run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2, "--out", trained,
                "--overwrite", *TINY, "--set", bad)
    assert_clean_error(p, bad.split("=")[0])
    assert _snapshot(trained) == before


def test_a_new_run_that_fails_its_checks_leaves_no_folder(tmp_path, mnist_dir):
    out = tmp_path / "new" / "run"
    assert_clean_error(run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2, "--out", out,
                               *TINY, "--set", "batch_size=0"), "batch_size")
    assert not (tmp_path / "new").exists()


def test_eval_out_in_a_new_folder(trained, tmp_path):
    p = run_cli("eval", trained, "--num", 32, "--k", 2, "--quiet", "--out", tmp_path / "new" / "e.json")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "new" / "e.json").read_text())["family"] == "vae"


@pytest.mark.parametrize("out", ["/proc/aigc-x.png", "FILE/x.png"])
def test_unwritable_sample_out_is_a_clear_error(trained, tmp_path, out):
    (tmp_path / "FILE").write_text("a file, not a folder")
    assert_clean_error(run_cli("sample", trained, "--num", 2, "--out", out.replace("FILE", str(tmp_path / "FILE"))),
                       "cannot write")


def test_unwritable_train_and_eval_out_are_clear_errors_before_any_work(trained, mnist_dir):
    assert_clean_error(run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 1,
                               "--out", "/proc/aigc-run"), "cannot write")
    before = _snapshot(trained)
    assert_clean_error(run_cli("eval", trained, "--num", 32, "--k", 2, "--out", "/proc/aigc-e.json"), "cannot write")
    assert _snapshot(trained) == before                          # refused before evaluating: no RUN/eval.json


@pytest.mark.parametrize("args,words", [(["--minutes", "nan"], ["not a finite number"]),
                                        (["--minutes", "inf"], ["not a finite number"])])
def test_non_finite_minutes_is_refused(tmp_path, mnist_dir, args, words):
    assert_clean_error(run_cli("train", "vae", "--data", "mnist", "--data-dir", mnist_dir, *args,
                               "--out", tmp_path / "o"), *words)
    assert not (tmp_path / "o").exists()
