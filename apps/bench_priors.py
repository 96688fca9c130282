"""Time and peak memory of each learned prior on CPU, at a real image size, for real-size
architectures with random weights (no weights can be downloaded; the cost of a forward
pass does not depend on the weight values).

    .venv/bin/python apps/bench_priors.py                 # all priors
    .venv/bin/python apps/bench_priors.py --priors da_small da_base
    .venv/bin/python apps/bench_priors.py --fit           # + fallback vs oracle depth prior fit

Each prior runs in its own child process so its peak resident memory (ru_maxrss) is its
own. Writes benchmarks/results/priors.json and priors.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
WIDTH, HEIGHT = 504, 378

PRIORS = {
    "da_small": "Depth Anything (v1/v2) ViT-S, 518 px processor",
    "da_base": "Depth Anything (v1/v2) ViT-B, 518 px processor",
    "sd15_img2img": "SD 1.5 UNet + VAE + CLIP-L text, img2img strength 0.3, 10 steps (3 denoising), guidance 1",
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _depth_anything(size: str):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    hidden, heads, neck, fusion = {"small": (384, 6, [48, 96, 192, 384], 64),
                                   "base": (768, 12, [96, 192, 384, 768], 128)}[size]
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=12, num_attention_heads=heads,
                            intermediate_size=4 * hidden, image_size=518, patch_size=14,
                            out_features=["stage3", "stage6", "stage9", "stage12"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, neck_hidden_sizes=neck,
                                 fusion_hidden_size=fusion, head_hidden_size=32, patch_size=14)
    processor = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3)
    return DepthAnythingForDepthEstimation(config).eval(), processor


def _run_depth(size: str, repeats: int) -> dict:
    import torch

    from recon.priors.depth import TransformersDepthPrior

    t0 = time.perf_counter()
    model, processor = _depth_anything(size)
    build_s = time.perf_counter() - t0
    prior = TransformersDepthPrior(model, processor, name=f"depth_anything_{size}", kind="disparity")
    image = torch.rand(HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0))
    prior.predict(image)  # warm-up (allocator, oneDNN kernels)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        d = prior.predict(image)
        times.append(time.perf_counter() - t)
    assert d.values.shape == (HEIGHT, WIDTH)
    params = sum(p.numel() for p in model.parameters())
    return {"build_s": build_s, "times_s": times, "params_m": params / 1e6}


def _run_sd15() -> dict:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from recon.priors.diffusion import Img2ImgRefiner

    t0 = time.perf_counter()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5 layout
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512,
                        layers_per_block=2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c + "</w>": i + 2 for i, c in enumerate("abcdefgh")}}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)  # toy vocabulary, real length
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0
    refiner = Img2ImgRefiner(pipe, strength=0.3, steps=10, prompt="a photo", seed=0, max_side=512)
    image = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    out = refiner.refine(image)
    elapsed = time.perf_counter() - t
    assert out.shape == image.shape
    params = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    return {"build_s": build_s, "times_s": [elapsed], "params_m": params / 1e6,
            "work_size": list(refiner._work_size(HEIGHT, WIDTH)), "denoising_steps": int(10 * 0.3)}


def _child(name: str, repeats: int) -> None:
    import torch

    base = _rss_mb()
    res = _run_sd15() if name == "sd15_img2img" else _run_depth(name.split("_")[1], repeats)
    res.update(name=name, baseline_rss_mb=base, peak_rss_mb=_rss_mb(), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(res), flush=True)


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _markdown(record: dict) -> str:
    lines = [f"# Learned priors on CPU at {WIDTH}x{HEIGHT} (random weights, real-size architectures)", "",
             f"Machine: {record['cpus']} CPUs, torch threads {record['threads']}; load average before "
             f"{record['load_before']}, after {record['load_after']} (shared machine: times are upper bounds).", "",
             "| prior | params (M) | time per image, median (min) (s) | peak RSS (MiB) | RSS before model (MiB) | load avg (1 min) during |",
             "|---|---:|---:|---:|---:|---|"]
    for r in record["priors"]:
        if "error" in r:
            lines.append(f"| {r['name']} | - | failed: {r['error']} | - | - |")
            continue
        t = sorted(r["times_s"])[len(r["times_s"]) // 2]
        load = r.get("load") or [[None], [None]]
        lines.append(f"| {r['name']}: {PRIORS[r['name']]} | {r['params_m']:.1f} | {t:.2f} ({min(r['times_s']):.2f}) | "
                     f"{r['peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | {load[0][0]} -> {load[1][0]} |")
    if record.get("fit"):
        lines += ["", "## Short synthetic fit: depth prior variants", "",
                  "Procedural scene, 3 training views at the given width, `fast` preset, pseudo views off; "
                  "depth AbsRel of the rendered test depth after one median scale, on pixels with alpha > 0.5.", "",
                  "| depth prior | iterations | width | depth loss weights | test PSNR (dB) | test depth AbsRel | "
                  "wall time (s) |", "|---|---:|---:|---|---:|---:|---:|"]
        for r in record["fit"]:
            w = r.get("depth_weight") or "preset (0.05)"
            lines.append(f"| {r['arm']} | {r['iterations']} | {r.get('width', '')} | {w} | {r['psnr']:.2f} | "
                         f"{r['abs_rel']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _merge_previous(record: dict, ran_fit: bool) -> None:
    """Keeps the previous file's results for priors (and the fit) not re-run this time, each
    with the load average it was measured under."""
    path = OUT / "priors.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    done = {r["name"] for r in record["priors"]}
    for r in old.get("priors", []):
        if r["name"] not in done:
            r.setdefault("load", [old.get("load_before"), old.get("load_after")])
            record["priors"].append(r)
    record["priors"].sort(key=lambda r: list(PRIORS).index(r["name"]))
    if not ran_fit and old.get("fit"):
        record["fit"] = old["fit"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per depth model (after one warm-up)")
    ap.add_argument("--fit", action="store_true", help="also run the fallback-vs-oracle depth prior fit")
    ap.add_argument("--fit-iterations", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.repeats)
        return 0
    import torch

    record = {"width": WIDTH, "height": HEIGHT, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
              "load_before": _load_average(), "priors": [], "fit": None}
    for name in args.priors:
        print(f"[bench_priors] {name}: {PRIORS[name]} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            record["priors"].append({"name": name, "error": tail[:200]})
            print(f"[bench_priors] {name} failed: {tail}", flush=True)
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        r["load"] = [record["load_before"], _load_average()]
        record["priors"].append(r)
        print(f"[bench_priors] {name}: {min(r['times_s']):.2f} s, peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
    if args.fit:
        sys.path.insert(0, str(REPO / "apps"))
        from bench_priors_fit import run_fit_arms

        record["fit"] = run_fit_arms(args.fit_iterations, width=120)
    record["load_after"] = _load_average()
    OUT.mkdir(parents=True, exist_ok=True)
    _merge_previous(record, args.fit)
    (OUT / "priors.json").write_text(json.dumps(record, indent=2))
    (OUT / "priors.md").write_text(_markdown(record))
    print(_markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
