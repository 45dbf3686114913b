import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aigc.errors import AigcError, NonFiniteLoss
from aigc.run import resume_training, start_training
from aigc.train.trainer import lr_scale

TINY = ["arch=mlp", "hidden=32", "z_dim=4", "batch_size=32", "log_every=5", "eval_batches=1",
        "eval_every=0", "sample_every=0", "ckpt_every=0"]


def _train(tmp, mnist_dir, name, steps, sets=(), stop_at=None):
    return start_training("vae", "mnist", None, TINY + list(sets), {"data.dir": str(mnist_dir), "train.steps": steps},
                          str(tmp / name), False, True, stop_at=stop_at)


def _weights(run):
    ck = run / "checkpoint"
    out = {f"m.{k}": v for k, v in load_file(ck / "model.safetensors").items()}
    if (ck / "ema.safetensors").exists():
        out |= {f"e.{k}": v for k, v in load_file(ck / "ema.safetensors").items()}
    return out


def _assert_identical(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def test_resume_n_then_2n_is_bit_identical(tmp_path, mnist_dir):
    """The literal claim: train N steps, resume to 2N == 2N in one go (a horizon-free LR schedule,
    dynamic binarisation and EMA on, so every piece of random and optimiser state is exercised)."""
    sets = ["schedule=constant", "ema=0.9", "binarize=dynamic", "grad_clip=1.0", "warmup_steps=4"]
    _train(tmp_path, mnist_dir, "full", 24, sets)
    _train(tmp_path, mnist_dir, "half", 12, sets)
    resume_training(str(tmp_path / "half"), steps=24, quiet=True)
    _assert_identical(tmp_path / "full", tmp_path / "half")


def test_interrupted_cosine_run_resumes_bit_identical(tmp_path, mnist_dir):
    """A 2N-step cosine run stopped at N (as by Ctrl-C) and resumed ends exactly like one run,
    even with periodic eval/samples/checkpoints in between (they use a forked RNG)."""
    sets = ["ema=0.9", "eval_every=5", "sample_every=7", "ckpt_every=4"]
    _train(tmp_path, mnist_dir, "full", 20, sets)
    r = _train(tmp_path, mnist_dir, "cut", 20, sets, stop_at=10)
    assert r["stopped"] == "stop_at"
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:      # a row logged after the checkpoint, then a crash
        f.write(json.dumps({"kind": "train", "step": 15, "loss": 1.0}) + "\n")
    resume_training(str(tmp_path / "cut"), quiet=True)
    _assert_identical(tmp_path / "full", tmp_path / "cut")
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) and max(train_steps) == 20      # no step logged twice


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, mnist_dir, monkeypatch):
    from aigc.recipes.vae import VAERecipe

    real_step = VAERecipe.train_step
    calls = {"n": 0}

    def poisoned(self, batch, opt):
        calls["n"] += 1
        if calls["n"] == 9:
            batch = {**batch, "image": batch["image"] * float("nan")}
        return real_step(self, batch, opt)

    monkeypatch.setattr(VAERecipe, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match="nan at step 8.*last good checkpoint \\(step 5\\)"):
        _train(tmp_path, mnist_dir, "nan", 20, ["ckpt_every=5"])
    w = _weights(tmp_path / "nan")
    assert all(torch.isfinite(v).all() for v in w.values())
    state = torch.load(tmp_path / "nan" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5


def test_lr_schedule():
    assert lr_scale(0, 0.0, 10, 0.0) == pytest.approx(0.1)
    assert lr_scale(9, 0.0, 10, 0.0) == pytest.approx(1.0)
    assert lr_scale(500, 0.5, 10, 0.0) == pytest.approx(0.5)
    assert lr_scale(999, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_scale(999, 1.0, 10, 0.1, "constant") == pytest.approx(1.0)


def test_no_budget_is_an_error(tmp_path, mnist_dir):
    with pytest.raises(AigcError, match="budget"):
        start_training("vae", "mnist", None, TINY, {"data.dir": str(mnist_dir)}, str(tmp_path / "x"), False, True)


def test_ema_differs_from_live_weights(tmp_path, mnist_dir):
    _train(tmp_path, mnist_dir, "ema", 10, ["ema=0.99"])
    ck = tmp_path / "ema" / "checkpoint"
    live, ema = load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")
    assert live.keys() == ema.keys()
    assert any(not torch.equal(live[k], ema[k]) for k in live)


def test_unknown_compile_mode_is_an_error(tmp_path, mnist_dir):
    with pytest.raises(AigcError, match="train.compile must be 'none', 'default'"):
        _train(tmp_path, mnist_dir, "c", 2, ["compile=fast"])


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("g++") and not shutil.which("c++"),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_modules_keep_weight_names_and_resume(tmp_path, mnist_dir):
    """train.compile compiles the modules in place: graphs are made, the checkpoint has the plain run's names,
    and a compiled run resumes from its own checkpoint. (A tiny MLP GAN: its step calls G and D directly.)"""
    import torch._dynamo

    sets = ["arch=\"mlp\"", "g_width=8", "d_width=8", "batch_size=16", "eval_every=0", "sample_every=0",
            "ckpt_every=0", "eval_batches=1", "log_every=1"]

    def train(name, more=()):
        return start_training("gan", "mnist", None, sets + list(more), {"data.dir": str(mnist_dir), "train.steps": 2},
                              str(tmp_path / name), False, True)
    train("plain")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train("comp", ["compile=default"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert _weights(tmp_path / "plain").keys() == _weights(tmp_path / "comp").keys()
    out = resume_training(str(tmp_path / "comp"), steps=4, quiet=True)
    assert out["step"] == 4
    torch._dynamo.reset()


def test_nonfinite_loss_before_any_checkpoint_claims_none(tmp_path, mnist_dir, monkeypatch):
    from aigc.recipes.vae import VAERecipe

    real_step = VAERecipe.train_step

    def poisoned(self, batch, opt):
        return real_step(self, {**batch, "image": batch["image"] * float("nan")}, opt)

    monkeypatch.setattr(VAERecipe, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match="No checkpoint had been written yet.*--resume would continue") as e:
        _train(tmp_path, mnist_dir, "nan0", 20, ["ckpt_every=5"])
    assert "last good checkpoint" not in str(e.value)


def test_a_garbage_trainer_state_is_refused_without_unsafe_advice(tmp_path):
    from aigc.errors import AigcError
    from aigc.io.checkpoint import STATE, load_state

    (tmp_path / STATE).write_bytes(b"\x80\x04garbage, not a torch file")
    with pytest.raises(AigcError, match="damaged or was not written by aigc") as e:
        load_state(tmp_path)
    assert "weights_only" not in str(e.value)


def test_checkpoint_files_share_one_mode(tmp_path):
    from aigc.io.checkpoint import EMA, MODEL, STATE, save_checkpoint

    save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"step": 1})
    modes = {f: (tmp_path / "ckpt" / f).stat().st_mode & 0o777 for f in (MODEL, EMA, STATE)}
    assert len(set(modes.values())) == 1, modes


def test_run_status_reads_the_last_event():
    from aigc.run import run_status

    train, stop = {"kind": "train", "step": 5}, {"kind": "stop", "step": 5}
    assert run_status([train, {**stop, "stopped": "budget"}, {"kind": "eval"}, {**stop, "stopped": "finished"}]) \
        == "finished"
    assert run_status([train, {**stop, "stopped": "interrupted"}]) == "interrupted"
    assert run_status([train, {"kind": "error", "step": 6}]) == "nan-stopped"
    assert run_status([train, {**stop, "stopped": "interrupted"}, train]) == "running?"      # resumed, or killed
    assert run_status([]) == "not started"
