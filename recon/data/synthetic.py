"""The embedded procedural scene: textured objects on a textured ground, ray cast with
open3d's RaycastingScene (a renderer we did not write), so colour, z-depth and object masks
are exact and every pose is known. Seeded and deterministic; a few seconds on a laptop CPU.

World frame: z up, ground plane z = 0, objects within ~1.5 units of the origin. Two camera
layouts (``layout=``):

* ``"orbit"`` (``make_synthetic_scene``'s default): rings of the upper hemisphere (radius
  ~4) sweeping ``arc_deg`` of azimuth around the objects, sky behind them;
* ``"forward"`` (what ``builtin:synthetic`` loads): an LLFF-like forward-facing capture, a
  narrow arc of cameras (``FORWARD_ARC_DEG`` of azimuth, two elevations) in front of the
  objects, a textured wall behind them so every pixel has a finite, matchable depth, and
  views ordered along the sweep so the LLFF protocol (every 8th view held out) tests
  interpolation between the training views, as on the real LLFF scenes.

Shading is view-independent (Lambertian sun + ambient, cast shadows), so multi-view
photo-consistency holds exactly and stereo can match the procedural textures.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from recon.errors import SceneError
from recon.geometry import look_at
from recon.types import Scene, View

from .common import finish_scene, make_camera

OBJECT_KINDS = ("box", "sphere", "torus", "cylinder", "cone", "box", "sphere")
LAYOUTS = ("orbit", "forward")
GROUND_HALF_SIZE = 8.0
# forward layout: the wall behind the objects (seen by cameras on the +x side) and the arc
WALL_X, WALL_HEIGHT = -2.4, 4.0
FORWARD_ARC_DEG = 40.0
FORWARD_ELEVATIONS_DEG = (18.0, 26.0)
SUN_DIRECTION = np.array([0.45, 0.3, 1.0]) / np.linalg.norm([0.45, 0.3, 1.0])
AMBIENT = 0.4
# Texture octaves in cycles per world unit; an octave fades out once its period covers
# fewer than ~2.5 pixels (a cheap analytic pre-filter against aliasing on the far ground).
OCTAVES = (3.0, 7.0, 15.0, 31.0)
# The forward layout stops an octave earlier: at its working resolutions the finest octave
# is a 2-3 pixel pattern on every surface, a test of aliasing rather than of reconstruction
# (real forward-facing photos are not that sharp everywhere); 15 cycles/unit still gives
# stereo a 5-pixel texture to match.
FORWARD_OCTAVES = (3.0, 7.0, 15.0)
MIN_PERIOD_PIXELS = 2.5
_HASH_SIZE = 1 << 16


def make_synthetic_scene(
    seed: int = 0,
    n_views: int = 24,
    width: int = 320,
    height: int = 240,
    *,
    n_objects: int = 5,
    fov_deg: float = 55.0,
    radius: float = 4.0,
    arc_deg: float | None = None,
    layout: str = "orbit",
    normalise: bool = False,
) -> Scene:
    """Render the procedural scene. Views carry exact ``depth`` (z-depth, 0 on the sky)
    and ``mask`` (True on objects, False on ground, wall and sky). ``normalise=False``
    (default) keeps the world frame above; ``load_scene("builtin:synthetic")`` normalises
    like every loader. ``meta`` holds the layout, the object list, their axis-aligned box
    and depth bounds.

    ``layout="orbit"``: cameras sweep ``arc_deg`` of azimuth (default 150: a DTU-like
    sector, so any few views overlap and every test view sees surfaces some training view
    saw; 360 for a full ring) over three elevation rings. ``layout="forward"``: the
    LLFF-like capture of the module docstring (``arc_deg`` default ``FORWARD_ARC_DEG``)."""
    import open3d as o3d

    if n_views < 1 or width < 8 or height < 8:
        raise SceneError(f"builtin:synthetic needs n_views >= 1 and at least 8x8 pixels, got {n_views} views of {width}x{height}")
    if layout not in LAYOUTS:
        raise SceneError(f"builtin:synthetic layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if arc_deg is None:
        arc_deg = FORWARD_ARC_DEG if layout == "forward" else 150.0
    rng = np.random.default_rng(seed)
    meshes, objects = _build_meshes(rng, n_objects, wall=layout == "forward")
    backdrop = {0} | ({len(meshes) - 1} if layout == "forward" else set())  # ground (and wall) ids
    raycast = o3d.t.geometry.RaycastingScene()
    for vertices, triangles, _ in meshes:
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(vertices.astype(np.float32))
        mesh.triangle.indices = o3d.core.Tensor(triangles.astype(np.int32))
        raycast.add_triangles(mesh)
    tables = [rng.random(_HASH_SIZE).astype(np.float32) for _ in range(len(meshes))]
    palettes = [_palette(rng, i in backdrop) for i in range(len(meshes))]

    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=np.float64)
    views = []
    octaves = FORWARD_OCTAVES if layout == "forward" else OCTAVES
    if layout == "forward":
        poses = _camera_ring(rng, n_views, radius, arc_deg, FORWARD_ELEVATIONS_DEG, target_height=0.4)
    else:
        poses = _camera_ring(rng, n_views, radius, arc_deg)
    def render(T_cam_world):
        return _render(raycast, meshes, tables, palettes, backdrop, octaves, K, T_cam_world, width, height)

    # Views are independent (every random draw happened above): render them on threads, as
    # numpy's array loops and open3d's ray casts release the GIL.
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        rendered = list(pool.map(render, poses))
    for i, (T_cam_world, (image, depth, mask)) in enumerate(zip(poses, rendered)):
        views.append(
            View(
                name=f"view_{i:03d}",
                image=torch.from_numpy(image),
                camera=make_camera(K, T_cam_world, width, height),
                mask=torch.from_numpy(mask),
                depth=torch.from_numpy(depth),
            )
        )
    all_depths = torch.cat([v.depth[v.depth > 0] for v in views])
    lo = np.min([o["aabb_min"] for o in objects], axis=0)
    hi = np.max([o["aabb_max"] for o in objects], axis=0)
    meta = {
        "seed": seed,
        "layout": layout,
        "objects": objects,
        "aabb": [lo.tolist(), hi.tolist()],  # box around the objects (not the ground)
        "bounds": [float(all_depths.min()), float(all_depths.max())],
    }
    return finish_scene(views, format="synthetic", root=None, normalise=normalise, meta=meta)


# ---------------------------------------------------------------- geometry


def _build_meshes(rng: np.random.Generator, n_objects: int, wall: bool = False):
    """[(vertices [V,3], triangles [F,3], vertex_normals [V,3])], ground first, then the
    objects, then (``wall``) the backdrop wall; and a description of each object."""
    import open3d as o3d

    g = GROUND_HALF_SIZE
    ground = (
        np.array([[-g, -g, 0], [g, -g, 0], [g, g, 0], [-g, g, 0]], dtype=np.float64),
        np.array([[0, 1, 2], [0, 2, 3]]),
        np.tile([0.0, 0.0, 1.0], (4, 1)),
    )
    meshes, objects = [ground], []
    centres = _place(rng, n_objects)
    for i, (x, y) in enumerate(centres):
        kind = OBJECT_KINDS[i % len(OBJECT_KINDS)]
        s = rng.uniform(0.35, 0.55)
        if kind == "box":
            m = o3d.geometry.TriangleMesh.create_box(s * 1.2, s, s * rng.uniform(0.8, 1.6))
            m.translate(-m.get_center())
        elif kind == "sphere":
            m = o3d.geometry.TriangleMesh.create_sphere(s * 0.6, resolution=48)
        elif kind == "torus":
            m = o3d.geometry.TriangleMesh.create_torus(s * 0.6, s * 0.22, 64, 24)
            # stand the ring up so it is seen edge-on from some cameras and open from others
            m.rotate(o3d.geometry.get_rotation_matrix_from_xyz((math.radians(70), 0, 0)), center=(0, 0, 0))
        elif kind == "cylinder":
            m = o3d.geometry.TriangleMesh.create_cylinder(s * 0.4, s * 1.8, resolution=48)
        else:
            m = o3d.geometry.TriangleMesh.create_cone(s * 0.55, s * 1.4, resolution=48)
        m.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0, 0, rng.uniform(0, 2 * math.pi))), center=(0, 0, 0))
        v = np.asarray(m.vertices)
        m.translate((x, y, -v[:, 2].min()))  # rest on the ground
        m.compute_vertex_normals()
        v = np.asarray(m.vertices)
        meshes.append((v.copy(), np.asarray(m.triangles).copy(), np.asarray(m.vertex_normals).copy()))
        objects.append({"kind": kind, "centre": [float(x), float(y)], "aabb_min": v.min(0).tolist(), "aabb_max": v.max(0).tolist()})
    if wall:  # vertical plane x = WALL_X facing +x, as wide as the ground
        x, hz = WALL_X, WALL_HEIGHT
        meshes.append((
            np.array([[x, -g, 0], [x, g, 0], [x, g, hz], [x, -g, hz]], dtype=np.float64),
            np.array([[0, 1, 2], [0, 2, 3]]),
            np.tile([1.0, 0.0, 0.0], (4, 1)),
        ))
    return meshes, objects


def _place(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """Object footprints spread within radius ~1.3, at least 0.75 apart (rejection sampling)."""
    centres: list[tuple[float, float]] = []
    for _ in range(2000):
        if len(centres) == n:
            break
        r, a = 1.3 * math.sqrt(rng.uniform(0.0, 1.0)), rng.uniform(0, 2 * math.pi)
        p = (r * math.cos(a), r * math.sin(a))
        if all(math.dist(p, q) > 0.75 for q in centres):
            centres.append(p)
    return centres


def _camera_ring(
    rng: np.random.Generator, n_views: int, radius: float, arc_deg: float,
    elevations_deg: tuple[float, ...] = (25.0, 40.0, 55.0), target_height: float = 0.3,
) -> list[np.ndarray]:
    """T_cam_world [4, 4] per view: azimuth sweeps ``arc_deg`` (centred on the +x axis),
    elevation cycles through ``elevations_deg``, small seeded jitter in azimuth, distance
    and target."""
    poses = []
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    arc = math.radians(min(arc_deg, 360.0))
    for i in range(n_views):
        step = arc / n_views
        az = -arc / 2 + step * (i + 0.5) + rng.uniform(-0.15, 0.15) * step
        el = math.radians(elevations_deg[i % len(elevations_deg)] + rng.uniform(-3, 3))
        r = radius * rng.uniform(0.92, 1.08)
        eye = torch.tensor([r * math.cos(el) * math.cos(az), r * math.cos(el) * math.sin(az), r * math.sin(el)], dtype=torch.float64)
        target = torch.tensor([rng.normal(0, 0.1), rng.normal(0, 0.1), target_height], dtype=torch.float64)
        poses.append(look_at(eye, target, up).numpy())
    return poses


# ---------------------------------------------------------------- shading


def _palette(rng: np.random.Generator, ground: bool) -> np.ndarray:
    """[3, 3] three colours a texture blends between."""
    if ground:
        base = np.array([[0.55, 0.5, 0.4], [0.3, 0.35, 0.25], [0.8, 0.75, 0.6]])
        return np.clip(base + rng.normal(0, 0.05, (3, 3)), 0.05, 0.95)
    hue = rng.uniform(0, 1)
    cols = []
    for k in range(3):
        h = (hue + 0.12 * k) % 1.0
        rgb = 0.5 + 0.45 * np.cos(2 * math.pi * (h + np.array([0.0, 1 / 3, 2 / 3])))
        cols.append(rgb * rng.uniform(0.55, 1.0))
    return np.clip(np.array(cols), 0.03, 0.97)


def _value_noise(p: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise in [0, 1]: p [M, 3] -> [M] (hashed lattice, trilinear with a
    smoothstep fade)."""
    i = np.floor(p).astype(np.int64)  # [M, 3]
    f = p - i
    u = f * f * (3.0 - 2.0 * f)
    out = np.zeros(len(p), dtype=np.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                h = ((i[:, 0] + dx) * 73856093) ^ ((i[:, 1] + dy) * 19349663) ^ ((i[:, 2] + dz) * 83492791)
                w = (u[:, 0] if dx else 1 - u[:, 0]) * (u[:, 1] if dy else 1 - u[:, 1]) * (u[:, 2] if dz else 1 - u[:, 2])
                out += w * table[h & (_HASH_SIZE - 1)]
    return out


def _albedo(points: np.ndarray, footprint: np.ndarray, table: np.ndarray, palette: np.ndarray,
            checker_axes: tuple[int, int] | None, octaves: tuple[float, ...] = OCTAVES) -> np.ndarray:
    """Procedural colour [M, 3] of surface points [M, 3]; ``footprint`` [M] is the world
    size of one pixel there (octaves finer than a few pixels fade out). Backdrop surfaces
    (ground, wall) add a checker over the two world ``checker_axes`` of their plane."""
    blend = np.zeros((len(points), 2))
    weight_sum = 0.0
    for k, freq in enumerate(octaves):
        amp = 0.75**k  # slow decay: fine detail stays visible for stereo
        fade = np.clip((1.0 / freq) / (footprint * MIN_PERIOD_PIXELS) - 1.0, 0.0, 1.0)
        live = fade > 0  # where the octave is faded out its value is 0.5 whatever the noise
        for c in range(2):
            n = np.full(len(points), 0.5)
            if live.any():
                n[live] = _value_noise(points[live] * freq + 17.3 * (c + 1) + 5.1 * k, table)
            blend[:, c] += amp * (fade * n + (1 - fade) * 0.5)
        weight_sum += amp
    blend /= weight_sum  # [M, 2] in [0, 1], concentrated around 0.5
    a = np.clip((blend[:, :1] - 0.5) * 3.0 + 0.5, 0, 1)
    b = np.clip((blend[:, 1:] - 0.5) * 3.0 + 0.5, 0, 1)
    colour = palette[0] * (1 - a) + palette[1] * a
    colour = colour * (1 - b * 0.6) + palette[2] * b * 0.6
    if checker_axes is not None:  # 0.5-unit checker: strong edges for stereo and an obvious scale cue
        a0, a1 = checker_axes
        checker = (np.floor(points[:, a0] * 2) + np.floor(points[:, a1] * 2)) % 2
        fade = np.clip((0.5 / footprint) / 4.0 - 1.0, 0.0, 1.0)
        colour = colour * (1.0 - 0.25 * (checker * fade + 0.5 * (1 - fade)))[:, None]
    return colour


def _render(raycast, meshes, tables, palettes, backdrop, octaves, K, T_cam_world, width, height):
    """-> image [H, W, 3] float32, z-depth [H, W] float32 (0 on sky), mask [H, W] bool."""
    import open3d as o3d

    R, t = T_cam_world[:3, :3], T_cam_world[:3, 3]
    centre = -R.T @ t
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)  # pixel centres
    pix = np.stack([jj.ravel(), ii.ravel(), np.ones(jj.size)], axis=1)  # [M, 3]
    # Unnormalised directions with camera-frame z = 1: t_hit is then the z-depth itself.
    dirs = (np.linalg.inv(K) @ pix.T).T @ R  # [M, 3] = R^T K^-1 pix
    rays = np.concatenate([np.broadcast_to(centre, dirs.shape), dirs], axis=1).astype(np.float32)
    hit = raycast.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy().astype(np.float64)  # [M]
    geom = hit["geometry_ids"].numpy().astype(np.int64)
    valid = np.isfinite(t_hit) & (geom != o3d.t.geometry.RaycastingScene.INVALID_ID)

    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    sky = np.array([0.78, 0.86, 0.95]) * (1 - unit[:, 2:3].clip(0, 1)) + np.array([0.42, 0.58, 0.86]) * unit[:, 2:3].clip(0, 1)
    colour = sky.copy()  # [M, 3]
    if valid.any():
        idx = np.nonzero(valid)[0]
        pts = centre + dirs[idx] * t_hit[idx, None]  # [m, 3]
        normals = _normals(hit, idx, geom[idx], meshes)
        normals = np.where((normals * dirs[idx]).sum(1, keepdims=True) > 0, -normals, normals)
        lit = _sunlit(raycast, pts, normals)
        shade = AMBIENT + (1 - AMBIENT) * np.clip(normals @ SUN_DIRECTION, 0, 1) * lit
        footprint = t_hit[idx] / K[0, 0]  # world size of one pixel at that depth
        for g in np.unique(geom[idx]):
            sel = geom[idx] == g
            axes = (0, 1) if g == 0 else (1, 2) if g in backdrop else None  # ground: x-y, wall: y-z
            alb = _albedo(pts[sel], footprint[sel], tables[g], palettes[g], axes, octaves)
            colour[idx[sel]] = alb * shade[sel, None]
    depth = np.where(valid, t_hit, 0.0).reshape(height, width).astype(np.float32)
    mask = (valid & ~np.isin(geom, list(backdrop))).reshape(height, width)
    image = np.clip(colour, 0, 1).reshape(height, width, 3).astype(np.float32)
    return image, depth, mask


