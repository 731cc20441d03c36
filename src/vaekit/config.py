"""Configuration as frozen dataclasses with a JSON round trip and one validation step.

`ModelConfig` is enough to rebuild a model's architecture; `TrainConfig` is how
it was trained. A run's config.json holds both: {"model": {...}, "train": {...}}.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from vaekit.cli_args import budget_seconds, checkpoint_seconds
from vaekit.errors import VaekitError
from vaekit.unique_keys import DuplicateKey, unique_pairs

LIKELIHOODS = ("bernoulli", "gaussian", "cbernoulli")
LEARN_SIGMA = ("none", "global", "pixel")
SCHEDULES = ("constant", "cosine", "step")
PRIORS = ("standard", "vamp", "mog")  # N(0, I); VampPrior (Tomczak & Welling 2018); a mixture of K Gaussians
ESTIMATORS = ("standard", "dreg")  # the IWAE bound's gradient: its own, or doubly reparameterized (DReG)
VAE_ONLY = (("iw_k", 1), ("beta", 1.0), ("kl_warmup", 0.0), ("free_bits", 0.0), ("estimator", "standard"))
# Sanity bounds: beyond them a value is a typo or a hostile file, and torch or numpy would fail with a
# traceback (an integer overflow, an allocation of terabytes) instead of this one-line error.
MAX_WIDTH = 1 << 16  # latent-dim, hidden and conv channel widths
MAX_LAYERS = 16  # stochastic layers of a hierarchy (--latent-dim 100,50: two)
MAX_IW_K = 5000  # importance samples per example in training (eval's default k)
MAX_COMPONENTS = 1 << 20  # a learned prior's components (a VampPrior's are also checked against the data's size)
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
FLOAT32_MAX = 3.4028234e38  # weights are float32: a larger hyperparameter overflows on the way in


@dataclass(frozen=True)
class ModelConfig:
    model: str = "vae"  # vae | ae
    arch: str = "mlp"  # mlp | conv
    input_shape: tuple[int, ...] = (1, 28, 28)
    latent_dim: int | tuple[int, ...] = 20  # D; or the sizes of stochastic layers z1..zL, bottom to top (hierarchy.py)
    hidden: tuple[int, ...] = (400,)  # MLP widths (the conv head's too)
    channels: tuple[int, ...] = (32, 64)  # conv channels, one stride-2 layer each
    activation: str = "relu"
    likelihood: str = "bernoulli"  # bernoulli | gaussian | cbernoulli
    sigma: float = 0.1  # gaussian: the fixed sigma, or the initial one when learned
    learn_sigma: str = "none"  # gaussian: none | global | pixel
    min_sigma: float = 1e-3  # a learned sigma never goes below this
    num_classes: int = 0  # a conditional model's label classes (set by --conditional from the data); 0 = none
    prior: str = "standard"  # standard | vamp | mog (priors.py)
    prior_components: int = 500  # vamp: pseudo-inputs K; mog: Gaussians K

    def validate(self) -> ModelConfig:
        from vaekit.networks import ACTIVATIONS

        _choice("model", self.model, ("vae", "ae"))
        _choice("arch", self.arch, ("mlp", "conv"))
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        _choice("learn-sigma", self.learn_sigma, LEARN_SIGMA)
        _choice("activation", self.activation, tuple(ACTIVATIONS))
        _latent_sizes(self)
        _choice("prior", self.prior, PRIORS)
        _positive("prior-components", self.prior_components, MAX_COMPONENTS)
        if self.prior != "standard" and self.model == "ae":
            raise VaekitError(f"--prior {self.prior} applies to a VAE only (an autoencoder has none)", option="prior")
        for h in self.hidden:
            _positive("hidden", h, MAX_WIDTH)
        for c in self.channels:
            _positive("channels", c, MAX_WIDTH)
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_WIDTH:
            raise VaekitError(
                f"num_classes must be an integer in 0..{MAX_WIDTH} (0: not conditional), got {_show(n)}",
                option="num_classes",
            )
        _float32(self)
        _hierarchy(self)
        if not self.input_shape or any(s <= 0 for s in self.input_shape):
            raise VaekitError(f"bad input shape {self.input_shape}")
        if self.arch == "conv" and len(self.input_shape) != 3:
            raise VaekitError(
                f"--arch conv needs image data (C, H, W); this data has shape {self.input_shape}", option="arch"
            )
        if not (0 < self.sigma < math.inf) or not (0 < self.min_sigma < math.inf):
            raise VaekitError(
                f"--sigma and min_sigma must be positive and finite, got {self.sigma} and {self.min_sigma}",
                option="sigma",
            )
        if not self.sigma > self.min_sigma:
            raise VaekitError(
                f"--sigma {self.sigma:g} must be larger than min_sigma {self.min_sigma:g} "
                f"(the floor of a Gaussian likelihood's sigma)",
                option="sigma",
            )
        defaults = ModelConfig()
        if self.likelihood != "gaussian":
            if self.learn_sigma != "none":
                raise VaekitError(
                    f"--learn-sigma {self.learn_sigma} applies only to --likelihood gaussian", option="learn_sigma"
                )
            for name in ("sigma", "min_sigma"):
                if getattr(self, name) != getattr(defaults, name):
                    raise VaekitError(
                        f"--{name.replace('_', '-')} applies only to --likelihood gaussian "
                        f"(this model's likelihood is {self.likelihood})",
                        option=name,
                    )
        if self.prior == "standard" and self.prior_components != defaults.prior_components:
            raise VaekitError(
                "--prior-components applies only to --prior vamp or mog (this model's prior is standard)",
                option="prior_components",
            )
        if self.arch == "mlp" and tuple(self.channels) != defaults.channels:
            raise VaekitError("--channels applies only to --arch conv (this model is an MLP)", option="channels")
        return self

    @property
    def latent_sizes(self) -> tuple[int, ...]:
        """The stochastic layers' sizes, bottom (z1, next to x) to top: (D,) for the one-layer model."""
        d = self.latent_dim
        return tuple(d) if isinstance(d, (tuple, list)) else (d,)


