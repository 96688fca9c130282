"""The extension's build cache (recon/render/_ext.py): keyed on the sources' content, and
compiled from a copy inside the keyed folder, so identical sources found at two paths (two
checkouts, an installed and an editable copy) share one binary instead of rebuilding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recon.render import _ext


def _tree(root: Path, body: str = "int x;") -> Path:
    (root / "src").mkdir(parents=True)
    (root / "include" / "recon").mkdir(parents=True)
    (root / "src" / "binding.cpp").write_text(f"// binding\n{body}\n")
    (root / "src" / "cpu_raster.cpp").write_text("// raster\n")
    (root / "include" / "recon" / "math.h").write_text("// math\n")
    return root


@pytest.fixture
def fake_builder(monkeypatch, tmp_path):
    """Stands in for torch's cpp_extension.load: records what it was asked to compile."""
    calls = []

    def load(**kwargs):
        calls.append(kwargs)
        return object()

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setenv("RECON_EXTENSION_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_ext, "_want_cuda", lambda: False)
    return calls


def test_identical_sources_at_two_paths_compile_from_one_staged_copy(monkeypatch, tmp_path, fake_builder):
    a, b = _tree(tmp_path / "checkout_a"), _tree(tmp_path / "checkout_b")
    folders = []
    for tree in (a, b):
        monkeypatch.setattr(_ext, "source_dir", lambda tree=tree: tree)
        folders.append(_ext.build_dir())
        _ext._build(verbose=False)
    assert folders[0] == folders[1]  # same content -> same key
    first, second = fake_builder
    assert first["sources"] == second["sources"]  # same paths -> ninja sees nothing to rebuild
    assert first["build_directory"] == str(folders[0])
    staged = folders[0] / "sources"
    assert all(Path(s).is_relative_to(staged) for s in first["sources"])
    assert first["extra_include_paths"] == [str(staged / "include")]
    assert (staged / "include" / "recon" / "math.h").read_text() == "// math\n"
    # the checkout may disappear after the build: the cache does not depend on it
    shutil.rmtree(a)
    assert (staged / "src" / "binding.cpp").is_file()


def test_changed_sources_get_their_own_folder_and_copy(monkeypatch, tmp_path, fake_builder):
    a, b = _tree(tmp_path / "old"), _tree(tmp_path / "new", body="int y;")
    staged = []
    for tree in (a, b):
        monkeypatch.setattr(_ext, "source_dir", lambda tree=tree: tree)
        _ext._build(verbose=False)
        staged.append(_ext.build_dir() / "sources")
    assert staged[0] != staged[1]
    assert "int y;" in (staged[1] / "src" / "binding.cpp").read_text()
    assert "int y;" not in (staged[0] / "src" / "binding.cpp").read_text()


def test_two_torch_installs_of_one_version_do_not_share_a_build_folder(monkeypatch, tmp_path, fake_builder):
    """The build commands name torch's include folders: sharing one folder between two venvs made
    ninja recompile everything whenever the other venv had built last (a minute per switch)."""
    import torch

    tree = _tree(tmp_path / "checkout")
    monkeypatch.setattr(_ext, "source_dir", lambda: tree)
    folders = []
    for venv in ("venv_a", "venv_b", "venv_a"):
        monkeypatch.setattr(torch, "__file__", str(tmp_path / venv / "torch" / "__init__.py"))
        folders.append(_ext.build_dir())
    assert folders[0] != folders[1] and folders[0] == folders[2]
