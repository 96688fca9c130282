"""`--config quality`: the quality variant (configs/quality-<preset>.yaml) of the preset the
scene would get, in `recon fit` and `recon bench`; and the validation views the presets are
tuned on (benchmarks/validation_fit.py), which must never be training or test views."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.errors import ConfigError
from recon.optimise.config import load_config, preset_names
from recon.optimise.presets import QUALITY_PREFIX, choose_preset, quality_variant

ROOT = Path(__file__).resolve().parents[1]


def _dtu(root: Path) -> Path:
    root.mkdir(parents=True)
    np.savez(root / "cameras_sphere.npz", **{f"world_mat_{i}": np.eye(4) for i in range(49)},
             **{f"scale_mat_{i}": np.eye(4) for i in range(49)})
    return root


def _blender(root: Path) -> Path:
    root.mkdir(parents=True)
    frames = [{"file_path": f"./train/r_{i}", "transform_matrix": np.eye(4).tolist()} for i in range(100)]
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    (root / "transforms_test.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames[:2]}))
    return root


def _llff(root: Path) -> Path:
    root.mkdir(parents=True)
    np.save(root / "poses_bounds.npy", np.zeros((20, 17)))
    return root


@pytest.mark.parametrize("make, preset", [(_dtu, "dtu3"), (_blender, "blender8"), (_llff, "llff3")])
def test_quality_is_the_variant_of_the_picked_preset(tmp_path, make, preset):
    scene = make(tmp_path / "scene")
    fast, quality = choose_preset(str(scene)), choose_preset(str(scene), quality=True)
    assert fast.name == preset and quality.name == f"quality-{preset}"
    assert "quality" in quality.reason and quality.protocol == fast.protocol
    base, long = load_config(fast.name), load_config(quality.name)
    # same protocol and resolution as the preset it varies, a larger budget
    assert (long.data.protocol, long.data.views, long.data.width) == (base.data.protocol, base.data.views, base.data.width)
    assert long.optim.iterations > base.optim.iterations


def test_every_quality_preset_varies_a_preset_that_exists():
    variants = [p for p in preset_names() if p.startswith(QUALITY_PREFIX)]
    assert variants, "no configs/quality-*.yaml"
    for name in variants:
        base = name.removeprefix(QUALITY_PREFIX)
        assert base in preset_names()
        assert quality_variant(base) == name
        text = (ROOT / "configs" / f"{name}.yaml").read_text()
        assert f"base: {base}" in text  # layered on the preset, so its protocol and tuning carry over


def test_a_preset_without_a_quality_variant_is_refused_by_name():
    with pytest.raises(ConfigError, match="generic preset has no quality variant.*quality variants exist for"):
        quality_variant("generic")


def test_fit_and_bench_resolve_quality(tmp_path, monkeypatch, capsys):
    import recon.pipeline
    from recon.evaluate.protocols import get_suite, suite_config

    seen: dict = {}

    class Called(Exception):
        pass

    def fake_fit(scene, **kwargs):
        seen.update(kwargs)
        raise Called

    monkeypatch.setattr(recon.pipeline, "fit_scene", fake_fit)
    scene = _dtu(tmp_path / "scan24")
    with pytest.raises(Called):
        main(["fit", str(scene), "--config", "quality", "--out", str(tmp_path / "run")])
    assert "config: quality-dtu3" in capsys.readouterr().out
    assert seen["preset"]["name"] == "quality-dtu3"
    assert seen["config"].optim.iterations == load_config("quality-dtu3").optim.iterations
    assert suite_config(get_suite("blender8"), "quality") == "quality-blender8"
    assert suite_config(get_suite("blender8"), None) == "blender8"
    assert suite_config(get_suite("llff3"), "quality") == "quality-llff3"
    assert suite_config(get_suite("llff3"), None) == "llff3"
    with pytest.raises(Called):
        main(["fit", str(_llff(tmp_path / "fern")), "--config", "quality", "--out", str(tmp_path / "run_llff")])
    assert "config: quality-llff3" in capsys.readouterr().out
    assert seen["config"].optim.iterations == load_config("quality-llff3").optim.iterations


# ---- validation views ----------------------------------------------------------------------


def _validation_fit():
    spec = importlib.util.spec_from_file_location("validation_fit", ROOT / "benchmarks" / "validation_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Scene:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_dtu_validation_views_come_from_the_unused_training_list():
    from recon.data import splits

    vf = _validation_fit()
    split = splits.dtu_split(49, 3)
    assert vf.validation_views(_Scene(49), split, 2) == [40, 44]
    assert vf.validation_views(_Scene(49), split, 4) == [40, 44, 48, 0]
    with pytest.raises(Exception, match="only 6"):
        vf.validation_views(_Scene(49), split, 7)


@pytest.mark.parametrize("n_val", [2, 4])
def test_other_validation_views_are_spread_over_the_unused_views(n_val):
    from recon.data import splits

    vf = _validation_fit()
    split = splits.llff_split(34, 3)
    val = vf.validation_views(_Scene(34), split, n_val)
    assert len(set(val)) == n_val
    assert not set(val) & (set(split.train) | set(split.test))
    rest = [i for i in range(34) if i not in split.train + split.test]
    positions = [rest.index(v) for v in val]
    # one view in each n_val-th of the unused views
    assert [p * n_val // len(rest) for p in positions] == list(range(n_val))
    if n_val == 2:  # the views the LLFF ablation rows were scored on (flower: image009, image025)
        assert val == [rest[len(rest) // 4], rest[3 * len(rest) // 4]]
