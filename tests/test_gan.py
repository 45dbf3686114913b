import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_clean_error, gen, run_cli

from aigc.config import RunConfig, TrainConfig, data_config
from aigc.models.gan import Discriminator, GANConfig, Generator
from aigc.recipes.gan import GANRecipe, d_loss, g_loss, r1_penalty
from aigc.train.trainer import Optimizers

LOGITS_R = torch.tensor([2.0, -1.0])
LOGITS_F = torch.tensor([0.5, -3.0])


def _sig(t):
    return 1 / (1 + math.exp(-t))


def test_losses_match_hand_computation():
    r, f = LOGITS_R.tolist(), LOGITS_F.tolist()
    # D maximises log D(x) + log(1 - D(G(z))), i.e. minimises the negative (mean over the batch)
    want_d = -sum(math.log(_sig(a)) + math.log(1 - _sig(b)) for a, b in zip(r, f)) / 2
    for kind in ("ns", "minimax"):
        assert d_loss(kind, LOGITS_R, LOGITS_F).item() == pytest.approx(want_d, rel=1e-6)
    assert g_loss("minimax", LOGITS_F).item() == pytest.approx(sum(math.log(1 - _sig(b)) for b in f) / 2, rel=1e-6)
    assert g_loss("ns", LOGITS_F).item() == pytest.approx(-sum(math.log(_sig(b)) for b in f) / 2, rel=1e-6)
    want_hinge = (max(0, 1 - 2.0) + max(0, 1 + 1.0)) / 2 + (max(0, 1 + 0.5) + max(0, 1 - 3.0)) / 2
    assert d_loss("hinge", LOGITS_R, LOGITS_F).item() == pytest.approx(want_hinge)
    assert g_loss("hinge", LOGITS_F).item() == pytest.approx(-(0.5 - 3.0) / 2)


def test_minimax_generator_loss_saturates_and_ns_does_not():
    f = torch.tensor([-8.0], requires_grad=True)              # D confidently rejects the sample
    (gm,) = torch.autograd.grad(g_loss("minimax", f), f)
    (gn,) = torch.autograd.grad(g_loss("ns", f), f)
    assert abs(gm.item()) < 1e-3 < abs(gn.item())


def _cfg(**model):
    return RunConfig("gan", data_config("mnist", channels=1, image_size=28, batch_size=16),
                     GANConfig(**model), TrainConfig(lr=1e-3, beta1=0.5))


def test_spectral_norm_keeps_largest_singular_value_near_one():
    torch.manual_seed(0)
    d = Discriminator(GANConfig(arch="mlp", hidden=64, spectral_norm=True), (1, 28, 28))
    for p in d.parameters():                                   # large raw weights
        torch.nn.init.normal_(p, 0, 3.0)
    x = torch.randn(8, 1, 28, 28)
    for _ in range(30):                                        # power iterations run in training forwards
        d(x)
    lin = d.features[1]
    sigma = torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()
    raw = torch.linalg.matrix_norm(lin.parametrizations.weight.original.detach(), ord=2).item()
    assert raw > 10 and abs(sigma - 1) < 0.05


def test_r1_penalty_zero_for_constant_discriminator():
    d = Discriminator(GANConfig(arch="mlp", hidden=32), (1, 28, 28))
    with torch.no_grad():
        for name, p in d.named_parameters():
            p.zero_()
        d.out.bias.fill_(0.7)
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    assert r1_penalty(d(x), x).item() == 0.0
    d2 = Discriminator(GANConfig(arch="mlp", hidden=32), (1, 28, 28))
    x2 = torch.randn(4, 1, 28, 28, requires_grad=True)
    assert r1_penalty(d2(x2), x2).item() > 0


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_d_step_leaves_g_and_g_step_leaves_d(arch):
    torch.manual_seed(0)
    r = GANRecipe(_cfg(arch=arch, g_width=8, d_width=8, hidden=32, r1=1.0))
    opt = Optimizers(r.param_groups(), r.cfg.train, torch.device("cpu"))
    x = torch.rand(16, 1, 28, 28) * 2 - 1

    def snap(m):
        return [p.detach().clone() for p in m.parameters()]

    g0, d0 = snap(r.G), snap(r.D)
    r.d_step(x, None, opt)
    assert all(torch.equal(a, b) for a, b in zip(g0, snap(r.G)))
    assert not all(torch.equal(a, b) for a, b in zip(d0, snap(r.D)))
    assert all(p.grad is None for p in r.G.parameters())
    d1 = snap(r.D)
    r.g_step(16, None, opt)
    assert all(torch.equal(a, b) for a, b in zip(d1, snap(r.D)))
    assert all(p.grad is None for p in r.D.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(g0, snap(r.G)))


