"""Protocol splits select views by their ids, never by position among what happens to be on disk."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from recon.data import load_scene
from recon.data.splits import BLENDER8_TRAIN, select_split
from recon.errors import SceneError
from recon.types import Split


@pytest.fixture(scope="module")
def blender_folder(tmp_path_factory):
    """A Blender scene with 100 train frames (named frame_000 .. frame_099 in file order) and 2 test frames."""
    from recon.data.synthetic import make_synthetic_scene
    from recon.data.writers import write_scene

    scene = make_synthetic_scene(seed=0, n_views=102, width=8, height=8, n_objects=1)
    views = tuple(replace(v, name=f"frame_{i:03d}") for i, v in enumerate(scene.views))
    scene = replace(scene, views=views, split=Split(train=tuple(range(100)), test=(100, 101), protocol="given"))
    folder = tmp_path_factory.mktemp("blender") / "lego"
    write_scene(scene, folder, "blender")
    return folder


def _names(scene, split):
    return [scene.views[i].name for i in split.train]


def test_blender8_picks_frames_by_id(blender_folder):
    scene = load_scene(blender_folder, format="blender")
    split = select_split(scene, "blender8", 8)
    assert _names(scene, split) == [f"train_frame_{k:03d}" for k in BLENDER8_TRAIN]


def test_blender8_with_an_earlier_frame_missing_still_picks_the_same_frames(blender_folder, tmp_path):
    """Frame 0's image is gone: positions shift by one, the protocol's frames must not."""
    import shutil

    folder = tmp_path / "lego"
    shutil.copytree(blender_folder, folder)
    (folder / "train" / "frame_000.png").unlink()
    scene = load_scene(folder, format="blender")
    split = select_split(scene, "blender8", 8)
    assert _names(scene, split) == [f"train_frame_{k:03d}" for k in BLENDER8_TRAIN]


def test_blender8_fails_when_a_protocol_frame_is_missing(blender_folder, tmp_path):
    import shutil

    folder = tmp_path / "lego"
    shutil.copytree(blender_folder, folder)
    (folder / "train" / "frame_026.png").unlink()
    scene = load_scene(folder, format="blender")
    with pytest.raises(SceneError, match="frame 26 .*frame_026"):
        select_split(scene, "blender8", 8)
    assert json.loads((folder / "transforms_train.json").read_text())["frames"][26]["file_path"].endswith("frame_026")


def test_llff_reads_the_official_images_8_when_present(tmp_path):
    """images/ (full size) and images_8/ (the official downsampled set) side by side: the
    504-wide protocol reads images_8 rather than resizing images/ itself."""
    import numpy as np

    from recon.data.synthetic import make_synthetic_scene
    from recon.data.writers import write_scene

    scene = make_synthetic_scene(seed=0, n_views=4, width=64, height=48)
    write_scene(scene, tmp_path / "s", "llff")
    folder = tmp_path / "s"
    images = folder / "images"
    assert images.is_dir()
    small = folder / "images_8"
    small.mkdir()
    import imageio.v3 as iio

    for p in sorted(images.iterdir()):
        iio.imwrite(small / p.name, np.full((6, 8, 3), 200, np.uint8))  # a marker: flat grey, 8 wide
    loaded = load_scene(folder, format="llff", width=8)
    assert loaded.meta["images_folder"] == "images_8"
    assert float(loaded.views[0].image.std()) < 1e-6  # the marker pixels, not a resized photo
    assert load_scene(folder, format="llff").meta["images_folder"] == "images"  # no width: the originals
