"""LPIPS from local weights: file layout compatibility and metric properties, with
randomly initialised weights saved to a temporary folder (no downloads)."""

from __future__ import annotations

import pytest
import torch

from recon.evaluate import lpips as L
from recon.evaluate.metrics import image_metrics


def _write_weights(folder, net: str, torchvision_layout: bool = True):
    """Save a random backbone in torchvision's checkpoint layout and random positive
    linear layers in the lpips package's layout."""
    torch.manual_seed(1)
    feats = L.alexnet_features() if net == "alex" else L.vgg16_features()
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.1.weight"] = torch.randn(4, 4)  # torchvision files also carry the classifier
    name = "alexnet-owt-7be5be79.pth" if net == "alex" else "vgg16-397923af.pth"
    torch.save(sd, folder / name)
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(L._CHANNELS[net])}
    torch.save(lins, folder / ("alex.pth" if net == "alex" else "vgg.pth"))
    return sd, lins


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    # No user weights may leak in from the environment or the real torch hub cache.
    monkeypatch.delenv("RECON_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_missing_weights_give_none_with_reason(tmp_path):
    scorer, reason = L.find_lpips("alex", tmp_path)
    assert scorer is None
    # (alex.pth itself may be found: an installed lpips package ships its linear layers)
    assert "alexnet-owt-7be5be79.pth" in reason and str(tmp_path) in reason


def test_weights_load_key_for_key(tmp_path):
    sd, lins = _write_weights(tmp_path, "alex")
    scorer, reason = L.find_lpips("alex", tmp_path)
    assert scorer is not None, reason
    assert torch.equal(scorer.features[3].weight, sd["features.3.weight"])
    assert torch.equal(scorer.lins[4].model[1].weight, lins["lin4.model.1.weight"])


def test_env_variable_and_hub_cache_are_searched(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    _write_weights(env_dir, "alex")
    monkeypatch.setenv("RECON_LPIPS_WEIGHTS", str(env_dir))
    assert L.find_lpips("alex")[0] is not None
    monkeypatch.delenv("RECON_LPIPS_WEIGHTS")
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    assert L.find_lpips("alex")[0] is None
    _write_weights(hub, "alex")
    assert L.find_lpips("alex")[0] is not None


def test_wrong_file_reports_reason(tmp_path):
    _write_weights(tmp_path, "alex")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "alexnet-owt-7be5be79.pth")
    scorer, reason = L.find_lpips("alex", tmp_path)
    assert scorer is None and "torchvision" in reason


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_metric_properties(tmp_path, net):
    _write_weights(tmp_path, net)
    scorer, reason = L.find_lpips(net, tmp_path)
    assert scorer is not None, reason
    torch.manual_seed(0)
    gt = torch.rand(64, 72, 3)
    a = (gt + 0.05 * torch.randn_like(gt)).clamp(0, 1)
    b = (gt + 0.3 * torch.randn_like(gt)).clamp(0, 1)
    assert scorer(gt, gt) == pytest.approx(0.0, abs=1e-7)
    d_a, d_b = scorer(a, gt), scorer(b, gt)
    assert d_a > 0
    assert scorer(gt, a) == pytest.approx(d_a, rel=1e-5)  # symmetric
    assert d_b > d_a  # noisier image, larger distance
    # small crops (SpaRe bounding boxes) are padded, not rejected
    assert scorer(b[:20, :30], gt[:20, :30]) > 0


def test_image_metrics_uses_scorer(tmp_path):
    _write_weights(tmp_path, "alex")
    scorer, _ = L.find_lpips("alex", tmp_path)
    gt = torch.rand(64, 64, 3)
    pred = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[8:40, 16:50] = True
    out = image_metrics(pred, gt, mask, style="spare", lpips={"alex": scorer})
    assert out["lpips_alex"] == pytest.approx(scorer(pred, gt)) and out["lpips_vgg"] is None
    assert out["lpips_alex_masked"] == pytest.approx(scorer(pred[8:40, 16:50], gt[8:40, 16:50]))


def _lpips_package(monkeypatch, net: str, backbone: dict):
    """The `lpips` PyPI package (the reference implementation) with its trunk built without
    pretrained weights and loaded with ``backbone``. torchvision has no build for our CPU
    torch, so a stand-in ``torchvision.models`` serves the trunk: recon's feature stack,
    whose torchvision compatibility is the key-for-key checkpoint test above. What this
    compares is everything LPIPS adds on top: input scaling, the five taps, channel
    normalisation, linear layers and the spatial mean."""
    import sys
    import types

    def trunk(builder):
        def make(pretrained=False, **_):
            assert not pretrained, "the reference must not download weights"
            feats = builder()
            feats.load_state_dict({k.removeprefix("features."): v for k, v in backbone.items()
                                   if k.startswith("features.")})
            return types.SimpleNamespace(features=feats)
        return make

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(alexnet=trunk(L.alexnet_features), vgg16=trunk(L.vgg16_features),
                                        squeezenet1_1=None, resnet18=None)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    lpips = pytest.importorskip("lpips")
    return lpips


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_the_lpips_package_on_identical_weights(tmp_path, monkeypatch, net):
    backbone, _ = _write_weights(tmp_path, net)
    lpips = _lpips_package(monkeypatch, net, backbone)
    lin_file = tmp_path / ("alex.pth" if net == "alex" else "vgg.pth")
    reference = lpips.LPIPS(net=net, pnet_rand=True, model_path=str(lin_file), verbose=False).eval()
    ours, reason = L.find_lpips(net, tmp_path)
    assert ours is not None, reason
    torch.manual_seed(3)
    gt = torch.rand(72, 96, 3)
    for noise in (0.02, 0.2):
        pred = (gt + noise * torch.randn_like(gt)).clamp(0, 1)
        with torch.no_grad():
            ref = float(reference(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None], normalize=True))
        assert ours(pred, gt) == pytest.approx(ref, rel=1e-5, abs=1e-7)
