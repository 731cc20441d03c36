"""Honest evaluation: importance-sampled log p(x) in nats, active units, per-example ELBO terms (the anomaly
scores built on them are in anomaly.py).

log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k,  z_i ~ q(z|x)
(Burda et al. 2015, eq. 8 with k samples; a stochastic lower bound that tightens as k grows)
"""

from __future__ import annotations

import math
import time

import torch

from vaekit import seeds
from vaekit.errors import is_compile_error
from vaekit.models import conditioned
from vaekit.objectives import elbo, log_weights

# Above this much work (importance samples x examples x pixels) the log-weights are computed by a
# torch.compile'd function: one fused kernel for the log-likelihood's element-wise terms and their sum
# instead of several passes over the (samples, batch, pixels) decoder output. k=5000 over MNIST's test set
# (3.9e10) took 312 s eager and ~190 s compiled on 2 cores; below ~10 s of work the compile does not pay.
COMPILE_MIN_WORK = 5e9
_compiled = {}


def _log_weights_fn(compile: bool):
    """objectives.log_weights, compiled when asked and the backend works (else the eager one: same numbers
    to float rounding, ~1.7x slower)."""
    if not compile:
        return log_weights
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(log_weights)
    fn = _compiled["fn"]

    def call(*args, **kwargs):
        if _compiled.get("broken"):
            return log_weights(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # no C++ compiler, an unsupported op...: the eager function, once and for all
            if not is_compile_error(e):
                raise
            _compiled["broken"] = True
            return log_weights(*args, **kwargs)

    return call


@torch.inference_mode()
def log_likelihood(
    model,
    x: torch.Tensor,
    k: int = 5000,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
) -> torch.Tensor:
    """Importance-sampled log p(x) with exactly k posterior samples, (B,) in nats; on a conditional model's
    view model.given(y), log p(x|y).

    Vectorised over the batch and chunked over k, so k = 5000 fits in memory: at most
    `chunk` x B decoder outputs exist at once (default: ~2^22 values). The noise is drawn
    one sample (B, D) at a time, so the estimate does not depend on `chunk`: the same
    generator state gives the same answer however k is split. `compile` (default: when k x B x pixels
    exceeds COMPILE_MIN_WORK) computes the log-weights with torch.compile, in float32 like the eager path.
    """
    if k < 1:
        raise ValueError(f"log p(x) needs k >= 1 importance samples, got {k}")
    q = model.encode(x)
    if not model.is_vae:
        raise ValueError("log p(x) needs a VAE: an autoencoder defines no density")
    b = x.shape[0]
    numel = math.prod(x.shape[1:])
    chunk = chunk or max(1, min(k, (1 << 22) // max(1, b * numel)))
    if compile is None:
        compile = k * b * numel > COMPILE_MIN_WORK
    weights = _log_weights_fn(compile)
    acc = torch.full((b,), -math.inf, dtype=q.mu.dtype, device=q.mu.device)  # running logsumexp
    done = 0
    while done < k:
        n = min(chunk, k - done)
        eps = torch.stack(
            [torch.randn(q.mu.shape, generator=generator, dtype=q.mu.dtype, device=q.mu.device) for _ in range(n)]
        )  # (n, B, D)
        log_w = weights(model, x, n, eps=eps, q=q)  # (n, B)
        acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        done += n
    return acc - math.log(k)


@torch.inference_mode()
def posterior_means(model, data, batch_size: int = 1000, device=None, y=None) -> torch.Tensor:
    """E_q[z|x] (E_q[z|x, y] for a conditional model) for every example of `data`, encoded `batch_size` at a
    time: (N, D) on the model's device.

    `data`: a Dataset (its pixels as the model sees them, in [0, 1]; its labels) or a tensor (N, *shape)
    with its labels `y` (N,) for a conditional model."""
    device = device if device is not None else next(model.parameters()).device
    if hasattr(data, "batch"):
        batch, y = data.batch, data.y if y is None else y
    else:
        batch = lambda idx, dev: data[idx].to(dev)  # noqa: E731
    n = len(data)
    out = []
    for i in range(0, n, batch_size):
        labels = None if y is None else y[i : i + batch_size]
        m = conditioned(model, labels) if labels is not None else model  # a conditional model needs them
        out.append(m.encode(batch(slice(i, i + batch_size), device)).mean)
    return torch.cat(out) if out else torch.zeros(0, model.latent_dim, device=device)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across the data: Cov_x(E_q[z_d]) > 0.01
    (Burda et al. 2015, section 5.2). mu: (N, D)."""
    if mu.shape[0] < 2:  # a variance needs two examples; one says nothing about activity
        return 0
    return int((mu.var(0) > threshold).sum())


def eval_batches(ds, batch_size: int, binarize: str, seed: int, device="cpu", labels: bool = False):
    """The data as batches for evaluation: binarized once with a fixed seed when training was binarized,
    so the same run always sees the same test set. x (B, *shape); with `labels`, pairs (x, y) with y (B,)
    int64 (None when the data has no labels)."""
    from vaekit.data import binarize as draw

    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(ds), batch_size):
        x = ds.batch(slice(i, i + batch_size))
        if binarize != "none":
            x = draw(x, g)
        if labels:
            yield x.to(device), None if ds.y is None else ds.y[i : i + batch_size].to(device)
        else:
            yield x.to(device)


@torch.inference_mode()
def evaluate(
    model,
    ds,
    *,
    binarize: str = "dynamic",
    iw_samples: int = 5000,
    batch_size: int = 100,
    seed: int = 0,
    device="cpu",
    per_example: bool = False,
) -> dict:
    """ELBO, recon, KL and (for a VAE, iw_samples > 0) the importance-sampled NLL, per-example means in nats.
    For a conditional model all of them are conditional on the data's labels (the NLL is -log p(x|y)):
    a one-line error if `ds` has none, or labels outside the model's classes.

    Returns the dict `vaekit eval --json` prints; with per_example, also the (N,) tensors under "per_example".
    Seeded by `seed` (the same call gives the same numbers) without touching the caller's global RNG.
    """
    from vaekit.data import expect_labels

    expect_labels(ds, getattr(model, "num_classes", 0), ds.name)
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(seeds.importance(seed))
    compile = iw_samples * len(ds) * math.prod(ds.shape) > COMPILE_MIN_WORK
    t0 = time.perf_counter()
    cols = {"elbo": [], "recon": [], "kl": [], "nll": [], "mu": [], "kl_per_dim": []}
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # the ELBO's reparameterized sample
        for x, y in eval_batches(ds, batch_size, binarize, seed, device, labels=True):
            m = conditioned(model, y)  # a conditional model's view given the batch's labels
            t = elbo(m, x)
            cols["elbo"].append(t.elbo)
            cols["recon"].append(t.recon)
            cols["kl"].append(t.kl)
            cols["mu"].append(m.encode(x).mean)
            if model.is_vae and t.kl_per_dim is not None:  # None for a prior that does not factorise
                cols["kl_per_dim"].append(t.kl_per_dim)
            if model.is_vae and iw_samples > 0:
                cols["nll"].append(-log_likelihood(m, x, iw_samples, generator=g, compile=compile))
    cat = {k: torch.cat(v).cpu() for k, v in cols.items() if v}
    out = {
        "split": None,
        "n": len(ds),
        "elbo": cat["elbo"].mean().item(),
        "recon": cat["recon"].mean().item(),
        "kl": cat["kl"].mean().item(),
        "nll": cat["nll"].mean().item() if "nll" in cat else None,
        "iw_samples": iw_samples if "nll" in cat else 0,
        "active_units": active_units(cat["mu"]) if model.is_vae else None,
        "kl_per_dim": cat["kl_per_dim"].mean(0).tolist() if "kl_per_dim" in cat else None,
        "seconds": round(time.perf_counter() - t0, 3),
        "conditional": bool(getattr(model, "conditional", False)),
    }
    if not model.is_vae:
        out["recon_loss"] = -out["recon"]
    if len(getattr(model, "latent_sizes", ())) > 1:  # stochastic layers: the active units of each, bottom first
        out["active_units_per_layer"] = [active_units(mu) for mu in cat["mu"].split(model.latent_sizes, -1)]
    if per_example:
        out["per_example"] = cat
    return out
