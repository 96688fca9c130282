"""What each benchmark suite means: scenes, training views, test views, resolution, masks
and metric style. Every report copies the suite's ``describe()`` so a number is never
separated from the protocol that produced it.

The split itself is chosen by the data stage (``recon.data.splits.select_split(scene,
protocol, n_views)``); the suite names the protocol string it passes and documents what
that protocol selects, so a reader of a report does not need to read the code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from recon.errors import ConfigError


@dataclass(frozen=True)
class Suite:
    name: str
    scenes: tuple[str, ...]  # folder names under the data root (missing ones are skipped)
    protocol: str  # passed to fit_scene(protocol=...) and select_split
    n_views: int  # training views
    train_views: str  # human-readable account of the training views
    test_views: str  # ... and of the test views
    resolution: str  # evaluation resolution
    masks: str  # where masks come from, or "none"
    metric_style: str | None  # recon.evaluate.metrics style: None | "dtu" | "spare"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # for DTU compositing
    lpips_net: str = "alex"
    config_overrides: tuple[str, ...] = ()  # applied to every fit of the suite (after the preset)
    notes: str = ""
    # SpaRe suites discover their scenes from the split JSON instead of a fixed list
    discover: bool = False
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        out = asdict(self)
        out["background"] = list(self.background)
        return out


# DTU test ids of the RegNeRF protocol (PixelNeRF's split); training ids 25, 22, 28.
DTU_TEST_IDS = (1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47)
DTU_TRAIN_IDS = (25, 22, 28)
# DietNeRF / FreeNeRF 8-view Blender training ids.
BLENDER8_TRAIN_IDS = (26, 86, 2, 55, 75, 93, 16, 73)


def _spare_suite(track: int, n_views: int) -> Suite:
    """SpaRe Track 1 (3 views) and Track 2 (9 views) differ only in track and view count."""
    return Suite(
        name=f"spare{n_views}",
        scenes=(),
        protocol="spare",
        n_views=n_views,
        train_views=f"Track {track}: the {n_views} input_views of Track{track}_split_{{development,test}}.json",
        test_views="the 10 test_views of the split JSON (view i is camera i+1), lighting 3",
        resolution="1600x1200 (full resolution)",
        masks="object masks of the test views when present (PSNR-M, SSIM-M/LPIPS-M in the tight box)",
        metric_style="spare",
        lpips_net="alex",
        discover=True,
        extra={"track": track},
    )


SUITES: dict[str, Suite] = {
    "llff3": Suite(
        name="llff3",
        scenes=("llff_fern", "llff_flower", "llff_leaves", "llff_orchids"),
        protocol="llff",
        n_views=3,
        train_views="3 views spread evenly (linspace) over the images that are not test views",
        test_views="every 8th image (i % 8 == 0), sorted by file name",
        resolution="504x378 (LLFF images_8; 800x600 sources resized to 504x378)",
        masks="none",
        metric_style=None,
    ),
    "dtu3": Suite(
        name="dtu3",
        scenes=("dtu_scan24",),
        protocol="dtu",
        n_views=3,
        train_views=f"DTU ids {list(DTU_TRAIN_IDS)} (RegNeRF protocol)",
        test_views=f"DTU ids {list(DTU_TEST_IDS)} (RegNeRF/PixelNeRF test split)",
        resolution="400x300 (images_4)",
        masks="mask_4 object masks (threshold 128)",
        metric_style="dtu",
        background=(1.0, 1.0, 1.0),
        notes="scan 24 is not one of the 15 usual DTU test scans: not directly comparable to papers",
    ),
    "blender8": Suite(
        name="blender8",
        scenes=("nerf_synthetic_lego",),
        protocol="blender8",
        n_views=8,
        train_views=f"train ids {list(BLENDER8_TRAIN_IDS)} (DietNeRF/FreeNeRF)",
        test_views="the test images present in the scene folder (25 here; papers use 200 or 25)",
        resolution="400x400 (half resolution, as DietNeRF/FreeNeRF)",
        masks="none (RGBA composited on white)",
        metric_style=None,
    ),
    "spare3": _spare_suite(track=1, n_views=3),
    "spare9": _spare_suite(track=2, n_views=9),
}

# The in-house baseline that every bench table carries: plain 3DGS from random points,
# no depth supervision, no pseudo views, no diffusion (config overrides on the same preset).
BASELINE_OVERRIDES = (
    "init.method=random",
    "depth.enabled=false",
    "pseudo.enabled=false",
    "diffusion.enabled=false",
)
METHODS = {"recon": (), "baseline-3dgs": BASELINE_OVERRIDES}


def get_suite(name: "str | Suite") -> Suite:
    if isinstance(name, Suite):
        return name
    if name not in SUITES:
        raise ConfigError(f"unknown benchmark suite {name!r}; use one of {', '.join(SUITES)}")
    return SUITES[name]


def suite_config(suite: Suite, config: str | None) -> str | None:
    """The fit preset of a bench: the one asked for, else the preset named after the suite
    (configs/<suite>.yaml: its resolution and protocol), else the dataclass defaults."""
    if config:
        return config
    from recon.optimise.config import preset_path

    try:
        preset_path(suite.name)
    except ConfigError:
        return None
    return suite.name


def suite_scenes(suite: Suite, data_root: Path) -> list[tuple[str, Path]]:
    """(scene name, folder) for every scene of the suite found under ``data_root``.
    SpaRe suites read the track's split JSON (development split first, then test)."""
    data_root = Path(data_root)
    if not suite.discover:
        return [(s, data_root / s) for s in suite.scenes if (data_root / s).is_dir()]
    from recon.evaluate.spare import read_split  # SpaRe layout helpers

    track = suite.extra["track"]
    for kind in ("development", "test"):
        path = data_root / f"Track{track}_split_{kind}.json"
        if path.is_file():
            return [(name, data_root / name) for name in read_split(path)]
    return []


def default_data_root() -> Path | None:
    """../shared/data beside the repository when present (the project's real scenes)."""
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
