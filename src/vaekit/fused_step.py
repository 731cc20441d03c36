"""The whole training step as one compiled function: forward, backward, the finite check, gradient clipping
and Adam, traced together by torch.compile (torch.func computes the gradients), so a step is one call into
fused kernels instead of ~100 dispatches of eager autograd and the optimizer (benchmarks/RESULTS.md, issue 17).

It keeps Adam's state in the torch.optim.Adam it is given (state[p]["step"|"exp_avg"|"exp_avg_sq"]), so
checkpoints, resume and the eager path read and write the same state. Adam is torch's (Kingma & Ba with
L2 weight decay added to the gradient, bias-corrected), and a step whose loss or gradient norm is not finite
changes nothing (weights, moments and step count stay), as in the eager loop."""

from __future__ import annotations

import torch
from torch.func import functional_call, grad_and_value

from vaekit.config import TrainConfig


def supported(cfg: TrainConfig, world: int) -> bool:
    """Whether the fused step applies: one process (DDP reduces gradients between backward and the step)
    and the standard estimator (DReG scales z's gradient by a backward hook, which torch.func does not run)."""
    return world == 1 and cfg.estimator == "standard"


class FusedStep:
    """step(x, y, eps, lr, beta) -> (bad (bool tensor), sums (5,) float64: loss, elbo, recon, kl, examples
    summed over the batch; zeros on a bad step). Updates the model's weights and `opt`'s state in place."""

    def __init__(self, model, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device, compile: bool = True):
        from vaekit.steps import compiled

        self.model, self.opt, self.cfg, self.device = model, opt, cfg, device
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        group = opt.param_groups[0]
        self.betas, self.adam_eps, self.wd = group["betas"], group["eps"], group["weight_decay"]
        self.fn = compiled(self._step) if compile else self._step  # uncompiled: the same arithmetic, for tests
        self.pending = None

    def __call__(self, x, y, eps, lr: float, beta: float):
        from vaekit.steps import adam_state

        params = [p for _, p in self.named]
        steps, m, v = adam_state(self.opt, params)
        lr_t = torch.tensor(lr, dtype=torch.float32)
        beta_t = torch.tensor(beta, dtype=torch.float32)
        for g in self.opt.param_groups:
            g["lr"] = lr  # what a checkpoint's param_groups say, as in the eager step
        with torch.no_grad():
            bad, self.pending = self.fn(params, steps, m, v, x, y, eps, lr_t, beta_t)
        return bad

    def commit(self, sums: torch.Tensor) -> None:
        """Add the batch's (loss, elbo, recon, kl, examples) to `sums` (the update itself is already done)."""
        sums += self.pending
        self.pending = None

    def _loss(self, params, x, y, eps, beta):
        cfg, names = self.cfg, [n for n, _ in self.named]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss_vec, t = functional_call(
                self.model,
                dict(zip(names, params)),
                (x,),
                dict(y=y, beta=beta, free_bits=cfg.free_bits, iw_k=cfg.iw_k, eps=eps, estimator=cfg.estimator),
            )
        loss_vec = loss_vec.float()
        n = loss_vec.new_tensor(float(len(x)))
        sums = torch.stack([loss_vec.sum(), t.elbo.float().sum(), t.recon.float().sum(), t.kl.float().sum(), n])
        return loss_vec.mean(), sums.detach()

    def _step(self, params, steps, m, v, x, y, eps, lr, beta):
        grads, (loss, sums) = grad_and_value(self._loss, has_aux=True)(params, x, y, eps, beta)
        norm = torch.stack([g.float().pow(2).sum() for g in grads]).sum().sqrt()
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        if self.cfg.clip > 0:
            coef = (self.cfg.clip / (norm + 1e-6)).clamp(max=1.0)
            grads = [g * coef for g in grads]
        b1, b2 = self.betas
        okf = ok.float()
        s_new = [s + okf for s in steps]
        # each parameter's step size and 1/sqrt(bias correction 2), realized once by the stack: inlined, inductor
        # recomputed the four pow() of every parameter in each vector iteration of the update (3x its time)
        scalars = torch.stack([torch.stack([lr / (1 - b1**t), torch.rsqrt(1 - b2**t)]) for t in s_new])
        for i, (p, g, s, ma, va) in enumerate(zip(params, grads, steps, m, v)):
            if self.wd:
                g = g + self.wd * p
            m_new = ma.lerp(g, 1 - b1)
            v_new = va * b2 + (1 - b2) * g * g
            denom = v_new.sqrt() * scalars[i, 1] + self.adam_eps
            p_new = p - scalars[i, 0] * m_new / denom
            p.copy_(torch.where(ok, p_new, p))
            ma.copy_(torch.where(ok, m_new, ma))
            va.copy_(torch.where(ok, v_new, va))
            s.copy_(s_new[i])
        return ~ok, sums.double() * okf.double()
