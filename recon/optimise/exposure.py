"""Per-view exposure compensation for photographs (``exposure.*``; on in configs/generic.yaml, off elsewhere).

Photographs of one scene rarely share one exposure and white balance: a phone meters each shot.
With three views the Gaussians can bake the difference into view-dependent colour (SH) or into
floaters that tint one view, and novel views between them inherit the artefacts. Here each
training view v gets an affine colour transform, per channel,

    rgb_v = rgb * exp(log_gain_v) + bias_v

applied to the render before it is compared with photo v (the photometric and binocular terms:
the binocular term's shifted render stands in for the same photo), so the Gaussians model one
shared appearance and the transform absorbs what differs per shot. The transform acts on the
render, not on the photo: dividing the photo instead would let a large gain flatten the target
until any blur matches it.

View 0 keeps the identity and fixes the gauge (gain and bias are otherwise ambiguous with the
Gaussians' own colour); renders at test and novel cameras use the identity, i.e. view 0's
appearance, and never see a test photo. What was fitted goes to ``metrics.json["exposure"]``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor


class ViewExposure:
    """Per-channel log gains [V, 3] and biases [V, 3] of the training views, with their own Adam.
    ``enabled=False``: the identity for every view, nothing steps."""

    def __init__(self, num_views: int, *, enabled: bool, lr: float, start: int = 0):
        self.enabled, self.start = enabled, start
        self.log_gain = torch.nn.Parameter(torch.zeros(num_views, 3))  # [V, 3]
        self.bias = torch.nn.Parameter(torch.zeros(num_views, 3))  # [V, 3]
        self.opt = torch.optim.Adam([self.log_gain, self.bias], lr=lr, eps=1e-15)

    def apply(self, v: int, rgb: Tensor) -> Tensor:
        """Render ``rgb`` [..., 3] of training view v as photo v's exposure shows it."""
        if not self.enabled or v == 0:  # view 0 fixes the gauge
            return rgb
        return rgb * torch.exp(self.log_gain[v]) + self.bias[v]

    def step(self, it: int) -> None:
        if self.enabled and it >= self.start:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def record(self, names: list[str]) -> dict | None:
        """metrics.json["exposure"]: None when off, else each training view's gain and bias per channel."""
        if not self.enabled:
            return None
        gains = torch.exp(self.log_gain.detach())
        return {"reference_view": names[0] if names else None,
                "views": {n: {"gain": [round(float(x), 5) for x in gains[i]],
                              "bias": [round(float(x), 5) for x in self.bias.detach()[i]]}
                          for i, n in enumerate(names)}}

    def state_dict(self) -> dict:
        # deep copy: Adam updates its moments in place after this snapshot
        return {"exposure_log_gain": self.log_gain.detach().clone(), "exposure_bias": self.bias.detach().clone(),
                "exposure_opt": copy.deepcopy(self.opt.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        """``state``: a checkpoint's; one written before exposure compensation existed has none of
        its keys (the views then start at the identity)."""
        if "exposure_log_gain" not in state:
            return
        with torch.no_grad():
            self.log_gain.copy_(state["exposure_log_gain"])
            self.bias.copy_(state["exposure_bias"])
        self.opt.load_state_dict(state["exposure_opt"])
