"""The fit's mean SSIM as one compiled CPU kernel (cuda/src/cpu_ssim.cpp) with an analytic
backward, for ``recon.optimise.losses.ssim`` on CPU float32 images.

The torch version blurs five statistics with grouped convolutions and lets autograd run the
transposed convolutions back; on a CPU that is a large share of every iteration (the
photometric and the binocular term each take one). The kernel computes the same quantity
(same window, same valid region, float32) and its gradient in the prediction only: the
target is a constant of the loss, and ``usable`` sends any call that needs more to torch.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from recon.errors import MissingDependencyError

_unavailable_warned = False


def _extension():
    """The compiled module, or None (with one warning) when it cannot be built here."""
    global _unavailable_warned
    from recon.render import _ext

    try:
        return _ext.load()
    except MissingDependencyError as err:
        if not _unavailable_warned:
            warnings.warn(f"SSIM runs on the slower torch path: {err}", stacklevel=4)
            _unavailable_warned = True
        return None


def usable(x: Tensor, y: Tensor) -> bool:
    """True when the kernel computes exactly what the torch path would: CPU float32 images,
    no gradient wanted for the target, and the extension at hand."""
    return (x.device.type == "cpu" and y.device.type == "cpu" and x.dtype == torch.float32
            and y.dtype == torch.float32 and not y.requires_grad and _extension() is not None)


class _FusedSSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, window: Tensor, c1: float, c2: float) -> Tensor:
        need_grad = bool(ctx.needs_input_grad[0])
        value, coef = _extension().ssim_forward(x, y, window, c1, c2, need_grad)
        if need_grad:
            ctx.save_for_backward(x, y, window, coef)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, window, coef = ctx.saved_tensors
        dx = _extension().ssim_backward(x, y, window, coef, float(grad))
        return dx, None, None, None, None


def mean_ssim(x: Tensor, y: Tensor, window: Tensor, c1: float, c2: float) -> Tensor:
    """Mean SSIM of x against y ([B, H, W, C] float32 CPU, channels last) with the separable
    window ``window`` [S] (odd, at most the image's height and width) over the valid region.
    Differentiable in x. Call only where ``usable(x, y)``."""
    return _FusedSSIM.apply(x.contiguous(), y.contiguous(), window.contiguous(), float(c1), float(c2))
