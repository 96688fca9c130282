"""The fit's SSIM on CPU float32 images runs as one compiled kernel with an analytic backward
(cuda/src/cpu_ssim.cpp through recon.optimise._fused_ssim). It must compute what the torch
implementation computes: value and gradient against the torch path in float32 and against
the torch path in float64 (an independent reference for the analytic gradient), on real-size,
odd-size and small images (where the window shrinks), bit-identical for any thread count and
instruction set, and only where it applies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_extension, shared_scene
from PIL import Image

from recon.optimise import _fused_ssim, losses
from recon.render import _ext

require_extension()

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _pair(*shape, seed=0):
    """A prediction (leaf, requires grad) correlated with its target, so SSIM is well inside (-1, 1)."""
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(*shape, generator=gen)
    pred = (0.7 * gt + 0.3 * torch.rand(*shape, generator=gen)).requires_grad_(True)
    return pred, gt


def _torch_ssim(pred, gt):
    """The torch implementation on the window losses.ssim uses (any dtype)."""
    x, y = (pred[None], gt[None]) if pred.dim() == 3 else (pred, gt)
    return losses._ssim_torch(x, y, losses._ssim_window(x.shape[1], x.shape[2], x))


def _value_and_grad(fn, pred, gt):
    value = fn(pred, gt)
    (grad,) = torch.autograd.grad(value, pred)
    return value.detach(), grad


def _fused(pred, gt):
    value = losses.ssim(pred, gt)
    assert type(value.grad_fn).__name__ == "_FusedSSIMBackward", "losses.ssim did not take the fused path"
    return value


# (B,) H, W: real size, odd sizes, and images smaller than the 11-tap window (it shrinks to 11, 9, 5, 3, 1)
SHAPES = [(378, 504, 3), (37, 51, 3), (2, 24, 17, 3), (12, 13, 3), (9, 30, 3), (6, 9, 3), (4, 4, 3), (1, 7, 3)]


def _check_against_torch(pred, gt, rel):
    """Fused value and gradient against the float32 torch path (max gradient error at most
    ``rel`` of the largest gradient) and against float64 torch, the exact quantity (the
    kernel about as close to it as float32 torch is). Returns the fused gradient and the
    float32 torch one."""
    v_fused, g_fused = _value_and_grad(_fused, pred, gt)
    v_torch, g_torch = _value_and_grad(_torch_ssim, pred, gt)
    assert float(v_fused) == pytest.approx(float(v_torch), abs=1e-5)
    scale = float(g_torch.abs().max())
    assert scale > 0
    assert float((g_fused - g_torch).abs().max()) <= rel * scale
    v64, g64 = _value_and_grad(_torch_ssim, pred.detach().double().requires_grad_(True), gt.double())
    assert float(v_fused) == pytest.approx(float(v64), abs=1e-5)
    err_fused = float((g_fused.double() - g64).abs().max())
    err_torch = float((g_torch.double() - g64).abs().max())
    assert err_fused <= max(2 * err_torch, rel * scale)
    return g_fused, g_torch


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_value_and_gradient_match_the_torch_path(shape):
    pred, gt = _pair(*shape, seed=len(shape) + shape[-2])
    # A 1-tap window (an image 1 or 2 pixels high) has variances that are pure rounding noise
    # next to C2, which the gradient amplifies in any float32 evaluation order: looser there.
    _check_against_torch(pred, gt, rel=1e-5 if min(shape[-3], shape[-2]) > 2 else 1e-3)


def test_real_image_against_its_degraded_copy():
    path = shared_scene("llff_fern") / "images_8" / "image000.png"
    gt = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)  # [378, 504, 3]
    noise = torch.rand(gt.shape, generator=torch.Generator().manual_seed(3)) - 0.5
    blurred = torch.nn.functional.avg_pool2d(gt.permute(2, 0, 1)[None], 3, stride=1, padding=1)[0].permute(1, 2, 0)
    pred = (blurred + 0.05 * noise).clamp(0, 1).requires_grad_(True)
    assert 0.3 < float(losses.ssim(pred.detach(), gt)) < 0.95  # a real, partly similar pair
    # flat patches (low variance next to C2) make real images less forgiving than random ones
    g_fused, g_torch = _check_against_torch(pred, gt, rel=1e-4)
    # and the comparison is not vacuous: a gradient 1 % off is caught
    assert float((1.01 * g_fused - g_torch).abs().max()) > 1e-4 * float(g_torch.abs().max())


def test_photometric_and_binocular_losses_match_the_torch_path(monkeypatch):
    pred, gt = _pair(40, 56, 3, seed=4)
    depth = (1.0 + torch.rand(40, 56, generator=torch.Generator().manual_seed(5))).requires_grad_(True)

    def terms():
        photo = losses.photometric(pred, gt, 0.2)
        bino = losses.binocular_loss(pred, depth, gt, fx=50.0, baseline=0.05, ssim_weight=0.2)
        grads = torch.autograd.grad(photo + bino, [pred, depth])
        return photo.detach(), bino.detach(), grads

    fused = terms()
    monkeypatch.setattr(_fused_ssim, "usable", lambda x, y: False)
    reference = terms()
    for a, b in zip(fused[:2], reference[:2]):
        assert float(a) == pytest.approx(float(b), abs=1e-6)
    for a, b in zip(fused[2], reference[2]):
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_bitwise_identical_for_any_thread_count():
    pred, gt = _pair(2, 200, 301, 3, seed=7)
    results = []
    try:
        for threads in (1, 2, 3):  # 3: more threads than this machine's cores
            torch.set_num_threads(threads)
            results.append(_value_and_grad(_fused, pred, gt))
    finally:
        torch.set_num_threads(1)
    for value, grad in results[1:]:
        assert torch.equal(value, results[0][0]) and torch.equal(grad, results[0][1])


def test_value_without_gradient_is_the_same():
    pred, gt = _pair(50, 61, 3, seed=8)
    with torch.no_grad():
        plain = losses.ssim(pred, gt)
    assert plain.grad_fn is None
    assert torch.equal(plain, _fused(pred, gt).detach())


def test_torch_path_where_the_kernel_does_not_apply():
    pred, gt = _pair(20, 24, 3, seed=9)
    # float64: torch ops, same value
    p64 = pred.detach().double().requires_grad_(True)
    v64 = losses.ssim(p64, gt.double())
    assert "Fused" not in type(v64.grad_fn).__name__
    assert float(v64.detach()) == pytest.approx(float(_fused(pred, gt).detach()), abs=1e-5)
    # a target that wants a gradient: the kernel has none for it, so torch runs and provides it
    target = gt.clone().requires_grad_(True)
    value = losses.ssim(pred, target)
    assert "Fused" not in type(value.grad_fn).__name__
    value.backward()
    assert target.grad is not None and float(target.grad.abs().max()) > 0


def test_kernel_refuses_bad_arguments():
    ext = _ext.load()
    x, y = torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3)
    with pytest.raises(RuntimeError, match="odd"):
        ext.ssim_forward(x, y, torch.ones(4) / 4, 1e-4, 9e-4, False)
    with pytest.raises(RuntimeError, match="no larger than the image"):
        ext.ssim_forward(x, y, torch.ones(9) / 9, 1e-4, 9e-4, False)
    with pytest.raises(RuntimeError, match="y must match x"):
        ext.ssim_forward(x, torch.rand(1, 8, 7, 3), torch.ones(3) / 3, 1e-4, 9e-4, False)
    with pytest.raises(RuntimeError, match="float32"):
        ext.ssim_forward(x.double(), y.double(), torch.ones(3) / 3, 1e-4, 9e-4, False)


_ISA_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_ssim_fused import _fused, _pair, _value_and_grad
from recon.render import _ext
print(_ext.load().cpu_isa())
torch.set_num_threads(1)
pred, gt = _pair(61, 97, 3, seed=11)
torch.save(_value_and_grad(_fused, pred, gt), {out!r})
"""


def test_instruction_set_variants_agree(tmp_path):
    results = {}
    for isa in ("generic", "avx2", "avx512"):
        out = tmp_path / f"{isa}.pt"
        script = _ISA_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
        res = subprocess.run([sys.executable, "-c", script], env={**os.environ, "RECON_CPU_ISA": isa},
                             capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0 and "supports at most" in res.stderr:
            continue  # this CPU lacks the instruction set
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.strip().splitlines()[-1] == isa
        results[isa] = torch.load(out)
    value, grad = results["generic"]
    for isa, (v, g) in results.items():
        assert float(v) == pytest.approx(float(value), abs=1e-6), isa
        assert float((g - grad).abs().max()) <= 1e-5 * float(grad.abs().max()), isa


def test_identical_images_score_one():
    """The variances are differences of blurred products: evaluated inconsistently (some
    products fused into multiply-adds, others not) SSIM(x, x) misses 1 by ~1e-5."""
    for shape in [(378, 504, 3), (16, 24, 3), (1, 7, 3)]:
        pred, _ = _pair(*shape, seed=12)
        assert float(_fused(pred, pred.detach()).detach()) == pytest.approx(1.0, abs=1e-6)
