"""--amp auto / --compile auto: speed.resolve's documented rule, and the flags that spell it."""

import pytest
import torch

from vaekit import cli_args, speed
from vaekit.cli import build_parser
from vaekit.config import ModelConfig, TrainConfig
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.options import split_options

CPU = torch.device("cpu")
BIG = build_model(ModelConfig())  # 784-400-20: 500 MFLOP a step at batch 128
TINY = build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2))


def test_step_flops_of_the_mlp_vae():
    assert speed.step_flops(BIG, 128) == 6 * 128 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_only_where_native_and_the_step_is_big(monkeypatch, native):
    monkeypatch.setattr(speed, "native_bf16", lambda device: native)
    cfg, said = speed.resolve(TrainConfig(), BIG, CPU, 128, 100)
    assert cfg.amp is native and "amp" in said
    assert speed.resolve(TrainConfig(), TINY, CPU, 128, 100)[0].amp is False  # tiny models stay fp32
    assert speed.resolve(TrainConfig(), BIG, CPU, 16, 100)[0].amp is False  # 62 MFLOP a step: fp32 is faster
    assert speed.resolve(TrainConfig(amp=False), BIG, CPU, 128, 100)[0].amp is False  # explicit wins


def test_compile_auto_for_long_runs_where_it_applies(monkeypatch):
    monkeypatch.setattr(speed, "can_compile", lambda device: True)
    n = speed.COMPILE_MIN_STEPS
    assert speed.resolve(TrainConfig(amp=False), TINY, CPU, 8, n - 1)[0].compile is False
    assert speed.resolve(TrainConfig(amp=False), TINY, CPU, 8, n)[0].compile is True
    assert speed.resolve(TrainConfig(amp=False, time_budget="15m"), TINY, CPU, 8, 10)[0].compile is True
    assert speed.resolve(TrainConfig(amp=False, time_budget="5m"), TINY, CPU, 8, 10**6)[0].compile is False
    assert speed.resolve(TrainConfig(amp=False), TINY, CPU, 8, n, world=2)[0].compile is False
    assert speed.resolve(TrainConfig(amp=False, compile=False), TINY, CPU, 8, n) == (
        TrainConfig(amp=False, compile=False),
        None,
    )
    monkeypatch.setattr(speed, "can_compile", lambda device: False)
    assert speed.resolve(TrainConfig(amp=False), TINY, CPU, 8, n)[0].compile is False


@pytest.mark.parametrize(
    "argv, amp",
    [([], None), (["--amp"], True), (["--amp", "auto"], "auto"), (["--amp", "off"], False), (["--no-amp"], False)],
)
def test_amp_flag_spellings(argv, amp):
    args = build_parser().parse_args(["train", "--out", "r", *argv, "--compile"])
    assert args.amp == amp and args.compile is True


def test_bad_amp_values_are_refused():
    with pytest.raises(VaekitError, match="on, off or auto"):
        build_parser().parse_args(["train", "--out", "r", "--amp", "maybe"])
    with pytest.raises(VaekitError, match="true or false, or auto"):
        split_options({"amp": "yes"}, "run.yaml")
    assert split_options({"amp": "auto", "compile": False}, "run.yaml").train.amp == "auto"
    assert cli_args.on_off_auto("ON") is True
    with pytest.raises(VaekitError, match="--compile"):
        TrainConfig(compile=1).validate()