def _latent_sizes(cfg: ModelConfig) -> None:
    """latent_dim: a positive integer, or 2..MAX_LAYERS of them."""
    sizes = cfg.latent_sizes
    if len(sizes) > MAX_LAYERS:
        raise VaekitError(
            f"--latent-dim: at most {MAX_LAYERS} stochastic layers, got {len(sizes)}", option="latent_dim"
        )
    for d in sizes:
        _positive("latent-dim", d, MAX_WIDTH)
    if len(sizes) > 1 and sum(sizes) > MAX_WIDTH:
        raise VaekitError(
            f"--latent-dim: at most {MAX_WIDTH} latent values in all, got {sum(sizes)}", option="latent_dim"
        )


def _hierarchy(cfg: ModelConfig) -> None:
    """A hierarchy (more than one latent size) is an unconditional MLP VAE (hierarchy.py)."""
    sizes = cfg.latent_sizes
    if len(sizes) == 1:
        return
    shown = ",".join(map(str, sizes))
    for bad, why in (
        (cfg.model != "vae", "an autoencoder has one code layer"),
        (cfg.arch != "mlp", "the hierarchy's networks are MLPs: use --arch mlp"),
        (cfg.num_classes > 0, "a hierarchy is unconditional: drop --conditional"),
    ):
        if bad:
            raise VaekitError(
                f"--latent-dim {shown} (stochastic layers) applies to an MLP VAE only: {why}", option="latent_dim"
            )


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_cpu_bf16() -> None:
    if not cpu_has_bf16():
        raise VaekitError(
            "--amp on CPU needs native bf16 (AVX512-BF16 or AMX), which this CPU lacks "
            "(emulated bf16 is slower than fp32); drop --amp",
            option="amp",
        )


