"""The live viewer under load: 1, 4 and 16 browsers, each asking for server renders (rgb
mode) at its own moving camera, beside a running fit.

    OMP_NUM_THREADS=1 python apps/viewer_load.py --clients 1 4 16 --seconds 20 \\
        --out benchmarks/results/viewer_load.json

One process runs a fit (``recon.pipeline.fit_scene`` on the procedural scene, threads=1,
no densification so its step cost stays level) with a ``LiveViewer`` listening in rgb
mode. For each phase a second process opens N websocket clients (bounded: they stop by
themselves after ``--seconds``) that move their cameras ``--rate`` times a second, the way
a dragged mouse does, and decode what the server sends. The camera message's image width
encodes its sequence number (300 + 2 * (k mod 50) pixels; renders under 512 px are not
resized), so the size of each JPEG frame says which camera it was rendered for.

Per phase: fit step time (median) and its slowdown against the mean of the no-client
phases just before and after it; per client, frames received, frame latency (camera message sent -> its frame
received, median and p90), interval between frames, camera updates that never got a frame
(dropped: a newer camera replaced them); server renders, their share of wall time, peak
resident memory; the load average. A last phase repeats the largest client count with
``render_budget=1`` (renders back to back, the viewer's behaviour before the budget).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WIDTH0, WIDTH_STEPS, HEIGHT = 300, 50, 240


# ---------------------------------------------------------------------------- clients
def _decode_window(raw: bytes) -> list[dict]:
    """viser 1.1's server window: 16-byte header, zstd msgpack, 8-byte aligned buffers."""
    import msgspec
    import zstandard

    n_inner, n_comp = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
    inner = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(raw[16:16 + n_comp],
                                                                            max_output_size=n_inner))
    offset, bufs = 16 + n_comp, []
    for length in inner["binaryBufferLengths"]:
        offset += (8 - offset % 8) % 8
        bufs.append(raw[offset:offset + length])
        offset += length
    messages = inner["messages"]
    for m in messages:
        data = m.get("rgb_data")
        if isinstance(data, dict) and "__binary_index" in data:
            m["rgb_data"] = bufs[data["__binary_index"]]
    return messages


async def _one_client(index: int, port: int, seconds: float, rate: float) -> dict:
    import math

    import msgspec
    import viser
    import websockets
    from PIL import Image

    sent: dict[int, float] = {}  # width step -> send time of the newest camera with it
    latencies, arrivals = [], []
    n_sent = 0
    async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None,
                                  subprotocols=[f"viser-v{viser.__version__}"]) as ws:
        end = time.monotonic() + seconds

        async def send_cameras() -> None:
            nonlocal n_sent
            k = 0
            while time.monotonic() < end:
                a = 0.4 * math.sin(0.05 * k + index) + 0.15 * index  # an orbit around the scene
                position = [4.0 * math.sin(a), -0.8, -4.0 * math.cos(a)]
                step = k % WIDTH_STEPS
                await ws.send(msgspec.msgpack.encode({
                    "type": "ViewerCameraMessage", "wxyz": [math.cos(-a / 2), 0.0, math.sin(-a / 2), 0.0],
                    "position": position, "fov": 0.9, "near": 0.01, "far": 100.0, "image_height": HEIGHT,
                    "image_width": WIDTH0 + 2 * step, "look_at": [0.0, 0.0, 0.0], "up_direction": [0.0, -1.0, 0.0]}))
                sent[step] = time.monotonic()
                n_sent += 1
                k += 1
                await asyncio.sleep(1.0 / rate)

        async def receive() -> None:
            while True:
                raw = await ws.recv()
                now = time.monotonic()
                for m in _decode_window(raw):
                    if m.get("type") == "BackgroundImageMessage" and m.get("rgb_data"):
                        width = Image.open(io.BytesIO(bytes(m["rgb_data"]))).size[0]
                        step = (width - WIDTH0) // 2
                        if step in sent:
                            latencies.append(now - sent[step])
                        arrivals.append(now)

        receiver = asyncio.create_task(receive())
        await send_cameras()
        await asyncio.sleep(1.0)  # frames still in flight
        receiver.cancel()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"camera_updates": n_sent, "frames": len(arrivals), "dropped": max(0, n_sent - len(arrivals)),
            "latency_median_s": statistics.median(latencies) if latencies else None,
            "latency_p90_s": _quantile(latencies, 0.9), "frame_interval_median_s": statistics.median(gaps)
            if gaps else None}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _clients(port: int, n: int, seconds: float, rate: float) -> list[dict]:
    return list(await asyncio.gather(*(_one_client(i, port, seconds, rate) for i in range(n))))


