"""config: where each training option came from (options.Options) and which option an error is about
(VaekitError.option), which is how `vaekit train` names the --config file in an error without reading the
message; and, property-based, arbitrary mappings, config files and config.json documents give a config or one
VaekitError line (never another exception), and every valid RunConfig survives the JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import PROPERTY_SETTINGS, ROOT, one_line
from hypothesis import given
from hypothesis import strategies as st

import vaekit
from vaekit.cli_args import checkpoint_every
from vaekit.config import (
    LIKELIHOODS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    budget_seconds,
    checkpoint_seconds,
    from_dict,
)
from vaekit.errors import VaekitError
from vaekit.networks import ACTIVATIONS
from vaekit.options import Options, load_config_file, split_options


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
    (TrainConfig(estimator="reinforce", iw_k=2), "estimator"),
    (TrainConfig(estimator="dreg"), "estimator"),  # iw_k 1: DReG is a gradient of the IWAE bound
    (TrainConfig(time_budget="60"), "time_budget"),
    (TrainConfig(time_budget="1h", epochs=3), "epochs"),
]


@pytest.mark.parametrize("cfg,option", BAD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(BAD)])
def test_each_validation_error_names_its_option(cfg, option):
    """The option is a field of the config, and the message is about that option's flag."""
    with pytest.raises(VaekitError) as e:
        _raise(cfg)
    assert e.value.option == option
    assert option in {f.name for f in dataclasses.fields(type(cfg))}
    assert str(e.value).startswith("--" + option.replace("_", "-")), str(e.value)


@pytest.mark.parametrize(
    "name,bad", [("iw_k", 2), ("beta", 2.0), ("kl_warmup", 1.0), ("free_bits", 0.5), ("estimator", "dreg")]
)
def test_vae_only_options_on_an_autoencoder(name, bad):
    with pytest.raises(VaekitError) as e:
        TrainConfig(**{name: bad}).validate(ModelConfig(model="ae"))
    assert e.value.option == name and "applies to a VAE only" in str(e.value)


# ------------------------------------------------------------------------------ arbitrary mappings, files and documents


NAMES = sorted({f.name for c in (ModelConfig, TrainConfig) for f in dataclasses.fields(c)})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


KEYS = (
    st.sampled_from(NAMES)
    | st.sampled_from([n.replace("_", "-") for n in NAMES])
    | st.text(max_size=10)
    | st.integers()
)


@PROPERTY_SETTINGS
@given(d=st.dictionaries(KEYS, JSON_VALUES, max_size=6))
def test_split_options_and_validate_arbitrary_mappings(d):
    """Flat options (a config file, flags) -> RunConfig, validated; or one error line."""
    try:
        rc = split_options(d, "run.yaml")
        rc.model.validate()
        rc.train.validate(rc.model)
    except VaekitError as e:
        one_line(e)


@PROPERTY_SETTINGS
@given(cls=st.sampled_from([ModelConfig, TrainConfig]), d=JSON_VALUES | st.dictionaries(KEYS, JSON_VALUES, max_size=6))
def test_from_dict_arbitrary_values(cls, d):
    try:
        cfg = from_dict(cls, d, "config.json: model")
        cfg.validate()
    except VaekitError as e:
        one_line(e)
    else:
        assert isinstance(cfg, cls)


