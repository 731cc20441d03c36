"""runlog: metrics.jsonl rows, the best weights, the plain per-epoch line (stderr is not a terminal under
pytest), silence for quiet runs and other ranks, and cutting metrics back to a checkpoint."""

from __future__ import annotations

import json

import torch

from vaekit import io
from vaekit.runlog import RunLog, truncate_metrics

ROW = {
    "epoch": 2,
    "step": 40,
    "seconds": 3.0,
    "epoch_seconds": 1.5,
    "train_loss": 101.0,
    "train_elbo": -101.0,
    "train_recon": -90.0,
    "train_kl": 11.0,
    "val_elbo": -99.5,
}


def test_end_epoch_writes_the_row_the_best_weights_and_one_line(tmp_path, capsys):
    model = torch.nn.Linear(2, 3)
    with RunLog(tmp_path, rank=0, quiet=False, epochs=5) as log:
        log.end_epoch(ROW, model)
        log.end_epoch({**ROW, "epoch": 3}, None)  # not the best: the weights file keeps epoch 2's
    assert [r["epoch"] for r in io.read_metrics(tmp_path)] == [2, 3]
    assert torch.equal(io.load_tensors(tmp_path / io.WEIGHTS)["weight"], model.weight)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "epoch 2/5  train elbo -101.00  kl 11.00  val elbo -99.50  (1.5s)"
    assert len(lines) == 2


def test_the_classifier_line_and_a_quiet_or_other_rank_log(tmp_path, capsys):
    row = {"epoch": 1, "seconds": 2.0, "epoch_seconds": 2.0, "train_loss": 0.25, "test_accuracy": 0.97}
    RunLog(None, 0, quiet=False, epochs=3, what="classifier ", bar=False).end_epoch(row)
    assert capsys.readouterr().err == "classifier epoch 1/3  loss 0.2500  test accuracy 0.9700  (2.0s)\n"
    RunLog(tmp_path, 0, quiet=True, epochs=3).end_epoch(ROW)
    RunLog(tmp_path / "r1", 1, quiet=False, epochs=3).end_epoch(ROW)  # rank 1 neither prints nor writes
    assert capsys.readouterr().err == ""
    assert len(io.read_metrics(tmp_path)) == 1 and not (tmp_path / "r1").exists()


def test_truncate_metrics_keeps_the_rows_of_the_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    truncate_metrics(tmp_path, 2)
    assert [r["epoch"] for r in io.read_metrics(tmp_path)] == [1, 2]
    truncate_metrics(tmp_path / "missing", 1)  # nothing to cut: no error, no file
    assert not (tmp_path / "missing").exists()
