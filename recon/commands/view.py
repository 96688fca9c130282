"""`recon view RUN_OR_PLY`: browse a finished run (or any 3DGS PLY) in the browser, or
render a camera path through its input cameras to a video."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "view",
        help="browse a finished run or a 3DGS PLY in the browser; render a camera-path video",
        description="Serve a browser viewer (viser) for a run folder written by `recon fit`, "
                    "or any standard 3DGS point_cloud.ply. With --path-video, render a camera "
                    "path through the input cameras to an MP4 or GIF instead.",
    )
    parser.add_argument("run", metavar="RUN_OR_PLY", help="run folder or .ply file")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; "
                             "0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    parser.add_argument("--token", default=None,
                        help="access token the page and websocket require (default: generated and "
                             "printed in the URL when --host is not loopback; none on loopback)")
    parser.add_argument("--path-video", metavar="OUT", default=None,
                        help="render a camera path to OUT (.mp4 or .gif) and exit")
    parser.add_argument("--path", dest="path_kind", choices=("orbit", "spiral"), default=None,
                        help="camera path: orbit (object-centric) or spiral (forward-facing); "
                             "default: spiral for LLFF-like runs, else orbit")
    parser.add_argument("--frames", type=int, default=120, help="frames in the video (default 120)")
    parser.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    parser.add_argument("--size", type=int, default=480,
                        help="longest video side in pixels (default 480)")
    parser.set_defaults(func=handler)


def _default_path_kind(cameras) -> str:
    """Forward-facing captures (all cameras looking roughly the same way) get a spiral."""
    import numpy as np

    from recon.geometry import invert_pose

    forwards = np.stack([invert_pose(c.T_cam_world.double())[:3, 2].numpy() for c in cameras])
    return "spiral" if float((forwards @ forwards.mean(0)).min()) > 0.9 else "orbit"


def handler(args: argparse.Namespace) -> int:
    from recon.commands._signals import StopServing

    # SIGINT/SIGTERM end the viewer (exit 0) or a path video (at once), also when the parent ignores SIGINT.
    stop = StopServing(serving=not args.path_video)
    with stop.installed():
        return _serve_or_render(args, stop)


def _serve_or_render(args: argparse.Namespace, stop) -> int:
    from recon.view.finished_run import RunViewer, load_run

    contents = load_run(args.run)
    if args.path_video:
        from recon.view.path import camera_path, render_path

        cams = contents.cameras.train or contents.cameras.test
        kind = args.path_kind or (_default_path_kind(cams) if cams else "orbit")
        path = camera_path(kind, cams, args.frames)
        out = render_path(contents.gaussians, path, args.path_video, fps=args.fps, max_side=args.size)
        print(f"wrote {out} ({len(path)} frames, {kind} path)")
        return 0
    viewer = RunViewer(contents, host=args.host, port=args.port, token=args.token)
    stop.attach(viewer.server.request_stop)
    viewer.serve_forever()
    return 0
