"""Random scenes shared by the renderer tests (not a test module)."""

from __future__ import annotations

import torch

from recon.geometry import look_at
from recon.types import Camera, Gaussians


def random_gaussians(n: int, *, sh_degree: int = 3, dtype=torch.float32, seed: int = 0,
                     spread: float = 0.6, log_scale: float = -3.0, grad: bool = True) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    g = Gaussians(
        means=(rnd(n, 3) * spread).to(dtype),  # [N, 3]
        log_scales=(rnd(n, 3) * 0.4 + log_scale).to(dtype),  # [N, 3]
        quats=rnd(n, 4).to(dtype),  # [N, 4]
        opacity_logits=rnd(n).to(dtype),  # [N]
        sh=(rnd(n, k, 3) * 0.3).to(dtype),  # [N, K, 3]
    )
    if grad:
        for t in g.tensors():
            t.requires_grad_(True)
    return g


def cameras(width: int, height: int, *, n: int = 2, dtype=torch.float32, grad: bool = False,
            distance: float = 3.0) -> list[Camera]:
    """Cameras around the origin with off-centre principal points and unequal focals."""
    eyes = [(0.0, 0.3, -distance), (1.2, -0.5, -0.8 * distance), (-1.0, 0.8, -0.9 * distance),
            (0.4, -1.0, -distance)]
    out = []
    for i in range(n):
        eye = torch.tensor(eyes[i % len(eyes)], dtype=torch.float64)
        T = look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
        f = 1.1 * max(width, height)
        K = torch.tensor([[f, 0.0, 0.43 * width + i], [0.0, 0.93 * f, 0.56 * height - i], [0.0, 0.0, 1.0]],
                         dtype=torch.float64)
        T = T.to(dtype)
        if grad:
            T.requires_grad_(True)
        out.append(Camera(K=K.to(dtype), T_cam_world=T, width=width, height=height))
    return out
