"""What a training step and a validation pass are made of: the learning-rate schedule, the optimizer,
forward/backward with the finite check, torch.compile, validation, and the AE's code Gaussian."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vaekit import seeds
from vaekit.config import ModelConfig, TrainConfig, budget_seconds, check_cpu_bf16
from vaekit.data import Dataset, expect_labels, expect_shape
from vaekit.data import load as load_data
from vaekit.distributed import all_sum, resolve_device, shard_noise
from vaekit.errors import VaekitError, is_compile_error


def resolve_binarize(cfg: TrainConfig, model_cfg: ModelConfig) -> TrainConfig:
    """`auto` binarizes dynamically for a Bernoulli likelihood and not otherwise."""
    if cfg.binarize == "auto":
        return replace(cfg, binarize="dynamic" if model_cfg.likelihood == "bernoulli" else "none")
    return cfg


def with_conditional(cfg: TrainConfig, model) -> TrainConfig:
    """cfg, validated, with `conditional` saying whether `model` is (what config.json records)."""
    if cfg.conditional and not model.conditional:
        raise VaekitError(
            "conditional training needs a conditional model: build it with ModelConfig(num_classes=K) "
            "(vaekit train --conditional sets K from the data)",
            option="conditional",
        )
    return replace(cfg, conditional=model.conditional).validate(model.config)


def conditional_classes(model_cfg: ModelConfig, ds: Dataset, source) -> ModelConfig:
    """model_cfg with num_classes taken from the labels of `ds` (loaded from `source`), for --conditional;
    one-line errors when it has none, or a num_classes was given that does not match them."""
    from vaekit.data import num_classes

    k = num_classes(ds, source)
    if model_cfg.num_classes not in (0, k):
        raise VaekitError(
            f"num_classes {model_cfg.num_classes} does not match the {k} classes of --data {source}; "
            f"leave it out (--conditional takes it from the data)",
            option="num_classes",
        )
    return replace(model_cfg, num_classes=k)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, epoch: int, elapsed: float = 0.0) -> float:
    """The schedule as a pure function of progress (nothing to checkpoint). `step` counts from 0. With a time
    budget (cfg.time_budget) the cosine runs over `elapsed`, the run's seconds of training (the loop's clock,
    LoopState.seconds, validation included), from cfg.lr at 0 to 0 at the budget, instead of over the steps."""
    if cfg.schedule == "cosine":
        budget = budget_seconds(cfg.time_budget)
        done = min(step, total_steps) / max(1, total_steps) if budget is None else min(elapsed, budget) / budget
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * done))
    if cfg.schedule == "step":
        return cfg.lr * 0.5 ** (epoch // cfg.step_every)
    return cfg.lr


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one kernel for all parameters; on CPU too, where it beats foreach:
    benchmarks/RESULTS.md), foreach where fused is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def adam_state(opt: torch.optim.Optimizer, params) -> tuple[list, list, list]:
    """Adam's (step, exp_avg, exp_avg_sq) of each parameter in `opt.state`, created as torch.optim.Adam creates
    them on its first step (so a checkpoint holds the same state whichever step implementation ran)."""
    steps, m, v = [], [], []
    for p in params:
        st = opt.state[p]
        if not st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        steps.append(st["step"])
        m.append(st["exp_avg"])
        v.append(st["exp_avg_sq"])
    return steps, m, v


def as_dataset(data, what: str = "data") -> Dataset | None:
    """A Dataset from a Dataset, a dataset name or path, or an array/tensor (N, *shape) in [0, 1] or uint8."""
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_data(data, "train")
    if isinstance(data, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(data)
        if x.dtype != torch.uint8:
            x = x.float()
        return Dataset(x, None, what)
    raise VaekitError(f"{what}: expected a Dataset, a dataset name or path, or an array; got {type(data).__name__}")


def datasets(model, data, val, cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training and validation Datasets from what fit was given, checked against the model (shape, labels)
    and, for --binarize static, binarized once."""
    train_ds, val = as_dataset(data), as_dataset(val, "val")
    for name, ds in (("data", train_ds), ("val", val)):
        if ds is not None:
            expect_shape(ds, model.config.input_shape, name)
            expect_labels(ds, model.num_classes, name)  # a conditional model trains on the labels
    if cfg.binarize == "static":
        train_ds = train_ds.binarized(seeds.static_train(cfg.seed))
        val = val.binarized(seeds.static_val(cfg.seed)) if val is not None else None
    return train_ds, val


def device_for(cfg: TrainConfig) -> torch.device:
    """The device the loop trains on (under torchrun a CUDA rank's own), with --amp and --threads applied."""
    device = resolve_device(cfg.device)
    if cfg.amp is True and device.type == "cpu":  # "auto" is resolved later (speed.resolve), never to bf16 here
        check_cpu_bf16()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set from LOCAL_RANK in train()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device


def compiled(net):
    """torch.compile(net), with a one-line error if the backend cannot compile (no C++ compiler, ...).
    Shapes are fixed (the last partial batch is dropped) and the KL weight is a traced float, so it compiles
    once per run."""
    fn = torch.compile(net)

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if is_compile_error(e):
                first = str(e).splitlines()[0] if str(e) else ""
                raise VaekitError(
                    f"--compile: torch.compile failed ({type(e).__name__}: {first}); train without --compile",
                    option="compile",
                ) from None
            raise

    return call


