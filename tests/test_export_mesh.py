"""Mesh export: TSDF fusion of depth rendered from Gaussians recovers the surface they
lie on, and the CLI writes a mesh for a run folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.export.mesh import MeshSettings, gaussians_to_mesh, write_mesh
from recon.geometry import look_at
from recon.types import Camera, Gaussians

SH_C0 = 0.28209479177387814


def _plane_gaussians(n_side: int = 40, z: float = 0.0) -> Gaussians:
    """Opaque flat Gaussians tiling the square [-1, 1]^2 at height z, randomly coloured."""
    g = torch.Generator().manual_seed(1)
    xs = torch.linspace(-1, 1, n_side)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)  # [N, 2]
    n = grid.shape[0]
    means = torch.cat([grid, torch.full((n, 1), z)], 1)  # [N, 3]
    spacing = 2.0 / (n_side - 1)
    log_scales = torch.log(torch.tensor([spacing, spacing, spacing * 0.05])).expand(n, 3).clone()
    quats = torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone()
    opacity_logits = torch.full((n,), 4.0)
    colors = torch.rand(n, 3, generator=g)
    sh = ((colors - 0.5) / SH_C0)[:, None, :]  # [N, 1, 3]
    return Gaussians(means, log_scales, quats, opacity_logits, sh)


def _cameras(n: int = 4, size: int = 48) -> list[Camera]:
    K = torch.tensor([[size * 1.0, 0, size / 2], [0, size * 1.0, size / 2], [0, 0, 1]])
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = torch.tensor([0.6 * math.cos(a), 0.6 * math.sin(a), 2.0])
        T = look_at(eye, torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
        cams.append(Camera(K=K, T_cam_world=T, width=size, height=size))
    return cams


def test_mesh_lies_on_the_gaussian_plane(tmp_path):
    mesh = gaussians_to_mesh(_plane_gaussians(z=0.25), _cameras(),
                             settings=MeshSettings(voxel_size=0.02))
    vertices = np.asarray(mesh.vertices)  # [V, 3]
    assert len(mesh.triangles) > 100
    # The fused surface is the plane z = 0.25 within a couple of voxels.
    assert np.median(np.abs(vertices[:, 2] - 0.25)) < 0.03
    # ... and covers the part of the square the cameras see.
    assert vertices[:, 0].max() - vertices[:, 0].min() > 1.0
    out = write_mesh(tmp_path / "mesh.ply", mesh)
    assert out.stat().st_size > 1000


def test_empty_render_is_a_clear_error():
    far_away = _plane_gaussians()
    far_away.means[:, 2] = 50.0  # behind every camera (they look down -z)
    with pytest.raises(Exception, match="nothing was rendered"):
        gaussians_to_mesh(far_away, _cameras(n=2))


def test_export_command_writes_mesh(tmp_path):
    from recon.cli import main
    from recon.export.cameras_json import NamedCamera, write_cameras_json
    from recon.export.ply import write_ply

    run = tmp_path / "run"
    run.mkdir()
    write_ply(run / "point_cloud.ply", _plane_gaussians())
    write_cameras_json(run / "cameras.json",
                       [NamedCamera(f"v{i}", "train", c) for i, c in enumerate(_cameras())])
    assert main(["export", str(run), "--mesh", str(tmp_path / "out.obj"), "--voxel-size", "0.03"]) == 0
    assert (tmp_path / "out.obj").stat().st_size > 1000
    assert main(["export", str(tmp_path / "missing"), "--mesh", str(tmp_path / "x.ply")]) == 2
