"""Densification and pruning through gsplat's ``DefaultStrategy``, fed by our renderer.

gsplat's strategy reads an ``info`` dict from its own rasteriser; ``strategy_info`` builds
the same dict from our ``RenderOutput`` (whose ``means2d`` had ``retain_grad()`` called
before backward). Parameters live in a dict of ``nn.Parameter`` under gsplat's names
("means", "scales", "quats", "opacities", "sh0", "shN") with one Adam per key, which is
what gsplat's parameter surgery (duplicate / split / remove) expects.
"""

from __future__ import annotations

from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove, reset_opa
from torch import Tensor

from recon.types import RenderOutput


def prune_scale3d_start(cfg) -> int:
    """Step after which Gaussians larger than ``prune_scale3d`` x scene scale are pruned at
    each refinement: after the first opacity reset, as 3DGS does (``max_screen_size`` and
    the world-size test switch on after ``opacity_reset_interval``) and gsplat 1.5.3 gates
    it (``step > reset_every``). Without opacity resets (``reset_every=0``, every shipped
    recon preset) it never fires, stated here because the name suggests otherwise.

    Enabling it from the first refinement instead was measured and rejected: on LLFF fern
    3-view (llff3 preset, seed 0) test PSNR was 19.28 dB with it against 21.69 dB in the
    previous benchmarks/results run (benchmarks/results/README.md has the controlled pair),
    and on leaves the fit collapsed (train PSNR 11.9 at step 690): with three nearby cameras the scene scale is
    the camera spread (0.50 on fern), so the threshold (0.05) removes the background's
    necessarily large Gaussians. A sparse-view size prune needs a scene scale from the
    geometry, not from the camera spread (left for the fidelity work)."""
    return cfg.reset_every if cfg.reset_every > 0 else 10**9


def make_strategy(cfg, iterations: int) -> DefaultStrategy:
    """cfg: a ``DensifyConfig``. Opacity reset is done here (see ``post_backward``) because
    gsplat 1.5.3's own reset test (``step % reset_every == 0 & step > 0``) never fires;
    gsplat's ``reset_every`` is only the gate of its big-Gaussian pruning (see
    ``prune_scale3d_start``)."""
    return DefaultStrategy(
        prune_opa=cfg.prune_opa,
        grow_grad2d=cfg.grow_grad2d,
        grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d,
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=min(cfg.refine_stop, iterations),
        refine_every=cfg.refine_every,
        reset_every=prune_scale3d_start(cfg),
        verbose=False,
    )


def strategy_info(out: RenderOutput) -> dict[str, Any]:
    """The ``info`` dict gsplat's DefaultStrategy reads, from our render output."""
    C, H, W = out.rgb.shape[:3]
    return {
        "means2d": out.means2d,  # [C, N, 2], grad retained
        # gsplat 1.5 keeps per-axis radii [C, N, 2]; ours are isotropic [C, N].
        "radii": out.radii[..., None].expand(*out.radii.shape, 2),
        "width": W,
        "height": H,
        "n_cameras": C,
        "gaussian_ids": None,
    }


class Densifier:
    """Adapter: ``pre_backward`` before ``loss.backward()``, ``post_backward`` after it."""

    def __init__(self, cfg, iterations: int, scene_scale: float, seed: int = 0):
        self.cfg = cfg
        self.strategy = make_strategy(cfg, iterations)
        self.state: dict[str, Any] = self.strategy.initialize_state(scene_scale=scene_scale)
        # gsplat's split samples new centres from the global RNG; we run it on our own
        # seeded stream so a fit is reproducible and resumable without touching global state.
        self.rng_state = torch.Generator().manual_seed(seed).get_state()

    def pre_backward(self, params, optimizers, step: int, out: RenderOutput) -> dict[str, Any]:
        info = strategy_info(out)
        self.strategy.step_pre_backward(params, optimizers, self.state, step, info)
        return info

    @torch.no_grad()
    def post_backward(self, params, optimizers, step: int, info: dict[str, Any]) -> None:
        if info["means2d"].grad is None:  # nothing visible this step
            return
        before = len(params["means"])
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            self.strategy.step_post_backward(params, optimizers, self.state, step, info)
            self.rng_state = torch.get_rng_state()
        self._cap(params, optimizers, before)
        reset = self.cfg.reset_every
        if reset > 0 and step > 0 and step % reset == 0 and step < self.strategy.refine_stop_iter:
            reset_opa(params, optimizers, self.state, value=self.strategy.prune_opa * 2.0)

    def _cap(self, params, optimizers, before: int) -> None:
        """Keeps at most ``max_gaussians``: when growth overshoots, the least opaque of the
        new Gaussians go first (a hard memory bound on a laptop)."""
        n = len(params["means"])
        cap = self.cfg.max_gaussians
        if n <= cap:
            return
        opacity = torch.sigmoid(params["opacities"].detach())  # [N]
        opacity[: min(before, cap)] = float("inf")  # old ones stay unless they alone exceed
        drop = torch.zeros(n, dtype=torch.bool, device=opacity.device)
        drop[torch.argsort(opacity)[: n - cap]] = True
        remove(params, optimizers, self.state, drop)

    def state_dict(self) -> dict[str, Any]:
        state = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.state.items()}
        return {"strategy": state, "rng": self.rng_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state["strategy"])
        self.rng_state = state["rng"].clone()