def _normals(hit, idx, geom, meshes) -> np.ndarray:
    """Smooth normals [m, 3] from vertex normals and the barycentric hit coordinates."""
    prim = hit["primitive_ids"].numpy()[idx].astype(np.int64)
    uv = hit["primitive_uvs"].numpy()[idx].astype(np.float64)  # [m, 2]
    out = np.zeros((len(idx), 3))
    for g in np.unique(geom):
        sel = geom == g
        _, tris, vn = meshes[g]
        tri = tris[prim[sel]]  # [k, 3]
        u, v = uv[sel, :1], uv[sel, 1:]
        out[sel] = (1 - u - v) * vn[tri[:, 0]] + u * vn[tri[:, 1]] + v * vn[tri[:, 2]]
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)


def _sunlit(raycast, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """[m] 1.0 where the sun is visible from the point, else 0.0 (cast shadows)."""
    import open3d as o3d

    origins = points + 1e-3 * normals
    rays = np.concatenate([origins, np.broadcast_to(SUN_DIRECTION, origins.shape)], axis=1).astype(np.float32)
    occluded = raycast.test_occlusions(o3d.core.Tensor(rays), tnear=1e-4).numpy()
    return 1.0 - occluded.astype(np.float64)


def write_scene(scene: Scene, folder, format: str):
    """Write a scene in one of the supported layouts (see :mod:`recon.data.writers`)."""
    from .writers import write_scene as _write

    return _write(scene, folder, format)


def load_synthetic(
    *, seed: int = 0, n_views: int = 24, width: int = 320, height: int | None = None,
    layout: str = "forward", normalise=True, downscale: float = 1.0,
) -> Scene:
    """``load_scene("builtin:synthetic")``: the scene rendered at the requested size
    (``downscale`` renders smaller rather than resampling) and normalised like every loader.
    The default layout is the forward-facing (LLFF-like) capture; ``layout="orbit"`` gives
    the wide sector of ``make_synthetic_scene``."""
    height = height if height is not None else int(round(width * 3 / 4))
    width, height = max(8, int(round(width / downscale))), max(8, int(round(height / downscale)))
    scene = make_synthetic_scene(seed=seed, n_views=n_views, width=width, height=height, layout=layout)
    return finish_scene(list(scene.views), format="synthetic", root=None, normalise=normalise, meta=scene.meta)