@dataclass(frozen=True)
class TrainConfig:
    data: str = "mnist"
    binarize: str = "auto"  # dynamic | static | none | auto (dynamic for bernoulli, else none)
    val_fraction: float = 0.05
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine | step
    step_every: int = 30  # step schedule: epochs between halvings
    weight_decay: float = 0.0
    clip: float = 0.0  # max gradient norm; 0 = off
    beta: float = 1.0
    kl_warmup: float = 0.0  # epochs of linear KL warm-up, 0 = off
    free_bits: float = 0.0  # nats per latent dimension, 0 = off
    iw_k: int = 1  # >1 trains on the IWAE bound
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = torch's default
    checkpoint_every: int | str = 500  # steps between mid-epoch checkpoints, or a time ("30s", "5m", "1h"); 0 = off
    patience: int = 0  # early stopping on validation ELBO; 0 = off
    max_bad_steps: int = 20  # consecutive non-finite steps before training stops
    amp: bool | str = "auto"  # bf16 autocast (CUDA, or a CPU with AVX512-BF16/AMX); auto: speed.resolve decides
    compile: bool | str = "auto"  # torch.compile the whole training step; auto: speed.resolve decides
    quiet: bool = False
    conditional: bool = False  # a conditional model of the data's labels (train() sets model.num_classes)
    estimator: str = "standard"  # standard | dreg: the IWAE bound's gradient (dreg needs iw_k > 1)
    time_budget: str | None = None  # a time ("20s", "60m", "1h") that ends training instead of epochs; None = off

    def validate(self, model: ModelConfig | None = None) -> TrainConfig:
        _choice("binarize", self.binarize, ("dynamic", "static", "none", "auto"))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("estimator", self.estimator, ESTIMATORS)
        _positive("epochs", self.epochs)
        _positive("batch-size", self.batch_size)
        _positive("iw-k", self.iw_k, MAX_IW_K)
        _float32(self)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise VaekitError(f"--seed must be an integer in 0..{MAX_SEED}, got {_show(self.seed)}", option="seed")
        if isinstance(self.threads, int) and self.threads > MAX_THREADS:
            raise VaekitError(f"--threads must be at most {MAX_THREADS}, got {_show(self.threads)}", option="threads")
        _positive("step-every", self.step_every)
        _positive("max-bad-steps", self.max_bad_steps)
        if not 0 < self.lr < math.inf:
            raise VaekitError(f"--lr must be positive and finite, got {self.lr}", option="lr")
        for name in ("beta", "kl_warmup", "free_bits", "clip", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise VaekitError(
                    f"--{name.replace('_', '-')} must be >= 0 and finite, got {getattr(self, name)}", option=name
                )
        checkpoint_seconds(self.checkpoint_every)  # a one-line error unless steps >= 0 or a time
        for name in ("threads", "patience"):
            if getattr(self, name) < 0:
                raise VaekitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}", option=name)
        if not 0 <= self.val_fraction < 1:
            raise VaekitError(f"--val-fraction must be in [0, 1), got {self.val_fraction}", option="val_fraction")
        if self.patience and not self.val_fraction > 0:
            raise VaekitError(
                "--patience stops on the validation ELBO, which needs --val-fraction > 0", option="patience"
            )
        for name in ("amp", "compile"):
            if not (isinstance(getattr(self, name), bool) or getattr(self, name) == "auto"):
                raise VaekitError(f"--{name}: expected on, off or auto, got {_show(getattr(self, name))}", option=name)
        if self.amp is True and self.device == "cpu":
            check_cpu_bf16()
        if self.schedule != "step" and self.step_every != TrainConfig.step_every:
            raise VaekitError(
                f"--step-every applies only to --schedule step (this run's schedule is {self.schedule})",
                option="step_every",
            )
        if model is not None and model.model == "ae":
            for name, default in VAE_ONLY:
                if getattr(self, name) != default:
                    raise VaekitError(
                        f"--{name.replace('_', '-')} applies to a VAE only; "
                        f"an autoencoder has no KL term or posterior to sample",
                        option=name,
                    )
        if model is not None and model.num_classes and not self.conditional:
            raise VaekitError(
                f"num_classes {model.num_classes} applies only to a conditional model: --conditional "
                f"(conditional: true) sets it from the data's labels",
                option="num_classes",
            )
        if model is not None and model.prior != "standard" and self.free_bits:
            raise VaekitError(
                f"--free-bits needs a KL per latent dimension, which --prior {model.prior} (a mixture) does not "
                "have: drop --free-bits",
                option="free_bits",
            )
        if self.iw_k > 1 and (self.free_bits or self.kl_warmup or self.beta != 1.0):
            raise VaekitError(
                "--iw-k > 1 trains on the IWAE bound, which has no separate KL term: "
                "drop --beta/--kl-warmup/--free-bits",
                option="iw_k",
            )
        if self.estimator == "dreg" and self.iw_k == 1:
            raise VaekitError(
                "--estimator dreg is a gradient of the IWAE bound: it needs --iw-k > 1", option="estimator"
            )
        if budget_seconds(self.time_budget) is not None and self.epochs != TrainConfig.epochs:
            raise VaekitError("--epochs does not apply with --time-budget, which ends the training", option="epochs")
        return self


