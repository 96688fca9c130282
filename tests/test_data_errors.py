"""Bad input: each case is a one-line SceneError naming the file and what to do, and the
CLI turns it into exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from recon.cli import main
from recon.data import load_scene
from recon.data.splits import select_split
from recon.data.synthetic import make_synthetic_scene
from recon.data.writers import write_scene
from recon.errors import ReconError, SceneError


@pytest.fixture(scope="module")
def scene():
    return make_synthetic_scene(seed=2, n_views=4, width=48, height=36)


@pytest.fixture
def llff(scene, tmp_path):
    return write_scene(scene, tmp_path / "llff", "llff")


def _fails(match: str, *args, **kwargs) -> str:
    with pytest.raises(SceneError, match=match) as info:
        load_scene(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_missing_folder(tmp_path):
    _fails("does not exist; check the path", tmp_path / "nope")


def test_folder_with_no_images(tmp_path, llff):
    (tmp_path / "empty").mkdir()
    _fails("unknown scene format .* pass --format", tmp_path / "empty")
    _fails("no images", tmp_path / "empty", format="images")
    for p in (llff / "images").iterdir():
        p.unlink()
    _fails(r"no images .* in .*images", llff)


def test_truncated_image(llff):
    victim = sorted((llff / "images").iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    message = _fails("cannot read image", llff)
    assert victim.name in message and "truncated" in message


def test_image_count_differs_from_pose_file(llff):
    sorted((llff / "images").iterdir())[0].unlink()
    _fails(r"has 3 images but .*poses_bounds.npy has 4 poses", llff)


def test_mixed_resolutions(llff):
    victim = sorted((llff / "images").iterdir())[1]
    Image.new("RGB", (50, 36)).save(victim)
    message = _fails("mixed resolutions", llff)
    assert victim.name in message and "50x36" in message


def test_nan_and_non_rotation_poses(llff, scene, tmp_path):
    poses = np.load(llff / "poses_bounds.npy")
    bad = poses.copy()
    bad[2, 3] = np.nan
    np.save(llff / "poses_bounds.npy", bad)
    _fails(r"row 2 .*NaN", llff)
    bad = poses.copy()
    bad[1, [0, 5, 10]] *= 2.0  # stretch one rotation column
    np.save(llff / "poses_bounds.npy", bad)
    _fails(r"row 1 .*not a rotation matrix", llff)

    ns = write_scene(scene, tmp_path / "ns", "nerfstudio")
    doc = json.loads((ns / "transforms.json").read_text())
    doc["frames"][3]["transform_matrix"][0][0] = float("nan")
    (ns / "transforms.json").write_text(json.dumps(doc))
    _fails(r"frame 3 .*NaN", ns)


def test_unknown_format_and_option(llff):
    _fails("unknown format 'foo'", llff, format="foo")
    with pytest.raises(ReconError, match="has no option colour"):
        load_scene(llff, colour=1)


def test_more_views_than_available(scene):
    with pytest.raises(SceneError, match="5 training views requested .* only 4"):
        select_split(scene, "farthest", 5)
    with pytest.raises(SceneError, match="needs the 49 DTU views"):
        select_split(scene, "dtu", 3)


def test_cli_exit_code_and_info(tmp_path, llff, capsys):
    from recon.data import splits

    assert main(["info", str(llff), "--protocol", "nope"]) == 2  # one list of protocols: recon.data.splits
    assert ", ".join(splits.PROTOCOLS) in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", str(llff), "--views", "9"]) == 2  # 4 views cannot give 9
    assert main(["info", str(llff), "--protocol", "farthest", "--views", "2"]) == 0
    out = capsys.readouterr().out
    assert "format       llff" in out and "48x36" in out and "train        [" in out
