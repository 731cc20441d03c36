"""The values of the `vaekit` command's flags: argparse types, each a one-line error for a bad value."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from vaekit.errors import VaekitError


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def int_in(lo: int, hi: int):
    """An argparse type: an integer in lo..hi (a bound keeps a typo from reaching torch as an overflow)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {s[:40]!r}")
        return v

    return parse


MAX_IMAGES = 10_000  # -n of sample/reconstruct, --steps of interpolate: one image grid
MAX_IW_SAMPLES = 1_000_000
NPY = "; .npy: the decoded means as a float32 array (N, C, H, W), in the grid's order"
seed = int_in(0, 2**32 - 1)


def image_path(s: str) -> Path:
    """-o of the picture commands: a file Pillow can write (its format follows the extension)."""
    from PIL import Image

    p = Path(s)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{s} is a folder; give a file name such as {p / 'grid.png'}")
    if Image.registered_extensions().get(p.suffix.lower()) not in Image.SAVE:
        raise argparse.ArgumentTypeError(
            f"{s}: cannot write images as {p.suffix or 'a file without extension'!r}; use .png"
        )
    return p


def array_or_image_path(s: str) -> Path:
    """-o of sample/restyle: a .npy (the decoded means as float32 (N, C, H, W)) or a picture."""
    return Path(s) if s.lower().endswith(".npy") and not Path(s).is_dir() else image_path(s)


def label(s: str) -> int | str:
    """--label: an integer class, or "all" (checked against the model's classes by operations.parse_label)."""
    if s == "all":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a label (an integer) or 'all', got {s[:40]!r}") from None


def fpr(s: str) -> float:
    """--fpr: a false-positive rate strictly between 0 and 1 (0 flags nothing, 1 everything)."""
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is None or not 0 < v < 1:  # NaN fails the comparison too
        raise argparse.ArgumentTypeError(f"expected a false-positive rate in (0, 1), got {s[:40]!r}")
    return v


def float_in(lo: float, hi: float, what: str):
    """An argparse type: a number in (lo, hi] (NaN and infinities refused), named `what` in the error."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = None
        if v is None or not lo < v <= hi:  # NaN fails the comparison too
            raise argparse.ArgumentTypeError(f"expected {what} in ({lo:g}, {hi:g}], got {s[:40]!r}")
        return v

    return parse


temperature = float_in(0, 10, "a temperature")  # --temperature: the spread of prior draws (1 = the prior itself)
seconds = float_in(0, 86400, "seconds")  # serve --read-timeout: positive, finite, at most a day


def checkpoint_every(text: str) -> int | str:
    """--checkpoint-every: an integer is a number of steps, anything else a time ("30s", "5m": checked by
    TrainConfig.validate through checkpoint_seconds)."""
    try:
        return int(text)
    except ValueError:
        return text


def duration(text) -> float | None:
    """The seconds in a time such as "30s", "5m", "1.5h" (a positive number, then s, m or h); None for anything
    else (a bare number, 0s, -1m, 5x, "5 minutes", not a string). The one parser of --checkpoint-every's and
    --time-budget's times (checkpoint_seconds and budget_seconds word the errors)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", text.strip()) if isinstance(text, str) else None
    if m is None or float(m[1]) <= 0:
        return None
    return float(m[1]) * {"s": 1, "m": 60, "h": 3600}[m[2]]


def checkpoint_seconds(every: int | str) -> float | None:
    """The seconds between time-spaced checkpoints ("30s", "5m", "1.5h"), or None for a number of steps;
    a one-line error for anything else (a negative number, "5 minutes", a bool)."""
    if isinstance(every, int) and not isinstance(every, bool) and every >= 0:
        return None
    if (seconds := duration(every)) is None:
        from vaekit.config import _show

        raise VaekitError(
            f"--checkpoint-every must be a number of steps >= 0 (0: at epoch ends only) or a time such as "
            f"30s, 5m, 1h; got {_show(every)}",
            option="checkpoint_every",
        )
    return seconds


def budget_seconds(budget: str | None) -> float | None:
    """--time-budget in seconds, None for no budget; a one-line error for anything but a positive time with
    its unit ("20s", "60m", "1.5h"): a bare number is refused rather than guessed to be seconds."""
    if budget is None:
        return None
    if (seconds := duration(budget)) is None:
        from vaekit.config import _show

        raise VaekitError(
            f"--time-budget must be a positive time with its unit, such as 90s, 60m or 1.5h; got {_show(budget)}",
            option="time_budget",
        )
    return seconds


def out_file(s: str) -> Path:
    p = Path(s)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{s} is a folder; give a file name")
    return p


def int_list(s: str) -> list[int]:
    """--hidden/--channels: integers separated by commas or spaces; nothing between two commas (`,,`, `400,`)
    is refused rather than read as fewer layers (`--hidden ,,` used to build an MLP without hidden layers)."""
    try:
        if any(not part.strip() for part in s.split(",")):
            raise ValueError
        return [int(v) for v in s.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 400,200, got {s[:40]!r}") from None


def latent_dim(s: str) -> int | tuple[int, ...]:
    """--latent-dim: one size D (the one-layer model), or stochastic layers' sizes bottom to top, 100,50 (a
    hierarchy, hierarchy.py). Nothing between two commas is refused, as in int_list; the sizes' bounds are
    ModelConfig.validate's."""
    parts = s.split(",")
    try:
        if any(not p.strip() for p in parts):
            raise ValueError
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 20, or stochastic layers' sizes bottom to top like 100,50, got {s[:40]!r}"
        ) from None
    return sizes[0] if len(sizes) == 1 else sizes


def on_off_auto(s: str) -> bool | str:
    """--amp/--compile's value: on (also true, yes, 1), off (false, no, 0) or auto; the flag alone is on."""
    v = s.strip().lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    if v == "auto":
        return "auto"
    raise argparse.ArgumentTypeError(f"expected on, off or auto, got {s[:40]!r}")


def add_on_off_auto(parser, flag: str, hlp: str) -> None:
    """`--amp` (on), `--amp on|off|auto` and `--no-amp` (off), all into one option that defaults to None
    (not given: the config file's value, else TrainConfig's auto)."""
    dest = flag[2:].replace("-", "_")
    g = parser.add_mutually_exclusive_group()
    g.add_argument(flag, nargs="?", const=True, default=None, type=on_off_auto, metavar="on|off|auto", help=hlp)
    g.add_argument(f"--no-{flag[2:]}", dest=dest, action="store_const", const=False, help=f"the same as {flag} off")
