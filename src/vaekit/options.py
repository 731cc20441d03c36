"""A `--config` file (YAML or JSON) and the flags over it: `load_config_file` (a flat mapping, duplicate keys
refused), `split_options` (flat options -> RunConfig) and `Options` (the options of `vaekit train` and where
each came from, so an error names the file a bad value came from)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from vaekit.config import ModelConfig, RunConfig, TrainConfig, _show, from_dict
from vaekit.errors import VaekitError
from vaekit.unique_keys import DuplicateKey, unique_key_loader


def load_config_file(path: Path) -> dict:
    """A flat mapping of option -> value from a YAML or JSON file (`--config run.yaml`)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise VaekitError(f"{path}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
        raise VaekitError(f"{path}: config is not text") from None
    try:
        d = yaml.load(text, Loader=unique_key_loader())  # JSON is YAML; safe_load's loader, keys checked
    except DuplicateKey as e:
        raise VaekitError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise VaekitError(
            f"{path}: not valid YAML/JSON" + (f" (line {line + 1})" if line is not None else "")
        ) from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise VaekitError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0].split(';')[0][:160]})") from None
    except RecursionError:
        raise VaekitError(f"{path}: not valid YAML/JSON (nested too deeply)") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise VaekitError(f"{path}: expected a mapping of option: value, got {type(d).__name__}")
    spelt: dict[str, object] = {}
    for key in d:  # `latent-dim` and `latent_dim` are one option
        name = str(key).replace("-", "_")
        if name in spelt:
            raise VaekitError(f"{path}: duplicate key {_show(name)} (given as {_show(spelt[name])} and {_show(key)})")
        spelt[name] = key
    return d


def split_options(options: dict, where: str) -> RunConfig:
    """Flat options (CLI flags or a config file) -> RunConfig, each key to the dataclass it belongs to."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    m, t = {}, {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name in model_names:
            m[name] = value
        elif name in train_names:
            t[name] = value
        else:
            raise VaekitError(f"{where}: unknown option {_show(key)}")
    return RunConfig(from_dict(ModelConfig, m, where), from_dict(TrainConfig, t, where))


@dataclass(frozen=True)
class Options:
    """The options of `vaekit train` and where each came from: a `--config` file, then the flags over it.

    `values`: option -> value, the file's keys as spelled there (`latent-dim` or `latent_dim`), then the
    flags'. `sources`: each option's field name (`latent_dim`) -> "file" or "flags", the last that set it.
    """

    values: dict
    sources: dict[str, str]
    file: Path | None = None

    @classmethod
    def gather(cls, file: Path | None, flags: dict) -> Options:
        """`file`'s options (YAML or JSON, see load_config_file; None: no file) with `flags` (field name ->
        value, only the flags given) overriding them."""
        values = load_config_file(file) if file is not None else {}
        sources = {str(k).replace("-", "_"): "file" for k in values}
        for name, value in flags.items():
            values[name] = value
            sources[name] = "flags"
        return cls(values, sources, file)

    @property
    def given(self) -> set[str]:
        """The field names the user set, in the file or as flags (what `train(given=...)` checks on resume)."""
        return set(self.sources)

    def run_config(self) -> RunConfig:
        """The RunConfig these options describe (not yet validated: that needs the data's shape)."""
        return split_options(self.values, str(self.file) if self.file is not None else "flags")

    @contextlib.contextmanager
    def naming_sources(self):
        """Inside this block, an error about an option (VaekitError.option) whose value came from the file
        names the file first: `run.yaml: --epochs must be a positive integer, got -3`."""
        try:
            yield
        except VaekitError as e:
            if e.option is not None and self.sources.get(e.option) == "file":
                raise VaekitError(f"{self.file}: {e}", option=e.option) from None
            raise
