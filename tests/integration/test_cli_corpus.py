"""The bad-input corpus (issue 8): every case in tests/corpus/cases.json ends in exit 2 and one line on
stderr, `error: ...`, naming the file or flag and the problem -- no traceback, no warning, no output
files, and nothing in an existing run folder changed (bytes and mtimes).

The corpus is written by scripts/make_corpus.py: the tests run on a copy the script writes afresh into a
temp folder, and one test checks that the checked-in tests/corpus/ is what the script writes (regenerate
with `python scripts/make_corpus.py`). Cases run `vaekit.cli.main` in this process (milliseconds each); a
few also run the real `python -m vaekit` to show the process behaves the same.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, assert_clean_error, run_cli

CORPUS = ROOT / "tests" / "corpus"
CASES = json.loads((CORPUS / "cases.json").read_text())
BY_ID = {c["id"]: c for c in CASES}
# through a real process: a warning Pillow would print, an allocation a header asks for, a forged
# safetensors header, and --overwrite with a flag that used to be checked only after the old run was deleted
SUBPROCESS = ["img_bomb_warning", "npz_member_claims_huge", "model_forged_offsets", "flag_negative_seed_overwrite"]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under `folder`: (kind, sha256 of a file's bytes, mtime in ns)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(folder))] = ("file" if p.is_file() else "dir", digest, st.st_mtime_ns)
    out["."] = ("dir", None, folder.stat().st_mtime_ns)
    return out


def argv_for(case: dict, corpus: Path, run: Path, tmp: Path) -> list[str]:
    subs = {"{corpus}": str(corpus), "{run}": str(run), "{tmp}": str(tmp)}
    out = []
    for a in case["argv"]:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def apply_patch(run: Path, patch: list[dict], corpus: Path) -> None:
    for p in patch:
        target = run / p["path"]
        if p["op"] == "truncate":
            target.write_bytes(target.read_bytes()[: p["size"]])
        elif p["op"] == "delete":
            target.unlink()
        elif p["op"] == "copy":
            shutil.copyfile(corpus / p["src"], target)
        else:
            raise ValueError(p["op"])


def _generator():
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "scripts" / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The corpus as the script writes it now (gzip and PNG bytes may differ with the zlib version)."""
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    _generator().build(out)
    return out


@pytest.fixture(scope="module")
def shared_run(vae_run, tmp_path_factory):
    """A copy of the session's real run (2 epochs of real MNIST), shared by the cases that only read it."""
    run = tmp_path_factory.mktemp("corpus") / "run"
    shutil.copytree(vae_run, run)
    return run


def _run_for(case: dict, shared: Path, vae_run: Path, tmp_path: Path, corpus: Path) -> Path:
    if "patch" not in case:
        return shared
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    apply_patch(run, case["patch"], corpus)
    return run


def _check(
    case: dict, p: subprocess.CompletedProcess, run: Path, before: dict, out: Path, shared: Path, vae_run: Path
) -> None:
    after = snapshot(run)
    if run == shared and after != before:  # put it back, so one failure does not fail every later case
        shutil.rmtree(run)
        shutil.copytree(vae_run, run)
    assert_clean_error(p, case["needles"][0])  # the file or flag
    problem = re.sub(r"\S*/\S*", "", p.stderr)  # the problem's words count only outside the paths
    for n in case["needles"][1:]:
        assert n.lower() in problem.lower(), (n, p.stderr)
    assert p.stdout == "", p.stdout
    assert after == before, f"{case['id']}: the run folder changed: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    )
    assert not any(out.iterdir()), f"{case['id']}: left {sorted(p.name for p in out.iterdir())}"


@pytest.mark.parametrize("case", CASES, ids=list(BY_ID))
def test_case(case, corpus, shared_run, vae_run, tmp_path, capsys):
    from vaekit.cli import main

    run = _run_for(case, shared_run, vae_run, tmp_path, corpus)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(run)
    argv = argv_for(case, corpus, run, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for quiet in (ResourceWarning, DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", quiet)  # what a real process ignores by default
        rc = main(argv)
    cap = capsys.readouterr()
    _check(case, subprocess.CompletedProcess(argv, rc, cap.out, cap.err), run, before, out, shared_run, vae_run)
    assert not caught, f"a real process would print this warning on stderr too: {caught[0].message}"


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_case_in_a_real_process(case_id, corpus, shared_run, vae_run, tmp_path):
    case = BY_ID[case_id]
    run = _run_for(case, shared_run, vae_run, tmp_path, corpus)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(run)
    p = run_cli(*argv_for(case, corpus, run, out), timeout=120, process=True)
    _check(case, p, run, before, out, shared_run, vae_run)


# ------------------------------------------------------------------------------------- the corpus itself


def test_the_checked_in_corpus_is_what_the_script_writes(corpus):
    """Same cases, same files, same bytes -- except where zlib compressed them (gzip, PNG), whose bytes
    may change with the zlib build; the tests above run on the fresh copy either way."""

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    fresh, checked_in = files(corpus), files(CORPUS)
    assert sorted(fresh) == sorted(checked_in), "run: python scripts/make_corpus.py"
    assert json.loads(fresh["cases.json"]) == CASES, "run: python scripts/make_corpus.py"
    changed = [k for k in fresh if fresh[k] != checked_in[k] and not k.endswith((".gz", ".png"))]
    assert not changed, f"run: python scripts/make_corpus.py ({changed[:5]} differ)"


def test_corpus_size_and_coverage():
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 1_000_000, size
    assert len(CASES) >= 30
    prefixes = {c["id"].split("_")[0] for c in CASES}
    assert {"idx", "gz", "npy", "npz", "img", "cfg", "flag", "model", "resume"} <= prefixes
    for c in CASES:  # needles: the file or flag, then at least one word of the problem
        assert len(c["needles"]) >= 2 and c["about"], c["id"]


def test_the_controls_are_good(corpus, capsys):
    """The corpus's good data file and tiny model folder work: a case fails for its one defect."""
    import vaekit
    from vaekit.cli import main

    ds = vaekit.data.load(corpus / "data" / "good.npz")
    assert ds.shape == (1, 8, 8) and len(ds) == 60
    model = vaekit.load(corpus / "models" / "good")
    assert model.sample(2).shape == (2, 1, 8, 8)
    assert (
        main(
            [
                "eval",
                str(corpus / "models" / "good"),
                "--data",
                str(corpus / "data" / "good.npz"),
                "--iw-samples",
                "0",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n"] == 60
