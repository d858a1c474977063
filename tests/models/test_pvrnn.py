"""PV-RNN: shapes and gradients, the adaptive vectors' own (lazy Adam) updates, the Gaussian KL,
named errors, learning on real digits beyond what a model ignoring its latents can reach, error
regression on held-out digits, completion end to end, and the generative training path (trainer,
eval.json with completion_acc/blank_half_acc, pictures)."""
from __future__ import annotations

import json

import pytest
import torch

from pyneuro.data import load_mnist
from pyneuro.models import pvrnn as pv
from pyneuro.models import registry
from pyneuro.train import loop
from pyneuro.train.config import resolve

TINY = dict(d_sizes=[8, 6], taus=[2.0, 4.0], z_sizes=[2, 1], init_sizes=[2, 3], meta_prior=[0.1, 0.1],
            sequences=12, er_steps=3)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n, seed=0):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_forward_backward_shapes_gradients_and_adaptive_rows():
    torch.manual_seed(0)
    model = pv.PVRNN(**TINY).train()
    with torch.no_grad():  # posteriors away from the (zero-initialised) prior: the KL has a gradient
        model.adaptive.normal_(0, 0.5)
    index = torch.tensor([3, 7, 0, 11])
    before = model.adaptive.clone()
    x, idx = model.prepare(_images(4), train=True, index=index, labels=torch.tensor([1, 2, 3, 4]))
    assert x.shape == (4, 28, 28) and 0 <= x.min() and x.max() <= 1
    loss, terms = model((x, idx))
    assert loss.dim() == 0 and set(terms) == {"neg_elbo_nats", "recon_nats", "kl_nats", "kl1_nats", "kl2_nats"}
    assert terms["kl_nats"].item() == pytest.approx(terms["kl1_nats"].item() + terms["kl2_nats"].item(), rel=1e-5)
    # The first step's loss: the posterior is N(0, 1) noise around tanh(0), KL from a near-N(0,1) prior.
    assert 400 < terms["recon_nats"].item() < 700
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # Backward moved exactly the batch's rows of the adaptive table, one Adam step each.
    moved = (model.adaptive != before).any(-1)
    assert moved.nonzero().flatten().tolist() == sorted(index.tolist())
    assert model.adaptive_updates[index].tolist() == [1] * 4 and model.adaptive_updates.sum() == 4
    step = (model.adaptive - before)[index]
    assert step.abs().max() <= model.a_lr * 1.0001  # Adam's first step: at most lr per entry
    assert model.sequence_labels[index].tolist() == [1, 2, 3, 4]

    out = model.unroll(model._posterior(model.adaptive[:2]), steps=28)
    assert out["logits"].shape == (2, 28, 28) and out["kl_steps"].shape == (2, 28, 2)
    assert out["kl_init"].shape == (2, 2) and [d.shape for d in out["d"]] == [(2, 28, 8), (2, 28, 6)]
    assert model.generate(n=3).shape == (3, 28, 28)
    assert model.generate(index=torch.tensor([1, 2])).shape == (2, 28, 28)


def test_unroll_returns_the_prior_each_step_was_judged_by(tmp_path):
    torch.manual_seed(0)
    model = pv.PVRNN(**TINY).eval()
    with torch.no_grad():
        model.adaptive.normal_(0, 0.5)
    posterior = model._posterior(model.adaptive[:3])
    out = model.unroll(posterior, steps=28, sample=False)
    assert [tuple(m.shape) for m, _ in out["prior"]] == [(3, 28, 2), (3, 28, 1)]
    # The returned prior gives back the KL the unroll computed against it, step by step.
    q = model._split(posterior[1], model.z_sizes)
    for l, ((mu_p, ls_p), (mu_q, ls_q)) in enumerate(zip(out["prior"], q)):
        torch.testing.assert_close(pv._gaussian_kl(mu_q, ls_q, mu_p, ls_p).sum(-1), out["kl_steps"][..., l])
    # Layer 1's prior at step 0 comes from its initial state alone.
    d0 = torch.tanh(model.init_states[0](model._split(posterior[0], model.init_sizes)[0][0]))
    mu, ls = model.priors[0](d0).chunk(2, -1)
    torch.testing.assert_close(out["prior"][0][0][:, 0], torch.tanh(mu))
    torch.testing.assert_close(out["prior"][0][1][:, 0], ls)

    from pyneuro.viz.pvrnn import prior_posterior

    path = prior_posterior(model, _images(5), torch.arange(5), tmp_path / "pp.png", count=2)
    import matplotlib.image as mpimg

    assert mpimg.imread(path).shape[0] > 200
    with pytest.raises(ValueError, match="images"):
        prior_posterior(model, _images(1), torch.arange(1), tmp_path / "pp.png", count=2)


