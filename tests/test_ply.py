"""3DGS PLY: exact round trip, the standard layout, and interop with gsplat's exporter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.errors import ReconError
from recon.export.ply import property_names, read_ply, write_ply
from recon.types import Gaussians


def _random_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) - 3,
                     torch.randn(n, 4, generator=g), torch.randn(n, generator=g),
                     torch.randn(n, k, 3, generator=g))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, degree):
    g = _random_gaussians(57, degree, seed=degree)
    back = read_ply(write_ply(tmp_path / "pc.ply", g))
    for a, b in zip(g.tensors(), back.tensors()):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def test_standard_layout_parsed_independently(tmp_path):
    """Parse the file with plain numpy against the 3DGS property order (no plyfile)."""
    g = _random_gaussians(10, 3)
    path = write_ply(tmp_path / "pc.ply", g)
    raw = path.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 10"]
    names = [ln.split()[-1] for ln in lines if ln.startswith("property float")]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.frombuffer(body, dtype="<f4").reshape(10, len(names))
    np.testing.assert_array_equal(arr[:, :3], g.means.numpy())
    np.testing.assert_array_equal(arr[:, 6:9], g.sh[:, 0].numpy())
    # f_rest is channel-major: the 15 red coefficients first.
    np.testing.assert_array_equal(arr[:, 9:24], g.sh[:, 1:, 0].numpy())
    np.testing.assert_array_equal(arr[:, 54], g.opacity_logits.numpy())
    np.testing.assert_array_equal(arr[:, 58:62], g.quats.numpy())
    assert property_names(3) == names


def test_reads_gsplat_export(tmp_path):
    from gsplat import export_splats

    g = _random_gaussians(20, 2, seed=3)
    path = tmp_path / "gsplat.ply"
    export_splats(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1], g.sh[:, 1:],
                  format="ply", save_to=str(path))
    back = read_ply(path)
    for a, b in zip(g.tensors(), back.tensors()):
        assert torch.equal(a, b)


def test_bad_files_raise_with_path(tmp_path):
    with pytest.raises(ReconError, match="does not exist"):
        read_ply(tmp_path / "missing.ply")
    path = write_ply(tmp_path / "pc.ply", _random_gaussians(5, 0))
    data = path.read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-10])
    with pytest.raises(ReconError, match="truncated"):
        read_ply(tmp_path / "cut.ply")
    (tmp_path / "text.ply").write_bytes(b"hello\n")
    with pytest.raises(ReconError, match="not a PLY"):
        read_ply(tmp_path / "text.ply")
