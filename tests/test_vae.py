"""pythae-style model tests: builds, a train step changes the weights, an eval step does not,
save -> load gives the same outputs; plus the maths: analytic KL and the IWAE bound."""

import pytest
import torch

from aigc.config import TrainConfig
from aigc.io.checkpoint import flat_state, load_flat_state
from aigc.metrics.likelihood import iwae_nll, log_mean_exp
from aigc.models.vae import VAE, VAEConfig
from aigc.train import Optimizers


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64)])
def test_builds_and_shapes(arch, shape):
    m = VAE(VAEConfig(arch=arch, z_dim=4, width=4, hidden=16), shape)
    x = torch.rand(2, *shape)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (2, 4)
    assert m.decode(mu).shape == (2, *shape)
    assert m.sample(3).shape == (3, *shape)
    assert m.interpolate(x[:1], x[1:], steps=5).shape == (5, *shape)


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_train_step_changes_eval_step_does_not():
    torch.manual_seed(0)
    m = VAE(VAEConfig(arch="conv", z_dim=4, width=4), (1, 28, 28))
    x = torch.rand(8, 1, 28, 28)
    before = _snapshot(m)
    with torch.no_grad():
        m.eval()
        m.loss(x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.train()
    opt = Optimizers({"model": list(m.parameters())}, TrainConfig(lr=1e-3), torch.device("cpu"))
    opt.update("model", m.loss(x)["loss"])
    changed = [k for k, v in m.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) == len(before)                         # every tensor received a gradient step


def test_save_load_same_outputs():
    torch.manual_seed(0)
    a = VAE(VAEConfig(arch="mlp", z_dim=4, hidden=16), (1, 28, 28))
    b = VAE(VAEConfig(arch="mlp", z_dim=4, hidden=16), (1, 28, 28))
    from safetensors.torch import load, save

    load_flat_state({"vae": b}, load(save(flat_state({"vae": a}))), "test")
    z = torch.randn(5, 4)
    assert torch.equal(a.decode(z), b.decode(z))


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.3, -0.7, 0.1]])
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(400000, 3)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    mc = (log_q - log_p).mean()
    assert torch.allclose(VAE.kl(mu, logvar), mc, atol=0.02)


def test_iwae_never_looser_than_elbo():
    torch.manual_seed(0)
    m = VAE(VAEConfig(arch="mlp", z_dim=4, hidden=32), (1, 28, 28)).eval()
    x = (torch.rand(16, 1, 28, 28) > 0.7).float()
    with torch.no_grad():
        nelbo = torch.stack([m.loss(x)["nelbo"] for _ in range(50)]).mean().item()
        r1 = iwae_nll(m.log_weights, [x], k=1)
        r64 = iwae_nll(m.log_weights, [x], k=64, chunk=16)
    assert abs(r1["nll_iwae"] - nelbo) < 0.02 * nelbo                # k = 1 is the ELBO
    assert r64["nll_iwae"] <= nelbo + 1e-6                           # IWAE NLL <= -ELBO
    assert r64["nll_iwae"] <= r1["nll_iwae"]


def test_log_mean_exp_stable():
    x = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0]])
    assert torch.allclose(log_mean_exp(x, 1), torch.tensor([1000.0, -1000.0]))