def test_eval_mode_leaves_the_table_alone_and_meta_prior_weights_the_kl():
    torch.manual_seed(0)
    model = pv.PVRNN(**TINY).eval()
    batch = model.prepare(_images(3), train=True, index=torch.tensor([0, 1, 2]))
    before = model.adaptive.clone()
    torch.manual_seed(5)
    loss, terms = model(batch)
    loss.backward()
    assert torch.equal(model.adaptive, before)
    torch.manual_seed(5)
    out = model.unroll(model._posterior(model.adaptive[:3]))
    kl = out["kl_init"] + out["kl_steps"].sum(1)
    assert loss.item() == pytest.approx(terms["recon_nats"].item() + 0.1 * kl.sum(-1).mean().item(), rel=1e-5)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, ls_q, mu_p, ls_p = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, ls_q.exp()),
                                                 torch.distributions.Normal(mu_p, ls_p.exp()))
    torch.testing.assert_close(pv._gaussian_kl(mu_q, ls_q, mu_p, ls_p), expected)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="taus"):
        pv.PVRNN(**{**TINY, "taus": [2.0]})
    with pytest.raises(ValueError, match="meta_prior"):
        pv.PVRNN(**{**TINY, "meta_prior": [0.1, -1.0]})
    with pytest.raises(ValueError, match="seen_rows"):
        pv.PVRNN(**{**TINY, "seen_rows": 28})
    model = pv.PVRNN(**TINY)
    with pytest.raises(ValueError, match="index"):
        model.prepare(_images(2), train=True)
    with pytest.raises(ValueError, match="sequences"):
        model.prepare(_images(2), train=True, index=torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="window"):
        model.error_regression(torch.rand(2, 28, 28), seen=5, window=6)
    with pytest.raises(ValueError, match="cnn_checkpoint"):
        pv.classifier("/nonexistent/cnn-run", "cpu")


# -- learning and error regression on real digits -------------------------------------------------
LEARN = dict(d_sizes=[48, 24], taus=[2.0, 6.0], z_sizes=[3, 2], init_sizes=[4, 8], meta_prior=[0.02, 0.02],
             a_lr=0.2, er_steps=40, er_lr=0.1)


