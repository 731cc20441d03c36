"""The report's two studies that need a VAE (studies.py has the others); each returns numbers.

shift_study         pixel MSE vs importance-sampled log p(x) for a digit shifted 1-3 pixels (section 6)
reparam_gradients   the encoder's gradient with the trick, without it, and by REINFORCE   (section 7)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaekit import seeds
from vaekit.classifier import Classifier
from vaekit.data import binarize
from vaekit.evaluate import log_likelihood
from vaekit.objectives import kl_divergence
from vaekit.studies import SHIFTS, shift_right

# ------------------------------------------------------------------------------------------- section 6


def contrast_index(x_eval: torch.Tensor, y_eval: torch.Tensor | None, clf: Classifier | None) -> int:
    """The example of x_eval (N, *shape) nearest to x_eval[0] in pixel MSE, among those of another class
    (with labels) that the classifier (if any) also assigns to their own class."""
    x = x_eval[0]
    mse = ((x_eval - x) ** 2).flatten(1).mean(1)
    mse[0] = math.inf
    if y_eval is not None:
        other = y_eval != y_eval[0]
        if clf is not None:
            other &= clf.predict(x_eval) == y_eval
        mse = torch.where(other, mse, torch.full_like(mse, math.inf))
    return int(mse.argmin())


@torch.no_grad()
def shift_study(model, x: torch.Tensor, other: torch.Tensor, k: int, draws: int, seed: int, shifts=SHIFTS) -> dict:
    """Section 6: x, x shifted by each of `shifts` pixels, and another image `other`, each (*shape).

    Returns per image (1 + len(shifts) + 1 of them): pixel MSE to x (greyscale) and the model's
    importance-sampled log p in nats. For a model trained on binarized data, log p is averaged over
    `draws` Bernoulli draws of x (each draw then shifted exactly like the greyscale image) and of `other`.
    """
    images = torch.stack([x] + [shift_right(x, s) for s in shifts] + [other])  # (M, *shape)
    mse = ((images - x) ** 2).flatten(1).mean(1)
    g = torch.Generator().manual_seed(seed)
    gk = torch.Generator().manual_seed(seeds.importance(seed))
    binary = model.run_config.train.binarize != "none"
    logp = torch.zeros(len(images), dtype=torch.float64)
    n = draws if binary else 1
    for _ in range(n):
        b, bo = (binarize(x, g), binarize(other, g)) if binary else (x, other)
        batch = torch.stack([b] + [shift_right(b, s) for s in shifts] + [bo])
        logp += log_likelihood(model, batch, k, generator=gk).double()
    return {"images": images, "mse": mse.tolist(), "logp": (logp / n).tolist()}


@dataclass
class ShiftReading:
    """What shift_study's numbers say, for the text (shifts: SHIFTS)."""

    first_worse: int | None  # the smallest shift whose pixel MSE exceeds the other digit's; None if none does
    logp_drop: float  # log p(original) - log p(largest shift), nats
    label: list[int] | None  # the classifier's label per image (original, shifts..., other)
    confidence: list[float] | None  # its top probability per image
    same_label: bool | None  # the label of every shifted image is the original's


def read_shift(st: dict, clf: Classifier | None) -> ShiftReading:
    m, lp = st["mse"], st["logp"]
    worse = [s for i, s in enumerate(SHIFTS) if m[i + 1] > m[-1]]
    label = confidence = same = None
    if clf is not None:
        prob = clf.predict_proba(st["images"])
        label, confidence = prob.argmax(-1).tolist(), prob.max(-1).values.tolist()
        same = all(label[i] == label[0] for i in range(len(SHIFTS) + 1))
    return ShiftReading(worse[0] if worse else None, lp[0] - lp[len(SHIFTS)], label, confidence, same)


# ------------------------------------------------------------------------------------------- section 7


def reparam_gradients(model, x: torch.Tensor, draws: int, seed: int, means: bool = False) -> dict:
    """Section 7: the encoder's gradient of the reconstruction term E_q[log p(x|z)] (batch mean, nats),
    estimated `draws` times from one sample each, three ways:

        reparam   z = mu + sigma * eps, gradient through z (Kingma & Welling 2013, eq. 10)
        detached  z drawn without the trick (no path from z back to the encoder): exactly zero
        score     the score-function (REINFORCE) estimator  E_q[log p(x|z) grad log q(z|x)], unbiased
                  but noisy (Williams 1992)

    Returns for each: "norm" (mean over draws of the single-sample gradient norm), "rel_std"
    (sqrt(mean |g - g_mean|^2) / |g_mean|: the estimator's noise relative to its mean; None when the
    mean is zero), "variance" (mean |g - g_mean|^2 over draws: the single-sample estimator's variance
    summed over the encoder's parameters) and, with `means`, "mean" (the mean gradient, (P,)); "kl_norm",
    the gradient norm of the analytic KL, which reaches the encoder with or without the trick;
    "noise_ratio", score rel_std / reparam rel_std, and "var_ratio", score variance / reparam variance
    (nan when undefined).
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()

    def grad(loss):
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])

    torch.manual_seed(seed)
    est = {"reparam": [], "detached": [], "score": []}
    with torch.enable_grad():
        for _ in range(draws):
            q = model.encode(x)
            est["reparam"].append(grad(model.decode(q.rsample()).log_prob(x).mean()))
            q = model.encode(x)
            z = q.rsample().detach()
            est["detached"].append(grad(model.decode(z).log_prob(x).mean()))
            q = model.encode(x)
            z = q.rsample().detach()
            f = model.decode(z).log_prob(x).detach()  # (B,)
            est["score"].append(grad((f * q.log_prob(z)).mean()))
        kl_norm = float(grad(kl_divergence(model.prior, model.encode(x))[0].mean()).norm())  # the prior's KL
    model.train(was_training)
    out = {"kl_norm": kl_norm, "draws": draws, "batch": len(x)}
    for name, gs in est.items():
        g = torch.stack(gs)  # (draws, P)
        mean = g.mean(0)
        spread = float((g - mean).pow(2).sum(1).mean().sqrt())
        out[name] = {
            "norm": float(g.norm(dim=1).mean()),
            "rel_std": spread / float(mean.norm()) if float(mean.norm()) > 0 else None,
            "variance": spread**2,
        } | ({"mean": mean} if means else {})
    r, sc = out["reparam"]["rel_std"], out["score"]["rel_std"]
    out["noise_ratio"] = sc / r if r else float("nan")
    vr = out["reparam"]["variance"]
    out["var_ratio"] = out["score"]["variance"] / vr if vr > 0 else float("nan")
    return out