@PROPERTY_SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin1")))
def test_load_config_file_arbitrary_text(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        d = load_config_file(path)
    except VaekitError as e:
        one_line(e)
        assert "run.yaml" in str(e)
    else:
        assert isinstance(d, dict)


@PROPERTY_SETTINGS
@given(
    doc=JSON_VALUES
    | st.fixed_dictionaries(
        {"model": st.dictionaries(KEYS, JSON_VALUES, max_size=4)},
        optional={"train": st.dictionaries(KEYS, JSON_VALUES, max_size=4)},
    )
)
def test_config_json_arbitrary_documents(tmp_path, doc):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    try:
        rc = RunConfig.from_json_file(path)
    except VaekitError as e:
        one_line(e)
        assert "config.json" in str(e)
    else:
        assert isinstance(rc.model, ModelConfig) and isinstance(rc.train, TrainConfig)


# ------------------------------------------------------------------------------------------------- RunConfig round trip


POS = st.integers(1, 512)


FLOATS = st.floats(0, 1e6, allow_nan=False)


@st.composite
def run_configs(draw) -> RunConfig:
    """Valid configurations: every field drawn, the cross-field rules respected."""
    arch = draw(st.sampled_from(["mlp", "conv"]))
    likelihood = draw(st.sampled_from(LIKELIHOODS))
    model_kw = dict(
        model=draw(st.sampled_from(["vae", "ae"])),
        arch=arch,
        latent_dim=draw(POS),
        input_shape=tuple(
            draw(st.lists(POS, min_size=3, max_size=3) if arch == "conv" else st.lists(POS, min_size=1, max_size=3))
        ),
        hidden=tuple(draw(st.lists(POS, max_size=3))),
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        likelihood=likelihood,
    )
    if arch == "conv":
        model_kw["channels"] = tuple(draw(st.lists(POS, min_size=1, max_size=3)))
    if likelihood == "gaussian":
        min_sigma = draw(st.floats(1e-6, 1e-2))
        model_kw.update(
            min_sigma=min_sigma,
            sigma=draw(st.floats(min_sigma * 1.01, 10.0)),
            learn_sigma=draw(st.sampled_from(["none", "global", "pixel"])),
        )
    model = ModelConfig(**model_kw)
    vae = model.model == "vae"
    iw_k = draw(st.integers(1, 50)) if vae else 1
    budget = draw(st.none() | st.sampled_from(["20s", "60m", "1.5h", "0.5s"]))
    schedule = draw(st.sampled_from(["constant", "cosine", "step"]))
    train = TrainConfig(
        data=draw(st.text(min_size=1, max_size=20)),
        binarize=draw(st.sampled_from(["dynamic", "static", "none", "auto"])),
        val_fraction=draw(st.floats(0, 0.99)),
        epochs=draw(POS) if budget is None else 10,
        batch_size=draw(POS),
        lr=draw(st.floats(1e-8, 10)),
        schedule=schedule,
        step_every=draw(POS) if schedule == "step" else 30,
        weight_decay=draw(FLOATS),
        clip=draw(FLOATS),
        beta=draw(FLOATS) if vae and iw_k == 1 else 1.0,
        kl_warmup=draw(FLOATS) if vae and iw_k == 1 else 0.0,
        free_bits=draw(FLOATS) if vae and iw_k == 1 else 0.0,
        iw_k=iw_k,
        seed=draw(st.integers(0, 2**32 - 1)),
        device=draw(st.sampled_from(["auto", "cuda"])),
        threads=draw(st.integers(0, 64)),
        checkpoint_every=draw(st.integers(0, 10**6) | st.sampled_from(["30s", "5m", "1.5h"])),
        patience=draw(st.integers(0, 10)),
        max_bad_steps=draw(POS),
        amp=draw(st.booleans()),
        quiet=draw(st.booleans()),
        estimator=draw(st.sampled_from(["standard", "dreg"])) if iw_k > 1 else "standard",
        time_budget=budget,
    )
    if train.patience and not train.val_fraction > 0:
        train = dataclasses.replace(train, patience=0)
    return RunConfig(model.validate(), train.validate(model))


@PROPERTY_SETTINGS
@given(rc=run_configs())
def test_run_config_json_round_trip(tmp_path, rc):
    path = tmp_path / "config.json"
    path.write_text(rc.to_json())
    back = RunConfig.from_json_file(path)
    assert back == rc
    assert back.to_json() == rc.to_json()
    # and through the flat options of a config file
    flat = {**dataclasses.asdict(rc.model), **dataclasses.asdict(rc.train)}
    assert split_options(json.loads(json.dumps(flat)), "run.json") == rc


@pytest.mark.parametrize(
    "value", [[[[1] * 10] * 10] * 10, 10**5000, "x" * 10**6], ids=["nested", "long-int", "long-str"]
)
def test_error_messages_stay_short(value):
    """A huge or deeply nested value is shown cut short in the one error line (an alias bomb, a long int)."""
    with pytest.raises(VaekitError) as e:
        from_dict(TrainConfig, {"seed": value}).validate()
    one_line(e.value)
    assert len(str(e.value)) < 400


def test_amp_is_refused_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(vaekit.VaekitError, match="bf16"):
        TrainConfig(amp=True, device="cpu").validate()
    TrainConfig(amp=False, device="cpu").validate()


# ------------------------------------------------------------------------------------------- conditional


def test_num_classes_round_trips_and_old_configs_load_unconditional(tmp_path):
    rc = RunConfig(ModelConfig(num_classes=10), TrainConfig(conditional=True))
    path = tmp_path / "config.json"
    path.write_text(rc.to_json())
    back = RunConfig.from_json_file(path)
    assert back == rc and back.model.num_classes == 10 and back.train.conditional
    old = json.loads(rc.to_json())
    del old["model"]["num_classes"], old["train"]["conditional"]  # a config.json from before conditional models
    path.write_text(json.dumps(old))
    back = RunConfig.from_json_file(path)
    assert back.model.num_classes == 0 and not back.train.conditional
    assert not vaekit.build_model(back.model).conditional


@pytest.mark.parametrize("bad", [-1, True, 1.5, 2**20, "10"])
def test_num_classes_out_of_range_is_a_one_line_error(tmp_path, bad):
    doc = json.loads(RunConfig().to_json())
    doc["model"]["num_classes"] = bad
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    msg = one_line(pytest.raises(VaekitError, RunConfig.from_json_file, path))
    assert "config.json" in msg and "num_classes" in msg


def test_conditional_comes_from_a_config_file_like_any_flag(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("conditional: true\nepochs: 2\n")
    opts = Options.gather(f, {})
    assert opts.run_config().train.conditional and opts.sources["conditional"] == "file"
    assert Options.gather(f, {"conditional": False}).run_config().train.conditional is False


def test_num_classes_without_conditional_is_refused():
    with pytest.raises(VaekitError, match="num_classes 4 applies only to a conditional model") as e:
        TrainConfig().validate(ModelConfig(num_classes=4))
    assert e.value.option == "num_classes"
    TrainConfig(conditional=True).validate(ModelConfig(num_classes=4))  # fine together


# ------------------------------------------------------------------------------ silent leftovers (issue 18)


@pytest.mark.parametrize("flag", ["--hidden", "--channels"])
@pytest.mark.parametrize("value", [",,", "", " ", "400,,200", "400,", ",400"])
def test_an_int_list_flag_without_a_value_between_commas_is_refused(flag, value):
    """`--hidden ,,` used to give an MLP with no hidden layer; now a one-line error naming the flag (which
    `vaekit` prints as `error: ...`, exit 2: tests/integration/test_cli_corpus.py, flag_hidden_commas)."""
    from vaekit.cli import build_parser

    msg = one_line(pytest.raises(VaekitError, build_parser().parse_args, ["train", flag, value, "--out", "x"]))
    assert flag in msg and "integers" in msg, msg


def test_int_list_flags_still_take_commas_and_spaces():
    from vaekit.cli_args import int_list

    assert int_list("400") == [400] and int_list("512,256") == [512, 256] and int_list("512, 256") == [512, 256]
    assert int_list("512 256") == [512, 256]


@pytest.mark.parametrize(
    "name, text, key",
    [
        ("run.yaml", "epochs: 1\nlr: 0.1\nepochs: 2\n", "epochs"),
        ("run.json", '{"epochs": 1, "lr": 0.1, "epochs": 2}', "epochs"),
        ("run.yaml", "latent-dim: 4\nlatent_dim: 8\n", "latent_dim"),  # two spellings of one option
        ("run.yaml", "hidden: {a: 1, a: 2}\n", "a"),  # a nested mapping (refused later anyway, but not as last-wins)
    ],
)
def test_a_config_file_with_a_key_twice_is_refused(tmp_path, name, text, key):
    path = tmp_path / name
    path.write_text(text)
    msg = one_line(pytest.raises(VaekitError, load_config_file, path))
    assert str(path) in msg and "duplicate" in msg and repr(key) in msg, msg


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: &b {epochs: 1, lr: 0.1}\nrun:\n  <<: *b\n  epochs: 2\n")
    assert load_config_file(path)["run"] == {"epochs": 2, "lr": 0.1}


def test_a_config_json_with_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(RunConfig().to_json().replace('"epochs": 10,', '"epochs": 10, "epochs": 3,'))
    msg = one_line(pytest.raises(VaekitError, RunConfig.from_json_file, path))
    assert "config.json" in msg and "duplicate" in msg and "'epochs'" in msg


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_amp_in_a_config_file_is_refused_like_the_flag(tmp_path, monkeypatch, capsys, device):
    """`amp: yes` in --config and --amp: both refused on a CPU without native bf16, with the same message (the
    file's named first). config.cpu_has_bf16 decides; patched here, so the test does not depend on this CPU."""
    import numpy as np

    from vaekit.cli import main

    monkeypatch.setattr("vaekit.config.cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device auto: the CPU
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 4, 4), dtype=np.uint8))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("amp: yes\n")
    common = ["train", "--data", str(data), "--device", device, "--epochs", "1", "--hidden", "8", "--quiet"]
    errs = []
    for how, extra in (("flag", ["--amp"]), ("file", ["--config", str(cfg)])):
        assert main([*common, *extra, "--out", str(tmp_path / how)]) == 2
        errs.append(capsys.readouterr().err)
        assert not (tmp_path / how / "config.json").exists()
    assert errs[0].startswith("error: --amp on CPU needs native bf16") and errs[0].count("\n") == 1, errs
    assert errs[1] == errs[0].replace("error: ", f"error: {cfg}: "), errs


