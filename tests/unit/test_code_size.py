"""The house size limits (STYLE.md, issue 12): no function in src/vaekit over 80 lines, no file over 450."""

from __future__ import annotations

import importlib.util

from conftest import ROOT


def _code_size():
    spec = importlib.util.spec_from_file_location("code_size", ROOT / "scripts" / "code_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_function_over_80_lines_and_no_file_over_450():
    cs = _code_size()
    functions, files = cs.measure(ROOT / "src" / "vaekit")
    assert len(files) > 20 and functions  # it measured the package, not an empty folder
    assert [f for f in functions if f[0] > cs.MAX_FUNCTION] == []
    assert [f for f in files if f[0] > cs.MAX_FILE] == []


def test_the_scan_sees_a_long_function(tmp_path):
    """The measure itself: a 90-line function and a 500-line file are reported with their lengths."""
    body = "\n".join(f"    x{i} = {i}" for i in range(89))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n" + "# filler\n" * 410)
    functions, files = _code_size().measure(tmp_path)
    assert functions[0][0] == 90 and functions[0][1].endswith(" f")
    assert files[0][0] == 500
