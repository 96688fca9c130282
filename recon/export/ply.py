"""The standard 3DGS PLY layout (Kerbl et al.), read by gsplat, SuperSplat and most viewers.

One binary little-endian ``vertex`` element with float32 properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3``.
Values are in optimisation space like ``recon.types.Gaussians``: log scales, opacity
logits, unnormalised quaternions (w, x, y, z). ``f_rest`` is channel-major: all
coefficients of red, then green, then blue (the layout the original code writes).
Written with numpy only (no plyfile dependency).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError
from recon.types import Gaussians


def property_names(sh_degree: int) -> list[str]:
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Writes ``gaussians`` (any device, grads ignored) to ``path``; returns the path."""
    g = gaussians.detach().to("cpu")
    n = len(g)
    sh = g.sh.float()  # [N, K, 3]
    rest = sh[:, 1:].permute(0, 2, 1).reshape(n, -1)  # [N, 3*(K-1)] channel-major
    columns = [g.means.float(), torch.zeros(n, 3), sh[:, 0], rest,
               g.opacity_logits.float()[:, None], g.log_scales.float(), g.quats.float()]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")  # [N, P]
    names = property_names(g.sh_degree)
    assert data.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())
    return path


_NP_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1",
             "uint8": "u1", "char": "i1", "int8": "i1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}


def _parse_header(f, path: Path) -> tuple[int, list[tuple[str, str]], str]:
    if f.readline().strip() != b"ply":
        raise ReconError(f"{path} is not a PLY file (no 'ply' magic line)")
    n, props, fmt, in_vertex = -1, [], "", False
    while True:
        line = f.readline()
        if not line:
            raise ReconError(f"{path}: PLY header has no end_header line; the file is truncated")
        words = line.decode("ascii", "replace").split()
        if not words:
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            in_vertex = words[1] == "vertex"
            if in_vertex:
                n = int(words[2])
            elif n >= 0:
                raise ReconError(f"{path}: elements after 'vertex' are not supported in a 3DGS PLY")
        elif words[0] == "property" and in_vertex:
            if words[1] == "list":
                raise ReconError(f"{path}: list properties are not part of the 3DGS layout")
            props.append((words[2], _NP_TYPES.get(words[1], "")))
    if n < 0:
        raise ReconError(f"{path}: PLY has no vertex element")
    return n, props, fmt


def read_ply(path: str | Path) -> Gaussians:
    """Reads a 3DGS PLY (binary little/big endian) -> Gaussians (float32, CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ReconError(f"PLY file {path} does not exist; pass the point_cloud.ply of a run")
    with open(path, "rb") as f:
        n, props, fmt = _parse_header(f, path)
        if fmt not in ("binary_little_endian", "binary_big_endian"):
            raise ReconError(f"{path}: PLY format {fmt!r} is not supported; write it as binary")
        endian = "<" if fmt == "binary_little_endian" else ">"
        bad = [name for name, t in props if not t]
        if bad:
            raise ReconError(f"{path}: unknown PLY property types for {bad}")
        dtype = np.dtype([(name, endian + t) for name, t in props])
        raw = f.read(n * dtype.itemsize)
    if len(raw) < n * dtype.itemsize:
        raise ReconError(f"{path}: PLY body has {len(raw)} bytes, header promises {n * dtype.itemsize}; file truncated")
    arr = np.frombuffer(raw, dtype=dtype, count=n)
    names = set(arr.dtype.names or ())
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in names]
    if missing:
        raise ReconError(f"{path}: not a 3DGS PLY, missing properties {missing}")
    col = lambda *ks: torch.from_numpy(np.stack([arr[k].astype(np.float32) for k in ks], 1))  # noqa: E731
    n_rest = sum(1 for k in names if k.startswith("f_rest_"))
    degree = int(round(math.sqrt(n_rest / 3 + 1))) - 1
    if 3 * ((degree + 1) ** 2 - 1) != n_rest:
        raise ReconError(f"{path}: {n_rest} f_rest properties do not match any SH degree")
    dc = col("f_dc_0", "f_dc_1", "f_dc_2")[:, None]  # [N, 1, 3]
    if n_rest:
        rest = col(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, -1).permute(0, 2, 1)
        sh = torch.cat([dc, rest], 1)  # [N, K, 3]
    else:
        sh = dc
    return Gaussians(
        means=col("x", "y", "z"),  # [N, 3]
        log_scales=col("scale_0", "scale_1", "scale_2"),  # [N, 3]
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),  # [N, 4]
        opacity_logits=col("opacity")[:, 0],  # [N]
        sh=sh.contiguous(),
    )
