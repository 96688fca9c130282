"""SpaRe protocol end to end on a generated scene written in the SpaRe layout: split JSON,
projection matrices, naming conventions, fit, full-resolution test renders, masked
metrics and the submission zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.errors import SceneError
from recon.evaluate import spare

INPUT = [0, 4, 8]
TEST = [1, 2, 3, 5, 6, 7, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def scene():
    from recon.data.synthetic import make_synthetic_scene

    return make_synthetic_scene(seed=0, n_views=13, width=48, height=36, n_objects=2)


@pytest.fixture(scope="module")
def root(scene, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spare")
    split = {"input_views": INPUT, "test_views": TEST}
    return spare.write_layout(root, {"synth": (scene, "SpaRe")}, {1: {"synth": split}})


def test_naming_convention():
    assert spare.image_name("DTU", 0) == "rect_001_3_r5000.png"
    assert spare.image_name("SpaRe", 11) == "cam_012_3_0000.png"
    assert spare.image_name("dtu", 48, lighting=5) == "rect_049_5_r5000.png"


def test_layout_round_trips_through_the_loader(scene, root):
    from recon.data import load_scene

    loaded = load_scene(root / "synth", format="spare", normalise=False)
    assert [v.name for v in loaded.views][:2] == ["cam_001_3_0000", "cam_002_3_0000"]
    for a, b in zip(scene.views, loaded.views):
        assert torch.allclose(a.camera.K, b.camera.K, atol=1e-4)
        assert torch.allclose(a.camera.T_cam_world, b.camera.T_cam_world, atol=1e-5)
        assert (a.image - b.image).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNG
    assert loaded.meta["spare_split"]["input_views"] == INPUT
    mask = spare.read_mask(root / "synth", "cam_002_3_0000")
    assert torch.equal(mask, scene.views[1].mask)
    entries = spare.read_split(root / "Track1_split_development.json")
    assert entries["synth"].test_views == tuple(TEST) and entries["synth"].dataset == "SpaRe"


def test_dtu_named_layout_uses_the_data_writer(scene, tmp_path):
    from recon.data import load_scene

    split = {"input_views": INPUT, "test_views": TEST}
    spare.write_layout(tmp_path, {"scan1": (scene, "DTU")}, {2: {"scan1": split}})
    assert (tmp_path / "scan1" / "rect_013_3_r5000.png").is_file() and (tmp_path / "Track2_split_development.json").is_file()
    loaded = load_scene(tmp_path / "scan1", format="spare", normalise=False)
    assert len(loaded.views) == 13
    assert torch.allclose(loaded.views[5].camera.T_cam_world, scene.views[5].camera.T_cam_world, atol=1e-5)
    assert torch.equal(spare.read_mask(tmp_path / "scan1", "rect_006_3_r5000"), scene.views[5].mask)


def test_bad_split_file(tmp_path):
    bad = tmp_path / "Track1_split_development.json"
    bad.write_text(json.dumps({"scan1": {"input_views": [1, "x"], "test_views": []}}))
    with pytest.raises(SceneError, match="non-negative integers"):
        spare.read_split(bad)
    with pytest.raises(SceneError, match="Track2_split"):
        spare.find_split(tmp_path, 2)


def test_submission_check_finds_problems(tmp_path):
    import imageio.v3 as iio

    entries = {"scan1": spare.SpareEntry("scan1", (0,), (1, 2), "DTU")}
    sub = tmp_path / "sub"
    (sub / "scan1").mkdir(parents=True)
    iio.imwrite(sub / "scan1" / "rect_002_3_r5000.png", np.zeros((12, 16, 3), np.uint8))
    iio.imwrite(sub / "scan1" / "extra.png", np.zeros((12, 16, 3), np.uint8))
    zip_path = spare.write_submission(sub, tmp_path / "s.zip")
    problems = spare.check_submission(zip_path, entries, resolution=(16, 12))
    assert problems == ["missing scan1/rect_003_3_r5000.png", "unexpected scan1/extra.png"]
    assert "is 16x12" in spare.check_submission(zip_path, entries, resolution=(32, 24))[-1]


def test_end_to_end_fit_render_score_zip(scene, root, tmp_path):
    """The real pipeline, a few iterations: the path is under test, not the fit quality."""
    overrides = ["optim.iterations=10", "densify.enabled=false", "init.method=random", "init.random_points=2000",
                 "depth.enabled=false", "pseudo.enabled=false"]
    result = spare.run_spare(root, tmp_path / "out", track=1, config="fast", overrides=overrides)
    assert result["problems"] == []
    with zipfile.ZipFile(result["zip"]) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"synth/cam_{i + 1:03d}_3_0000.png" for i in TEST)
        first = np.asarray(__import__("imageio.v3").v3.imread(zf.read(names[0])))
    assert first.shape == (36, 48, 3)  # the scene's full resolution
    record = result["scenes"][0]
    m = record["metrics"]
    assert m["num_views"] == 10 and np.isfinite(m["psnr"]) and np.isfinite(m["psnr_masked"])
    assert 0 < m["ssim_masked"] <= 1 and m["lpips"] is None and record["lpips_reason"]
    # the full-resolution render equals the fit's own test render (same cameras, same size),
    # so our score matches the pipeline's up to its 8-bit PNG quantisation
    run_metrics = json.loads((Path(record["run_dir"]) / "metrics.json").read_text())
    assert run_metrics["test"]["psnr"] == pytest.approx(m["psnr"], abs=0.05)
    assert json.loads((tmp_path / "out" / "spare_results.json").read_text())["track"] == 1
    # `recon eval RUN` recomputes the run's metrics from its renders and by re-rendering
    from recon.cli import main

    run_dir = record["run_dir"]
    assert main(["eval", run_dir]) == 0
    from_png = json.loads((Path(run_dir) / "metrics.json").read_text())
    assert from_png["evaluated_by"] == "recon eval" and "11x11" in from_png["protocol"]["metrics"]["ssim"]
    assert from_png["test"]["psnr"] == pytest.approx(run_metrics["test"]["psnr"], abs=0.05)  # 8-bit PNGs
    assert from_png["test"]["psnr_masked"] == pytest.approx(m["psnr_masked"], abs=0.05)  # spare style, masks
    assert main(["eval", run_dir, "--rerender"]) == 0
    rerendered = json.loads((Path(run_dir) / "metrics.json").read_text())
    assert "re-rendered" in rerendered["protocol"]["predictions"]
    assert rerendered["test"]["psnr"] == pytest.approx(m["psnr"], abs=1e-4)  # float renders, same cameras


@pytest.mark.slow
def test_convert_dtu_scan24_to_spare_layout(tmp_path):
    """apps/convert_to_spare.py on the real DTU scan: 49 views, masks, loadable, split."""
    import runpy

    from conftest import shared_scene

    src = shared_scene("dtu_scan24")
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "apps" / "convert_to_spare.py"))["main"]
    assert main([str(tmp_path), "--scene", str(src)]) == 0
    from recon.data import load_scene

    loaded = load_scene(tmp_path / "scan24", format="spare")
    assert len(loaded.views) == 49 and (loaded.views[0].width, loaded.views[0].height) == (400, 300)
    entries = spare.read_split(tmp_path / "Track1_split_development.json")
    assert entries["scan24"].input_views == (25, 22, 28) and len(entries["scan24"].test_views) == 10
    assert spare.read_mask(tmp_path / "scan24", loaded.views[1].name).any()
