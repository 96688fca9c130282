"""The one public entry to rasterisation:

    render(gaussians, cameras, settings) -> RenderOutput

Differentiable w.r.t. every Gaussian parameter and the camera poses (``T_cam_world``);
``K`` is not differentiated. Backends: "cpu" (C++/OpenMP extension), "cuda" (our CUDA
extension), "gsplat" (gsplat's CUDA ``rasterization``), "reference" (dense pure torch).
"auto" picks cpu for CPU tensors (falling back to the reference, with a warning, when the
extension cannot be built). For CUDA tensors it picks gsplat until our CUDA kernels have
passed the parity tests on a real GPU (``CUDA_BACKEND_VALIDATED``; apps/gpu_check.sh runs
them) and says so once; ``backend="cuda"`` selects ours explicitly.

Rendering runs in two differentiable stages so that ``means2d`` is a real intermediate:
projection (Gaussians -> screen-space means, conics, colours, opacities, depths) and
blending (-> rgb, depth, alpha). After ``out.means2d.retain_grad()`` and ``backward()``,
``out.means2d.grad`` [C, N, 2] holds the screen-space gradient gsplat's DefaultStrategy
reads as ``info["means2d"]`` (with ``info["radii"] = out.radii[..., None].expand(-1, -1, 2)``,
``width``, ``height``, ``n_cameras`` and ``gaussian_ids=None``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from recon.errors import ConfigError, MissingDependencyError, ReconError
from recon.types import Camera, Gaussians, RenderOutput, RenderSettings

__all__ = ["render", "available_backends", "backend_record"]

_BACKENDS = ("auto", "cpu", "cuda", "gsplat", "reference")
# Flip to True once apps/gpu_check.sh has passed the CUDA parity tests on a real GPU; until
# then "auto" on CUDA tensors uses gsplat's rasteriser (validated upstream).
CUDA_BACKEND_VALIDATED = False
_auto_fallback_warned = False
_auto_fallback_reason: str | None = None  # why "auto" fell back to the reference renderer
_auto_gsplat_said = False
_distortion_warned = False


def render(
    gaussians: Gaussians,
    cameras: Camera | Sequence[Camera],
    settings: RenderSettings = RenderSettings(),
) -> RenderOutput:
    """Render a batch of cameras sharing one image size. See recon.types for shapes."""
    cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
    width, height, sh_degree = _check_inputs(gaussians, cams, settings)
    device = gaussians.means.device
    dtype = gaussians.means.dtype
    viewmats = torch.stack([c.T_cam_world for c in cams]).to(device=device, dtype=dtype)  # [C,4,4]
    Ks = torch.stack([c.K for c in cams]).to(device=device, dtype=dtype).detach()  # [C, 3, 3]
    backend = _pick_backend(settings.backend, device)
    args = (*gaussians.tensors(), viewmats, Ks, width, height, sh_degree,
            float(settings.near), float(settings.far), bool(settings.antialiased))
    if backend == "gsplat":
        from recon.render._gsplat_backend import render_gsplat

        return render_gsplat(gaussians, cams, settings)
    if backend == "reference":
        from recon.render import _reference as ref

        proj = ref.project(*args)
        rgb, depth_sum, alpha = ref.rasterize(
            proj["means2d"], proj["conics"], proj["colors"], proj["opacities"],
            proj["depths"], proj["radii"], width, height)
    else:
        from recon.render import _autograd

        proj = _autograd.project(*args)
        rgb, depth_sum, alpha = _autograd.rasterize(proj, width, height, settings.tile_size)
    return _finish(proj, rgb, depth_sum, alpha, settings.background)


def _finish(proj, rgb, depth_sum, alpha, background) -> RenderOutput:
    """Background compositing and depth normalisation, shared by every backend."""
    bg = rgb.new_tensor(background)  # [3]
    rgb = rgb + (1.0 - alpha)[..., None] * bg  # [C, H, W, 3]
    # Expected depth of the blended surface; 0 where nothing was blended.
    depth = torch.where(alpha > 0, depth_sum / alpha.clamp(min=1e-10), 0.0)  # [C, H, W]
    radii = proj["radii"].amax(-1).to(torch.int32)  # [C, N]
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha, means2d=proj["means2d"],
                        radii=radii, visible=radii > 0)


def backend_record(name: str = "auto", device: str | torch.device = "cpu") -> dict:
    """What rasterises for ``RenderSettings.backend=name`` on ``device``: the backend asked
    for and the one used, the reason when they differ by a fallback, and for our CPU kernels
    the instruction set picked at run time and torch's thread count, since both change float
    rounding (metrics.json "compute"; a fit is bit-reproducible only for the same pair, and only on
    the same CPU model: ``cpu_model`` is recorded because two models with the same ISA gave fits
    0.15 dB apart, benchmarks/results/ablation/llff3_validation.md, session 10)."""
    device = torch.device(device)
    used = _pick_backend(name, device)
    record: dict = {"requested": name, "used": used, "device": str(device),
                    "fallback_reason": _auto_fallback_reason if used == "reference" and name == "auto" else None,
                    "threads": torch.get_num_threads(), "torch": torch.__version__}
    if used == "cpu":
        from recon.render import _ext

        ext = _ext.load()
        record.update(cpu_isa=ext.cpu_isa(), cpu_isa_float_lanes=int(ext.cpu_isa_float_lanes()), cpu_model=cpu_model())
    return record


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo, else platform.processor()), None when neither says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def available_backends() -> list[str]:
    """Backends that can run here, best first ("reference" is always available)."""
    out = []
    try:
        from recon.render import _ext

        ext = _ext.load()
        if torch.cuda.is_available() and _ext.has_cuda(ext):
            out.append("cuda")
        out.append("cpu")
    except ReconError:
        pass
    from recon.render._gsplat_backend import gsplat_available

    if gsplat_available():
        out.insert(0, "gsplat")
    return out + ["reference"]


def _pick_backend(name: str, device: torch.device) -> str:
    global _auto_fallback_warned, _auto_gsplat_said, _auto_fallback_reason
    if name not in _BACKENDS:
        raise ConfigError(f"render backend {name!r} is unknown; use one of {', '.join(_BACKENDS)}")
    if name == "reference":
        return name
    if name in ("auto", "gsplat") and device.type == "cuda":
        from recon.render._gsplat_backend import gsplat_available

        if name == "gsplat" or (not CUDA_BACKEND_VALIDATED and gsplat_available()):
            if name == "auto" and not _auto_gsplat_said:
                warnings.warn("backend='auto' on CUDA tensors renders with gsplat's CUDA rasteriser: "
                              "recon's own CUDA kernels have not yet passed parity on a real GPU "
                              "(run apps/gpu_check.sh; select them with backend='cuda')", stacklevel=3)
                _auto_gsplat_said = True
            return "gsplat"
    if name == "gsplat":
        raise ConfigError("render backend 'gsplat' needs CUDA tensors (gsplat's rasteriser is CUDA-only); "
                          "move the Gaussians with .to('cuda') or use backend='cpu'")
    if name == "cuda" and device.type != "cuda":
        raise ConfigError("render backend 'cuda' needs CUDA tensors; move the Gaussians with "
                          ".to('cuda') or use backend='cpu'")
    if name == "cpu" and device.type != "cpu":
        raise ConfigError(f"render backend 'cpu' needs CPU tensors, got {device}; use "
                          "backend='cuda' or move the Gaussians to the CPU")
    from recon.render import _ext

    try:
        ext = _ext.load()
        if device.type == "cuda" and not _ext.has_cuda(ext):
            raise MissingDependencyError(
                "the rasteriser extension was built without CUDA (no CUDA torch or no GPU at "
                f"build time); delete {_ext.build_dir()} and retry on a machine with a GPU")
    except ReconError as err:
        if name != "auto":
            raise  # MissingDependencyError with the fix
        _auto_fallback_reason = str(err)
        if not _auto_fallback_warned:
            warnings.warn(f"falling back to the slow reference renderer: {err}", stacklevel=3)
            _auto_fallback_warned = True
        return "reference"
    return "cuda" if device.type == "cuda" else "cpu"


def _check_inputs(g: Gaussians, cams: list[Camera], settings: RenderSettings):
    if not cams:
        raise ConfigError("render() got no cameras; pass at least one Camera")
    width, height = cams[0].width, cams[0].height
    for i, c in enumerate(cams):
        if (c.width, c.height) != (width, height):
            raise ConfigError(f"camera {i} is {c.width}x{c.height} but camera 0 is "
                              f"{width}x{height}; render cameras of one size per call")
        if tuple(c.K.shape) != (3, 3) or tuple(c.T_cam_world.shape) != (4, 4):
            raise ConfigError(f"camera {i}: K must be [3, 3] and T_cam_world [4, 4], got "
                              f"{list(c.K.shape)} and {list(c.T_cam_world.shape)}")
    global _distortion_warned
    if not _distortion_warned and any(c.distortion is not None and bool(c.distortion.any()) for c in cams):
        warnings.warn("render() draws pinhole cameras: Camera.distortion is ignored, so render "
                      "undistorted images for distorted cameras", stacklevel=3)
        _distortion_warned = True
    if width < 1 or height < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    n = len(g)
    shapes = {"means": (g.means, (n, 3)), "log_scales": (g.log_scales, (n, 3)),
              "quats": (g.quats, (n, 4)), "opacity_logits": (g.opacity_logits, (n,))}
    for key, (t, want) in shapes.items():
        if tuple(t.shape) != want:
            raise ConfigError(f"gaussians.{key} must have shape {list(want)}, got {list(t.shape)}")
    k = g.sh.shape[1] if g.sh.dim() == 3 else -1
    if g.sh.dim() != 3 or g.sh.shape[0] != n or g.sh.shape[2] != 3 or k not in (1, 4, 9, 16):
        raise ConfigError(f"gaussians.sh must have shape [N, K, 3] with N={n} and K in "
                          f"1, 4, 9, 16, got {list(g.sh.shape)}")
    degree = g.sh_degree if settings.sh_degree is None else int(settings.sh_degree)
    if not 0 <= degree <= g.sh_degree:
        raise ConfigError(f"settings.sh_degree={degree} but the Gaussians carry degree "
                          f"{g.sh_degree}; use a value in 0..{g.sh_degree}")
    if settings.tile_size not in (8, 16, 32):
        raise ConfigError(f"settings.tile_size must be 8, 16 or 32, got {settings.tile_size}")
    if len(settings.background) != 3:
        raise ConfigError(f"settings.background must be 3 floats, got {settings.background!r}")
    return width, height, degree
