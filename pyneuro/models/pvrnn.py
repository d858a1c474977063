"""PV-RNN (Ahmadi & Tani 2019, "A novel predictive-coding-inspired variational RNN model for online
prediction and recognition", Neural Computation) on MNIST digits read as sequences of 28 rows.

Structure: a hierarchy of MTRNN layers, the lowest first, each of leaky-integrator d-units with its
own time constant τ_l and a stochastic latent z_{l,t} per time step. Within a time step the layers
update top-down (layer l hears layer l+1's new activity), with the leaky-sequence equations

    u_{l,t} = (1 - 1/τ_l) u_{l,t-1} + (1/τ_l) (W_z z_{l,t} + W_top d_{l+1,t} + W_d d_{l,t-1} + b),
    d_{l,t} = tanh(u_{l,t}),

and the lowest layer predicts the row: Bernoulli logits x̂_t = W_out d_{1,t} + b_out (28 pixels).

- The prior p(z_{l,t} | d_{l,t-1}) is Gaussian with mean tanh(W d_{l,t-1} + b) and log-sigma
  W' d_{l,t-1} + b' (the deterministic state's prediction of its own noise).
- The posterior q(z_{l,t} | A) comes from the adaptive vectors A: mean tanh(A^μ_{l,t}), log-sigma
  A^σ_{l,t}, one set per training sequence (a table indexed by the image's position in the
  training split, which the trainer passes to ``prepare`` as ``index``).
- The initial state is learned per sequence: a latent z_{l,0} per layer with a standard normal
  prior and its own adaptive vector, mapped to u_{l,0}. Generation from the prior draws z_0 from
  N(0, I) (or takes a training sequence's posterior mean) and then every z_t from the prior.

Loss (free energy, nats per image): reconstruction -log p(x|d), the Bernoulli cross-entropy of the
28x28 pixels (training: against the grey levels, i.e. the expected cost over binarisations; test:
against the fixed binarisation, as the VAE), plus Σ_l w_l KL(q_l || p_l) over the layer's z_0..z_28
with the meta-prior w_l per layer. ``neg_elbo_nats`` is recon + the unweighted KL (w = 1): a bound on
-log p(x) for whatever q it is computed with.

Recognition by error regression: with the weights frozen, the adaptive vectors of unseen digits
start at the training table's mean and take ``er_steps`` Adam steps on the free energy over a
window of the rows seen so far. The test loss is this free energy after error regression on all 28
rows. Completion (``evaluate``): error regression on the first ``seen_rows`` rows, then the rest is
generated from the prior means; the project's cnn classifies the completed digits
(``completion_acc``) and the half digits with the rest left blank (``blank_half_acc``).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as pdata
from .registry import register

ROWS = 28
ER_SEED = 977          # the posterior noise of error regression: the same on every evaluation
COMPLETION_SEED = 31   # which test digits make up the completion subset


def _gaussian_kl(mu_q, logsig_q, mu_p, logsig_p):
    """KL(N(mu_q, σ_q²) || N(mu_p, σ_p²)) per element."""
    return (logsig_p - logsig_q + 0.5 * ((2 * logsig_q).exp() + (mu_q - mu_p).square()) * (-2 * logsig_p).exp()
            - 0.5)


class PVRNN(nn.Module):
    def __init__(self, d_sizes=(128, 64), taus=(2.0, 8.0), z_sizes=(4, 2), init_sizes=(8, 16),
                 meta_prior=(0.05, 0.05), sequences=60000, a_lr=0.2, er_steps=50, er_lr=0.1,
                 seen_rows=14, completion_subset=2000, cnn_checkpoint="", cnn_min_acc=0.985, eval_batch=1000):
        super().__init__()
        d_sizes, taus, z_sizes, init_sizes, meta_prior = map(list, (d_sizes, taus, z_sizes, init_sizes, meta_prior))
        n = len(d_sizes)
        if n < 1:
            raise ValueError("d_sizes: at least one layer is needed")
        for name, value in (("taus", taus), ("z_sizes", z_sizes), ("init_sizes", init_sizes),
                            ("meta_prior", meta_prior)):
            if len(value) != n:
                raise ValueError(f"{name}: one entry per layer ({n}, as d_sizes), got {value}")
        if any(t < 1 for t in taus):
            raise ValueError(f"taus: time constants must be >= 1, got {taus}")
        if any(w < 0 for w in meta_prior):
            raise ValueError(f"meta_prior: weights must be >= 0, got {meta_prior}")
        if min(d_sizes + z_sizes + init_sizes) < 1:
            raise ValueError("d_sizes, z_sizes, init_sizes: every size must be at least 1")
        if sequences < 1:
            raise ValueError(f"sequences: the number of training sequences must be >= 1, got {sequences}")
        if not 1 <= seen_rows < ROWS:
            raise ValueError(f"seen_rows: must be in [1, {ROWS - 1}], got {seen_rows}")
        if er_steps < 0 or er_lr <= 0 or a_lr <= 0:
            raise ValueError(f"er_steps >= 0, er_lr > 0 and a_lr > 0 required, got {er_steps}, {er_lr}, {a_lr}")
        self.d_sizes, self.z_sizes, self.init_sizes = d_sizes, z_sizes, init_sizes
        self.register_buffer("taus", torch.tensor(taus, dtype=torch.float32))
        self.register_buffer("meta_prior", torch.tensor(meta_prior, dtype=torch.float32))
        self.sequences, self.er_steps, self.er_lr, self.seen_rows = sequences, er_steps, er_lr, seen_rows
        self.completion_subset, self.cnn_checkpoint, self.cnn_min_acc = completion_subset, cnn_checkpoint, cnn_min_acc
        self.eval_batch = eval_batch
        # Layer l's input at step t: its z and (below the top) the new activity of the layer above.
        self.inputs = nn.ModuleList(
            nn.Linear(z_sizes[l] + (d_sizes[l + 1] if l + 1 < n else 0), d_sizes[l]) for l in range(n))
        self.recurrent = nn.ModuleList(nn.Linear(d, d, bias=False) for d in d_sizes)
        self.priors = nn.ModuleList(nn.Linear(d, 2 * z) for d, z in zip(d_sizes, z_sizes))
        self.init_states = nn.ModuleList(nn.Linear(i, d) for i, d in zip(init_sizes, d_sizes))
        self.readout = nn.Linear(d_sizes[0], ROWS)
        for lin in self.priors:  # start with the prior near N(0, 1): no early KL spikes
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        # The adaptive vectors A: (μ, log σ) of z_0 and of every z_t, per training sequence, one row
        # each. They are buffers that take their own lazy Adam steps (only the batch's rows, see
        # _adam_rows) inside backward: the trainer's dense AdamW would sweep all 60,000 rows, and
        # their moments, at every step (0.8 s a step here) for the 128 rows that have a gradient.
        self.a_lr = a_lr
        self._init_width, self._step_width = 2 * sum(init_sizes), 2 * sum(z_sizes)
        width = self._init_width + ROWS * self._step_width
        self.register_buffer("adaptive", torch.zeros(sequences, width))
        self.register_buffer("adaptive_moments", torch.zeros(2, sequences, width))
        self.register_buffer("adaptive_updates", torch.zeros(sequences, dtype=torch.int64))
        # Each training sequence's label when the trainer gave it (-1: never seen), for pictures.
        self.register_buffer("sequence_labels", torch.full((sequences,), -1, dtype=torch.int64))

    # -- the generative-model interface ---------------------------------------------------------
    def prepare(self, images: torch.Tensor, train: bool, index: torch.Tensor | None = None,
                labels: torch.Tensor | None = None):
        """uint8 (B, 28, 28) -> training: (grey levels in [0, 1], index), the index selecting each
        sequence's adaptive vectors; evaluation: the fixed binarisation (B, 28, 28), whose adaptive
        vectors forward infers by error regression."""
        if not train:
            return pdata.fixed_binarization(images).to(self.readout.weight.dtype)
        if index is None:
            raise ValueError("index: PV-RNN's training batches need each image's position in the training split "
                             "(its adaptive vectors)")
        index = index.to(self.adaptive.device)
        if len(index) and int(index.max()) >= self.sequences:
            raise ValueError(f"index: training image {int(index.max())} but the model holds adaptive vectors for "
                             f"{self.sequences} sequences; set the hyper-parameter sequences to the training-set size")
        if labels is not None:
            self.sequence_labels[index] = labels.to(self.sequence_labels.device)
        return images.to(self.readout.weight.dtype) / 255.0, index

    def forward(self, batch):
        """(loss, terms): the free energy of a training batch ``(x, index)`` with its own adaptive
        vectors, or of unseen digits ``x`` (B, 28, 28) after error regression on all their rows."""
        if isinstance(batch, (tuple, list)):
            x, index = batch
            rows = self.adaptive[index]
            if self.training and torch.is_grad_enabled():
                rows.requires_grad_(True)
                rows.register_hook(lambda grad: self._adam_rows(index, grad))
            posterior = self._posterior(rows)
        else:
            x = batch
            posterior = self.error_regression(x, ROWS)
        out = self.unroll(posterior, steps=ROWS)
        recon = F.binary_cross_entropy_with_logits(out["logits"], x, reduction="none").sum((1, 2))
        kl = out["kl_init"] + out["kl_steps"].sum(1)  # (B, layers)
        loss = recon + (kl * self.meta_prior).sum(-1)
        terms = {"neg_elbo_nats": (recon + kl.sum(-1)).mean(), "recon_nats": recon.mean(),
                 "kl_nats": kl.sum(-1).mean()}
        terms.update({f"kl{l + 1}_nats": kl[:, l].mean() for l in range(len(self.d_sizes))})
        return loss.mean(), terms

    ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8

    @torch.no_grad()
    def _adam_rows(self, index: torch.Tensor, grad: torch.Tensor) -> None:
        """One Adam step (lr a_lr, bias-corrected per row by the row's own count of updates) on the
        adaptive vectors of the sequences ``index`` (unique within a batch), given their gradient."""
        b1, b2 = self.ADAM_BETAS
        m, v = self.adaptive_moments[0, index], self.adaptive_moments[1, index]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = self.adaptive_updates[index] + 1
        correction1 = (1 - b1 ** t.double()).float().unsqueeze(-1)
        correction2 = (1 - b2 ** t.double()).float().unsqueeze(-1)
        step = self.a_lr * (m / correction1) / ((v / correction2).sqrt() + self.ADAM_EPS)
        self.adaptive[index] -= step
        self.adaptive_moments[0, index], self.adaptive_moments[1, index] = m, v
        self.adaptive_updates[index] = t

    def _posterior(self, rows: torch.Tensor):
        """(B, width) rows of the adaptive table -> (a_init (B, 2 Σ init_sizes), a_steps (B, 28, 2 Σ z_sizes))."""
        return rows[:, :self._init_width], rows[:, self._init_width:].unflatten(-1, (ROWS, self._step_width))

    @property
    def a_init(self) -> torch.Tensor:
        return self._posterior(self.adaptive)[0]

    @property
    def a_steps(self) -> torch.Tensor:
        return self._posterior(self.adaptive)[1]

    def typical_adaptive(self) -> torch.Tensor:
        """The mean adaptive vectors of the training sequences (those trained so far; zeros, the
        unit-Gaussian posterior, before any): error regression's starting point, label-free."""
        trained = self.adaptive_updates > 0
        return self.adaptive[trained].mean(0) if trained.any() else self.adaptive[0].new_zeros(self.adaptive.shape[1])

    # -- the network -----------------------------------------------------------------------------
    def _split(self, params: torch.Tensor, sizes: list[int]):
        """(..., 2 Σ sizes) -> per layer (mean through tanh, log-sigma)."""
        mu, logsig = params.chunk(2, -1)
        return list(zip(torch.tanh(mu).split(sizes, -1), logsig.split(sizes, -1)))

    def unroll(self, posterior=None, steps: int = ROWS, batch: int | None = None, sample: bool = True,
               z0_mean: bool = False, generator: torch.Generator | None = None) -> dict:
        """Run the network for ``steps`` rows. ``posterior`` = (a_init (B, 2 Σ init_sizes), a_steps
        (B, T_q, 2 Σ z_sizes)) or None: z_0 and z_1..z_{T_q} come from it and the rest from the prior
        (``sample``: a draw, else its mean; ``z0_mean`` with no posterior: z_0 = 0, the prior's mean).
        -> logits (B, steps, 28), kl_init (B, L), kl_steps (B, T_q, L), d (list of (B, steps, d_l)),
        prior (per layer: (mean, log σ), each (B, steps, z_l)): the prior every step's z was judged by."""
        n, device = len(self.d_sizes), self.readout.weight.device
        alpha = 1.0 / self.taus

        def noise(shape):
            return torch.randn(shape, generator=generator, device=device) if sample else torch.zeros(shape, device=device)

        if posterior is not None:
            a_init, a_steps = posterior
            batch, t_q = len(a_init), a_steps.shape[1]
            q_init = self._split(a_init, self.init_sizes)
            z0 = [mu + (noise(mu.shape) * ls.exp()) for mu, ls in q_init]
            kl_init = torch.stack([_gaussian_kl(mu, ls, torch.zeros_like(mu), torch.zeros_like(ls)).sum(-1)
                                   for mu, ls in q_init], -1)
            q_steps = self._split(a_steps, self.z_sizes)
        else:
            t_q = 0
            z0 = [torch.zeros(batch, s, device=device) if z0_mean else noise((batch, s)) for s in self.init_sizes]
            kl_init = torch.zeros(batch, n, device=device)
        u = [init(z) for init, z in zip(self.init_states, z0)]
        d = [torch.tanh(v) for v in u]
        logits, kls, traces = [], [], [[] for _ in range(n)]
        prior_mu, prior_logsig = [[] for _ in range(n)], [[] for _ in range(n)]
        for t in range(steps):
            kl_t = []
            new_d = [None] * n
            for l in reversed(range(n)):  # top-down: layer l hears layer l+1's new activity
                mu_p, logsig_p = self.priors[l](d[l]).chunk(2, -1)
                mu_p = torch.tanh(mu_p)
                prior_mu[l].append(mu_p)
                prior_logsig[l].append(logsig_p)
                if t < t_q:
                    mu_q, logsig_q = q_steps[l][0][:, t], q_steps[l][1][:, t]
                    z = mu_q + noise(mu_q.shape) * logsig_q.exp()
                    kl_t.append(_gaussian_kl(mu_q, logsig_q, mu_p, logsig_p).sum(-1))
                else:
                    z = mu_p + noise(mu_p.shape) * logsig_p.exp()
                inp = z if l + 1 == n else torch.cat([z, new_d[l + 1]], -1)
                u[l] = (1 - alpha[l]) * u[l] + alpha[l] * (self.inputs[l](inp) + self.recurrent[l](d[l]))
                new_d[l] = torch.tanh(u[l])
            d = new_d
            for l in range(n):
                traces[l].append(d[l])
            logits.append(self.readout(d[0]))
            if kl_t:
                kls.append(torch.stack(kl_t[::-1], -1))
        kl_steps = torch.stack(kls, 1) if kls else torch.zeros(batch, 0, n, device=device)
        return {"logits": torch.stack(logits, 1), "kl_init": kl_init, "kl_steps": kl_steps,
                "d": [torch.stack(tr, 1) for tr in traces],
                "prior": [(torch.stack(m, 1), torch.stack(ls, 1)) for m, ls in zip(prior_mu, prior_logsig)]}

    def free_energy(self, posterior, x: torch.Tensor, lo: int, hi: int, generator=None):
        """Per sequence: recon over rows [lo, hi) of x + Σ_l w_l KL over the latents of those rows
        (z_0 counts when lo == 0). -> (free energy (B,), recon (B,), kl (B, L))."""
        out = self.unroll(posterior, steps=hi, generator=generator)
        recon = F.binary_cross_entropy_with_logits(out["logits"][:, lo:hi], x[:, lo:hi], reduction="none").sum((1, 2))
        kl = out["kl_steps"][:, lo:hi].sum(1) + (out["kl_init"] if lo == 0 else 0)
        return recon + (kl * self.meta_prior).sum(-1), recon, kl

    def error_regression(self, x: torch.Tensor, seen: int, window: int | None = None, steps: int | None = None,
                         lr: float | None = None, init=None, seed: int = ER_SEED):
        """Infer the adaptive vectors of unseen digits x (B, 28, 28) in [0, 1] from their first
        ``seen`` rows, weights frozen: ``steps`` Adam steps (default er_steps, lr er_lr) on the free
        energy of the rows in the window [seen - window, seen) (default: all seen rows). Only the
        window's adaptive vectors (and z_0's when the window starts at row 0) move; those before it
        stay at ``init`` (default: the training table's mean). -> (a_init (B, ·), a_steps (B, seen, ·))."""
        steps = self.er_steps if steps is None else steps
        lr = self.er_lr if lr is None else lr
        window = seen if window is None else window
        if not 1 <= seen <= ROWS:
            raise ValueError(f"seen: must be in [1, {ROWS}], got {seen}")
        if not 1 <= window <= seen:
            raise ValueError(f"window: must be in [1, seen={seen}], got {window}")
        lo, B = seen - window, len(x)
        if init is None:
            init = self._posterior(self.typical_adaptive().expand(B, -1))
        a_init = init[0].detach().clone().requires_grad_(lo == 0)
        a_steps = init[1][:, :seen].detach()
        fixed, a_win = a_steps[:, :lo].clone(), a_steps[:, lo:].clone().requires_grad_(True)
        params = [a_win] + ([a_init] if lo == 0 else [])
        generator = torch.Generator(device=x.device).manual_seed(seed)
        frozen = [p for p in self.parameters() if p.requires_grad]
        for p in frozen:  # the weights stay as they are (and get no gradients)
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                opt = torch.optim.Adam(params, lr=lr)
                for _ in range(steps):
                    fe, _, _ = self.free_energy((a_init, torch.cat([fixed, a_win], 1)), x, lo, seen, generator)
                    opt.zero_grad(set_to_none=True)
                    fe.sum().backward()  # the sequences are independent: summing keeps each one's step size
                    opt.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return a_init.detach(), torch.cat([fixed, a_win.detach()], 1)

    @torch.no_grad()
    def complete(self, images: torch.Tensor, seen: int | None = None, **er) -> torch.Tensor:
        """Show the first ``seen`` rows of uint8 digits (B, 28, 28), infer their adaptive vectors by
        error regression and generate the rest from the prior means: the completed images as floats
        in [0, 1] (the seen rows as given, the rest the predicted pixel probabilities)."""
        seen = self.seen_rows if seen is None else seen
        x = images.to(self.readout.weight.device, self.readout.weight.dtype) / 255.0
        posterior = self.error_regression(x, seen, **er)
        generated = self.unroll(posterior, steps=ROWS, sample=False)["logits"].sigmoid()
        return torch.cat([x[:, :seen], generated[:, seen:]], 1)

    @torch.no_grad()
    def generate(self, n: int | None = None, index: torch.Tensor | None = None, sample: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel probabilities (B, 28, 28) generated from the prior: from z_0 ~ N(0, I) (``n``
        digits) or from the learned initial states of the training sequences ``index``; every
        later z_t drawn from the prior (``sample``) or its mean."""
        posterior = None
        if index is not None:
            a_init, a_steps = self._posterior(self.adaptive[index.to(self.adaptive.device)])
            a0 = a_steps[:, :0]
            mu, _ = a_init.chunk(2, -1)  # the initial state at its posterior mean: log-sigma -> -inf
            posterior = (torch.cat([mu, torch.full_like(mu, -30.0)], -1), a0)
        return self.unroll(posterior, steps=ROWS, batch=n, sample=sample, generator=generator)["logits"].sigmoid()

    # -- the test figures ------------------------------------------------------------------------
    def completion_indices(self, n_test: int) -> torch.Tensor:
        count = min(self.completion_subset, n_test) if self.completion_subset else n_test
        return torch.randperm(n_test, generator=torch.Generator().manual_seed(COMPLETION_SEED))[:count].sort().values

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, progress=None) -> dict:
        """completion_acc and blank_half_acc on a fixed subset of the test digits (see the module
        docstring), with the cnn that classified them."""
        was_training = self.training
        self.eval()
        cnn, cnn_info = classifier(self.cnn_checkpoint, self.readout.weight.device, self.cnn_min_acc)
        idx = self.completion_indices(len(images))
        imgs, labs = images[idx], labels[idx]
        device = self.readout.weight.device
        bar = progress(math.ceil(len(idx) / self.eval_batch)) if progress else None
        right = torch.zeros(2, dtype=torch.int64)
        seen = 0
        for start in range(0, len(idx), self.eval_batch):
            chunk, y = imgs[start:start + self.eval_batch].to(device), labs[start:start + self.eval_batch].to(device)
            done = self.complete(chunk)
            blank = chunk.float() / 255.0
            blank[:, self.seen_rows:] = 0
            right += torch.stack([(cnn_predict(cnn, done) == y).sum(), (cnn_predict(cnn, blank) == y).sum()]).cpu()
            seen += len(chunk)
            if bar:
                bar.update(len(chunk), lambda: {"completion_acc": right[0].item() / seen})
        if bar:
            bar.close()
        self.train(was_training)
        n = max(len(idx), 1)
        return {"completion_acc": right[0].item() / n, "blank_half_acc": right[1].item() / n,
                "completion_subset": len(idx), "seen_rows": self.seen_rows, "er_steps": self.er_steps,
                "er_lr": self.er_lr, **cnn_info}


# -- the classifier of the completions --------------------------------------------------------------
DEFAULT_CNN_RUN = Path("runs") / "cnn"
QUICK_CNN_RUN = Path("runs") / "cnn-quick-pvrnn"  # where the quick cnn trained here is kept for re-evaluations


def cnn_predict(cnn, images01: torch.Tensor) -> torch.Tensor:
    """Classes of float images in [0, 1] (B, 28, 28) by the project's cnn (its uint8 input path)."""
    from ..train.loop import model_input
    from . import registry

    spec = registry.get("cnn")
    uint8 = (images01.clamp(0, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        return cnn(model_input(spec, {}, uint8)).argmax(-1)


def _load_cnn(path: Path, device):
    from ..train.checkpoint import load_checkpoint
    from ..train.loop import build_model
    from . import registry

    state = load_checkpoint(path)
    if state["model"] != "cnn":
        raise ValueError(f"cnn_checkpoint: {path} holds a {state['model']} model, not a cnn")
    model = build_model(registry.get("cnn"), state["settings"]["hyper"], torch.device(device))
    model.load_state_dict(state["model_state"])
    return model.eval()


def classifier(checkpoint: str, device, min_acc: float = 0.985):
    """The cnn that classifies completions: from ``checkpoint`` (a cnn run folder or its last.pt),
    else runs/cnn/last.pt when there is one, else the quick one an earlier evaluation trained
    (runs/cnn-quick-pvrnn), else a quick one trained here into that folder (the cnn's "fast" preset,
    2 epochs on train+val) whose test accuracy must reach ``min_acc``.
    -> (model, info for eval.json)."""
    import json

    from ..train import config as tconfig
    from ..train.loop import train

    candidates = [Path(checkpoint)] if checkpoint else [DEFAULT_CNN_RUN, QUICK_CNN_RUN]
    for path in candidates:
        path = path if path.suffix == ".pt" else path / "last.pt"
        if path.exists():
            info = {"cnn": str(path), "cnn_trained_here": False}
            scores = path.parent / "eval.json"
            if scores.exists():
                info["cnn_test_acc"] = json.loads(scores.read_text())["test_acc"]
            return _load_cnn(path, device), info
    if checkpoint:
        raise ValueError(f"cnn_checkpoint: no cnn checkpoint at {checkpoint}")
    print(f"pvrnn: no trained cnn (hyper-parameter cnn_checkpoint empty, no {DEFAULT_CNN_RUN}/last.pt): training a "
          f"quick one (cnn preset 'fast', 2 epochs on train+val) into {QUICK_CNN_RUN} to classify the completions",
          file=sys.stderr)
    cfg = tconfig.read_config_file("config.json") if Path("config.json").exists() else None
    settings = tconfig.resolve("cnn", cfg, preset="fast", overrides=[f"train.device={torch.device(device).type}"])
    summary = train(settings, QUICK_CNN_RUN)
    if summary["test_acc"] < min_acc:
        raise RuntimeError(f"the quick cnn in {QUICK_CNN_RUN} reached test accuracy {summary['test_acc']:.4f} "
                           f"< cnn_min_acc={min_acc}")
    return _load_cnn(QUICK_CNN_RUN / "last.pt", device), {
        "cnn": f"trained here: {QUICK_CNN_RUN}/last.pt (cnn preset fast, 2 epochs on train+val)",
        "cnn_trained_here": True, "cnn_test_acc": summary["test_acc"]}


register("pvrnn", view="rows", task="generate", plots="pyneuro.viz.pvrnn:pvrnn_pictures",
         description="PV-RNN: MTRNN layers with per-step latents, adaptive vectors, error regression",
         defaults={"d_sizes": [128, 64], "taus": [2.0, 8.0], "z_sizes": [4, 2], "init_sizes": [8, 16],
                   "meta_prior": [0.05, 0.05], "sequences": 60000, "a_lr": 0.2, "er_steps": 50, "er_lr": 0.1,
                   "seen_rows": 14, "completion_subset": 2000, "cnn_checkpoint": "", "cnn_min_acc": 0.985,
                   "eval_batch": 1000},
         train_defaults={"epochs": 10, "lr": 2e-3, "weight_decay": 0.0, "grad_clip": 1.0,
                         "train_split": "train+val", "eval_every": 0})(PVRNN)
