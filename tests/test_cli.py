"""CLI conventions and the mission command: `recon fit SCENE --views N` with no --config
picks the preset of the scene's format and protocol and says so; bare `recon` is a usage
error; --protocol/--format list their choices; --resume refuses flags it would ignore."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.optimise.presets import choose_preset

# ---- preset selection ---------------------------------------------------------------------


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(path)


def _llff(root: Path) -> Path:
    np.save(root / "poses_bounds.npy", np.zeros((20, 17)))
    return root


def _blender(root: Path, n_train: int) -> Path:
    frames = [{"file_path": f"./train/r_{i}", "transform_matrix": np.eye(4).tolist()} for i in range(n_train)]
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    (root / "transforms_test.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames[:2]}))
    return root


def _dtu(root: Path, n: int) -> Path:
    np.savez(root / "cameras_sphere.npz", **{f"world_mat_{i}": np.eye(4) for i in range(n)},
             **{f"scale_mat_{i}": np.eye(4) for i in range(n)})
    return root


def _spare(root: Path, n: int, split: bool) -> Path:
    for i in range(n):
        np.savetxt(root / f"pos_{i + 1:03d}.txt", np.eye(3, 4))
    if split:
        (root.parent / "Track1_split_dtu.json").write_text(
            json.dumps({root.name: {"input_views": [0, 1, 2], "test_views": [3, 4]}}))
    return root


def _folder(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir(parents=True)
    return root


@pytest.mark.parametrize("make, views, expected", [
    (lambda t: _llff(_folder(t, "fern")), 3, "llff3"),
    (lambda t: _blender(_folder(t, "lego"), 100), 8, "blender8"),
    (lambda t: _blender(_folder(t, "small"), 10), 3, "generic"),  # too few frames for the blender8 ids
    (lambda t: _dtu(_folder(t, "scan24"), 49), 3, "dtu3"),
    (lambda t: _dtu(_folder(t, "idr"), 12), 3, "generic"),
    (lambda t: _spare(_folder(t, "s/scan1"), 49, split=False), 3, "dtu3"),  # raw DTU projection files
    (lambda t: _spare(_folder(t, "s/scan1"), 20, split=True), 3, "spare3"),
    (lambda t: _spare(_folder(t, "s/scan1"), 20, split=True), 9, "spare9"),
])
def test_preset_follows_format_and_protocol(tmp_path, make, views, expected):
    assert choose_preset(str(make(tmp_path)), views=views).name == expected


def test_custom_captures_get_the_generic_preset(tmp_path):
    ns = _folder(tmp_path, "phone")
    (ns / "transforms.json").write_text(json.dumps({"frames": []}))
    photos = _folder(tmp_path, "photos")
    _png(photos / "a.png")
    for root in (ns, photos):
        choice = choose_preset(str(root))
        assert choice.name == "generic" and choice.protocol == "farthest"
    assert choose_preset("builtin:synthetic").name == "synthetic"
    # an explicit protocol wins over the format's usual one
    assert choose_preset(str(_llff(_folder(tmp_path, "f2"))), protocol="farthest").name == "generic"


def test_every_chosen_preset_exists_and_loads():
    from recon.optimise.config import load_config
    from recon.optimise.presets import GENERIC_PRESET, PRESET_FOR_PROTOCOL, SPARE_PRESETS, SYNTHETIC_PRESET

    names = {*PRESET_FOR_PROTOCOL.values(), *(p for _, p in SPARE_PRESETS), SYNTHETIC_PRESET, GENERIC_PRESET}
    for name in names:
        load_config(name)
    assert load_config(SYNTHETIC_PRESET).data.protocol == "llff"


class _Called(Exception):
    pass


def _capture_fit(monkeypatch) -> dict:
    """Replace the pipeline's fit with one that records its arguments and stops."""
    import recon.pipeline

    seen: dict = {}

    def fake_fit(scene, **kwargs):
        seen.update(scene=scene, **kwargs)
        raise _Called

    monkeypatch.setattr(recon.pipeline, "fit_scene", fake_fit)
    return seen


def test_fit_without_config_uses_and_prints_the_picked_preset(tmp_path, monkeypatch, capsys):
    seen = _capture_fit(monkeypatch)
    scene = _dtu(_folder(tmp_path, "scan24"), 49)
    with pytest.raises(_Called):
        main(["fit", str(scene), "--views", "3", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "config: dtu3" in out and "--config" in out
    assert seen["config"].data.protocol == "dtu" and seen["config"].data.width == 400
    # --config overrides the choice, and nothing is printed about picking
    with pytest.raises(_Called):
        main(["fit", str(scene), "--config", "fast", "--out", str(tmp_path / "run2")])
    assert "config:" not in capsys.readouterr().out
    assert seen["config"].data.protocol is None  # fast leaves the protocol to the format


# ---- conventions ---------------------------------------------------------------------------


def test_bare_recon_is_a_usage_error(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: recon") and "fit" in err


def test_protocol_and_format_choices_come_from_the_registries(capsys):
    from recon.commands import choices
    from recon.data import FORMATS
    from recon.data.splits import PROTOCOLS

    assert choices.PROTOCOLS == PROTOCOLS and choices.FORMATS == FORMATS
    with pytest.raises(SystemExit) as exc:
        main(["fit", "builtin:synthetic", "--protocol", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "farthest" in err and "llff" in err
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = capsys.readouterr().out
    assert "{auto,llff,dtu,blender8,spare,farthest}" in help_text and "nerfstudio" in help_text


@pytest.mark.parametrize("flags, named", [
    (["--views", "5"], "--views"),
    (["--config", "fast"], "--config"),
    (["--set", "optim.iterations=10"], "--set"),
    (["--protocol", "llff", "--seed", "3"], "--protocol, --seed"),
    (["--out", "elsewhere"], "--out"),
])
def test_resume_refuses_flags_it_would_ignore(tmp_path, monkeypatch, capsys, flags, named):
    seen = _capture_fit(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "scene.json").write_text(json.dumps({"scene": "builtin:synthetic"}))
    assert main(["fit", "--resume", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.yaml" in err and not seen
    # the safe ones (progress, viewer address, the run's own folder as --out) are accepted
    with pytest.raises(_Called):
        main(["fit", "--resume", str(run), "--no-progress", "--out", str(run), "--port", "9000"])
    assert seen["resume"] is True and Path(seen["out_dir"]) == run
