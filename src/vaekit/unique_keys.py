"""JSON and YAML parsing that refuses a key given twice in one mapping: `json` and PyYAML keep the last one
silently, so `epochs: 1 ... epochs: 50` in a config file would train 50 epochs without a word."""

from __future__ import annotations

import contextlib
import functools
import reprlib


class DuplicateKey(Exception):
    """A mapping names a key twice; the message says which (and on which line, for YAML)."""

    def __init__(self, key, line: int | None = None):
        super().__init__(f"duplicate key {reprlib.repr(key)}" + (f" (line {line + 1})" if line is not None else ""))


def unique_pairs(pairs: list) -> dict:
    """json's object_pairs_hook: the object as a dict, or DuplicateKey."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise DuplicateKey(k)
        d[k] = v
    return d


@functools.cache
def unique_key_loader():
    """yaml.SafeLoader that raises DuplicateKey for a key twice in one mapping (`yaml.load(text, Loader=...)`).
    A merge (`<<: *base`) may still be overridden; an unhashable key is left to SafeLoader's own error."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    with contextlib.suppress(TypeError):  # unhashable: SafeLoader refuses it next
                        if key in seen:
                            raise DuplicateKey(key, key_node.start_mark.line)
                        seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader
