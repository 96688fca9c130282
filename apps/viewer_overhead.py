"""How much does the live viewer slow a fit? One fit, three conditions interleaved in
blocks of iterations (so machine-load drift and Gaussian-count growth hit all of them):

* ``none``: no viewer;
* ``viewer``: a ``LiveViewer`` listening, no browser connected;
* ``client``: a second ``LiveViewer`` with a connected websocket client that reports a
  camera and receives (and decompresses) every update, as a browser tab would.

    python apps/viewer_overhead.py --scene builtin:synthetic --iterations 150 --block 10

Each iteration's wall time (from one StepEvent to the next) is charged to the condition
whose listener ran at the earlier step: the listener's own work on the trainer's thread
and the background push it starts both land in that interval.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time


class BackgroundClient:
    """A websocket client on its own thread that behaves like a connected browser tab."""

    def __init__(self, port: int) -> None:
        self.port, self.bytes, self.windows = port, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        import msgspec
        import viser
        import websockets
        import zstandard

        async with websockets.connect(f"ws://127.0.0.1:{self.port}", max_size=None,
                                      subprotocols=[f"viser-v{viser.__version__}"]) as ws:
            await ws.send(msgspec.msgpack.encode({
                "type": "ViewerCameraMessage", "wxyz": [1.0, 0.0, 0.0, 0.0], "position": [0.0, 0.0, -3.0],
                "fov": 0.8, "near": 0.01, "far": 100.0, "image_height": 480, "image_width": 640,
                "look_at": [0.0, 0.0, 0.0], "up_direction": [0.0, -1.0, 0.0]}))
            dctx = zstandard.ZstdDecompressor()
            while not self._stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                n_inner, n_comp = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
                dctx.decompress(raw[16:16 + n_comp], max_output_size=n_inner)
                self.bytes += len(raw)
                self.windows += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Interleave:
    """Forwards events to one of the viewers, switching every ``block`` iterations."""

    def __init__(self, viewers: dict, block: int) -> None:
        self.viewers, self.block = viewers, block
        self.order = list(viewers)
        self.dt: dict[str, list[float]] = {name: [] for name in viewers}
        self._prev: tuple[float, str] | None = None
        self.on_step_seconds: dict[str, float] = {}
        self.thread_cpu: dict[str, dict[str, float]] = {}

    def on_start(self, event) -> None:
        for v in self.viewers.values():
            if v is not None:
                v.on_start(event)

    def on_step(self, event) -> None:
        now = time.perf_counter()
        if self._prev is not None:
            self.dt[self._prev[1]].append(now - self._prev[0])
        name = self.order[((event.iteration - 1) // self.block) % len(self.order)]
        viewer = self.viewers[name]
        if viewer is not None:
            viewer.on_step(event)
            self.on_step_seconds[name] = self.on_step_seconds.get(name, 0.0) + time.perf_counter() - now
        self._prev = (now, name)

    def on_finish(self, event) -> None:
        # Background threads are still alive here: read their CPU clocks.
        self.thread_cpu = {name: _thread_cpu(v) for name, v in self.viewers.items() if v is not None}


def _thread_cpu(viewer) -> dict[str, float]:
    """CPU seconds used so far by a LiveViewer's own threads and its viser server loop."""
    threads = {"push": viewer._worker, "render": viewer.scene._worker,
               "viser": getattr(viewer.server.viser._websock_server, "_server_thread", None)}
    out = {}
    for label, thread in threads.items():
        if thread is not None and thread.is_alive():
            out[label] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return out


