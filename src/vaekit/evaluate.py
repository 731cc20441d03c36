"""Honest evaluation: importance-sampled log p(x) in nats, active units, per-example ELBO terms (the anomaly
scores built on them are in anomaly.py).

log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k,  z_i ~ q(z|x)
(Burda et al. 2015, eq. 8 with k samples; a stochastic lower bound that tightens as k grows)
"""

from __future__ import annotations

import functools
import math
import time

import torch

from vaekit import seeds
from vaekit.errors import VaekitError, is_compile_error
from vaekit.models import BernoulliLikelihood, conditioned
from vaekit.networks import MLPDecoder
from vaekit.objectives import elbo, log_weights

# Above this much work (importance samples x examples x pixels) the log-weights are computed by a
# torch.compile'd function: one fused kernel for the log-likelihood's element-wise terms and their sum
# instead of several passes over the (samples, batch, pixels) decoder output. k=5000 over MNIST's test set
# (3.9e10) took 312 s eager and ~190 s compiled on 2 cores; below ~10 s of work the compile does not pay.
COMPILE_MIN_WORK = 5e9
_compiled = {}
# The fused Bernoulli form multiplies (1 + exp(-|a_j|)) over groups of at most this many pixels before one log:
# each factor is in (1, 2], so a group's product stays below 2^112, far from float32's 3.4e38 (2^128).
MAX_GROUP = 112


def _mlp_bernoulli(model):
    """(hidden layers, last nn.Linear, one-hot labels or None) when p(x|z) is Bernoulli with logits from an MLP
    decoder ending in a Linear layer (the default model), the case fused_log_weights computes; else None.
    `model`: a model or a conditional model's view model.given(y)."""
    base = getattr(model, "model", model)  # a Given view holds the model and the labels' codes
    dec, lik = getattr(base, "decoder", None), getattr(base, "likelihood", None)
    if not isinstance(dec, MLPDecoder) or type(lik) is not BernoulliLikelihood:  # not its subclasses
        return None
    last = dec.net[-1]
    if not isinstance(last, torch.nn.Linear) or last.bias is None:
        return None
    return dec.net[:-1], last, (model.c if base is not model else None)


def _group(p: int) -> int:
    """The largest divisor of p that is at most MAX_GROUP: pixels per product in fused_log_weights."""
    return max(g for g in range(1, min(p, MAX_GROUP) + 1) if p % g == 0)