# ---------------------------------------------------------------------------- server + fit
class StepClock:
    """Records when each fit step ended."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.started = threading.Event()

    def on_start(self, event) -> None:
        pass

    def on_step(self, event) -> None:
        self.times.append(time.perf_counter())
        self.started.set()

    def on_finish(self, event) -> None:
        pass

    def step_times(self, start: float, stop: float) -> list[float]:
        t = self.times
        return [b - a for a, b in zip(t, t[1:]) if start <= a and b <= stop]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _phase(viewer, clock: StepClock, n: int, seconds: float, rate: float) -> dict:
    scene = viewer.scene
    before = (scene.renders_done, scene.frames_superseded, scene.render_seconds)
    load_start = _loadavg()
    start = time.perf_counter()
    clients: list[dict] = []
    if n:
        res = subprocess.run([sys.executable, __file__, "clients", "--port", str(viewer.server.port), "--n", str(n),
                              "--seconds", str(seconds), "--rate", str(rate)],
                             capture_output=True, text=True, timeout=seconds * 4 + 120, check=True)
        clients = json.loads(res.stdout)
    else:
        time.sleep(seconds)
    stop = time.perf_counter()
    steps = clock.step_times(start, stop)
    renders = scene.renders_done - before[0]
    return {
        "clients": n, "render_budget": scene.render_budget, "seconds": round(stop - start, 2),
        "fit_steps": len(steps), "fit_step_median_s": statistics.median(steps) if steps else None,
        "server_renders": renders, "server_render_share": round((scene.render_seconds - before[2]) / (stop - start), 3),
        "server_superseded_requests": scene.frames_superseded - before[1],
        "rss_bytes_after": _rss_bytes(), "loadavg_start": load_start, "loadavg_end": _loadavg(),
        "per_client": clients,
    }


def _summary(phase: dict) -> dict:
    cl = phase["per_client"]
    lat = [c["latency_median_s"] for c in cl if c["latency_median_s"] is not None]
    return {
        "frames_per_client_median": statistics.median([c["frames"] for c in cl]) if cl else None,
        "dropped_per_client_median": statistics.median([c["dropped"] for c in cl]) if cl else None,
        "camera_updates_per_client_median": statistics.median([c["camera_updates"] for c in cl]) if cl else None,
        "latency_median_of_medians_s": statistics.median(lat) if lat else None,
        "latency_p90_max_s": max((c["latency_p90_s"] for c in cl if c["latency_p90_s"] is not None), default=None),
        "clients_without_frames": sum(1 for c in cl if c["frames"] == 0),
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    from recon.optimise.config import load_config
    from recon.optimise.events import FitControl
    from recon.pipeline import fit_scene
    from recon.view.live import LiveViewer

    torch.set_num_threads(1)
    cfg = load_config("fast", [
        "threads=1", f"data.width={args.width}", "data.options.n_views=6", "init.method=random",
        f"init.random_points={args.gaussians}", "densify.enabled=false", "depth.enabled=false",
        "pseudo.enabled=false", "optim.iterations=100000000", "checkpoint_every=100000000",
        "optim.resolution_schedule=[[0, 1]]", "optim.sh_degree_interval=100000000", "log_every=1000"])
    control, clock = FitControl(), StepClock()
    viewer = LiveViewer(port=0, control=control, announce=False)
    viewer.scene.mode.value = "rgb"  # every client gets server renders at its own camera
    phases: list[dict] = []

    def drive() -> None:
        try:
            clock.started.wait()
            time.sleep(args.warmup)
            # A no-client phase before and after every loaded one: load drift hits both sides.
            plan = [(0, None)]
            for n, budget in [(n, None) for n in args.clients] + [(max(args.clients), 1.0)]:
                plan += [(n, budget), (0, None)]
            for n, budget in plan:
                viewer.scene.render_budget = budget if budget is not None else args.budget
                phases.append(_phase(viewer, clock, n, args.seconds, args.rate))
                print(f"clients {n:2d} budget {viewer.scene.render_budget}: step "
                      f"{phases[-1]['fit_step_median_s']:.4f} s, renders {phases[-1]['server_renders']}",
                      file=sys.stderr, flush=True)
        finally:
            control.stop()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    with tempfile.TemporaryDirectory(prefix="viewer-load-") as tmp:
        fit_scene("builtin:synthetic", out_dir=Path(tmp) / "run", config=cfg, views=3,
                  listeners=[clock, viewer], control=control)
    driver.join()
    viewer.close()
    base = [p["fit_step_median_s"] for p in phases if p["clients"] == 0 and p["fit_step_median_s"]]
    baseline = statistics.median(base)
    for i, p in enumerate(phases):
        if p["clients"] and p["fit_step_median_s"] and 0 < i < len(phases) - 1:
            around = (phases[i - 1]["fit_step_median_s"] + phases[i + 1]["fit_step_median_s"]) / 2
            p["fit_step_median_neighbour_baselines_s"] = around
            p["fit_slowdown"] = round(p["fit_step_median_s"] / around - 1.0, 3)
        p.update(_summary(p))
    return {
        "command": " ".join(["python", "apps/viewer_load.py", *sys.argv[1:]]),
        "settings": {"gaussians": args.gaussians, "fit_image_width": args.width, "fit_threads": 1,
                     "client_camera_rate_hz": args.rate, "client_image": f"{WIDTH0}-{WIDTH0 + 2 * (WIDTH_STEPS - 1)}"
                     f"x{HEIGHT}", "phase_seconds": args.seconds, "render_budget": args.budget},
        "baseline_fit_step_median_s": baseline,
        "phases": phases,
        "cpu_count": __import__("os").cpu_count(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "clients":
        p = argparse.ArgumentParser()
        p.add_argument("clients")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--n", type=int, required=True)
        p.add_argument("--seconds", type=float, required=True)
        p.add_argument("--rate", type=float, required=True)
        a = p.parse_args()
        print(json.dumps(asyncio.run(_clients(a.port, a.n, a.seconds, a.rate))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=15.0, help="camera updates per second per client")
    p.add_argument("--gaussians", type=int, default=5000)
    p.add_argument("--width", type=int, default=160, help="fit image width")
    p.add_argument("--budget", type=float, default=None, help="server render budget (default: the viewer's)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.budget is None:
        from recon.view.scene import RENDER_BUDGET

        args.budget = RENDER_BUDGET
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
