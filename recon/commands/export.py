"""`recon export RUN --mesh OUT.ply`: a mesh fused from the run's rendered depth (TSDF)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recon.errors import SceneError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a finished run as a mesh (TSDF fusion of rendered depth)",
        description="Fuses depth and colour rendered from a run's Gaussians at its cameras "
        "into a triangle mesh (open3d TSDF). The Gaussians themselves are already in the run "
        "folder as point_cloud.ply (standard 3DGS layout).")
    p.add_argument("run", type=Path, help="run folder written by `recon fit`")
    p.add_argument("--mesh", type=Path, required=True, help="output mesh (.ply, .obj or .glb)")
    p.add_argument("--voxel-size", type=float, default=None,
                   help="TSDF voxel size in scene units (default: scene extent / 384)")
    p.add_argument("--alpha-threshold", type=float, default=0.7,
                   help="ignore rendered depth where accumulated opacity is below this")
    p.add_argument("--cameras", choices=("train", "test", "all"), default="all",
                   help="which of the run's cameras to fuse from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.export.cameras_json import read_cameras_json
    from recon.export.mesh import MeshSettings, gaussians_to_mesh, write_mesh
    from recon.export.ply import read_ply

    ply = args.run / "point_cloud.ply"
    if not ply.is_file():
        raise SceneError(f"{ply} not found: pass a folder written by `recon fit`")
    cameras = [c.camera for c in read_cameras_json(args.run / "cameras.json")
               if args.cameras in ("all", c.split)]
    mesh = gaussians_to_mesh(read_ply(ply), cameras,
                             settings=MeshSettings(voxel_size=args.voxel_size,
                                                   alpha_threshold=args.alpha_threshold))
    out = write_mesh(args.mesh, mesh)
    print(f"wrote {out}: {len(mesh.vertices):,} vertices, {len(mesh.triangles):,} triangles "
          f"from {len(cameras)} cameras")
    return 0
