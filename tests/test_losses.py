"""Loss terms: values on constructed cases, agreement with torchmetrics, gradients."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from recon.optimise import losses


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads; on a busy machine they spin (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_ssim_matches_torchmetrics():
    a, b = _rand(2, 40, 52, 3, seed=1), _rand(2, 40, 52, 3, seed=2)
    b = 0.6 * a + 0.4 * b  # correlated, so SSIM is well inside (0, 1)
    ours = float(losses.ssim(a, b))
    ref = float(structural_similarity_index_measure(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), data_range=1.0))
    assert ours == pytest.approx(ref, abs=1e-3)  # kernels differ in the 4th decimal
    assert float(losses.ssim(a, a)) == pytest.approx(1.0, abs=1e-5)


def test_photometric_and_masked_l1():
    gt = _rand(16, 20, 3)
    pred = gt.clone()
    pred[:8] += 0.5  # error only in the top half
    mask = torch.zeros(16, 20, dtype=torch.bool)
    mask[8:] = True
    assert float(losses.l1(pred, gt, mask)) == 0.0
    assert float(losses.l1(pred, gt)) == pytest.approx(0.25, abs=1e-6)
    assert float(losses.photometric(gt, gt, 0.2)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.photometric(pred, gt, 0.2)) > float(losses.photometric(pred, gt, 0.0)) * 0.8


def test_pearson_is_scale_and_shift_invariant():
    depth = 1.0 + 3.0 * _rand(30, 40, seed=3)
    assert float(losses.pearson_depth_loss(depth, 2.5 * depth + 7.0)) == pytest.approx(0.0, abs=1e-5)
    # A disparity prior (larger = nearer) in any affine scale matches the rendered depth.
    disparity = 0.3 / depth + 0.1
    assert float(losses.pearson_depth_loss(depth, disparity, "disparity")) == pytest.approx(0.0, abs=1e-5)
    # The same disparity read as depth is anti-correlated: loss near 2.
    assert float(losses.pearson_depth_loss(depth, disparity, "depth")) > 1.8
    unrelated = _rand(30, 40, seed=4) + 1
    assert 0.7 < float(losses.pearson_depth_loss(depth, unrelated)) < 1.3


def test_pearson_ignores_invalid_pixels_and_descends():
    prior = 1.0 + _rand(24, 24, seed=5)
    prior[:4] = 0.0  # unknown: must not count
    rendered = (1.0 + _rand(24, 24, seed=6)).requires_grad_()
    opt = torch.optim.Adam([rendered], lr=0.05)
    first = float(losses.pearson_depth_loss(rendered.detach(), prior))
    for _ in range(40):
        loss = losses.pearson_depth_loss(rendered, prior)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first
    assert torch.isfinite(rendered.grad).all() and rendered.grad[4:].abs().sum() > 0


def test_ranking_loss_orders_and_gradients():
    prior = torch.linspace(1, 5, 32)[None].repeat(16, 1)  # depth grows to the right
    g = torch.Generator().manual_seed(0)
    agree = losses.depth_ranking_loss(prior * 2, prior, "depth", num_pairs=2000, margin=0.0, generator=g)
    assert float(agree) == 0.0
    rendered = prior.flip(1).clone().requires_grad_()  # reversed order
    wrong = losses.depth_ranking_loss(rendered, prior, "depth", num_pairs=2000, generator=g)
    assert float(wrong) > 0.05
    wrong.backward()
    assert torch.isfinite(rendered.grad).all() and rendered.grad.abs().sum() > 0
    # As a disparity, the same prior says the opposite: the reversed rendering agrees.
    flipped = losses.depth_ranking_loss(prior.flip(1), prior, "disparity", num_pairs=2000, margin=0.0, generator=g)
    assert float(flipped) == 0.0


def test_bad_kind_raises():
    d = torch.ones(8, 8)
    with pytest.raises(ValueError, match="kind"):
        losses.pearson_depth_loss(d + _rand(8, 8), d, "inverse")
    with pytest.raises(ValueError, match="kind"):
        losses.depth_ranking_loss(d, d, "inverse")


def test_regularisers():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(1)).requires_grad_()
    loss = losses.opacity_regulariser(logits)
    loss.backward()
    assert (logits.grad > 0).all()  # lowering any opacity lowers the loss
    small = torch.log(torch.full((10, 3), 0.01))
    assert float(losses.scale_regulariser(small, max_scale=0.1)) == 0.0
    big = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.01, 0.01, 0.01]])).requires_grad_()
    loss = losses.scale_regulariser(big, max_scale=0.1)
    loss.backward()
    assert float(loss) > 0 and big.grad[0].max() > 0 and big.grad[1].abs().sum() == 0
    needle = torch.log(torch.tensor([[0.05, 0.001, 0.001]]))
    assert float(losses.scale_regulariser(needle, max_scale=0.1, max_ratio=10)) > 0