def test_amp_in_a_config_file_is_the_flag(tmp_path):
    """`amp: yes` (YAML 1.1 reads yes/on/true as booleans) sets the option as --amp does."""
    path = tmp_path / "run.yaml"
    for text in ("amp: yes", "amp: on", "amp: true", '{"amp": true}'):
        path.write_text(text)
        assert Options.gather(path, {}).run_config() == Options.gather(None, {"amp": True}).run_config()
    assert split_options({"amp": True}, "x").train.amp is True


@pytest.mark.parametrize("every, seconds", [(0, None), (500, None), ("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0)])
def test_checkpoint_every_is_steps_or_a_time(tmp_path, every, seconds):
    """An integer is a number of steps, a string a time; either round-trips through config.json and the flag."""
    assert checkpoint_seconds(every) == seconds
    rc = RunConfig(ModelConfig(), TrainConfig(checkpoint_every=every).validate())
    (tmp_path / "config.json").write_text(rc.to_json())
    assert RunConfig.from_json_file(tmp_path / "config.json").train.checkpoint_every == every
    assert checkpoint_every(str(every)) == every
    assert split_options({"checkpoint-every": every}, "run.yaml").train.checkpoint_every == every


@pytest.mark.parametrize("bad", [-1, "5min", "0s", "-3m", "m", True, 2.5, [5]])
def test_checkpoint_every_of_neither_kind_is_a_one_line_error(bad):
    with pytest.raises(VaekitError) as e:
        TrainConfig(checkpoint_every=bad).validate()
    assert e.value.option == "checkpoint_every" and "30s, 5m, 1h" in str(e.value)
    one_line(e.value)
    with pytest.raises(VaekitError) as e:  # from a config file (a wrong type is refused as such)
        from_dict(TrainConfig, {"checkpoint_every": bad}, "run.yaml").validate()
    one_line(e.value)


@pytest.mark.parametrize("budget, seconds", [("20s", 20.0), ("60m", 3600.0), ("1.5h", 5400.0), (" 3s ", 3.0)])
def test_time_budget_is_a_time_with_its_unit(tmp_path, budget, seconds):
    """The one duration parser of --checkpoint-every; through config.json and a config file unchanged."""
    assert budget_seconds(budget) == seconds and budget_seconds(None) is None
    rc = RunConfig(ModelConfig(), TrainConfig(time_budget=budget, iw_k=4, estimator="dreg").validate(ModelConfig()))
    (tmp_path / "config.json").write_text(rc.to_json())
    assert RunConfig.from_json_file(tmp_path / "config.json") == rc
    assert split_options({"time-budget": budget, "estimator": "dreg"}, "run.yaml").train.time_budget == budget


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "5x", "0s", "-2m", "60", "5 min", 60, True, ["1h"]])
def test_time_budget_without_a_positive_time_is_a_one_line_error(bad):
    """A bare number is refused (not guessed to be seconds), as are zero, negatives and other units."""
    with pytest.raises(VaekitError) as e:
        from_dict(TrainConfig, {"time_budget": bad}, "run.yaml").validate()
    assert e.value.option == "time_budget" and "90s, 60m or 1.5h" in str(e.value)
    one_line(e.value)


def test_every_shipped_preset_loads_and_validates():
    """configs/*.yaml (the presets the README and benchmarks/quality.py use): each a valid --config file."""
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert presets, "no presets found"
    for path in presets:
        rc = split_options(load_config_file(path), path.name)
        rc.model.validate()
        rc.train.validate(rc.model)
        assert rc.train.time_budget is not None, f"{path.name}: a preset spans a time budget, not epochs"
