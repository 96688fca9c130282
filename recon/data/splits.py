"""View-selection protocols: which views train and which are held out for testing.

* ``llff``: test = every 8th image (``i % 8 == 0``); the n training views are spread over
  the rest as RegNeRF/FreeNeRF/DNGaussian/FSGS do: ``idx = [round(x) for x in
  linspace(0, len(rest) - 1, n)]`` (Python's round: ties to even, as in their code).
  Fern, 3 views -> images 1, 10, 19.
* ``dtu``: the pixelNeRF/RegNeRF split of the 49 DTU views: train = the first n of
  ``[25, 22, 28, 40, 44, 48, 0, 8, 13]``; test = every view not in that 9-view list nor in
  the excluded views ``[3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]`` (25 views).
* ``blender8``: DietNeRF/FreeNeRF's 8 training views ``[26, 86, 2, 55, 75, 93, 16, 73]``
  (first n of them), frame ids = positions in ``transforms_train.json``'s frame list, found
  by their image file (a frame whose image is absent is an error, never a neighbour);
  test = the scene's test set.
* ``spare``: a SpaRe split JSON (scene -> input_views, test_views): from ``split_file`` or
  the scene's ``meta["spare_split"]``.
* ``farthest``: n views by farthest-point sampling of camera centres, starting at the
  camera nearest the centroid; test = all other views.
* ``auto``: the protocol of the scene's format (llff, dtu, blender8, spare) else farthest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recon.errors import SceneError
from recon.types import Scene, Split

PROTOCOLS = ("auto", "llff", "dtu", "blender8", "spare", "farthest")
LLFF_HOLD = 8
DTU_TRAIN = (25, 22, 28, 40, 44, 48, 0, 8, 13)
DTU_EXCLUDED = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)
DTU_VIEWS = 49
BLENDER8_TRAIN = (26, 86, 2, 55, 75, 93, 16, 73)


def default_protocol(scene: Scene) -> str:
    if scene.format == "llff":
        return "llff"
    if scene.format in ("dtu", "spare") and len(scene) == DTU_VIEWS:
        return "dtu"
    if scene.format == "spare" and "spare_split" in scene.meta:
        return "spare"
    if scene.format == "blender" and scene.split is not None and len(scene.split.train) > max(BLENDER8_TRAIN):
        return "blender8"
    return "farthest"


def select_split(scene: Scene, protocol: str | None = "auto", n_views: int | None = 3, *, split_file: str | Path | None = None) -> Split:
    """Train/test indices into ``scene.views`` under ``protocol`` with ``n_views``
    training views. SceneError when the scene cannot supply them."""
    protocol = protocol or "auto"
    if protocol == "auto":
        protocol = default_protocol(scene)
    if n_views is not None and n_views < 1:
        raise SceneError(f"--views {n_views}: at least one training view is needed")
    if protocol == "llff":
        return llff_split(len(scene), n_views)
    if protocol == "dtu":
        return dtu_split(len(scene), n_views)
    if protocol == "blender8":
        return blender8_split(scene, n_views)
    if protocol == "spare":
        return spare_split(scene, n_views, split_file)
    if protocol == "farthest":
        return farthest_split(scene, n_views)
    raise SceneError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def _too_many(n: int, available: int, protocol: str) -> SceneError:
    return SceneError(f"{n} training views requested but the {protocol} protocol has only {available} available; ask for at most {available}")


def llff_split(n_total: int, n_views: int | None) -> Split:
    test = [i for i in range(n_total) if i % LLFF_HOLD == 0]
    rest = [i for i in range(n_total) if i % LLFF_HOLD != 0]
    if n_views is None:
        n_views = len(rest)
    if n_views > len(rest):
        raise _too_many(n_views, len(rest), "llff")
    picks = [round(x) for x in np.linspace(0, len(rest) - 1, n_views)]  # builtin round, as the papers
    train = [rest[k] for k in picks]
    return Split(
        train=tuple(train), test=tuple(test), protocol="llff",
        description=f"LLFF: test = every {LLFF_HOLD}th view (i % {LLFF_HOLD} == 0); {n_views} train views spread by linspace over the other {len(rest)}",
    )


def dtu_split(n_total: int, n_views: int | None) -> Split:
    if n_total != DTU_VIEWS:
        raise SceneError(f"the dtu protocol needs the {DTU_VIEWS} DTU views, the scene has {n_total}; use --protocol farthest")
    n_views = len(DTU_TRAIN) if n_views is None else n_views
    if n_views > len(DTU_TRAIN):
        raise _too_many(n_views, len(DTU_TRAIN), "dtu")
    test = [i for i in range(DTU_VIEWS) if i not in DTU_TRAIN + DTU_EXCLUDED]
    return Split(
        train=DTU_TRAIN[:n_views], test=tuple(test), protocol="dtu",
        description=f"DTU (pixelNeRF/RegNeRF): train = first {n_views} of {list(DTU_TRAIN)}; test = the {len(test)} views outside that list and the excluded {list(DTU_EXCLUDED)}",
    )


def blender8_split(scene: Scene, n_views: int | None) -> Split:
    if scene.split is None:
        raise SceneError("the blender8 protocol needs a scene with the Blender train/test sets; use --protocol farthest")
    n_views = len(BLENDER8_TRAIN) if n_views is None else n_views
    if n_views > len(BLENDER8_TRAIN):
        raise _too_many(n_views, len(BLENDER8_TRAIN), "blender8")
    ids = BLENDER8_TRAIN[:n_views]
    train = blender_frames_by_id(scene, ids)
    test_set = scene.split.test
    return Split(
        train=tuple(train), test=tuple(test_set), protocol="blender8",
        description=f"DietNeRF/FreeNeRF: frames {list(ids)} of transforms_train.json (by frame id); "
                    f"test = the {len(test_set)} test images present",
    )


def blender_frames_by_id(scene: Scene, ids) -> list[int]:
    """View indices of frames ``ids`` (positions in transforms_train.json's frame list),
    matched by image file. SceneError naming the frame when its image is not in the scene."""
    from recon.data.blender import frame_image_path, read_json

    if scene.root is None or not (scene.root / "transforms_train.json").is_file():
        raise SceneError("the blender8 protocol selects frames of transforms_train.json; the scene has none")
    meta_path = scene.root / "transforms_train.json"
    frames = read_json(meta_path).get("frames", [])
    by_path = {Path(v.path).resolve(): i for i, v in enumerate(scene.views) if v.path is not None}
    train_views = set(scene.split.train)
    out = []
    for k in ids:
        if k >= len(frames):
            raise SceneError(f"{meta_path} has {len(frames)} frames; the blender8 protocol needs frame {k}")
        file_path = frames[k].get("file_path", "?")
        image = frame_image_path(scene.root, file_path)
        index = by_path.get(image.resolve()) if image is not None else None
        if index is None or index not in train_views:
            raise SceneError(f"{meta_path} frame {k} ({file_path}): its image is not in the scene; the blender8 "
                             "protocol needs exactly this frame (restore the image or use --protocol farthest)")
        out.append(index)
    return out


def farthest_split(scene: Scene, n_views: int | None) -> Split:
    n_total = len(scene)
    n_views = min(3, n_total) if n_views is None else n_views
    if n_views > n_total:
        raise _too_many(n_views, n_total, "farthest")
    if not scene.posed:
        # No camera centres yet (poses are recovered after the split): photos in file
        # order are usually in capture order, so spread the training views over it.
        chosen = sorted({round(x) for x in np.linspace(0, n_total - 1, n_views)})
        test = [i for i in range(n_total) if i not in chosen]
        return Split(
            train=tuple(chosen), test=tuple(test), protocol="farthest",
            description=f"unposed input: {n_views} train views spread by linspace over the files in name "
                        f"order (no camera centres to sample yet); test = the other {len(test)}",
        )
    centres = torch.stack([v.camera.centre.double() for v in scene.views])  # [N, 3]
    first = int((centres - centres.mean(0)).norm(dim=-1).argmin())
    chosen = [first]
    dist = (centres - centres[first]).norm(dim=-1)  # [N] distance to the chosen set
    while len(chosen) < n_views:
        dist[chosen] = -1.0  # never pick a view twice, even when cameras coincide
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (centres - centres[nxt]).norm(dim=-1))
    test = [i for i in range(n_total) if i not in chosen]
    return Split(
        train=tuple(chosen), test=tuple(test), protocol="farthest",
        description=f"farthest-point sampling of camera centres ({n_views} views, starting nearest the centroid); test = the other {len(test)}",
    )


def read_spare_split(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SceneError(f"split file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot parse split file {path} ({exc}); it must be JSON: scene -> {{input_views, test_views}}") from None
    if not isinstance(data, dict):
        raise SceneError(f"split file {path} must map scene names to {{input_views, test_views}}")
    return data


def _resolve(scene: Scene, ids, where: str) -> list[int]:
    """SpaRe view ids -> indices: ints are view indices, strings view names."""
    names = {v.name: i for i, v in enumerate(scene.views)}
    out = []
    for x in ids:
        if isinstance(x, int) and 0 <= x < len(scene):
            out.append(x)
        elif isinstance(x, str) and x in names:
            out.append(names[x])
        elif isinstance(x, str) and Path(x).stem in names:
            out.append(names[Path(x).stem])
        else:
            raise SceneError(f"{where}: view {x!r} is not in the scene ({len(scene)} views: {', '.join(list(names)[:4])}, ...)")
    return out


def spare_split(scene: Scene, n_views: int | None, split_file: str | Path | None = None) -> Split:
    entry = scene.meta.get("spare_split")
    where = str(scene.meta.get("spare_split_file", "the scene's split"))
    if split_file is not None:
        data = read_spare_split(Path(split_file))
        key = scene.root.name if scene.root is not None else None
        if key not in data:
            raise SceneError(f"split file {split_file} has no entry for scene {key!r} (it has {', '.join(list(data)[:5])}...)")
        entry, where = data[key], str(split_file)
    if not entry or "input_views" not in entry:
        raise SceneError("the spare protocol needs a Track*_split_*.json with this scene's input_views; pass split_file=")
    train = _resolve(scene, entry["input_views"], where)
    test = _resolve(scene, entry.get("test_views", []), where)
    if n_views is not None and n_views != len(train):
        if n_views > len(train):
            raise _too_many(n_views, len(train), "spare")
        train = train[:n_views]
    return Split(train=tuple(train), test=tuple(test), protocol="spare", description=f"SpaRe split from {where}")
