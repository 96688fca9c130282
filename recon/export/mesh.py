"""Mesh export: TSDF fusion (open3d) of depth and colour rendered from the Gaussians.

Rendered expected depth is only trusted where the accumulated opacity is high: pixels
with alpha below ``alpha_threshold`` are dropped so the background and translucent
floaters do not carve or add surface. The voxel size defaults to a fraction of the
cameras' scene extent so one call works for unit-scale synthetic scenes and for LLFF.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon.errors import MissingDependencyError, ReconError
from recon.render import render
from recon.types import Camera, Gaussians, RenderSettings


@dataclass(frozen=True)
class MeshSettings:
    voxel_size: float | None = None  # None: scene extent / 384
    depth_trunc: float | None = None  # None: 3x the largest median rendered depth
    sdf_trunc_voxels: float = 4.0  # truncation distance in voxels
    alpha_threshold: float = 0.7


def _open3d():
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - open3d is a core dependency on x86-64 Linux
        raise MissingDependencyError(
            "mesh export needs open3d: pip install -c constraints.txt 'open3d-cpu<0.20'"
        ) from exc
    return o3d


def _scene_extent(cameras: Sequence[Camera], depths: list[np.ndarray]) -> float:
    median_depth = max(float(np.median(d[d > 0])) if (d > 0).any() else 0.0 for d in depths)
    if median_depth <= 0:
        raise ReconError("mesh export: nothing was rendered from any camera (all alpha below "
                         "threshold); check that the run's Gaussians are in front of its cameras")
    centres = torch.stack([c.centre for c in cameras]).double()  # [C, 3]
    spread = float((centres - centres.mean(0)).norm(dim=-1).max()) if len(cameras) > 1 else 0.0
    return max(spread, median_depth)


@torch.no_grad()
def gaussians_to_mesh(
    gaussians: Gaussians,
    cameras: Sequence[Camera],
    render_settings: RenderSettings = RenderSettings(),
    settings: MeshSettings = MeshSettings(),
):
    """Fuses renders from ``cameras`` into an open3d TriangleMesh (vertex colours)."""
    if not cameras:
        raise ReconError("mesh export needs at least one camera; the run lists none")
    o3d = _open3d()
    frames = []
    for cam in cameras:
        out = render(gaussians, cam, render_settings)
        rgb = out.rgb[0].clamp(0, 1).cpu().numpy()  # [H, W, 3]
        depth = out.depth[0].cpu().numpy().astype(np.float32)  # [H, W]
        depth[out.alpha[0].cpu().numpy() < settings.alpha_threshold] = 0.0
        frames.append((cam, rgb, depth))
    extent = _scene_extent(cameras, [d for _, _, d in frames])
    voxel = settings.voxel_size or extent / 384.0
    trunc = settings.depth_trunc or 3.0 * max(
        float(np.median(d[d > 0])) if (d > 0).any() else 0.0 for _, _, d in frames)
    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel, sdf_trunc=settings.sdf_trunc_voxels * voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    for cam, rgb, depth in frames:
        color = o3d.geometry.Image(np.ascontiguousarray((rgb * 255).round().astype(np.uint8)))
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            color, o3d.geometry.Image(depth), depth_scale=1.0, depth_trunc=trunc,
            convert_rgb_to_intensity=False)
        K = cam.K.double().cpu().numpy()
        # open3d's pinhole model puts pixel centres at integers; ours are at +0.5.
        intrinsic = o3d.camera.PinholeCameraIntrinsic(
            cam.width, cam.height, K[0, 0], K[1, 1], K[0, 2] - 0.5, K[1, 2] - 0.5)
        volume.integrate(rgbd, intrinsic, cam.T_cam_world.double().cpu().numpy())
    mesh = volume.extract_triangle_mesh()
    mesh.compute_vertex_normals()
    return mesh


def write_mesh(path: str | Path, mesh) -> Path:
    """Writes a mesh as PLY/OBJ/GLB (by suffix); refuses to write an empty mesh."""
    o3d = _open3d()
    path = Path(path)
    if len(mesh.triangles) == 0:
        raise ReconError(f"mesh for {path} is empty: no surface had enough opacity; "
                         "try a lower --alpha-threshold or a larger --voxel-size")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_triangle_mesh(str(path), mesh):
        raise ReconError(f"could not write {path}: unsupported suffix or unwritable folder "
                         "(use .ply, .obj or .glb)")
    return path
