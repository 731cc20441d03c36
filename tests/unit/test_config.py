"""Where each training option came from (config.Options) and which option an error is about
(VaekitError.option): how `vaekit train` names the --config file in an error without reading the message."""

from __future__ import annotations

import dataclasses

import pytest

from vaekit.config import ModelConfig, Options, RunConfig, TrainConfig, split_options
from vaekit.errors import VaekitError


def test_gather_file_then_flags_over_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("latent-dim: 7\nlr: 0.002\nhidden: 64\n")
    opts = Options.gather(path, {"latent_dim": 3, "epochs": 2})
    assert opts.sources == {"latent_dim": "flags", "lr": "file", "hidden": "file", "epochs": "flags"}
    assert opts.given == {"latent_dim", "lr", "hidden", "epochs"}
    rc = opts.run_config()
    assert rc.model.latent_dim == 3 and rc.model.hidden == (64,) and rc.train.lr == 0.002 and rc.train.epochs == 2
    assert rc == split_options({"latent-dim": 7, "lr": 0.002, "hidden": 64, "latent_dim": 3, "epochs": 2}, "x")
    no_file = Options.gather(None, {"epochs": 2})
    assert no_file.sources == {"epochs": "flags"} and no_file.run_config() == RunConfig(train=TrainConfig(epochs=2))


def test_errors_while_building_name_the_file_themselves(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: ten\n")
    with pytest.raises(VaekitError) as e:
        Options.gather(path, {}).run_config()
    assert str(e.value) == f"{path}: epochs: expected an integer, got 'ten'"


def _raise(cfg):
    cfg.validate(ModelConfig()) if isinstance(cfg, TrainConfig) else cfg.validate()


def test_naming_sources_prefixes_the_file_only_for_options_from_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: -3\nlr: -1\n")
    opts = Options.gather(path, {"lr": -2.0})
    with pytest.raises(VaekitError) as e, opts.naming_sources():
        _raise(TrainConfig(epochs=-3))
    assert str(e.value) == f"{path}: --epochs must be a positive integer, got -3" and e.value.option == "epochs"
    with pytest.raises(VaekitError) as e, opts.naming_sources():  # the flag overrode the file's lr
        _raise(TrainConfig(lr=-2.0))
    assert str(e.value) == "--lr must be positive and finite, got -2.0"
    with pytest.raises(VaekitError) as e, opts.naming_sources():  # an option nobody set
        _raise(TrainConfig(batch_size=0))
    assert str(e.value) == "--batch-size must be a positive integer, got 0"
    with pytest.raises(VaekitError) as e, opts.naming_sources():  # about no option
        raise VaekitError("--epochs in words, but about no option")
    assert str(e.value) == "--epochs in words, but about no option"


# One bad value per check in ModelConfig/TrainConfig.validate, and the option each error must name.
BAD = [
    (ModelConfig(model="vea"), "model"),
    (ModelConfig(arch="cnn"), "arch"),
    (ModelConfig(likelihood="poisson"), "likelihood"),
    (ModelConfig(learn_sigma="some"), "learn_sigma"),
    (ModelConfig(activation="sine"), "activation"),
    (ModelConfig(latent_dim=0), "latent_dim"),
    (ModelConfig(latent_dim=1 << 20), "latent_dim"),
    (ModelConfig(hidden=(8, 0)), "hidden"),
    (ModelConfig(arch="conv", channels=(0,)), "channels"),
    (ModelConfig(likelihood="gaussian", sigma=1e39), "sigma"),
    (ModelConfig(arch="conv", input_shape=(10,)), "arch"),
    (ModelConfig(likelihood="gaussian", sigma=-1.0), "sigma"),
    (ModelConfig(likelihood="gaussian", sigma=0.01, min_sigma=0.1), "sigma"),
    (ModelConfig(learn_sigma="global"), "learn_sigma"),
    (ModelConfig(sigma=0.5), "sigma"),
    (ModelConfig(min_sigma=0.01), "min_sigma"),
    (ModelConfig(channels=(8,)), "channels"),
    (TrainConfig(binarize="maybe"), "binarize"),
    (TrainConfig(schedule="linear"), "schedule"),
    (TrainConfig(device="tpu"), "device"),
    (TrainConfig(epochs=0), "epochs"),
    (TrainConfig(batch_size=-1), "batch_size"),
    (TrainConfig(iw_k=10**6), "iw_k"),
    (TrainConfig(lr=1e39), "lr"),
    (TrainConfig(seed=-1), "seed"),
    (TrainConfig(threads=5000), "threads"),
    (TrainConfig(step_every=0), "step_every"),
    (TrainConfig(max_bad_steps=0), "max_bad_steps"),
    (TrainConfig(lr=0.0), "lr"),
    (TrainConfig(beta=-1.0), "beta"),
    (TrainConfig(kl_warmup=float("inf")), "kl_warmup"),
    (TrainConfig(free_bits=-1.0), "free_bits"),
    (TrainConfig(clip=-1.0), "clip"),
    (TrainConfig(weight_decay=float("nan")), "weight_decay"),
    (TrainConfig(threads=-1), "threads"),
    (TrainConfig(checkpoint_every=-1), "checkpoint_every"),
    (TrainConfig(patience=-1), "patience"),
    (TrainConfig(val_fraction=1.0), "val_fraction"),
    (TrainConfig(patience=2, val_fraction=0.0), "patience"),
    (TrainConfig(step_every=3), "step_every"),
    (TrainConfig(iw_k=2, beta=2.0), "iw_k"),
]


@pytest.mark.parametrize("cfg,option", BAD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(BAD)])
def test_each_validation_error_names_its_option(cfg, option):
    """The option is a field of the config, and the message is about that option's flag."""
    with pytest.raises(VaekitError) as e:
        _raise(cfg)
    assert e.value.option == option
    assert option in {f.name for f in dataclasses.fields(type(cfg))}
    assert str(e.value).startswith("--" + option.replace("_", "-")), str(e.value)


@pytest.mark.parametrize("name,bad", [("iw_k", 2), ("beta", 2.0), ("kl_warmup", 1.0), ("free_bits", 0.5)])
def test_vae_only_options_on_an_autoencoder(name, bad):
    with pytest.raises(VaekitError) as e:
        TrainConfig(**{name: bad}).validate(ModelConfig(model="ae"))
    assert e.value.option == name and "applies to a VAE only" in str(e.value)
