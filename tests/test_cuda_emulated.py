"""The real CUDA kernel sources (cuda/src/*.cu), run on the CPU under a small emulation of
CUDA (tests/cuda_emulation) and compared stage by stage with the CPU backend: projection,
tile counts, binning and sorting (exactly equal), forward blending, backward blending and
projection backward, on random scenes. This checks the kernels' indexing, batching,
early termination and reductions on machines with no GPU; the GPU parity tests
(test_cuda_parity.py) check the compiled kernels where a GPU exists.

Slow (one OS thread per CUDA thread): marked ``slow``; needs g++ and the compiled CPU
extension.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EMULATION = Path(__file__).resolve().parent / "cuda_emulation"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cuda_parity import scene  # noqa: E402  (random scenes shared with the GPU tests)

pytestmark = pytest.mark.slow
LAUNCH = re.compile(r"([\w:]+(?:<\w+>)?)<<<(.*?)>>>\(")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Build the .cu sources against the emulation header into a shared library."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA emulation")
    out = tmp_path_factory.mktemp("cuda_emulated")
    sources = []
    for cu in sorted((REPO / "cuda" / "src").glob("*.cu")):
        text, n_launches = LAUNCH.subn(r"emu::launch(\2, \1, ", cu.read_text())
        assert n_launches > 0, f"no kernel launch found in {cu.name}"
        sources.append(out / (cu.stem + ".cpp"))
        sources[-1].write_text(text)
    library = out / "libemulated.so"
    result = subprocess.run(
        [compiler, "-std=c++17", "-O2", "-fPIC", "-shared", "-pthread", "-DRECON_WITH_CUDA",
         f"-I{EMULATION}", f"-I{REPO / 'cuda' / 'include'}", *map(str, sources),
         str(EMULATION / "driver.cpp"), "-o", str(library)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    lib = ctypes.CDLL(str(library))
    lib.d_temp_bytes.restype = ctypes.c_size_t
    lib.d_temp_bytes.argtypes = [ctypes.c_int] * 5 + [ctypes.c_int64]
    return lib


@pytest.fixture(scope="module")
def ext():
    from recon.render import _ext

    # The emulation runs hundreds of OS threads that rendezvous constantly; idle OpenMP
    # workers spinning between the CPU backend's parallel regions slow it down many times.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _ext.load()
    torch.set_num_threads(threads)


def ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12))


CASES = [
    # n, cameras, width, height, sh degree, tile size, antialiased
    pytest.param(150, 2, 37, 23, 1, 8, True, id="two-cameras-tile8-antialiased"),
    pytest.param(200, 1, 40, 24, 2, 32, False, id="tile32"),
    pytest.param(0, 2, 17, 9, 0, 16, False, id="zero-gaussians"),
    pytest.param(50, 1, 1, 1, 0, 16, False, id="1x1-image"),
]


@pytest.mark.parametrize("n, C, W, H, degree, ts, antialiased", CASES)
def test_emulated_cuda_stages_match_cpu(emulated, ext, n, C, W, H, degree, ts, antialiased):
    lib, F, near, far = emulated, ctypes.c_float, 0.01, 1e10
    gaussians, cameras, _ = scene(n=n, n_cameras=C, width=W, height=H, sh_degree=degree, seed=n + ts)
    params = [t.contiguous() for t in gaussians.tensors()]
    viewmats = torch.stack([c.T_cam_world for c in cameras]).contiguous()  # [C, 4, 4]
    Ks = torch.stack([c.K for c in cameras]).contiguous()  # [C, 3, 3]
    K = params[4].shape[1]
    gen = torch.Generator().manual_seed(7)

    # 1. projection
    cpu = ext.project_forward(*params, viewmats, Ks, W, H, degree, near, far, antialiased)
    emu = [torch.empty_like(t) for t in cpu]
    lib.d_project_forward(C, n, K, degree, W, H, F(near), F(far), int(antialiased),
                          *map(ptr, params), ptr(viewmats), ptr(Ks), *map(ptr, emu))
    for name, a, b in zip(("means2d", "conics", "colors", "opacities", "depths", "radii"), emu, cpu):
        if b.numel():
            assert (a.double() - b.double()).abs().max() <= 1e-4 * max(1.0, float(b.abs().max())), name
    means2d, conics, colors, opacities, depths, radii = cpu

    # 2-3. tile counts, binning and sorting: same lists, same order (both sorts are stable)
    rgb_c, depth_c, alpha_c, contrib_c, offsets_c, ids_c = ext.rasterize_forward(
        means2d, conics, colors, opacities, depths, radii, W, H, ts)
    tiles = torch.empty(C, n, dtype=torch.int32)  # [C, N]
    lib.d_count_tiles(C, n, W, H, ts, ptr(means2d), ptr(radii), ptr(tiles))
    csum = torch.cumsum(tiles.view(-1), 0)
    n_isect = int(csum[-1]) if tiles.numel() else 0
    isect_offsets = (csum - tiles.view(-1)).to(torch.int64).contiguous()  # [C * N]
    temp_bytes = lib.d_temp_bytes(C, n, W, H, ts, n_isect)
    temp = torch.empty(max(temp_bytes, 1), dtype=torch.uint8)
    tile_offsets = torch.empty_like(offsets_c)
    flat_ids = torch.empty(n_isect, dtype=torch.int32)
    lib.d_bin_and_sort(C, n, W, H, ts, ptr(means2d), ptr(radii), ptr(depths), ptr(isect_offsets),
                       ctypes.c_int64(n_isect), ptr(tile_offsets), ptr(flat_ids), ptr(temp),
                       ctypes.c_size_t(temp_bytes))
    assert torch.equal(tile_offsets, offsets_c)
    assert torch.equal(flat_ids, ids_c)

    # 4. forward blending
    rgb, depth_sum = torch.empty(C, H, W, 3), torch.empty(C, H, W)
    alpha, contrib = torch.empty(C, H, W), torch.empty(C, H, W, dtype=torch.int32)
    lib.d_raster_forward(C, n, W, H, ts, ptr(means2d), ptr(conics), ptr(colors), ptr(opacities),
                         ptr(depths), ptr(offsets_c), ptr(ids_c), ptr(rgb), ptr(depth_sum),
                         ptr(alpha), ptr(contrib))
    assert (rgb - rgb_c).abs().max() < 1e-4
    assert (depth_sum - depth_c).abs().max() < 1e-4 * max(1.0, float(depth_c.abs().max()))
    assert (alpha - alpha_c).abs().max() < 1e-4
    assert torch.equal(contrib, contrib_c)
    if n:
        assert alpha_c.max() > 0.5, "the scene should be in view"

    # 5. backward blending, random upstream gradients
    v_rgb = torch.randn(C, H, W, 3, generator=gen)
    v_depth_sum, v_alpha = torch.randn(C, H, W, generator=gen), torch.randn(C, H, W, generator=gen)
    grads_c = ext.rasterize_backward(means2d, conics, colors, opacities, depths, offsets_c, ids_c,
                                     alpha_c, contrib_c, v_rgb, v_depth_sum, v_alpha, W, H, ts)
    grads = [torch.zeros_like(t) for t in grads_c]
    lib.d_raster_backward(C, n, W, H, ts, ptr(means2d), ptr(conics), ptr(colors), ptr(opacities),
                          ptr(depths), ptr(offsets_c), ptr(ids_c), ptr(alpha_c), ptr(contrib_c),
                          ptr(v_rgb), ptr(v_depth_sum), ptr(v_alpha), *map(ptr, grads))
    for name, a, b in zip(("v_means2d", "v_conics", "v_colors", "v_opacities", "v_depths"), grads, grads_c):
        if n:
            assert b.norm() > 0, f"{name}: the CPU gradient is zero, the comparison would be vacuous"
        assert rel_err(a, b) < 1e-4, name

    # 6. projection backward, random upstream gradients
    upstream = [torch.randn(t.shape, generator=gen) for t in (means2d, conics, colors, opacities, depths)]
    pgrads_c = ext.project_backward(*params, viewmats, Ks, W, H, degree, near, far, antialiased,
                                    radii, *upstream)
    pgrads = [torch.zeros_like(t) for t in pgrads_c]
    lib.d_project_backward(C, n, K, degree, W, H, F(near), F(far), int(antialiased),
                           *map(ptr, params), ptr(viewmats), ptr(Ks), ptr(radii),
                           *map(ptr, upstream), *map(ptr, pgrads))
    for name, a, b in zip(("means", "log_scales", "quats", "opacity_logits", "sh", "viewmats"),
                          pgrads, pgrads_c):
        assert rel_err(a, b) < 1e-4, name
