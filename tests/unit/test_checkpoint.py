"""checkpoint: the atomic save/load round trip (weights, Adam, every RNG, extra tensors), refusals of a
checkpoint that does not fit, the run-folder policy (prepare_out, stray temps) and the one resume policy."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vaekit import checkpoint as ckpt
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.errors import VaekitError
from vaekit.models import build_model


def _model(latent=3, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=latent))


def _trained_step(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, _ = model(torch.bernoulli(torch.full((5, 1, 4, 4), 0.3)))
    loss.mean().backward()
    opt.step()
    return opt


def test_round_trip_restores_weights_adam_rngs_and_extra(tmp_path):
    model = _model()
    opt = _trained_step(model)
    gen = torch.Generator().manual_seed(7)
    torch.rand(4, generator=gen)  # not at its seed's start
    np.random.seed(3)
    random.seed(4)
    file = tmp_path / "checkpoint" / "state.safetensors"
    ckpt.save(file, model, opt, {"step": 12, "best": -1.5}, {"order": gen.get_state()}, {"perm": torch.arange(6)})
    want = (torch.rand(3, generator=gen), np.random.rand(3), [random.random() for _ in range(3)])

    other = _model(seed=1)  # different weights, a fresh optimizer, RNGs moved on
    opt2 = torch.optim.Adam(other.parameters(), lr=1e-2)
    np.random.seed(99)
    random.seed(99)
    meta, rngs, extra = ckpt.load(file, other, opt2)
    assert meta == {"step": 12, "best": -1.5}
    assert torch.equal(extra["perm"], torch.arange(6)) and set(rngs) == {"order"}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)
    g2 = torch.Generator()
    ckpt.restore_generators(rngs, {"order": g2}, file, "model")
    got = (torch.rand(3, generator=g2), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    assert list(file.parent.iterdir()) == [file]  # the temp file of the atomic write is gone


def test_a_checkpoint_of_another_model_is_a_one_line_error(tmp_path):
    model = _model()
    file = tmp_path / "state.safetensors"
    ckpt.save(file, model, _trained_step(model), {}, {})
    wider = _model(latent=5)
    with pytest.raises(VaekitError, match="checkpoint does not match this model"):
        ckpt.load(file, wider, torch.optim.Adam(wider.parameters()))
    with pytest.raises(VaekitError, match="does not match this classifier"):
        ckpt.restore_generators({}, {"order": torch.Generator()}, file, "classifier")


def test_prepare_out_never_clobbers_a_run_unless_told(tmp_path):
    out = tmp_path / "run"
    ckpt.prepare_out(out, resume=False, overwrite=False)
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(VaekitError, match="already exists"):
        ckpt.prepare_out(out, resume=False, overwrite=False)
    assert (out / "metrics.jsonl").exists()
    with pytest.raises(VaekitError, match="no checkpoint"):
        ckpt.prepare_out(out, resume=True, overwrite=False)
    ckpt.prepare_out(out, resume=False, overwrite=True)
    assert out.is_dir() and not any(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(VaekitError, match="not a folder"):
        ckpt.prepare_out(tmp_path / "file", resume=False, overwrite=True)


def test_stray_temps_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ckpt.CKPT_DIR).mkdir()
    keep = [tmp_path / "model.safetensors", tmp_path / ckpt.CKPT_DIR / ckpt.CKPT_FILE, tmp_path / "a.tmp"]
    stray = [tmp_path / ".model.safetensors.x1.tmp", tmp_path / ckpt.CKPT_DIR / ".state.safetensors.y2.tmp"]
    for p in keep + stray:
        p.write_text("x")
    ckpt.remove_stray_temps(tmp_path)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stray)


@dataclass(frozen=True)
class _Cfg:
    epochs: int = 10
    lr: float = 1e-3
    seed: int = 0


def test_merge_on_resume_takes_allowed_changes_and_refuses_the_rest():
    saved = _Cfg(epochs=5, lr=1e-3, seed=4)
    assert ckpt.merge_on_resume(saved, _Cfg(epochs=9, seed=4), {"epochs"}, ("epochs",)) == _Cfg(9, 1e-3, 4)
    with pytest.raises(VaekitError, match=r"--seed cannot change on resume \(the run has 4, given 5\)"):
        ckpt.merge_on_resume(saved, _Cfg(seed=5), {"seed"}, ("epochs",))
    # given=None: a value at its default counts as not given, so the saved one stays
    assert ckpt.merge_on_resume(saved, _Cfg(), None, ("epochs",)) == saved
    assert ckpt.merge_on_resume(saved, _Cfg(lr=0.5), set(), ()) == saved  # lr was not given


def test_resume_config_keeps_the_architecture_and_the_saved_training(tmp_path):
    saved = RunConfig(ModelConfig(latent_dim=7), TrainConfig(epochs=3, lr=2e-3, seed=9))
    (tmp_path / "config.json").write_text(saved.to_json())
    with pytest.raises(VaekitError, match="nothing to resume"):
        ckpt.resume_config(tmp_path, saved, None)
    ckpt.path(tmp_path).parent.mkdir()
    ckpt.path(tmp_path).write_bytes(b"")
    more = RunConfig(ModelConfig(), TrainConfig(epochs=6))
    got = ckpt.resume_config(tmp_path, more, {"epochs"})
    assert got.model.latent_dim == 7 and got.train.epochs == 6 and got.train.lr == 2e-3 and got.train.seed == 9
    with pytest.raises(VaekitError, match="--latent-dim cannot change on resume.*another --out"):
        ckpt.resume_config(tmp_path, RunConfig(ModelConfig(latent_dim=8), TrainConfig()), {"latent_dim"})


def test_rngs_of_each_rank_and_of_a_rank_that_was_not_there():
    """Saved by 2 ranks: rank 1 of 2 gets its own states; rank 2 of 3 (no state of its own) gets the data
    generators' states (the same on every rank) and leaves the torch RNG to its caller."""
    states = {}
    for r in range(2):
        torch.manual_seed(100 + r)
        states[f"torch.r{r}"] = torch.get_rng_state()
        states[f"order.r{r}"] = torch.Generator().manual_seed(5).get_state()
    gens = {"order": torch.Generator()}
    ckpt.restore_rngs(states, gens, 1, 2, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), states["torch.r1"]) and torch.equal(
        gens["order"].get_state(), states["order.r1"]
    )
    assert ckpt.rank_state(states, 2, 3) is None and ckpt.rank_state(states, 1, 2) is not None
    torch.manual_seed(0)
    before = torch.get_rng_state()
    gens = {"order": torch.Generator()}
    ckpt.restore_rngs(states, gens, 2, 3, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(gens["order"].get_state(), states["order.r0"])


def test_spacing_by_steps_is_the_same_on_every_rank_and_by_time_is_rank_0s_clock(monkeypatch):
    assert [ckpt.Spacing(5, r).vote(s) for r in (0, 1) for s in (4, 5, 10)] == [0, 1, 1] * 2
    assert ckpt.Spacing(0, 0).vote(5) == 0.0  # epoch ends only
    now = [100.0]
    monkeypatch.setattr(ckpt.time, "monotonic", lambda: now[0])
    s0, s1 = ckpt.Spacing("30s", 0), ckpt.Spacing("30s", 1)
    now[0] = 129.9
    assert s0.vote(1) == 0.0
    now[0] = 130.0
    assert (s0.vote(2), s1.vote(2)) == (1.0, 0.0)  # rank 0 decides; the loop takes the max over ranks
    s0.saved()
    assert s0.vote(3) == 0.0


def test_under_torchrun_a_checkpoint_of_the_same_torchrun_run_resumes_by_itself(tmp_path, monkeypatch, capsys):
    """A checkpoint written under this TORCHELASTIC_RUN_ID (the agent restarted the group, on any node) is
    resumed with no --resume; another run's, or any under torchrun's default id "none", is left to the usual
    policy (its errors), as outside torchrun."""
    out = tmp_path / "run"
    model = _model()
    opt = _trained_step(model)
    meta = {**ckpt.LoopState(epoch=1, step=17).to_meta(), ckpt.ELASTIC_RUN: "job-1"}
    ckpt.save(ckpt.path(out), model, opt, meta, {})
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert ckpt.after_restart(out, False, True) == (False, True)  # not under torchrun: as asked
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    assert ckpt.after_restart(out, False, True) == (True, False)
    assert "resuming" in capsys.readouterr().err  # rank 0 says so, with where: epoch 2, step 17
    assert ckpt.after_restart(tmp_path / "elsewhere", False, False) == (False, False)
    for other in ("job-2", "none"):
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", other)
        assert ckpt.after_restart(out, False, False) == (False, False)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert not ckpt.restarts_possible()
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert ckpt.restarts_possible()
