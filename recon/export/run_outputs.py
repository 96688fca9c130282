"""The files of a run folder besides checkpoints and the config: renders and depth maps,
``metrics.json``, ``cameras.json``, ``scene.json``, ``log.jsonl`` and the training curve
(layout in docs/ARCHITECTURE.md). The pipeline decides what goes in them; this module
only writes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from recon.export.cameras_json import NamedCamera, write_cameras_json
from recon.types import Camera, Gaussians, Scene, Split, View
from recon.visual import colour_depth


class RunLog:
    """A ``FitListener`` appending each logged step to ``log.jsonl`` (flushed, so a killed
    run keeps its log)."""

    def __init__(self, path: Path, every: int):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole fit, closed in on_finish/close
        self.every = every

    def on_start(self, event) -> None:
        self.file.write(json.dumps({"event": "start", "total_iterations": event.total_iterations}) + "\n")

    def on_step(self, event) -> None:
        if event.iteration % self.every == 0 or event.iteration == event.total_iterations:
            self.file.write(json.dumps({"iteration": event.iteration, "loss": event.loss, "psnr": event.psnr,
                                        "num_gaussians": event.num_gaussians, "seconds": round(event.seconds, 3)}) + "\n")
            self.file.flush()

    def on_finish(self, event) -> None:
        self.file.write(json.dumps({"event": "finish", "iteration": event.iteration}) + "\n")
        self.close()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def save_png(path: Path, image: Tensor) -> None:
    """[H, W, 3] float image in [0, 1] -> 8-bit PNG (rounded), creating the folder."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, (image.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())


def render_views(run: Path, split_name: str, gaussians: Gaussians, views: Sequence[View],
                 cameras: Sequence[Camera], render_fn, settings) -> list[Tensor]:
    """Renders each view, writes ``renders/<split>/<name>.png`` and its colour-mapped depth
    ``renders/depth/<split>_<name>.png``; returns the float renders [H, W, 3] in [0, 1]."""
    from recon.progress import track

    out = []
    with torch.no_grad():
        for v, cam in track(list(zip(views, cameras)), f"rendering {split_name} views"):
            r = render_fn(gaussians, [cam], settings)
            rgb = r.rgb[0].clamp(0, 1)  # [H, W, 3]
            save_png(run / "renders" / split_name / f"{v.name}.png", rgb)
            save_png(run / "renders" / "depth" / f"{split_name}_{v.name}.png", colour_depth(r.depth[0]))
            out.append(rgb)
    return out


def scene_record(spec: str, scene: Scene, split: Split) -> dict:
    """The contents of ``scene.json``: what was fitted and how it was split and normalised."""
    return {
        "scene": spec, "format": scene.format, "root": str(scene.root) if scene.root else None,
        "posed": scene.posed, "protocol": split.protocol, "split_description": split.description,
        "train": list(split.train), "test": list(split.test),
        "train_names": [scene.views[i].name for i in split.train],
        "test_names": [scene.views[i].name for i in split.test],
        "normalisation": {"centre": list(scene.normalisation.centre), "scale": scene.normalisation.scale},
        "image_size": [scene.views[0].width, scene.views[0].height],
    }


def write_scene_json(run: Path, record: dict) -> None:
    (run / "scene.json").write_text(json.dumps(record, indent=2))


def write_metrics_json(run: Path, metrics: dict) -> None:
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))


def write_run_cameras(run: Path, train: Sequence[View], train_cameras: Sequence[Camera], test: Sequence[View]) -> None:
    """``cameras.json``: the training cameras as fitted (after any pose refinement) and the
    test cameras."""
    write_cameras_json(run / "cameras.json",
                       [NamedCamera(v.name, "train", c) for v, c in zip(train, train_cameras)]
                       + [NamedCamera(v.name, "test", v.camera) for v in test])


def training_curve(path: Path, history: list[dict]) -> None:
    """Loss, training PSNR and Gaussian count against the iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    its = [h["iteration"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(its, [h["loss"] for h in history])
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    axes[1].plot(its, [h["psnr"] for h in history])
    axes[1].set_title("train PSNR (dB)")
    axes[2].plot(its, [h["num_gaussians"] for h in history])
    axes[2].set_title("Gaussians")
    for ax in axes:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