@pytest.fixture(scope="module")
def learned(real_mnist):
    """A small PV-RNN trained 40 epochs on 300 digits (~20 s), and the independent-pixel baseline."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train, _ = load_mnist(split="train")
        train = train[:300]
        model = pv.PVRNN(sequences=300, **LEARN).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        for _ in range(40):
            order = torch.randperm(300, generator=gen)
            for i in range(6):
                idx = order[i * 50:(i + 1) * 50]
                loss, terms = model(model.prepare(train[idx], train=True, index=idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        # The best model that ignores every latent: independent pixels at their training means.
        x = train.double() / 255
        p = x.mean(0).clamp(1e-4, 1 - 1e-4)
        independent = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2)).mean().item()
        with torch.no_grad():
            torch.manual_seed(1)
            _, terms = model(model.prepare(train, train=True, index=torch.arange(300)))
        yield model, {k: v.item() for k, v in terms.items()}, independent
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_pvrnn_learns_beyond_what_ignoring_the_latents_allows(learned):
    """Recon starts at ~543 nats; a model whose adaptive vectors do not reach the network (or do
    not learn) can at best draw the mean digit (~200 nats here). The trained one must go 15% below."""
    _, terms, independent = learned
    assert terms["recon_nats"] < 0.85 * independent, (terms, independent)
    assert terms["kl_nats"] > 1.0  # the posteriors carry information


@pytest.mark.slow
def test_error_regression_lowers_the_free_energy_on_held_out_digits(learned, one_thread):
    model, _, _ = learned
    test, _ = load_mnist(split="test")
    x = test[:50].float() / 255
    start = model.error_regression(x, seen=14, steps=0)
    inferred = model.error_regression(x, seen=14)
    with torch.no_grad():
        fe_start = model.free_energy(start, x, 0, 14, torch.Generator().manual_seed(3))[0].mean().item()
        fe_after = model.free_energy(inferred, x, 0, 14, torch.Generator().manual_seed(3))[0].mean().item()
    assert fe_after < 0.8 * fe_start, (fe_start, fe_after)
    # The weights stayed frozen and still train afterwards.
    assert all(p.requires_grad for p in model.parameters())
    # A window: the adaptive vectors before it stay at their initial values; those inside move.
    windowed = model.error_regression(x, seen=14, window=4, steps=5, init=inferred)
    torch.testing.assert_close(windowed[1][:, :10], inferred[1][:, :10])
    torch.testing.assert_close(windowed[0], inferred[0])
    assert not torch.allclose(windowed[1][:, 10:], inferred[1][:, 10:])


@pytest.mark.slow
def test_completion_end_to_end(learned, one_thread, monkeypatch):
    """complete(): the seen rows as given, the rest generated; evaluate(): both accuracies from the
    same (here stubbed) cnn on a fixed subset, recorded in the figures."""
    model, _, _ = learned
    test, labels = load_mnist(split="test")
    done = model.complete(test[:6])
    assert done.shape == (6, 28, 28) and 0 <= done.min() and done.max() <= 1
    torch.testing.assert_close(done[:, :14], test[:6, :14].float() / 255)
    assert done[:, 14:].sum() > 0 and not torch.allclose(done[:, 14:], test[:6, 14:].float() / 255)

    seen_by_cnn = []

    class Oracle(torch.nn.Module):  # calls every image with ink in its lower half a 1, else a 0
        def forward(self, x):  # the cnn's (normalised) image view: the background is its minimum
            seen_by_cnn.append(x.shape[0])
            x = x.reshape(len(x), 28, 28)
            lower = x[:, 14:].amax((1, 2)) > x.amin((1, 2))
            return torch.nn.functional.one_hot(lower.long(), 10).float()

    monkeypatch.setattr(pv, "classifier", lambda *a, **k: (Oracle(), {"cnn": "stub", "cnn_trained_here": False}))
    monkeypatch.setattr(model, "completion_subset", 20)
    monkeypatch.setattr(model, "eval_batch", 8)
    monkeypatch.setattr(model, "er_steps", 5)
    figures = model.evaluate(test[:100], torch.ones(100, dtype=torch.int64))
    assert figures["completion_subset"] == 20 and figures["seen_rows"] == 14 and figures["cnn"] == "stub"
    # Completions have ink below the seen rows (class 1 for the stub); blank halves never do.
    assert figures["completion_acc"] == 1.0 and figures["blank_half_acc"] == 0.0
    assert sum(seen_by_cnn) == 40
    assert model.completion_indices(100).tolist() == model.completion_indices(100).tolist()


# -- the training path ------------------------------------------------------------------------------
@pytest.fixture
def tiny_data(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from tiny_mnist import write_tiny_mnist

    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.mark.slow
def test_generative_path_through_trainer_and_eval(tiny_data, tmp_path, one_thread):
    """A tiny cnn run, then pvrnn through the trainer on the tiny MNIST with that cnn: the batches
    carry their indices (every training sequence's adaptive vectors trained), eval.json holds the
    test terms and both accuracies, the pictures are drawn, and `evaluate_run` reproduces them."""
    import io

    data = json.dumps(str(tiny_data))
    common = ["train.threads=1", 'train.device="cpu"', f"train.data_dir={data}", "train.batch_size=50"]
    cnn_run = tmp_path / "cnn"
    loop.train(resolve("cnn", None, ["model.channels=[4,8]", "model.hidden=16", "train.epochs=1", *common]),
               cnn_run, stream=io.StringIO())
    settings = resolve("pvrnn", None, [
        "model.d_sizes=[8,6]", "model.z_sizes=[2,1]", "model.init_sizes=[2,2]", "model.sequences=300",
        "model.er_steps=2", "model.completion_subset=30", f"model.cnn_checkpoint={json.dumps(str(cnn_run))}",
        "train.epochs=2", *common])
    run = tmp_path / "pvrnn"
    stream = io.StringIO()
    summary = loop.train(settings, run, stream=stream)
    saved = json.loads((run / "eval.json").read_text())
    assert saved["task"] == "generate" and saved["n_test"] == 60
    for key in ("completion_acc", "blank_half_acc"):
        assert 0.0 <= saved[key] <= 1.0 and summary[key] == saved[key]
    assert saved["completion_subset"] == 30 and saved["cnn"].endswith("last.pt") and not saved["cnn_trained_here"]
    assert set(saved["test_terms"]) == {"neg_elbo_nats", "recon_nats", "kl_nats", "kl1_nats", "kl2_nats"}
    assert 0 < saved["test_terms"]["recon_nats"] < 1000
    assert {"generations.png", "completions.png"} <= {p.split("/")[-1] for p in summary["plots"]}
    state = torch.load(run / "last.pt", weights_only=False)["model_state"]
    assert (state["adaptive_updates"] == 2).all()  # each of the 300 (train+val) sequences, once per epoch
    assert (state["sequence_labels"] >= 0).all()
    again = loop.evaluate_run(run, stream=io.StringIO())
    assert again["completion_acc"] == saved["completion_acc"]
    assert again["test_terms"] == pytest.approx(saved["test_terms"])
