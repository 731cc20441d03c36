"""threshold.json: a calibrated threshold of vaekit.anomaly's score, with the calibration statistics the score
is computed against (the sorted components of the held-out inliers), bound to one model's weights.

`vaekit score --fpr` and `Detector.save` write it atomically; `load_threshold` refuses, in one line, a file that
is damaged, another model's, or another score's (one written before the score was calibrated, too).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vaekit import io
from vaekit.errors import VaekitError

THRESHOLD_FILE = "threshold.json"
LIKELIHOOD, ORIENTATION = "neg_elbo - complexity", "orientation"
COMPONENTS = (LIKELIHOOD, ORIENTATION)
SCORE = f"-log min tail p of ({LIKELIHOOD}, {ORIENTATION})"
COMPLEXITY = "adaptive context model (JBIG 10-pixel template, KT estimator) of the binarized image, in nats"
COMPLEXITY_GREY = "zlib level 9 (raw DEFLATE, Z_FILTERED), the shorter of the row and column scans, in nats"


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold: examples whose `score` exceeds `value` are outliers. At most `fpr` of the
    `n` calibration examples (`calibrated_on`) scored above it. `calibration`: {component: its n values on
    those examples, sorted}, what the score's tail p-values are computed against."""

    value: float
    fpr: float
    calibrated_on: str
    n: int
    model_sha256: str
    score: str = SCORE
    complexity: str = COMPLEXITY
    binarize: str = "none"
    seed: int = 0
    calibration: dict[str, list[float]] | None = field(default=None, compare=True)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.calibration.items()}


def check_fpr(fpr) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1:
        raise VaekitError(f"--fpr must be a false-positive rate in (0, 1), got {fpr!r}")
    return float(fpr)


def calibrate(scores: torch.Tensor, fpr: float) -> float:
    """The smallest observed score with at most a fraction `fpr` of `scores` above it."""
    fpr = check_fpr(fpr)
    s = torch.sort(scores.double()).values
    n = len(s)
    m = int(fpr * n)  # the most examples allowed above: the largest m with m / n <= fpr, as floats compare
    while m < n and (m + 1) / n <= fpr:
        m += 1
    while m > 0 and m / n > fpr:
        m -= 1
    return float(s[n - 1 - m])


def model_sha256(model) -> str:
    """A fingerprint of the model's weights (a threshold belongs to one model)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_threshold(folder: str | Path, t: Threshold) -> Path:
    path = Path(folder) / THRESHOLD_FILE
    io.atomic_write_text(path, json.dumps(asdict(t), indent=1) + "\n")
    return path


def load_threshold(folder: str | Path, model) -> Threshold | None:
    """The run's threshold.json (None if there is none); a one-line error if it is damaged, belongs to
    another model or another score (a file written before the score was calibrated, too)."""
    path = Path(folder) / THRESHOLD_FILE
    if not path.exists():
        return None
    how = "calibrate again with --fpr"
    try:
        d = json.loads(path.read_text())
        t = Threshold(**d)
        ok = (
            _number(t.value)
            and math.isfinite(t.value)
            and _number(t.fpr)
            and 0 < t.fpr < 1
            and _integer(t.n, 1, 2**63)
            and isinstance(t.calibrated_on, str)
            and t.binarize in ("none", "static", "dynamic")  # what Detector.load will evaluate with
            and _integer(t.seed, 0, 2**63)
        )
    except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError):
        raise VaekitError(f"{path}: not a valid threshold file; {how}") from None
    if not ok:
        raise VaekitError(f"{path}: not a valid threshold file; {how}")
    if t.model_sha256 != model_sha256(model):
        raise VaekitError(f"{path}: calibrated for another model (its weights differ); {how}")
    if t.score != SCORE or t.complexity not in (COMPLEXITY, COMPLEXITY_GREY):
        raise VaekitError(f"{path}: calibrated for another score ({t.score!r}); {how}")
    if not _calibration_ok(t.calibration, t.n):
        raise VaekitError(f"{path}: not a valid threshold file (its calibration); {how}")
    return t


def _calibration_ok(cal, n: int) -> bool:
    """{component: n finite numbers, sorted} for exactly the score's components."""
    if not isinstance(cal, dict) or set(cal) != set(COMPONENTS):
        return False
    for v in cal.values():
        if not isinstance(v, list) or len(v) != n or not all(_number(a) and math.isfinite(a) for a in v):
            return False
        if any(a > b for a, b in zip(v, v[1:])):
            return False
    return True


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi
