"""The training step of the plain MLP VAE (the default model) written out by hand: the forward pass and the
gradients of the negative ELBO layer by layer, with no autograd graph, then Adam (torch's functional kernel on
the optimizer's own state, as Optimizer.step runs it). The same arithmetic as autograd (its backward kernels:
threshold_backward, silu_backward, ...), to float32 rounding; tests/unit/test_mlp_step.py checks it against
autograd.

Why by hand (benchmarks/RESULTS.md, issue 17): the 784-400-20 VAE's eager step spends about as long in
autograd's bookkeeping, dispatch and per-op casts as in its matmuls; written out, a step is ~40 kernel calls,
its latent arithmetic is float32 on (B, 2D) and, with --amp, only the matmuls run in bf16 (weights cast once
a step, as autocast does). It applies where the model is exactly what it computes:

    a VAE with MLP encoder and decoder, a Bernoulli likelihood, the N(0, I) prior, one stochastic layer, no
    labels; iw_k 1, no free bits; one process; an activation in ACT.

Everything else takes steps.EagerStep (or, with --compile, fused_step.FusedStep)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adam import adam as functional_adam

from vaekit.config import TrainConfig
from vaekit.distributions import StandardNormal
from vaekit.models import LOGVAR_RANGE, VAE
from vaekit.steps import adam_state, batch_sums, clip_and_check

aten = torch.ops.aten
ACT = {  # name: (forward(a), backward(grad of the output, pre-activation a, output h)) as autograd computes it
    "relu": (torch.relu, lambda g, a, h: aten.threshold_backward(g, a, 0)),
    "silu": (F.silu, lambda g, a, h: aten.silu_backward(g, a)),
    "tanh": (torch.tanh, lambda g, a, h: aten.tanh_backward(g, h)),
    "gelu": (F.gelu, lambda g, a, h: aten.gelu_backward(g, a)),
    "softplus": (F.softplus, lambda g, a, h: aten.softplus_backward(g, a, 1, 20)),
}


def supported(model, cfg: TrainConfig, world: int) -> bool:
    """Whether the hand-written step computes this model's training loss (see the module's docstring)."""
    c = model.config
    plain = type(model) is VAE and c.arch == "mlp" and c.likelihood == "bernoulli"
    plain = plain and type(model.prior) is StandardNormal  # N(0, I), whatever a Python user built it with
    plain = plain and "forward" not in vars(model)  # a forward replaced on the instance is what trains
    return (
        plain
        and len(c.latent_sizes) == 1
        and c.num_classes == 0
        and c.activation in ACT
        and cfg.iw_k == 1
        and cfg.free_bits == 0
        and cfg.estimator == "standard"
        and world == 1
    )


class MLPStep:
    """step(x, y, eps, lr, beta) -> bad (a bool tensor: the loss or the gradient norm not finite), with the
    gradients in each parameter's .grad; commit(sums) applies Adam and adds the batch's (loss, elbo, recon,
    kl, examples). The interface of steps.EagerStep. eps (B, D) or None (drawn here, as Normal.rsample does)."""

    def __init__(self, model, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device):
        self.opt, self.cfg, self.device = opt, cfg, device
        self.enc = [m for m in model.encoder.net if isinstance(m, nn.Linear)]
        self.dec = [m for m in model.decoder.net if isinstance(m, nn.Linear)]
        self.act, self.act_grad = ACT[model.config.activation]
        self.dtype = torch.bfloat16 if cfg.amp else torch.float32
        self.dim = model.latent_dim
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.pending = None

    def __call__(self, x, y, eps, lr: float, beta: float) -> torch.Tensor:
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            loss_vec, recon, kl = self._forward_backward(x, eps, beta)
            finite = clip_and_check(self.params, self.cfg, loss_vec.mean())
        self.pending = (loss_vec, recon, kl)
        return ~finite

    def commit(self, sums: torch.Tensor) -> None:
        loss_vec, recon, kl = self.pending
        self._adam()
        sums += batch_sums(loss_vec, recon - kl, recon, kl)
        self.pending = None

    def _adam(self) -> None:
        """What self.opt.step() does, by torch's functional Adam on the optimizer's own state and settings
        (the same kernel, fused or foreach), without Optimizer.step's per-step bookkeeping (~0.2 ms a step)."""
        g = self.opt.param_groups[0]
        steps, m, v = adam_state(self.opt, self.params)
        functional_adam(
            self.params, [p.grad for p in self.params], m, v, [], steps,
            foreach=g["foreach"], fused=g["fused"], amsgrad=False, maximize=False,
            beta1=g["betas"][0], beta2=g["betas"][1], lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"],
        )  # fmt: skip

    def _forward_backward(self, x, eps, beta: float):
        """Per-example (loss, recon, kl), (B,) float32; sets each weight's and bias's .grad to the gradient of
        the batch's mean loss: recon = log p(x|z) (Bernoulli), kl = KL(q(z|x) || N(0, I)) analytic, loss =
        beta kl - recon, z = mu + sigma eps with log sigma^2 clamped to LOGVAR_RANGE as VAE._posterior does."""
        b, d, (lo, hi) = len(x), self.dim, LOGVAR_RANGE
        xf = x.flatten(1).float()
        out, enc_saved = self._mlp(self.enc, xf.to(self.dtype))
        out = out.float()
        mu, lv = out[:, :d], out[:, d:]
        lvc = lv.clamp(lo, hi)
        std = torch.exp(0.5 * lvc)
        eps = torch.randn((b, d), dtype=torch.float32, device=out.device) if eps is None else eps.float()
        z = torch.addcmul(mu, std, eps)
        logits, dec_saved = self._mlp(self.dec, z.to(self.dtype))
        logits = logits.float()
        recon = -F.binary_cross_entropy_with_logits(logits, xf, reduction="none").sum(1)
        var = std * std
        kl = 0.5 * (mu * mu + var - 1 - lvc).sum(1)
        # backward of (beta kl - recon).mean(): through the decoder to z, then q's mean and log-variance
        dz = self._mlp_grad(self.dec, dec_saved, ((torch.sigmoid(logits) - xf) / b).to(self.dtype), True).float()
        dmu = dz + (beta / b) * mu
        dlv = (dz * eps * 0.5 * std + (0.5 * beta / b) * (var - 1)) * ((lv >= lo) & (lv <= hi))
        self._mlp_grad(self.enc, enc_saved, torch.cat([dmu, dlv], 1).to(self.dtype), False)
        return beta * kl - recon, recon, kl

    def _mlp(self, layers, h):
        """The MLP's output for input h (N, in) in self.dtype, and what its backward needs: each layer's
        weight (cast to self.dtype), input and pre-activation."""
        saved = []
        for i, lin in enumerate(layers):
            w = lin.weight.to(self.dtype)
            a = torch.addmm(lin.bias.to(self.dtype), h, w.t())
            saved.append((w, h, a))
            h = self.act(a) if i < len(layers) - 1 else a
        return h, saved

    def _mlp_grad(self, layers, saved, g, input_grad: bool):
        """Backward through the MLP from g (N, out), the loss's gradient at its output: sets each layer's
        weight and bias .grad (float32); returns the gradient at its input when input_grad, else None."""
        for i in reversed(range(len(layers))):
            w, h, _ = saved[i]
            layers[i].weight.grad = (g.t() @ h).float()
            layers[i].bias.grad = g.sum(0, dtype=torch.float32)
            if i == 0 and not input_grad:
                return None
            g = g @ w
            if i > 0:
                g = self.act_grad(g, saved[i - 1][2], h)  # h = act(the previous layer's pre-activation)
        return g