def push_bench(sizes: list[int], repeats: int = 3) -> None:
    """Cost of one push (clone + splat conversion + handing to viser) by scene size."""
    import torch

    from recon.types import Gaussians
    from recon.view.live import _clone
    from recon.view.scene import SceneView
    from recon.view.server import ViewerServer

    server = ViewerServer(port=0, announce=False)
    scene = SceneView(server)
    try:
        for n in sizes:
            g = Gaussians(torch.randn(n, 3), torch.randn(n, 3) - 3, torch.randn(n, 4), torch.randn(n),
                          torch.randn(n, 16, 3))  # [N, ...] SH degree 3
            costs, walls = [], []
            for _ in range(repeats):
                # CPU time of this thread: wall time on a shared, loaded machine mostly
                # measures the other processes.
                start, wall = time.thread_time(), time.perf_counter()
                scene.set_gaussians(_clone(g, dc_only=True))
                costs.append(time.thread_time() - start)
                walls.append(time.perf_counter() - wall)
            cost = min(costs)
            print(f"push of {n:>9,} Gaussians: {1000 * cost:7.1f} ms CPU ({1000 * min(walls):.0f} ms wall) -> "
                  f"{100 * cost / 2.0:.1f}% of a 2 s interval")
    finally:
        scene.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="builtin:synthetic")
    parser.add_argument("--config", default="fast")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--update-every", type=float, default=2.0)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE")
    parser.add_argument("--conditions", default="none,viewer,client",
                        help="comma-separated subset of none,viewer,client to interleave")
    parser.add_argument("--push-bench", default="", help="only time pushes of these sizes, e.g. 100000,1000000")
    args = parser.parse_args()
    if args.push_bench:
        push_bench([int(n) for n in args.push_bench.split(",")])
        return

    from recon.optimise.config import load_config
    from recon.optimise.events import FitControl
    from recon.pipeline import fit_scene
    from recon.view.live import LiveViewer

    cfg = load_config(args.config, [f"optim.iterations={args.iterations}", *args.set])
    control = FitControl()
    idle = LiveViewer(port=0, control=control, update_every=args.update_every, announce=False)
    watched = LiveViewer(port=0, control=control, update_every=args.update_every, announce=False)
    client = BackgroundClient(watched.server.port)
    if not watched.server.wait_for_clients(1, timeout=30):
        raise RuntimeError("the websocket client did not connect")
    available = {"none": None, "viewer": idle, "client": watched}
    switch = Interleave({c: available[c] for c in args.conditions.split(",")}, args.block)
    try:
        with tempfile.TemporaryDirectory() as out:
            fit_scene(args.scene, out_dir=out, config=cfg, listeners=[switch], control=control)
            loop_seconds = sum(sum(v) for v in switch.dt.values())
    finally:
        client.stop()
        pushes = (idle.pushes, watched.pushes)
        idle.close()
        watched.close()
    def trimmed(values: list[float]) -> float:  # drops the slowest 5% (densify, checkpoints)
        kept = sorted(values)[: max(1, int(len(values) * 0.95))]
        return statistics.mean(kept)

    print(f"interleaved blocks of {args.block} iterations, {loop_seconds:.1f} s of training loop:")
    base = switch.dt.get("none")
    for name, dts in switch.dt.items():
        tm, med = trimmed(dts), statistics.median(dts)
        vs = (f" ({100 * (tm / trimmed(base) - 1):+.1f}% / {100 * (med / statistics.median(base) - 1):+.1f}% "
              "vs none)" if base else "")
        print(f"{name:>6}: {len(dts)} iterations, trimmed mean {1000 * tm:.1f} ms/it, "
              f"median {1000 * med:.1f} ms/it{vs}")
    print("direct cost, as a share of the time each viewer was attached "
          "(on_step on the trainer's thread + CPU of the viewer's threads):")
    for name in ("viewer", "client"):
        if name not in switch.dt:
            continue
        attached = sum(switch.dt[name])
        on_step = switch.on_step_seconds.get(name, 0.0)
        cpu = switch.thread_cpu.get(name, {})
        total = on_step + sum(cpu.values())
        parts = ", ".join(f"{k} {v:.3f} s" for k, v in cpu.items())
        print(f"{name:>6}: on_step {on_step:.3f} s, threads ({parts}) -> {total:.3f} s of "
              f"{attached:.1f} s = {100 * total / attached:.1f}%")
    print(f"snapshots pushed: idle viewer {pushes[0]}, watched viewer {pushes[1]}; "
          f"client received {client.bytes / 2**20:.1f} MiB in {client.windows} windows")


if __name__ == "__main__":
    main()