@pytest.mark.parametrize("size,channels,convs", [(28, 1, 0), (32, 3, 0), (64, 3, 0), (64, 1, 0), (28, 1, 2), (32, 3,
                                                                                                              1)])
def test_dcgan_shapes(size, channels, convs):
    cfg = GANConfig(arch="dcgan", g_width=8, d_width=8, g_convs=convs, d_convs=convs)
    g, d = Generator(cfg, (channels, size, size)), Discriminator(cfg, (channels, size, size))
    x = g(torch.randn(3, cfg.z_dim))
    assert x.shape == (3, channels, size, size) and x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (3,)
    n_res = {28: 2, 32: 3, 64: 4}[size]           # G's hidden resolutions; D's downsamplings
    for net in (g, d):
        assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules()) == convs * n_res


def test_pooled_discriminator_reads_summed_features():
    """d_pool: the logit, projection and word classifier read the last feature map summed over space; the
    convolutions are the flattened D's (same seed, same weights)."""
    kw = dict(arch="dcgan", d_width=8, spectral_norm=True, cond="text", text_vocab=["a", "red", "circle"],
              aux_words=1.0)
    torch.manual_seed(0)
    flat = Discriminator(GANConfig(**kw), (3, 32, 32)).eval()
    torch.manual_seed(0)
    pooled = Discriminator(GANConfig(**kw, d_pool=True), (3, 32, 32)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    h = pooled.features(x)
    assert h.shape == (2, 32) and pooled.classify.in_features == 32 and flat.classify.in_features == 32 * 16
    assert torch.allclose(h, flat.features(x).view(2, 32, 16).sum(2), atol=1e-5)
    logits, words = pooled(x, torch.tensor([[1, 2, 3], [1, 2, 0]]))
    assert logits.shape == (2,) and words.shape == (2, 4)


def test_pooled_mode_seeking_ignores_texture():
    # samples that differ only in a checkerboard (the same 2 x 2 averages) are far apart for the pixel term and
    # identical for the pooled one, whose penalty is then at its ceiling lam / 1e-5
    terms = {}
    for pool in (1, 2):
        r = GANRecipe(_cfg(arch="mlp", hidden=8, cond="none", mode_seeking=1.0, mode_seeking_pool=pool))
        board = (torch.arange(28)[:, None] + torch.arange(28)[None]) % 2 * 2 - 1.0
        r.G = lambda z, y: z[:, :1, None, None] * board                 # noqa: E731
        r.g_update = lambda logits, opt, extra=None, y=None: terms.__setitem__(pool, float(extra))  # noqa: E731
        r.g_step_on(torch.randn(8, r.cfg.model.z_dim), None, None)
    assert terms[1] < 100 and terms[2] > 0.9e5


@pytest.mark.parametrize("lam,pool", [(0.0, 1), (1.0, 1), (1.0, 7)])
def test_mode_seeking_term_alone_spreads_the_generator(lam, pool):
    # D's weights are zero, so the hinge loss gives G no gradient: only the mode-seeking term can move G,
    # and it must make samples from different z (same label) further apart, in pixels or (pool 7) in the
    # 4 x 4 averages of the 28 x 28 images
    from aigc.recipes.gan import pooled

    torch.manual_seed(0)
    r = GANRecipe(_cfg(arch="mlp", hidden=32, loss="hinge", cond="class", num_classes=10, mode_seeking=lam,
                       mode_seeking_pool=pool))
    with torch.no_grad():
        for p in r.D.parameters():
            p.zero_()
    opt = Optimizers(r.param_groups(), r.cfg.train, torch.device("cpu"))
    z, y = torch.randn(64, r.cfg.model.z_dim), torch.full((64,), 4)

    def spread():
        with torch.no_grad():
            x = pooled(r.G(z, y), pool)
        return ((x[:32] - x[32:]).abs().mean() / (z[:32] - z[32:]).abs().mean()).item()

    g0, before = [p.detach().clone() for p in r.G.parameters()], spread()
    for _ in range(5):
        r.g_step(32, torch.randint(0, 10, (32,)), opt)
    if lam == 0:
        assert all(torch.equal(a, b) for a, b in zip(g0, r.G.parameters()))
    else:
        assert spread() > before * 1.05


def test_class_conditional_sampling_passes_label_through():
    torch.manual_seed(0)
    r = GANRecipe(_cfg(arch="mlp", hidden=32, cond="class", num_classes=10))
    r.G.eval()
    out = gen(r, num=6, label=3)
    assert out.labels.tolist() == [3] * 6 and out.images.shape == (6, 28, 28, 1)
    z = torch.randn(1, r.cfg.model.z_dim)
    a, b = r.G(z, torch.tensor([1])), r.G(z, torch.tensor([7]))
    assert not torch.allclose(a, b)                            # the label reaches the generator
    from aigc.errors import AigcError
    with pytest.raises(AigcError, match="out of range"):
        gen(r, num=2, label=10)


def test_text_conditional_prompts_and_null_caption():
    from aigc.data import shapes

    torch.manual_seed(0)
    cfg = RunConfig("gan", data_config("shapes", channels=3, image_size=32),
                    GANConfig(arch="dcgan", g_width=8, d_width=8, cond="text", text_vocab=list(shapes.VOCAB)),
                    TrainConfig())
    r = GANRecipe(cfg)
    r.G.eval()
    out = gen(r, num=4, prompt="a red circle")
    assert out.prompts == ["a red circle"] * 4 and out.images.shape == (4, 32, 32, 3)
    ids = r.vocab.encode(["", "a big red circle"])
    assert ids[0].sum() == 0 and ids[1].tolist()[:3] == [r.vocab.index[w] for w in ("a", "red", "circle")]
    enc = r.G.cond.net
    assert torch.allclose(enc(ids[:1])[0], enc.null)          # the empty caption is the learned null embedding
    from aigc.errors import AigcError
    with pytest.raises(AigcError, match="known words"):
        gen(r, num=2, prompt="a purple dog")


def test_word_classifier_learns_from_real_images_and_teaches_g():
    """aux_words: D names the caption's words (a logit per vocabulary id); its loss enters D's loss on the real
    images only (a fake's word logits get no gradient) and G's loss on the samples, weighted by aux_words; with
    words_fake D also learns that samples show no word."""
    from aigc.data import shapes

    torch.manual_seed(0)
    cfg = RunConfig("gan", data_config("shapes", channels=3, image_size=32),
                    GANConfig(arch="dcgan", g_width=8, d_width=8, cond="text", text_vocab=list(shapes.VOCAB),
                              loss="hinge", aux_words=2.0), TrainConfig())
    r = GANRecipe(cfg)
    y = r.vocab.encode(["a small red circle in the top left", "a large blue square"])
    logits, words = r.D(torch.zeros(2, 3, 32, 32), y)
    assert logits.shape == (2,) and words.shape == (2, len(r.vocab))
    target = torch.zeros(2, len(r.vocab)).scatter_(1, y, 1.0)
    right = (torch.zeros(2), (20 * (2 * target - 1)).requires_grad_())
    wrong = (torch.zeros(2), (-20 * (2 * target - 1)).requires_grad_())
    hinge = 2.0                                                    # relu(1 - 0) + relu(1 + 0)
    loss = r.discriminator_loss(right, wrong, y)
    assert float(loss.detach()) == pytest.approx(hinge, abs=1e-4)
    assert float(r.discriminator_loss(wrong, right, y).detach()) > hinge + 2 * 10   # 2 x (BCE >= 10 per word)
    loss.backward()
    assert wrong[1].grad is None or wrong[1].grad.abs().sum() == 0         # fakes do not train the classifier
    assert float(r.generator_loss(right, y).detach()) == pytest.approx(0.0, abs=1e-4)
    assert float(r.generator_loss(wrong, y).detach()) > 2 * 10
    r.cfg.model.words_fake = True                                 # fakes now teach the classifier: no word
    fake_words = wrong[1].detach().clone().requires_grad_()
    r.discriminator_loss(right, (torch.zeros(2), fake_words), y).backward()
    assert (fake_words.grad[:, 1:] > 0).all()                      # every word logit of a sample pushed down
    r.cfg.model.words_fake = False
    batch = {"image": torch.rand(4, 3, 32, 32), "caption": ["a red circle", "a blue square", "a green triangle",
                                                            "a small yellow circle"]}
    out = r.train_step(batch, Optimizers(r.param_groups(), r.cfg.train, torch.device("cpu")))
    assert all(math.isfinite(float(v)) for v in out.values())


@pytest.mark.slow
def test_training_separates_real_from_fake_on_tiny_data():
    torch.manual_seed(0)
    r = GANRecipe(_cfg(arch="mlp", hidden=64))
    opt = Optimizers(r.param_groups(), r.cfg.train, torch.device("cpu"))
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0                                # one fixed "real" image

    def err():
        with torch.no_grad():
            return ((r.G(torch.randn(64, r.cfg.model.z_dim)) + 1) / 2 - x[0]).abs().mean().item()

    before = err()
    first = r.train_step({"image": x}, opt)
    for _ in range(150):
        last = r.train_step({"image": x}, opt)
    after = err()                                              # G's samples move towards the real image
    assert after < 0.7 * before, (before, after)
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(last) and first["d_loss"] > 0


def test_collapse_warning(capsys):
    r = GANRecipe(_cfg(arch="mlp", hidden=16))
    for _ in range(600):
        r._watch(0.999, 0.001)
    assert "won completely" in capsys.readouterr().err


TINY = ["--set", "g_width=8", "--set", "d_width=8", "--set", "eval_every=0", "--set", "sample_every=0",
        "--set", "ckpt_every=0", "--set", "batch_size=16", "--quiet"]


@pytest.fixture(scope="module")
def class_gan(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("gan") / "run"
    p = run_cli("train", "gan", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 6, "--out", run,
                "--set", "cond=\"class\"", *TINY)
    assert p.returncode == 0, p.stderr
    return run


def test_cli_class_gan_train_sample_eval(class_gan, tmp_path):
    rows = [json.loads(x) for x in (class_gan / "metrics.jsonl").read_text().splitlines()]
    assert any("d_real" in r for r in rows) and any("eval_d_real" in r for r in rows)
    assert (class_gan / "checkpoint" / "ema.safetensors").exists()       # the preset keeps an EMA of G
    p = run_cli("sample", class_gan, "--num", 5, "--label", 4, "--out", tmp_path / "s.npz")
    assert p.returncode == 0, p.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (5, 28, 28, 1) and z["labels"].tolist() == [4] * 5
    assert run_cli("sample", class_gan, "--num", 20, "--out", tmp_path / "s.png").returncode == 0
    assert_clean_error(run_cli("sample", class_gan, "--num", 2, "--label", 12, "--out", tmp_path / "x.png"),
                       "out of range", "0..9")
    assert_clean_error(run_cli("sample", class_gan, "--num", 2, "--prompt", "a 3", "--out", tmp_path / "x.png"),
                       "text-conditional")
    p = run_cli("eval", class_gan, "--num", 300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert "class_accuracy" in res["sample_quality"] and res["sample_quality"]["num_samples"] == 300


def test_cli_text_gan_on_shapes_and_bad_input(tmp_path, mnist_dir):
    run = tmp_path / "t"
    p = run_cli("train", "gan", "--data", "shapes", "--steps", 4, "--out", run, "--set", "cond=\"text\"",
                "--set", "num_train=256", "--set", "num_eval=64", *TINY)
    assert p.returncode == 0, p.stderr
    p = run_cli("sample", run, "--num", 4, "--prompt", "a large blue square", "--out", tmp_path / "t.npz")
    assert p.returncode == 0, p.stderr
    assert list(np.load(tmp_path / "t.npz")["prompts"]) == ["a large blue square"] * 4
    assert_clean_error(run_cli("sample", run, "--num", 2, "--prompt", "purple dog", "--out", tmp_path / "x.png"),
                       "no word this model knows", "circle")
    assert_clean_error(run_cli("sample", run, "--num", 2, "--label", 1, "--out", tmp_path / "x.png"),
                       "class-conditional")
    # an unconditional model refuses prompts; dcgan cannot make 40 px images
    p = run_cli("train", "gan", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2, "--out", tmp_path / "u",
                "--set", "arch=\"mlp\"", *TINY)
    assert p.returncode == 0, p.stderr
    assert_clean_error(run_cli("sample", tmp_path / "u", "--num", 2, "--prompt", "a 3", "--out", tmp_path / "x.png"),
                       "text-conditional")
    assert_clean_error(run_cli("train", "gan", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2,
                               "--out", tmp_path / "v", "--set", "image_size=40", *TINY), "28, 32 or 64")
    assert_clean_error(run_cli("train", "gan", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 2,
                               "--out", tmp_path / "w", "--set", "arch=\"mlp\"", "--set", "d_pool=true", *TINY),
                       "d_pool", "mlp")


# ---------------------------------------------------------------- text GAN
def test_gumbel_softmax_hard_is_one_hot_with_soft_gradient():
    from aigc.models.text_gan import gumbel_softmax

    logits = torch.randn(5, 7, 11, requires_grad=True)
    y = gumbel_softmax(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y.detach(), torch.nn.functional.one_hot(y.detach().argmax(-1), 11).float())
    (y * torch.randn_like(y)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0       # straight-through gradient
    soft = gumbel_softmax(logits.detach(), tau=1.0)
    assert torch.allclose(soft.sum(-1), torch.ones(5, 7)) and (soft > 0).all() and (soft < 1).all()


def test_gumbel_max_samples_follow_softmax():
    from aigc.models.text_gan import gumbel_softmax

    logits = torch.log(torch.tensor([0.6, 0.3, 0.1])).expand(20000, 3)
    y = gumbel_softmax(logits, hard=True, generator=torch.Generator().manual_seed(1))
    freq = y.mean(0)
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015)


def test_ngram_precision():
    from aigc.metrics.text import ngram_precision

    r = ngram_precision(["abcd", "zzzz"], "xxabcdxx", ns=(2,))
    assert r["ngram_precision_2"] == pytest.approx(3 / 6)


def test_cli_text_gan(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 80, encoding="utf-8")
    run = tmp_path / "tg"
    p = run_cli("train", "text-gan", "--data", "text", "--data-dir", corpus, "--steps", 5, "--out", run,
                "--set", "seq_len=16", "--set", "hidden=32", "--set", "batch_size=8", "--set", "eval_every=0",
                "--set", "sample_every=0", "--quiet")
    assert p.returncode == 0, p.stderr
    assert any("ngram_precision_3" in x for x in (run / "metrics.jsonl").read_text().splitlines())
    p = run_cli("sample", run, "--num", 3)
    assert p.returncode == 0, p.stderr
    p2 = run_cli("sample", run, "--num", 3)
    assert p.stdout == p2.stdout and p.stdout.strip()                      # seeded
    assert_clean_error(run_cli("sample", run, "--prompt", "the"), "--prompt does not apply")
    assert_clean_error(run_cli("train", "text-gan", "--data", "text", "--data-dir", corpus, "--steps", 1,
                               "--out", tmp_path / "x", "--set", "seq_len=10"), "multiple of 4")
    assert_clean_error(run_cli("train", "text-gan", "--data", "text", "--data-dir", corpus, "--steps", 1,
                               "--out", tmp_path / "y", "--set", "tokenizer=\"bpe\""), "char")
