"""The one scorer of test views: `recon fit` calls it on its float renders, `recon eval`
on the same renders reproduced from the run folder, the bench and the SpaRe runner on theirs.

``score_views(preds, views, protocol)`` -> ``Scores`` with

* ``per_view``: one dict per view (``name`` and every metric of ``metrics.image_metrics``),
* ``summary``: the mean of each metric over the views, ``num_views``, the reason for each
  null LPIPS, and the aliases ``ssim`` / ``lpips`` of the headline full-image columns,
* ``implementations``: what computed each number (copied into metrics.json and reports),
* ``fallbacks``: every place where the scoring could not do what the protocol asks
  (e.g. a masked protocol on views without masks), never silent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from torch import Tensor

from recon.errors import ReconError
from recon.evaluate.metrics import (
    HEADLINE,
    LPIPS_NETS,
    METRIC_IMPLEMENTATIONS,
    LpipsScorer,
    image_metrics,
    metric_style_for,
    summarise,
)
from recon.types import View

# Outside the object mask, DTU-style masked SSIM/LPIPS see both images on this colour.
DTU_BACKGROUND = (1.0, 1.0, 1.0)

# net -> (scorer or None, reason it is None)
LpipsNets = Mapping[str, tuple[LpipsScorer | None, str]]


def load_lpips_nets(weights: str | None = None, nets: Sequence[str] = LPIPS_NETS) -> dict:
    """Every LPIPS network whose weights are found locally (see recon.evaluate.lpips)."""
    from recon.evaluate.lpips import find_lpips

    return {net: find_lpips(net, weights) for net in nets}


def no_lpips(reason: str) -> dict:
    """LPIPS deliberately not computed (e.g. the initial Gaussians' quick score)."""
    return {net: (None, reason) for net in LPIPS_NETS}


@dataclass
class Scores:
    summary: dict
    per_view: list[dict]
    implementations: dict
    fallbacks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def score_views(
    preds: Sequence[Tensor],
    views: Sequence[View],
    protocol: str | None,
    *,
    lpips: LpipsNets | None = None,
    lpips_weights: str | None = None,
    background: Sequence[float] = DTU_BACKGROUND,
) -> Scores:
    """Score predictions ([H, W, 3] in [0, 1], one per view, same order) against the views'
    images (and masks) under the metric style of ``protocol``. ``lpips``: the networks to
    use (default: load every one found locally, from ``lpips_weights`` first)."""
    preds, views = list(preds), list(views)
    if len(preds) != len(views):
        raise ReconError(f"{len(preds)} predictions for {len(views)} test views; render every test view")
    nets = dict(lpips) if lpips is not None else load_lpips_nets(lpips_weights)
    scorers = {net: scorer for net, (scorer, _) in nets.items()}
    style = metric_style_for(protocol)
    fallbacks: list[dict] = []
    if style is not None:
        unmasked = [v.name for v in views if v.mask is None]
        if unmasked:
            fallbacks.append({
                "stage": "evaluate", "wanted": f"{style} masked metrics", "used": "full-image metrics only",
                "reason": f"the {protocol} protocol scores inside object masks, but test views "
                          f"{unmasked[:5]}{' ...' if len(unmasked) > 5 else ''} have no mask"})
            style = None
    per_view = []
    for view, pred in zip(views, preds):
        if tuple(pred.shape) != tuple(view.image.shape):
            raise ReconError(f"prediction for test view {view.name} is {list(pred.shape)}, ground truth "
                             f"{list(view.image.shape)}; render at the ground truth's size")
        metrics = image_metrics(pred, view.image, view.mask if style else None, style=style,
                                background=background, lpips=scorers)
        per_view.append({"name": view.name, **metrics})
    summary = summarise(per_view)
    headline = HEADLINE[style]
    lpips_headline = HEADLINE[None if style is None else style]["lpips"].removesuffix("_masked")
    # The plain names are aliases of the headline full-image columns (what older readers use).
    if per_view:
        summary["ssim"] = summary.get("ssim_3dgs")
        summary["lpips"] = summary.get(lpips_headline)
    for net, (scorer, reason) in nets.items():
        if scorer is None:
            summary[f"lpips_{net}_reason"] = reason
    if summary.get("lpips") is None and per_view:
        summary["lpips_reason"] = nets.get(lpips_headline.removeprefix("lpips_"), (None, "not computed"))[1]
    implementations = {
        **{k: METRIC_IMPLEMENTATIONS[k] for k in ("psnr", "ssim_3dgs", "ssim_skimage", "lpips_vgg", "lpips_alex")},
        "style": style,
        "masked": METRIC_IMPLEMENTATIONS.get(f"{style}_masked") if style else None,
        "background": list(background) if style == "dtu" else None,
        "headline": dict(headline),
        "aliases": {"ssim": "ssim_3dgs", "lpips": lpips_headline},
        "lpips_nets": {net: scorer is not None for net, (scorer, _) in nets.items()},
    }
    return Scores(summary, per_view, implementations, fallbacks)