def forward_backward(net, opt, params, x, cfg: TrainConfig, beta: float, device, y=None, eps=None, weight=1.0):
    """Loss, gradients (clipped if cfg.clip) and whether both are finite, as a tensor (no sync here).
    y (B,): the batch's labels, for a conditional model; eps: the reparameterization noise (None: the model
    draws it); weight: the factor on the batch's mean loss (a DDP shard's share, distributed.shard_weight)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        loss_vec, terms = net(  # (B,), Terms
            x, y=y, beta=beta, free_bits=cfg.free_bits, iw_k=cfg.iw_k, eps=eps, estimator=cfg.estimator
        )
    loss = loss_vec.mean() if weight == 1.0 else loss_vec.mean() * weight
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss_vec, terms, clip_and_check(params, cfg, loss)


def clip_and_check(params, cfg: TrainConfig, loss: torch.Tensor) -> torch.Tensor:
    """Clip the parameters' gradients to norm cfg.clip (when > 0); whether the loss and the gradients' total norm
    are finite, as a bool tensor (no sync here)."""
    if cfg.clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return torch.isfinite(loss) & torch.isfinite(norm)


def batch_sums(loss_vec, elbo, recon, kl) -> torch.Tensor:
    """A batch's (loss, elbo, recon, kl, examples), summed over its examples, float64 (5,): what a step adds to
    the epoch's sums."""
    n = loss_vec.new_tensor(float(len(loss_vec)))
    return torch.stack([loss_vec.sum(), elbo.sum(), recon.sum(), kl.sum(), n]).double()


class EagerStep:
    """A training step by eager autograd and torch.optim (any model, DDP, every estimator): calling it
    computes the loss and gradients and returns whether the step is bad (a bool tensor: the loss or the
    gradient norm not finite); `commit(sums)` then applies the optimizer and adds the batch's (loss, elbo,
    recon, kl, examples) to `sums`. fused_step.FusedStep is the compiled twin with the same interface."""

    def __init__(self, net, opt, cfg: TrainConfig, device, weight: float = 1.0):
        self.net, self.opt, self.cfg, self.device, self.weight = net, opt, cfg, device, weight
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.pending = None

    def __call__(self, x, y, eps, lr: float, beta: float) -> torch.Tensor:
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss_vec, terms, finite = forward_backward(
            self.net, self.opt, self.params, x, self.cfg, beta, self.device, y, eps, self.weight
        )
        self.pending = (loss_vec, terms)
        return ~finite

    def commit(self, sums: torch.Tensor) -> None:
        loss_vec, terms = self.pending
        self.opt.step()
        with torch.no_grad():
            sums += batch_sums(loss_vec, terms.elbo, terms.recon, terms.kl)
        self.pending = None


def make_step(model, net, opt, cfg: TrainConfig, device, world: int, weight: float):
    """The loop's step: with --compile, the whole step compiled (fused_step.FusedStep) where it applies,
    else the forward pass compiled under eager autograd and torch.optim; without, the hand-written step of the
    plain MLP VAE (mlp_step.MLPStep) where it applies, else EagerStep."""
    from vaekit import fused_step, mlp_step

    if cfg.compile and fused_step.supported(cfg, world):
        return fused_step.FusedStep(model, opt, cfg, device)
    if not cfg.compile and mlp_step.supported(model, cfg, world):
        return mlp_step.MLPStep(model, opt, cfg, device)
    return EagerStep(compiled(net) if cfg.compile else net, opt, cfg, device, weight)


@torch.inference_mode()
def validate(model, ds: Dataset, cfg: TrainConfig, device, rank: int = 0, world: int = 1) -> list[float]:
    """Mean (elbo, recon, kl) per example in nats on `ds`, binarized with a fixed seed so epochs are comparable
    (conditional on the labels of `ds` for a conditional model). Under DDP each rank takes every world-th
    example of a batch and its rows of the noise drawn for the whole batch: the numbers of one process."""
    from vaekit.evaluate import eval_batches
    from vaekit.models import conditioned
    from vaekit.objectives import elbo

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    # validation must not perturb the training noise (exact resume): manual_seed reseeds every device, so the
    # device's generator is put back too (else on CUDA each epoch's training noise restarted from one state)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seeds.val_noise(cfg.seed))
        for x, y in eval_batches(ds, 1000, cfg.binarize, seeds.val_binarize(cfg.seed), device, labels=True):
            mine = slice(rank, None, world)  # this rank's share of a batch binarized (its noise drawn) as in 1 process
            eps = shard_noise(len(x), model.latent_dim, 1, mine, world, torch.float32, device) if model.is_vae else None
            x = x[mine]
            if not len(x):
                continue
            t = elbo(conditioned(model, None if y is None else y[rank::world]), x, eps)
            sums += torch.stack([t.elbo.sum(), t.recon.sum(), t.kl.sum(), t.elbo.new_tensor(float(len(x)))]).double()
    all_sum(sums, world)
    model.train()
    return (sums[:3] / sums[3]).tolist()


@torch.inference_mode()
def fit_ae_codes(model, ds: Dataset, device) -> None:
    """An AE generates from a Gaussian fitted to its training codes; fit it once training is done."""
    from vaekit.evaluate import posterior_means

    model.eval()
    model.fit_code_gaussian(posterior_means(model, ds, 1000, device))
