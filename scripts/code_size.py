"""The house-style size limits, measured: no function in src/vaekit over 80 lines, no file over 450.

    python scripts/code_size.py          # prints the longest function and file; exit 1 if a limit is broken

A function's length is end_lineno - lineno + 1 from the AST (decorators and docstring included, nested
functions counted in their parent too); a file's is its number of lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FUNCTION, MAX_FILE = 80, 450
ROOT = Path(__file__).resolve().parent.parent / "src" / "vaekit"


def measure(root: Path = ROOT) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(function lengths, file lengths), each a list of (lines, name), longest first."""
    functions, files = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(root.parent)
        files.append((len(text.splitlines()), str(rel)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"))
    return sorted(functions, reverse=True), sorted(files, reverse=True)


def main() -> int:
    functions, files = measure()
    too_long = [f for f in functions if f[0] > MAX_FUNCTION] + [f for f in files if f[0] > MAX_FILE]
    print(f"longest function: {functions[0][1]} ({functions[0][0]} lines; limit {MAX_FUNCTION})")
    print(f"longest file:     {files[0][1]} ({files[0][0]} lines; limit {MAX_FILE})")
    for n, name in too_long:
        print(f"over the limit: {name} ({n} lines)")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
