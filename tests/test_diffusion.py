"""Diffusion family: schedule, samplers against an exact oracle, guidance, the U-Net, the recipe and the CLI."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli

from aigc.diffusion import Schedule, ddim_sample, ddpm_sample, dpm_solver_sample, guided, timesteps
from aigc.diffusion.guidance import combine
from aigc.models.unet import UNet
from aigc.recipes.diffusion import DiffusionConfig

TINY = ["--set", "model.width=8", "--set", "model.groups=4", "--set", "model.heads=2", "--set", "model.mults=[1,2]",
        "--set", "model.patch=1", "--set", "model.cond_dim=16", "--set", "train.eval_batches=1",
        "--set", "train.eval_every=0", "--set", "train.sample_every=0", "--set", "model.sample_steps=3"]


# ---------------------------------------------------------------- schedule and samplers
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_is_a_valid_noise_schedule(kind):
    s = Schedule(kind, 1000)
    ab = s.alphas_cumprod
    assert (s.betas > 0).all() and (s.betas < 1).all()
    assert (ab[1:] < ab[:-1]).all() and ab[0] > 0.99 and ab[-1] < 1e-3


def test_shifted_schedule_divides_the_snr_by_the_shift_squared():
    """schedule_shift s: SNR'_t = SNR_t / s^2 at every t, the betas agree with the new abar, and the exact oracle
    still samples the right distribution on it."""
    base, shifted = Schedule("cosine", 1000), Schedule("cosine", 1000, "v", shift=3.0)
    t = torch.arange(1000)
    like = torch.zeros(1000, dtype=torch.float64)
    ratio = shifted.snr(t, like) / base.snr(t, like)
    assert torch.allclose(ratio, torch.full_like(ratio, 1 / 9), rtol=1e-4)
    assert torch.allclose(torch.cumprod(1 - shifted.betas, 0), shifted.alphas_cumprod, rtol=1e-9)
    assert (shifted.betas > 0).all() and (shifted.betas < 1).all()
    x = ddim_sample(gaussian_oracle(shifted, 0.3, 0.5), shifted, (20000, 1), 200,
                    generator=torch.Generator().manual_seed(1),
                    clip=False)
    assert x.mean().item() == pytest.approx(0.3, abs=0.02) and x.std().item() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError):
        Schedule("cosine", 1000, shift=0)


def test_q_sample_matches_the_closed_form_statistically():
    s = Schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7)
    for t in (0, 250, 999):
        tt = torch.full((n,), t)
        xt = s.q_sample(x0, tt, torch.randn(n, 1, generator=g))
        ab = float(s.alphas_cumprod[t])
        assert xt.mean().item() == pytest.approx(ab ** 0.5 * 0.7, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.01 + 0.01 * (1 - ab))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weight_weights_the_x0_error_by_min_snr_gamma(prediction):
    """The weighted loss on either parameterisation equals min(SNR_t, gamma) |x_0 estimate - x_0|^2."""
    s = Schedule("cosine", 1000, prediction)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 50, 300, 600, 900, 999])
    x0, noise = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    xt = s.q_sample(x0, t, noise)
    out = s.target(x0, t, noise) + 0.1 * torch.randn(6, 1, 4, 4, generator=g)     # an imperfect prediction
    w = s.min_snr_weight(t, 5.0, out).flatten()
    loss = (out - s.target(x0, t, noise)).pow(2).flatten(1).mean(1) * w
    x0_hat, _ = s.split(out, xt, t)
    expect = s.snr(t, out).flatten().clamp(max=5.0) * (x0_hat - x0).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss.double(), expect.double(), rtol=1e-3, atol=1e-9)
    if prediction == "v":             # v: both ends weigh less (SNR huge at t = 0, near 0 at t = 999)
        assert w[0] < 1e-3 and w[-1] < 1e-3
    else:                             # eps: unchanged where SNR < gamma, down-weighted near t = 0
        assert w[-1] == pytest.approx(1.0) and w[0] < 1e-3


def gaussian_oracle(s: Schedule, mu: float, std: float):
    """The exact denoiser for data x0 ~ N(mu, std^2): E[eps | x_t] (or the matching v)."""

    def fn(x, t):
        ab = s.abar(t, x)
        var = ab * std ** 2 + 1 - ab
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mu) / var
        if s.prediction == "eps":
            return eps
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return fn


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 100), ("ddim", 1000), ("dpm++2m", 100)])
def test_samplers_with_a_perfect_oracle_recover_the_data_distribution(sampler, steps, prediction):
    mu, std = 0.3, 0.5
    s = Schedule("linear", 1000, prediction)
    g = torch.Generator().manual_seed(1)
    run = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm++2m": dpm_solver_sample}[sampler]
    x = run(gaussian_oracle(s, mu, std), s, (20000, 1), steps, generator=g, clip=False)
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(std, abs=0.02)


def correlated_oracle(s: Schedule, mu: float, std: float, corr: float):
    """The exact denoiser for clips (N, 1, F, 1, 1) of i.i.d. frames x0 ~ N(mu, std^2) noised with noise whose
    frames are correlated by `corr` (covariance S = (1 - corr) I + corr 11^T): E[eps | x_t] = sqrt(1 - abar)
    S (abar std^2 I + (1 - abar) S)^-1 (x_t - sqrt(abar) mu), on S's eigenvectors: the frame mean
    (eigenvalue 1 + (F - 1) corr) and the deviations from it (1 - corr)."""

    def fn(x, t):
        ab = s.abar(t, x)
        r = x - ab.sqrt() * mu
        m = r.mean(2, keepdim=True)
        lam = {"mean": 1 + (x.shape[2] - 1) * corr, "dev": 1 - corr}
        return (1 - ab).sqrt() * (lam["mean"] * m / (ab * std ** 2 + (1 - ab) * lam["mean"])
                                  + lam["dev"] * (r - m) / (ab * std ** 2 + (1 - ab) * lam["dev"]))

    return fn


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 200)])
def test_samplers_with_frame_correlated_noise_recover_independent_frames(sampler, steps):
    """Trained and sampled with the same correlated noise (frame_noise), the samplers are exact: with the
    oracle they return frames with the data's mean and spread and no correlation between them. Sampled with
    i.i.d. noise instead, the same oracle gives the wrong spread (the noise prior must match)."""
    from aigc.diffusion.samplers import frame_noise

    mu, std, corr = 0.3, 0.5, 0.8
    s = Schedule("cosine", 1000)
    run = ddpm_sample if sampler == "ddpm" else ddim_sample
    fn = correlated_oracle(s, mu, std, corr)
    x = run(fn, s, (20000, 1, 4, 1, 1), steps, generator=torch.Generator().manual_seed(1), clip=False,
            noise=frame_noise(corr)).flatten(1)
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std(0).mean().item() == pytest.approx(std, abs=0.02)
    c = torch.corrcoef(x.T)
    assert (c - torch.eye(4)).abs().max() < 0.04
    wrong = run(fn, s, (20000, 1, 4, 1, 1), steps, generator=torch.Generator().manual_seed(1), clip=False).flatten(1)
    assert abs(wrong.std(0).mean().item() - std) > 0.05


def test_frame_noise_has_unit_variance_and_the_asked_correlation():
    from aigc.diffusion.samplers import frame_noise

    n = frame_noise(0.6)((4000, 2, 3, 2, 2), torch.Generator().manual_seed(0), "cpu", torch.float32)
    f = n.permute(0, 1, 3, 4, 2).reshape(-1, 3)
    assert torch.allclose(f.var(0), torch.ones(3), atol=0.03)
    assert torch.allclose(torch.corrcoef(f.T), torch.full((3, 3), 0.6) + 0.4 * torch.eye(3), atol=0.03)
    img = frame_noise(0.6)((4000, 8), torch.Generator().manual_seed(0), "cpu", torch.float32)   # not a clip: i.i.d.
    assert (torch.corrcoef(img.T) - torch.eye(8)).abs().max() < 0.06


def test_ddim_discretisation_error_shrinks_with_more_steps():
    """Deterministic DDIM is a first-order ODE solver: with few steps it under-disperses (std 0.47 at 25
    cosine steps for a target of 0.5), converging as the steps grow."""
    s = Schedule("cosine", 1000)
    errs = [abs(ddim_sample(gaussian_oracle(s, 0.3, 0.5), s, (20000, 1), k, generator=torch.Generator().manual_seed(1),
                            clip=False).std().item() - 0.5) for k in (10, 25, 100)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02


@pytest.mark.slow
def test_dpm_solver_is_second_order_where_ddim_is_first():
    """On the same x_T and oracle, DPM-Solver++(2M) at 25 steps lands within 0.01 of the exact ODE's spread
    (taken from DDIM at 1000 steps), where DDIM-25 misses by 0.03 to 0.05; at 10 steps both miss, DPM less. Its first
    update is DDIM's (with two timesteps both take one update and one final x_0 step: equal), and it is
    deterministic for a seed."""
    fn_for = {k: gaussian_oracle(Schedule(k, 1000, "v"), 0.3, 0.5) for k in ("cosine", "linear")}
    for kind, fn in fn_for.items():
        s = Schedule(kind, 1000, "v")
        std = lambda run, k: run(fn, s, (20000, 1), k, generator=torch.Generator().manual_seed(1),   # noqa: E731
                                 clip=False).std().item()
        exact = std(ddim_sample, 1000)
        assert abs(std(dpm_solver_sample, 25) - exact) < 0.012 < abs(std(ddim_sample, 25) - exact)
        assert abs(std(dpm_solver_sample, 10) - exact) < abs(std(ddim_sample, 10) - exact)
    s = Schedule("cosine", 1000, "v")
    fn = fn_for["cosine"]
    run = lambda f, k, seed: f(fn, s, (64, 1), k, generator=torch.Generator().manual_seed(seed))   # noqa: E731
    torch.testing.assert_close(run(dpm_solver_sample, 2, 3), run(ddim_sample, 2, 3))
    assert torch.equal(run(dpm_solver_sample, 25, 3), run(dpm_solver_sample, 25, 3))
    assert not torch.allclose(run(dpm_solver_sample, 25, 3), run(ddim_sample, 25, 3))


def test_ddim_eta0_is_deterministic_for_a_seed_and_eta1_is_ddpm():
    s = Schedule("cosine", 1000)
    fn = gaussian_oracle(s, 0.1, 0.4)
    a = ddim_sample(fn, s, (64, 1), 20, generator=torch.Generator().manual_seed(5))
    b = ddim_sample(fn, s, (64, 1), 20, generator=torch.Generator().manual_seed(5))
    c = ddim_sample(fn, s, (64, 1), 20, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    d = ddim_sample(fn, s, (64, 1), 20, eta=1.0, generator=torch.Generator().manual_seed(5))
    e = ddpm_sample(fn, s, (64, 1), 20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(d, e, atol=1e-4, rtol=1e-4)


def test_timesteps_and_trajectory():
    assert timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = timesteps(1000, 25)
    assert len(ts) == 25 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError):
        timesteps(1000, 1001)
    with pytest.raises(ValueError):
        timesteps(1000, 0)
    s = Schedule("linear", 100)
    seen = []
    x = ddim_sample(gaussian_oracle(s, 0.0, 0.5), s, (4000, 1), 10, clip=False,
                    callback=lambda i, n, x_i: seen.append((i, n, x_i.clone())))
    assert [(i, n) for i, n, _ in seen] == [(i, 10) for i in range(10)] and torch.equal(seen[-1][2], x)
    assert seen[0][2].std() > seen[-1][2].std()        # from noise (std ~1) to data (std 0.5)


def test_guidance_formula():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.5])
    assert torch.equal(combine(cond, uncond, 1.0), cond)
    assert torch.equal(combine(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(combine(cond, uncond, 3.0), uncond + 3 * (cond - uncond))

    def net(x, t, c):                                   # output = the condition, to see which one was used
        return c.float().view(-1, 1).expand_as(x)

    x, t = torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)
    c, null = torch.tensor([4, 4, 4]), torch.tensor([1, 1, 1])
    assert guided(net, c, null, 1.0)(x, t).flatten().tolist() == [4, 4, 4]
    assert guided(net, c, null, 0.0)(x, t).flatten().tolist() == [1, 1, 1]
    assert guided(net, c, null, 2.0)(x, t).flatten().tolist() == [7, 7, 7]


# ---------------------------------------------------------------- U-Net and recipe
@pytest.mark.parametrize("size,channels,patch,coords,cond_map", [(28, 1, 1, False, 0), (32, 3, 2, True, 4),
                                                                  (64, 3, 2, False, 2)])
def test_unet_shapes(size, channels, patch, coords, cond_map):
    cfg = DiffusionConfig(width=8, groups=4, heads=2, mults=[1, 2, 2], patch=patch, cond="class", num_classes=3,
                          coords=coords, cond_map=cond_map)
    net = UNet(cfg, (channels, size, size))
    assert net.inp.in_channels == channels * patch ** 2 + 2 * coords + cond_map
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]), torch.tensor([0, 3]))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        UNet(DiffusionConfig(width=8, groups=4, heads=2, mults=[1, 2, 2, 2]), (1, 28, 28))


def equivariant(net):
    """Circular padding (so shifts wrap around exactly) and random, non-zero conv weights (the zero-initialised
    output layers would hide everything)."""
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding_mode = "circular"
            torch.nn.init.normal_(m.weight, std=0.3)


def test_coordinate_channels_break_translation_equivariance():
    """Without coordinates a (circular-padded) conv net maps a shifted input to the shifted output, so it
    cannot place a shape where a caption says; with them the response depends on where the input is."""
    torch.manual_seed(0)
    outs = {}
    for coords in (False, True):
        net = UNet(DiffusionConfig(width=8, groups=4, heads=2, mults=[1], attn_levels=0, coords=coords), (1, 16, 16))
        equivariant(net)
        x = torch.randn(1, 1, 16, 16)
        t = torch.tensor([500])
        with torch.no_grad():
            outs[coords] = (net(x, t).roll(4, -1) - net(x.roll(4, -1), t)).abs().max().item()
    assert outs[False] < 1e-4 and outs[True] > 1e-2


def test_condition_map_gives_the_condition_a_spatial_path():
    """A translation-equivariant net fed a constant image returns a constant image whatever the condition
    (a pooled condition only scales and shifts whole channels: it cannot say where). With the condition
    projected to a map, the output varies over the pixels, differently for each condition."""
    torch.manual_seed(0)
    spread = {}
    for cond_map in (0, 2):
        net = UNet(DiffusionConfig(width=8, groups=4, heads=2, mults=[1], attn_levels=0, cond="class", num_classes=3,
                                   cond_map=cond_map), (1, 16, 16))
        equivariant(net)
        x = torch.zeros(2, 1, 16, 16)
        with torch.no_grad():
            out = net(x, torch.tensor([900, 900]), torch.tensor([0, 1]))
        spread[cond_map] = (out.amax((2, 3)) - out.amin((2, 3))).max().item(), (out[0] - out[1]).std().item()
    assert spread[0][0] < 1e-4 and spread[0][1] < 1e-4
    assert spread[2][0] > 1e-2 and spread[2][1] > 1e-3


def tiny_recipe(cond="none"):
    from aigc.config import RunConfig, TrainConfig, data_config
    from aigc.data import shapes
    from aigc.recipes.diffusion import DiffusionRecipe

    m = DiffusionConfig(width=8, groups=4, heads=2, mults=[1, 2], cond=cond, cond_dim=16, num_classes=10,
                        text_vocab=list(shapes.VOCAB), sample_steps=3)
    size, ch = (32, 3) if cond == "text" else (28, 1)
    return DiffusionRecipe(RunConfig("diffusion", data_config("mnist", image_size=size, channels=ch), m,
                                     TrainConfig()))


def test_guided_sampling_keeps_the_nets_batch_at_sample_batch():
    """Guidance w not in (0, 1) runs the net on cond + uncond together: sample_for halves its chunks so the net
    still sees at most sample_batch inputs; w = 1 uses whole chunks."""
    r = tiny_recipe("class")
    r.core.sample_batch = 4
    seen = []
    forward = r.net.forward
    r.net.forward = lambda x, *a, **k: (seen.append(len(x)), forward(x, *a, **k))[1]
    labels = torch.arange(6)
    with torch.no_grad():
        out = r.core.sample_for(labels=labels, guidance=3.0, steps=2)
    assert out.shape[0] == 6 and max(seen) == 4 and seen[:2] == [4, 4]
    seen.clear()
    with torch.no_grad():
        r.core.sample_for(labels=labels, guidance=1.0, steps=2)
    assert seen == [4, 4, 2, 2]


def test_condition_dropout_reaches_the_null_embedding():
    r = tiny_recipe("text")
    batch = {"caption": ["a large red circle in the top"] * 4}
    kept = r.core.condition(batch, 0.0)
    dropped = r.core.condition(batch, 1.0)
    assert kept.abs().sum() > 0 and torch.equal(dropped, torch.zeros_like(kept))
    emb = r.net.text(dropped)
    torch.testing.assert_close(emb, r.net.text.null.expand_as(emb))
    r = tiny_recipe("class")
    dropped = r.core.condition({"label": torch.tensor([1, 2, 3])}, 1.0)
    assert dropped.tolist() == [10, 10, 10]                       # the null class index


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    r = tiny_recipe()
    x0 = torch.rand(32, 1, 28, 28) * 2 - 1
    opt = torch.optim.Adam(r.net.parameters(), lr=3e-3)

    def fixed_loss():
        return r.core.loss(x0, None, torch.Generator().manual_seed(0)).mean()

    before = fixed_loss().item()
    for _ in range(40):
        loss = r.core.loss(x0, None).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert fixed_loss().item() < 0.7 * before


# ---------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def class_run(tmp_path_factory, mnist_dir):
    run = tmp_path_factory.mktemp("diff") / "c"
    p = run_cli("train", "diffusion", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 6, "--out", run,
                "--set", "model.cond=class", *TINY)
    assert p.returncode == 0, p.stderr
    return run


def test_cli_class_diffusion(class_run, tmp_path):
    assert (class_run / "checkpoint" / "ema.safetensors").exists()       # the preset keeps an EMA
    assert list((class_run / "samples").glob("*_trajectory.png"))
    p = run_cli("sample", class_run, "--num", 5, "--label", 4, "--guidance", 2, "--out", tmp_path / "s.npz")
    assert p.returncode == 0, p.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (5, 28, 28, 1) and z["labels"].tolist() == [4] * 5
    p = run_cli("sample", class_run, "--num", 3, "--sampler", "ddpm", "--steps", 5, "--what", "trajectory",
                "--out", tmp_path / "t.png")
    assert p.returncode == 0, p.stderr
    p = run_cli("sample", class_run, "--num", 2, "--label", 1, "--sampler", "dpm++2m", "--steps", 4, "--out",
                tmp_path / "d.npz")
    assert p.returncode == 0, p.stderr
    assert np.load(tmp_path / "d.npz")["images"].shape == (2, 28, 28, 1)
    for args, words in [(["--label", 12], ["out of range", "0..9"]), (["--steps", 5000], ["--steps", "1..1000"]),
                        (["--steps", 0], ["--steps"]), (["--guidance", -1], ["--guidance", ">= 0"]),
                        (["--prompt", "a 3"], ["text-conditional"]), (["--sampler", "euler"],
                                                                      ["'ddim', 'ddpm' or 'dpm++2m'"])]:
        assert_clean_error(run_cli("sample", class_run, "--num", 2, *args, "--out", tmp_path / "x.png"), *words)
    p = run_cli("eval", class_run, "--num", 300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert "eval_loss" in res and "class_accuracy" in res["sample_quality"]


def test_cli_text_to_image_and_bad_input(tmp_path, mnist_dir):
    run = tmp_path / "t"
    p = run_cli("train", "diffusion", "--data", "shapes", "--steps", 4, "--out", run,
                "--set", "num_train=256", "--set", "num_eval=64", *TINY)
    assert p.returncode == 0, p.stderr
    p = run_cli("sample", run, "--num", 4, "--prompt", "a large blue square", "--out", tmp_path / "t.npz")
    assert p.returncode == 0, p.stderr
    assert list(np.load(tmp_path / "t.npz")["prompts"]) == ["a large blue square"] * 4
    assert_clean_error(run_cli("sample", run, "--num", 2, "--prompt", "purple dog", "--out", tmp_path / "x.png"),
                       "no word this model knows", "circle")
    assert_clean_error(run_cli("sample", run, "--num", 2, "--label", 1, "--out", tmp_path / "x.png"),
                       "class-conditional")
    p = run_cli("train", "diffusion", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2, "--out",
                tmp_path / "u",
                *TINY)
    assert p.returncode == 0, p.stderr
    assert_clean_error(run_cli("sample", tmp_path / "u", "--num", 2, "--prompt", "a 3", "--out", tmp_path / "x.png"),
                       "text-conditional")
    assert_clean_error(run_cli("sample", tmp_path / "u", "--num", 2, "--guidance", 2, "--out", tmp_path / "x.png"),
                       "for conditional diffusion models")
    assert_clean_error(run_cli("train", "diffusion", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2,
                               "--out", tmp_path / "bad", "--set", "model.mults=[1,2,2,2]", "--set", "model.patch=1"),
                       "divisible")


def test_prompt_accuracy_splits_seen_and_held_out_pairs():
    from aigc.data import shapes

    imgs, attrs = shapes.generate(300, seed=3)
    caps = shapes.captions(attrs, torch.arange(300))
    held = (attrs["color"] == 1) & (attrs["shape"] == 2)                 # green triangles
    imgs[held] = 0                                                        # "failed" on every held-out prompt
    out = shapes.prompt_accuracy(imgs, caps, ["green triangle"])
    assert out["prompt_accuracy_seen"] == 1.0 and out["prompt_accuracy_holdout"] == 0.0
    assert out["num_holdout"] == int(held.sum()) > 0 and out["num_seen"] == 300 - int(held.sum())
