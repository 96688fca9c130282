"""Which backend render() picks, without a GPU: the CUDA branches are exercised by
monkeypatching device availability, gsplat's availability and the extension loader."""

from __future__ import annotations

import warnings

import pytest
import torch

import recon.render as rr
from recon.errors import ConfigError
from recon.render import _ext, _gsplat_backend

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


class _FakeExt:
    def __init__(self, cuda: bool):
        self._cuda = cuda

    def has_cuda(self) -> bool:
        return self._cuda


@pytest.fixture
def fresh(monkeypatch):
    """Reset the say-once flags and pretend the extension built with CUDA."""
    monkeypatch.setattr(rr, "_auto_gsplat_said", False)
    monkeypatch.setattr(rr, "_auto_fallback_warned", False)
    monkeypatch.setattr(_ext, "load", lambda verbose=False: _FakeExt(cuda=True))
    return monkeypatch


def test_auto_on_cuda_uses_gsplat_and_says_so_once(fresh):
    fresh.setattr(_gsplat_backend, "gsplat_available", lambda: True)
    with pytest.warns(UserWarning, match="gsplat's CUDA rasteriser.*backend='cuda'"):
        assert rr._pick_backend("auto", CUDA) == "gsplat"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time is silent
        assert rr._pick_backend("auto", CUDA) == "gsplat"


def test_explicit_cuda_selects_our_kernels(fresh):
    fresh.setattr(_gsplat_backend, "gsplat_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rr._pick_backend("cuda", CUDA) == "cuda"


def test_auto_on_cuda_uses_ours_once_validated_or_without_gsplat(fresh):
    fresh.setattr(_gsplat_backend, "gsplat_available", lambda: True)
    fresh.setattr(rr, "CUDA_BACKEND_VALIDATED", True)
    assert rr._pick_backend("auto", CUDA) == "cuda"
    fresh.setattr(rr, "CUDA_BACKEND_VALIDATED", False)
    fresh.setattr(_gsplat_backend, "gsplat_available", lambda: False)
    assert rr._pick_backend("auto", CUDA) == "cuda"


def test_auto_on_cpu_never_uses_gsplat(fresh):
    fresh.setattr(_gsplat_backend, "gsplat_available", lambda: True)
    assert rr._pick_backend("auto", CPU) == "cpu"


def test_gsplat_on_cpu_tensors_is_refused_with_the_fix(fresh):
    with pytest.raises(ConfigError, match="needs CUDA tensors.*backend='cpu'"):
        rr._pick_backend("gsplat", CPU)
