"""The VAE: shapes and gradients, its estimators against an exactly computable likelihood, the
binarisation, and that it learns (beats the best model that ignores the latent) on real MNIST."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.data import binarize, fixed_binarization, load_mnist
from pyneuro.models import registry
from pyneuro.models.vae import VAE

TERMS = {"neg_elbo_nats", "recon_nats", "kl_nats"}


@pytest.mark.parametrize("variant,hidden", [("mlp", [64, 32]), ("conv", [32]), ("conv", [])])
def test_forward_backward_shapes_and_gradients(variant, hidden):
    torch.manual_seed(0)
    model = registry.get("vae").build(variant=variant, hidden=hidden, channels=[4, 8], latent_dim=5)
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    x = model.prepare(images, train=True)
    assert x.shape == (6, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 5)
    assert model.decode(torch.zeros(3, 2, 5)).shape == (3, 2, 784)
    loss, terms = model(x)
    assert loss.dim() == 0 and set(terms) == TERMS and all(t.dim() == 0 for t in terms.values())
    # Fresh weights give logits near 0: each pixel costs about log 2.
    assert terms["recon_nats"].item() == pytest.approx(784 * math.log(2), rel=0.05)
    assert terms["neg_elbo_nats"].item() == pytest.approx((terms["recon_nats"] + terms["kl_nats"]).item(), rel=1e-6)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"bad gradient in {name}"
    lw, recon, kl = model.log_weights(x, 7)
    assert lw.shape == (7, 6) and recon.shape == kl.shape == (6,)


def test_kl_warmup_scales_the_kl_in_training_only():
    torch.manual_seed(0)
    model = VAE(hidden=[16], latent_dim=3, kl_warmup_steps=4).double()  # fp64: loss - recon is exact enough
    x = model.prepare(torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8), train=False).double()
    weights = []
    for _ in range(6):
        torch.manual_seed(1)
        loss, terms = model(x)
        weights.append(((loss - terms["recon_nats"]) / terms["kl_nats"]).item())
    assert weights == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1], abs=1e-6)
    assert model.steps.item() == 6  # a buffer: checkpoints carry it
    model.eval()
    torch.manual_seed(1)
    loss, terms = model(x)
    assert loss.item() == pytest.approx(terms["neg_elbo_nats"].item()) and model.steps.item() == 6


def test_bad_hyper_parameters_name_the_argument():
    with pytest.raises(ValueError, match="variant.*'mlp', 'conv'.*'resnet'"):
        VAE(variant="resnet")
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(latent_dim=0)
    with pytest.raises(ValueError, match="channels"):
        VAE(variant="conv", channels=[8, 8, 8])
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        VAE(kl_warmup_steps=-1)


def test_binarisation_dynamic_and_fixed():
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    images[:, 0, 0], images[:, 0, 1] = 0, 255
    first, second = binarize(images), binarize(images)
    assert not torch.equal(first, second)  # redrawn each time
    assert (first[:, 0, 0] == 0).all() and (first[:, 0, 1] == 1).all()
    # Each pixel is on with probability intensity / 255: over 50 draws the frequencies deviate from
    # it by ~0.05 per pixel, ~0.0003 on average over all 50,176 (a 0.5 threshold would be off by 0.25).
    draws = torch.stack([binarize(images) for _ in range(50)]).mean(0)
    assert (draws - images / 255.0).abs().mean() < 0.07
    assert (draws.mean() - (images / 255.0).mean()).abs() < 0.002
    fixed = fixed_binarization(images)
    assert torch.equal(fixed, fixed_binarization(images)) and fixed.dtype == torch.float32
    assert not torch.equal(fixed, fixed_binarization(images, seed=5))
    with pytest.raises(TypeError, match="images: expected uint8"):
        binarize(images.float())


# -- the estimators against the exact likelihood ---------------------------------------------------
# A 1-D latent: log p(x) = log ∫ p(x|z) p(z) dz, the exact ELBO and the exact KL are integrals over a
# line, computed by quadrature on a fine grid (two resolutions must agree, so the reference is exact
# to far below the tolerances). The images are drawn from the model itself, so the posterior is
# narrow (784 pixels pin z down) while the untrained encoder's q is wide: the bounds have a real gap.
def _tiny_model():
    torch.manual_seed(3)
    model = VAE(latent_dim=1, hidden=[8], iw_batch=2).double().eval()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(3.0)
        z0 = torch.tensor([[-1.0], [0.3], [1.2]], dtype=torch.float64)
        x = torch.bernoulli(model.decode(z0).sigmoid(), generator=torch.Generator().manual_seed(0))
    return model, x


@torch.no_grad()
def _quadrature(model, x, h):
    """Exact log p(x), ELBO and KL(q || p(z)) per image, trapezoid rule on [-8, 8] with step h (the
    prior and q put less than 1e-12 of their mass outside)."""
    z = torch.arange(-8.0, 8.0 + h / 2, h, dtype=torch.float64)[:, None]
    log_prior = -0.5 * (z[:, 0] ** 2 + math.log(2 * math.pi))
    mu, logvar = model.encode(x.reshape(-1, 1, 28, 28))
    out = []
    for i in range(len(x)):
        log_lik = torch.cat([-model.recon_nats(model.decode(part), x[i:i + 1].reshape(1, 784)) for part in z.split(4000)])
        log_joint = log_lik + log_prior
        log_q = -0.5 * ((z[:, 0] - mu[i, 0]) ** 2 / logvar[i, 0].exp() + logvar[i, 0] + math.log(2 * math.pi))
        q = log_q.exp() * h
        out.append(((log_joint.logsumexp(0) + math.log(h)).item(), (q * (log_joint - log_q)).sum().item(),
                    (q * (log_q - log_prior)).sum().item()))
    return torch.tensor(out, dtype=torch.float64)  # (images, [log p(x), ELBO, KL])


@pytest.fixture(scope="module")
def exact_case():
    model, x = _tiny_model()
    exact = _quadrature(model, x, 1e-3)
    # The ReLU decoder's kinks make the rule second order: halving h cuts the error 4x, so the
    # h=1e-3 figures are within ~1e-6 of the integrals when they agree with h=2e-3 to 1e-5.
    assert torch.allclose(exact, _quadrature(model, x, 2e-3), atol=1e-5, rtol=0), "quadrature not converged"
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        parts = [model.log_weights(x.reshape(-1, 1, 28, 28), 20_000, gen) for _ in range(5)]
    lw = torch.cat([p[0] for p in parts])  # (100_000, images)
    return model, x, exact, lw, parts[0][2]


@pytest.mark.slow
def test_elbo_and_kl_match_the_exact_integrals(exact_case):
    model, x, exact, lw, kl = exact_case
    log_px, elbo, exact_kl = exact.T
    assert (elbo < log_px - 1.0).all(), "the case has no real gap between the ELBO and log p(x)"
    assert torch.allclose(kl, exact_kl, rtol=1e-7, atol=1e-9)  # closed form vs the integral
    # The one-sample ELBO estimator is unbiased: its mean over 100k samples is the exact ELBO
    # within 4 standard errors.
    mean, se = lw.mean(0), lw.std(0) / math.sqrt(len(lw))
    assert ((mean - elbo).abs() < 4 * se).all(), (mean - elbo, se)


@pytest.mark.slow
def test_importance_weighted_bound_tightens_to_log_px(exact_case):
    model, x, exact, lw, _ = exact_case
    log_px = exact[:, 0]
    # E[IW_k] from disjoint groups of k samples: rises with k towards log p(x), never above it
    # beyond the sampling error of the group mean.
    gaps, errors = {}, {}
    for k in (1, 10, 100, 1000, 10_000):
        groups = lw[: len(lw) // k * k].reshape(-1, k, len(x))
        estimates = groups.logsumexp(1) - math.log(k)  # one IW_k estimate per group
        gaps[k] = log_px - estimates.mean(0)
        errors[k] = estimates.std(0) / math.sqrt(len(estimates))
    assert (gaps[1] > 20).all(), gaps  # q is far from the posterior: a real test
    assert (gaps[10] < gaps[1] / 5).all() and (gaps[100] < gaps[10]).all(), gaps
    for k in (1000, 10_000):
        assert ((gaps[k] > -4 * errors[k]) & (gaps[k] < 0.1)).all(), (k, gaps[k], errors[k])
    # The mean importance weight is an unbiased estimate of p(x) itself.
    assert torch.allclose(lw.logsumexp(0) - math.log(len(lw)), log_px, atol=0.02)


@pytest.mark.slow
def test_evaluate_reports_the_exact_figures(exact_case):
    model, x, exact, lw, _ = exact_case
    images = (x.reshape(-1, 28, 28) * 255).to(torch.uint8)  # 0/255: every binarisation gives x back
    model.iw_samples = 20_000
    res = model.evaluate(images, torch.zeros(len(x), dtype=torch.long))
    log_px, elbo, kl = exact.mean(0).tolist()
    assert res["iw_nll_nats"] == pytest.approx(-log_px, abs=0.05)
    assert res["kl_nats"] == pytest.approx(kl, rel=1e-6)
    # The reconstruction term is a 20,000-sample mean: within 4 of its standard errors (the spread
    # of log p(x|z) under q is that of the log weights less the log q / log p(z) parts, bounded by it).
    se = (lw.var(0) / 20_000).sum().sqrt().item() / len(x)
    assert res["neg_elbo_nats"] == pytest.approx(-elbo, abs=4 * se)
    assert res["recon_nats"] + res["kl_nats"] == pytest.approx(res["neg_elbo_nats"])
    assert res["iw_nll_nats"] < res["neg_elbo_nats"] - 1.0 and res["iw_samples"] == 20_000


# -- learning ---------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    # Small GEMMs: a second thread gains little, and on a shared machine its barrier stalls each step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_vae_learns_mnist_subset(real_mnist, one_thread):
    """600 steps on 5,000 images must take the test -ELBO from ~543 nats (784 log 2) to well below
    the best model that ignores the latent (independent pixels at their training means, ~206 nats
    on MNIST): a decoder that does not use z, or an encoder cut off, cannot get there."""
    torch.manual_seed(0)
    train, _ = load_mnist(split="train")
    test, _ = load_mnist(split="test")
    train, test = train[:5000], test[:1000]
    model = VAE(hidden=[256], latent_dim=16)
    x_test = model.prepare(test, train=False)
    p = (train.double() / 255).mean(0).clamp(1e-4, 1 - 1e-4).reshape(1, 784)
    bits = x_test.reshape(-1, 784).double()
    independent = -(bits * p.log() + (1 - bits) * (1 - p).log()).sum(-1).mean().item()

    def test_neg_elbo():
        model.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            value = model(x_test)[1]["neg_elbo_nats"].item()
        model.train()
        return value

    before = test_neg_elbo()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        loss, _ = model(model.prepare(train[torch.randint(0, len(train), (100,), generator=gen)], train=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = test_neg_elbo()
    print(f"-ELBO before {before:.1f}, after {after:.1f}, independent pixels {independent:.1f} nats")
    assert before == pytest.approx(784 * math.log(2), rel=0.02)
    assert 190 < independent < 225
    assert after < independent - 40, f"-ELBO {after:.1f} nats after training (independent pixels: {independent:.1f})"
