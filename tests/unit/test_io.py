"""io.run_names: the one way the report and the explorer name a set of runs."""

from __future__ import annotations

from vaekit.io import run_names


def test_names_are_folder_names_made_unique_by_parents(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_names(["runs/vae", "runs/ae", "runs/vae2d/"]) == ["vae", "ae", "vae2d"]
    # the same name in two folders: both get their parent (not just the second one)
    assert run_names(["runs/a/vae", "runs/b/vae", "runs/a/ae"]) == ["a/vae", "b/vae", "ae"]
    # parents of the same name too: as many folders as it takes
    assert run_names(["x/a/vae", "y/a/vae"]) == ["x/a/vae", "y/a/vae"]
    # the same folder twice (however spelled): a ' per repeat
    assert run_names(["runs/vae", "runs/../runs/vae", tmp_path / "runs" / "vae"]) == ["vae", "vae'", "vae''"]
    # "." is named by its folder, never "."
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert run_names(["."]) == ["here"]


def test_names_never_reach_the_root():
    assert run_names(["/vae", "/a/vae"]) == ["vae", "a/vae"]
    names = run_names(["/p/q/vae", "/r/q/vae", "/q/vae"])
    assert len(set(names)) == 3 and not any(n.startswith("/") for n in names)