def fused_log_weights(model, x: torch.Tensor, k: int, eps: torch.Tensor, q, bf16: bool = False) -> torch.Tensor:
    """objectives.log_weights (k, B) for a model _mlp_bernoulli accepts, in fewer operations per pixel.

    With a = W h + b the logits of the decoder's last layer (h (k, B, H) its input) and x (B, P) the pixels,
    log p(x|z) = sum_j x_j a_j - softplus(a_j), where
      sum_j x_j a_j = h . (W^T x) + b . x                  (a (B, H) table: no per-pixel term)
      sum_j softplus(a_j) = sum_j max(a_j, 0) + sum_groups log prod_{j in group} (1 + exp(-|a_j|))
    so a pixel costs one exp, one multiply and one add, and the logits are never written with their bias:
    h W^T is one matrix product, the rest one fused pass when compiled. Float32 throughout; the products lose
    at most ~1e-5 nats a group to rounding (see tests), like float32's own sum of the 784 terms.
    bf16: h W^T in bfloat16 (float32 accumulation, logits rounded to bfloat16: `vaekit eval --amp`), all else
    float32; not the default, it shifts log p(x) by hundredths of a nat (benchmarks/RESULTS.md)."""
    hidden, last, c = _mlp_bernoulli(model)
    z = q.rsample(k, eps=eps)  # (k, B, D)
    z1 = z[..., : model.config.latent_sizes[0]]  # what p(x|z) reads: z itself, or a hierarchy's bottom layer
    inp = z1.reshape(-1, z1.shape[-1])
    if c is not None:
        inp = torch.cat([inp, c.expand(*z.shape[:-1], c.shape[-1]).reshape(-1, c.shape[-1]).to(z.dtype)], -1)
    h = hidden(inp)  # (k*B, H)
    w, b = last.weight, last.bias  # (P, H), (P,)
    xf = x.reshape(x.shape[0], -1).to(h.dtype)  # (B, P)
    g = _group(w.shape[0])
    logits = (h.bfloat16() @ w.bfloat16().T).float() if bf16 else h @ w.T  # (k*B, P), without the bias
    a = logits.view(k, x.shape[0], w.shape[0] // g, g) + b.view(-1, g)  # (k, B, groups, g)
    soft = a.clamp(min=0).sum(-1) + torch.log((1 + torch.exp(-a.abs())).prod(-1))  # (k, B, groups)
    lin = (h.view(k, x.shape[0], -1) * (xf @ w)).sum(-1) + xf @ b  # (k, B)
    return lin - soft.sum(-1) + model.prior.log_prob(z) - q.log_prob(z)


def _log_weights_fn(compile: bool, bf16: bool = False):
    """objectives.log_weights, compiled when asked and the backend works (else the eager one: same numbers
    to float rounding, ~1.7x slower). Compiled, a model _mlp_bernoulli accepts gets fused_log_weights;
    bf16: fused_log_weights in bfloat16, the only form that has it (compiled or not)."""
    eager = functools.partial(fused_log_weights, bf16=True) if bf16 else log_weights
    if not compile:
        return eager
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(log_weights)
        _compiled["fused"] = torch.compile(fused_log_weights)

    def call(model, *args, **kwargs):
        if _compiled.get("broken"):
            return eager(model, *args, **kwargs)
        fused = bf16 or _mlp_bernoulli(model) is not None
        try:
            if fused:
                return _compiled["fused"](model, *args, bf16=bf16, **kwargs)
            return _compiled["fn"](model, *args, **kwargs)
        except Exception as e:  # no C++ compiler, an unsupported op...: the eager function, once and for all
            if not is_compile_error(e):
                raise
            _compiled["broken"] = True
            return eager(model, *args, **kwargs)

    return call


def check_amp(model, device) -> None:
    """A one-line VaekitError unless `vaekit eval --amp` applies: an MLP decoder with a Bernoulli likelihood,
    on a CPU or GPU that multiplies bf16 natively."""
    from vaekit.config import check_cpu_bf16

    if _mlp_bernoulli(model) is None:
        raise VaekitError(
            "--amp in eval needs an MLP decoder with a Bernoulli likelihood (the default model); drop --amp"
        )
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VaekitError("--amp needs a GPU that does bf16 natively, which this one does not; drop --amp")
    if dev.type == "cpu":
        check_cpu_bf16()


@torch.inference_mode()
def log_likelihood(
    model,
    x: torch.Tensor,
    k: int = 5000,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """Importance-sampled log p(x) with exactly k posterior samples, (B,) in nats; on a conditional model's
    view model.given(y), log p(x|y).

    Vectorised over the batch and chunked over k, so k = 5000 fits in memory: at most
    `chunk` x B decoder outputs exist at once (default: ~2^22 values). The noise is drawn
    one sample (B, D) at a time, so the estimate does not depend on `chunk`: the same
    generator state gives the same answer however k is split. `compile` (default: when k x B x pixels
    exceeds COMPILE_MIN_WORK) computes the log-weights with torch.compile, in float32 like the eager path.
    `amp`: the decoder's last matrix product in bf16 (fused_log_weights; check_amp says where it applies).
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
    weights = _log_weights_fn(compile, amp)
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


def _float32_shift(m, x, k: int, state: torch.Tensor, nll: torch.Tensor, compile: bool) -> float:
    """Mean of `nll` (B,), an --amp estimate, minus float32's from the same generator state, in nats."""
    g = torch.Generator(device=x.device)
    g.set_state(state)
    return (nll + log_likelihood(m, x, k, generator=g, compile=compile)).mean().item()


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
    amp: bool = False,
) -> dict:
    """ELBO, recon, KL and (for a VAE, iw_samples > 0) the importance-sampled NLL, per-example means in nats.
    For a conditional model all of them are conditional on the data's labels (the NLL is -log p(x|y)):
    a one-line error if `ds` has none, or labels outside the model's classes.

    Returns the dict `vaekit eval --json` prints; with per_example, also the (N,) tensors under "per_example".
    Seeded by `seed` (the same call gives the same numbers) without touching the caller's global RNG.
    amp: the NLL with bf16 decoder products (log_likelihood; a one-line error where check_amp refuses it), and
    "amp_nll_shift": its mean minus float32's on the first batch, same noise, in nats.
    """
    from vaekit.data import expect_labels

    expect_labels(ds, getattr(model, "num_classes", 0), ds.name)
    amp = amp and model.is_vae and iw_samples > 0
    if amp:
        check_amp(model, device)
    shift = None
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
                state = g.get_state() if amp and shift is None else None
                cols["nll"].append(-log_likelihood(m, x, iw_samples, generator=g, compile=compile, amp=amp))
                if state is not None:
                    shift = _float32_shift(m, x, iw_samples, state, cols["nll"][-1], compile)
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
        "amp": amp,
        "amp_nll_shift": shift,
    }
    if not model.is_vae:
        out["recon_loss"] = -out["recon"]
    if len(getattr(model, "latent_sizes", ())) > 1:  # stochastic layers: the active units of each, bottom first
        out["active_units_per_layer"] = [active_units(mu) for mu in cat["mu"].split(model.latent_sizes, -1)]
    if per_example:
        out["per_example"] = cat
    return out