def _choice(flag: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise VaekitError(
            f"--{flag}: {_show(value)} is not one of {', '.join(map(str, choices))}", option=flag.replace("-", "_")
        )


def _positive(flag: str, value, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VaekitError(f"--{flag} must be a positive integer, got {_show(value)}", option=flag.replace("-", "_"))
    if most is not None and value > most:
        raise VaekitError(f"--{flag} must be at most {most}, got {_show(value)}", option=flag.replace("-", "_"))


def _float32(cfg) -> None:
    """Every float field of `cfg` fits in float32 (NaN, inf and signs are the field's own checks)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and math.isfinite(v) and abs(v) > FLOAT32_MAX:
            raise VaekitError(
                f"--{f.name.replace('_', '-')} {v:g} is too large (more than float32 holds)", option=f.name
            )


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x, level):  # repr() itself refuses integers of more than 4300 digits
        return repr(x) if x.bit_length() <= 128 else f"<a {x.bit_length()}-bit integer>"


_REPR = _ShortRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 6, 6, 4, 60, 60


def _show(value) -> str:
    """repr(value) for an error message, cut short: a YAML alias bomb must not be expanded to print it."""
    return _REPR.repr(value)


def to_dict(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(cls, d: dict, where: str = "config"):
    """Build `cls` from a dict, refusing unknown keys and values of the wrong type (one-line errors)."""
    if not isinstance(d, dict):
        raise VaekitError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise VaekitError(f"{where}: unknown key {_show(key)}")
        kwargs[name] = _coerce(value, hints[name], f"{where}: {key}")
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    if hint == int | str:  # --checkpoint-every: steps or a time
        return value if isinstance(value, str) else _coerce(value, int, where)
    if hint == int | tuple[int, ...]:  # --latent-dim: one size, or a hierarchy's sizes (one size: the plain model)
        if not isinstance(value, (list, tuple)):
            return _coerce(value, int, where)
        sizes = tuple(_coerce(v, int, where) for v in value)
        if not sizes:
            raise VaekitError(f"{where}: expected an integer or a list of integers, got []")
        return sizes[0] if len(sizes) == 1 else sizes
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise VaekitError(f"{where}: expected a list of integers, got {_show(value)}")
        return tuple(_coerce(v, int, where) for v in value)
    if hint == bool | str:  # --amp, --compile: true, false or auto
        if not (isinstance(value, bool) or value == "auto"):
            raise VaekitError(f"{where}: expected true or false, or auto, got {_show(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise VaekitError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise VaekitError(f"{where}: expected an integer, got {_show(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VaekitError(f"{where}: expected a number, got {_show(value)}")
        try:
            return float(value)
        except OverflowError:  # an int beyond any float
            raise VaekitError(f"{where}: {_show(value)} is out of range") from None
    if hint is str:
        if not isinstance(value, str):
            raise VaekitError(f"{where}: expected a string, got {_show(value)}")
        return value
    return value


@dataclass(frozen=True)
class RunConfig:
    """What config.json holds: the model's architecture and how it was trained."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> str:
        return json.dumps({"model": to_dict(self.model), "train": to_dict(self.train)}, indent=2)

    @classmethod
    def from_json_file(cls, path: Path) -> RunConfig:
        try:
            d = json.loads(Path(path).read_text(), object_pairs_hook=unique_pairs)
        except DuplicateKey as e:
            raise VaekitError(f"{path}: {e}") from None
        except FileNotFoundError:
            raise VaekitError(f"{path}: missing (not a vaekit model folder)") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: JSONDecodeError, a 5000-digit int
            raise VaekitError(f"{path}: not valid JSON ({str(e).splitlines()[0].split(';')[0][:160]})") from None
        except RecursionError:
            raise VaekitError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(d, dict) or "model" not in d:
            raise VaekitError(f"{path}: not a vaekit config (no 'model' section)")
        model = from_dict(ModelConfig, d["model"], f"{path}: model")
        try:
            model.validate()
        except VaekitError as e:  # the message names a flag; the value came from this file
            raise VaekitError(f"{path}: {e}") from None
        train = from_dict(TrainConfig, d.get("train", {}), f"{path}: train")
        return cls(model, train)
