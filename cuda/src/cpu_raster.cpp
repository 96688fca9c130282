// CPU tile binning, depth sorting and the drivers of front-to-back blending (forward and
// backward). The per-tile kernels live in cpu_raster_tile.h, compiled per instruction set
// and chosen at run time (cpu_raster_isa.cpp).
//
// Work is split into many more pieces than threads (one tile, or a few thousand Gaussians,
// each) and handed out dynamically, so a thread that the OS deschedules on a busy machine
// delays only its current piece. Results still never depend on which thread did what: the
// backward pass writes each (tile, Gaussian) contribution to its own slot and sums them per
// Gaussian in tile order, so gradients are bit-identical for any thread count.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <vector>

#include "cpu_raster_isa.h"
#include "recon/api.h"
#include "recon/math.h"

namespace recon {
namespace {

using cpu::kGradSlots;

template <typename T>
TileRange tile_range(const TileParams& p, T mx, T my, int rx, int ry) {
  return recon::tile_range(mx, my, rx, ry, p.tile_size, p.tiles_x(), p.tiles_y());
}

// Gaussians per dynamically scheduled chunk of the per-Gaussian loops.
constexpr int64_t kGaussianChunk = 2048;

// Counters of the last forward and backward calls (for the benchmark's throughput).
std::atomic<int64_t> g_fwd_lanes{0}, g_fwd_blended{0}, g_bwd_lanes{0}, g_isect{0};

// Every screen-space Gaussian [C*N] packed for the tile loops (see cpu::pack_splat).
template <typename T>
std::unique_ptr<cpu::PackedSplat<T>[]> pack_splats(int64_t CN, const T* means2d, const T* conics,
                                                   const T* colors, const T* opacities, const T* depths) {
  std::unique_ptr<cpu::PackedSplat<T>[]> packed(new cpu::PackedSplat<T>[size_t(CN)]);
#pragma omp parallel for schedule(dynamic, kGaussianChunk)
  for (int64_t i = 0; i < CN; ++i)
    cpu::pack_splat(means2d + 2 * i, conics + 3 * i, colors + 3 * i, opacities[i], depths[i], packed[i]);
  return packed;
}

// An unsigned integer that orders like the float (IEEE bits with the sign folded; -0 sorts
// just before +0), for sorting by depth with integer keys.
inline uint32_t depth_order_key(float d) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, d);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}
inline uint64_t depth_order_key(double d) {
  const uint64_t bits = __builtin_bit_cast(uint64_t, d);
  return (bits & 0x8000000000000000ull) ? ~bits : bits | 0x8000000000000000ull;
}

// One (camera, tile) job of the blending loops: the tile, its camera's packed Gaussians, its
// slice [start, start + n) of the tile lists and its top-left pixel in the [C, H, W] images.
template <typename T> struct TileJob {
  cpu::Tile tile;
  const cpu::PackedSplat<T>* g;
  int64_t start, n, pix0;
};

template <typename T>
TileJob<T> tile_job(const TileParams& p, const cpu::PackedSplat<T>* packed, const int64_t* tile_offsets,
                    int64_t job) {
  const int64_t n_tiles = int64_t(p.tiles_x()) * p.tiles_y(), c = job / n_tiles, t = job % n_tiles;
  TileJob<T> j;
  j.tile.x0 = int(t % p.tiles_x()) * p.tile_size;
  j.tile.y0 = int(t / p.tiles_x()) * p.tile_size;
  j.tile.w = std::min(p.tile_size, p.width - j.tile.x0);
  j.tile.h = std::min(p.tile_size, p.height - j.tile.y0);
  j.tile.stride = p.width;
  j.g = packed + c * p.N;
  j.start = tile_offsets[job];
  j.n = tile_offsets[job + 1] - j.start;
  j.pix0 = (c * p.height + j.tile.y0) * p.width + j.tile.x0;
  return j;
}

// Stable counting sort, in parallel: items [0, n) each emit keys in [0, n_keys) through
// keys_of(i, emit) (emit(key) once per key, in a fixed order); writes offsets [n_keys + 1]
// and calls place(pos, i) so that every key's items lie at [offsets[key], offsets[key + 1])
// in item order. The result does not depend on the thread count: the items are cut into
// chunks, each counts its keys, and each chunk's items start after the earlier chunks'.
template <typename KeysOf, typename Place>
void stable_counting_sort(int64_t n, int64_t n_keys, const KeysOf& keys_of, int64_t* offsets,
                          const Place& place) {
  const int chunks = int(std::max<int64_t>(1, std::min<int64_t>({omp_get_max_threads(), 8, n / 4096})));
  // counts[ch * n_keys + key]: the chunk's count, then the position of its next item of key
  std::vector<int64_t> counts(size_t(chunks) * size_t(n_keys), 0);
  auto begin = [&](int ch) { return n * ch / chunks; };
#pragma omp parallel for schedule(static, 1)
  for (int ch = 0; ch < chunks; ++ch) {
    int64_t* cnt = counts.data() + size_t(ch) * n_keys;
    for (int64_t i = begin(ch); i < begin(ch + 1); ++i) keys_of(i, [&](int64_t key) { ++cnt[key]; });
  }
  int64_t pos = 0;
  for (int64_t key = 0; key < n_keys; ++key) {
    offsets[key] = pos;
    for (int ch = 0; ch < chunks; ++ch) {
      const int64_t c = counts[size_t(ch) * n_keys + key];
      counts[size_t(ch) * n_keys + key] = pos;
      pos += c;
    }
  }
  offsets[n_keys] = pos;
#pragma omp parallel for schedule(static, 1)
  for (int ch = 0; ch < chunks; ++ch) {
    int64_t* next = counts.data() + size_t(ch) * n_keys;
    for (int64_t i = begin(ch); i < begin(ch + 1); ++i)
      keys_of(i, [&](int64_t key) { place(next[key]++, i); });
  }
}

// Bits of the depth key sorted per pass of depth_order's radix sort (2048 buckets).
constexpr int kRadixBits = 11;

// The visible (radii > 0) screen-space Gaussians of [C*N], by depth then index: a stable
// least-significant-digit radix sort of depth_order_key (one stable_counting_sort per
// kRadixBits), starting from index order.
template <typename T> std::vector<int64_t> depth_order(int64_t CN, const int32_t* radii, const T* depths) {
  using Key = decltype(depth_order_key(T()));
  std::vector<int64_t> items;
  std::vector<Key> keys;
  for (int64_t i = 0; i < CN; ++i)
    if (radii[2 * i] > 0 && radii[2 * i + 1] > 0) {
      items.push_back(i);
      keys.push_back(depth_order_key(depths[i]));
    }
  const int64_t n = int64_t(items.size());
  std::vector<int64_t> next_items(items.size()), offsets((size_t(1) << kRadixBits) + 1);
  std::vector<Key> next_keys(keys.size());
  constexpr Key kMask = (Key(1) << kRadixBits) - 1;
  for (int shift = 0; shift < int(8 * sizeof(Key)); shift += kRadixBits) {
    auto digit = [&](int64_t j, const auto& emit) { emit(int64_t((keys[size_t(j)] >> shift) & kMask)); };
    stable_counting_sort(n, int64_t(1) << kRadixBits, digit, offsets.data(), [&](int64_t pos, int64_t j) {
      next_items[size_t(pos)] = items[size_t(j)];
      next_keys[size_t(pos)] = keys[size_t(j)];
    });
    items.swap(next_items);
    keys.swap(next_keys);
  }
  return items;
}

}  // namespace

template <typename T>
void cpu_count_tiles(const TileParams& p, const T* means2d, const int32_t* radii,
                     int32_t* tiles_per_gaussian) {
  const int64_t total = int64_t(p.C) * p.N;
#pragma omp parallel for schedule(dynamic, kGaussianChunk)
  for (int64_t i = 0; i < total; ++i) {
    const int rx = radii[2 * i], ry = radii[2 * i + 1];
    if (rx <= 0 || ry <= 0) {
      tiles_per_gaussian[i] = 0;
      continue;
    }
    const TileRange r = tile_range(p, means2d[2 * i], means2d[2 * i + 1], rx, ry);
    tiles_per_gaussian[i] = (r.x1 - r.x0) * (r.y1 - r.y0);
  }
}

template <typename T>
void cpu_bin_and_sort(const TileParams& p, const T* means2d, const int32_t* radii, const T* depths,
                      const int64_t* isect_offsets, int64_t n_isect, int64_t* tile_offsets, int32_t* flat_ids,
                      void* temp, size_t temp_bytes) {
  (void)isect_offsets;
  (void)n_isect;
  (void)temp;
  (void)temp_bytes;
  const int64_t n_tiles = int64_t(p.tiles_x()) * p.tiles_y();
  // Counting sort by (camera, tile) of the Gaussians taken in depth order: every tile's list
  // comes out sorted by depth, then index, with no per-tile sort.
  const std::vector<int64_t> order = depth_order(int64_t(p.C) * p.N, radii, depths);
  // Tile ranges in depth order, computed once: the sort's two passes (count, place) both read them, in
  // order, instead of each gathering means2d and radii at the random indices of the depth order.
  const int64_t n_visible = int64_t(order.size());
  std::unique_ptr<TileRange[]> tile_ranges(new TileRange[size_t(n_visible)]);
  TileRange* ranges_out = tile_ranges.get();
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n_visible; ++j) {
    const int64_t i = order[size_t(j)];
    ranges_out[j] = tile_range(p, means2d[2 * i], means2d[2 * i + 1], radii[2 * i], radii[2 * i + 1]);
  }
  auto tiles_of = [&](int64_t j, const auto& emit) {
    const int64_t i = order[size_t(j)], base = (i / p.N) * n_tiles;
    const TileRange& r = tile_ranges[size_t(j)];
    for (int ty = r.y0; ty < r.y1; ++ty)
      for (int tx = r.x0; tx < r.x1; ++tx) emit(base + int64_t(ty) * p.tiles_x() + tx);
  };
  stable_counting_sort(n_visible, n_tiles * p.C, tiles_of, tile_offsets,
                       [&](int64_t pos, int64_t j) { flat_ids[pos] = int32_t(order[size_t(j)] % p.N); });
}

template <typename T>
void cpu_raster_forward(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                        const T* opacities, const T* depths, const int64_t* tile_offsets,
                        const int32_t* flat_ids, T* rgb, T* depth_sum, T* alpha, int32_t* n_contrib) {
  const int64_t jobs = int64_t(p.tiles_x()) * p.tiles_y() * p.C;
  const auto packed = pack_splats(int64_t(p.C) * p.N, means2d, conics, colors, opacities, depths);
  const cpu::TileKernels<T> kernels = cpu::tile_kernels<T>(p.tile_size);
  int64_t lanes = 0, blended = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : lanes, blended)
  for (int64_t job = 0; job < jobs; ++job) {
    const TileJob<T> j = tile_job(p, packed.get(), tile_offsets, job);
    cpu::TileCounts counts;
    kernels.forward(j.g, flat_ids + j.start, j.n, j.tile, rgb + 3 * j.pix0, depth_sum + j.pix0,
                    alpha + j.pix0, n_contrib + j.pix0, counts);
    lanes += counts.lanes;
    blended += counts.blended;
  }
  g_fwd_lanes = lanes;
  g_fwd_blended = blended;
  g_isect = tile_offsets[jobs];
}

template <typename T>
void cpu_raster_backward(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                         const T* opacities, const T* depths, const int64_t* tile_offsets,
                         const int32_t* flat_ids, const T* alpha, const int32_t* n_contrib, const T* v_rgb,
                         const T* v_depth_sum, const T* v_alpha, T* v_means2d, T* v_conics, T* v_colors,
                         T* v_opacities, T* v_depths) {
  const int64_t n_tiles = int64_t(p.tiles_x()) * p.tiles_y(), jobs = n_tiles * p.C, CN = int64_t(p.C) * p.N;
  const int64_t n_isect = tile_offsets[jobs];
  constexpr int G = kGradSlots;
  const auto packed = pack_splats(CN, means2d, conics, colors, opacities, depths);
  const cpu::TileKernels<T> kernels = cpu::tile_kernels<T>(p.tile_size);
  // One gradient slot per tile-list entry [n_isect, G]; every slot is written by its tile.
  std::unique_ptr<T[]> isect_grads(new T[size_t(n_isect) * G]);
  int64_t lanes = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : lanes)
  for (int64_t job = 0; job < jobs; ++job) {
    const TileJob<T> j = tile_job(p, packed.get(), tile_offsets, job);
    cpu::TileCounts counts;
    kernels.backward(j.g, flat_ids + j.start, j.n, j.tile, alpha + j.pix0, n_contrib + j.pix0,
                     v_rgb + 3 * j.pix0, v_depth_sum + j.pix0, v_alpha + j.pix0,
                     isect_grads.get() + j.start * G, counts);
    lanes += counts.lanes;
  }
  g_bwd_lanes = lanes;
  // Per (camera, Gaussian) sums of its entries' slots in entry order (= tile order): one scan of the entries
  // adds each slot into its Gaussian's row, reading the slots sequentially (a gather in Gaussian order read
  // them at random, after a counting sort of n_isect entries). Each thread owns a range of Gaussians and
  // skips the other entries, so every sum is formed in the same order for any thread count.
  std::unique_ptr<T[]> sums(new T[size_t(CN) * G]());
  const int64_t ranges =
      std::max<int64_t>(1, std::min<int64_t>(2 * int64_t(omp_get_max_threads()), CN / 4096));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < ranges; ++r) {
    const int64_t lo = CN * r / ranges, hi = CN * (r + 1) / ranges;
    for (int c = 0; c < p.C; ++c) {
      const int64_t k0 = tile_offsets[c * n_tiles], k1 = tile_offsets[(c + 1) * n_tiles],
                    base = int64_t(c) * p.N;
      if (base + p.N <= lo || base >= hi) continue;
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t i = base + flat_ids[k];
        if (i < lo || i >= hi) continue;
        const T* e = isect_grads.get() + k * G;
        T* sum = sums.get() + i * G;
        for (int s = 0; s < G; ++s) sum[s] += e[s];
      }
    }
  }
#pragma omp parallel for schedule(dynamic, kGaussianChunk)
  for (int64_t i = 0; i < CN; ++i) {
    const T* sum = sums.get() + i * G;
    v_means2d[2 * i] += sum[0];
    v_means2d[2 * i + 1] += sum[1];
    v_conics[3 * i] += sum[2];
    v_conics[3 * i + 1] += sum[3];
    v_conics[3 * i + 2] += sum[4];
    v_colors[3 * i] += sum[5];
    v_colors[3 * i + 1] += sum[6];
    v_colors[3 * i + 2] += sum[7];
    v_opacities[i] += sum[8];
    v_depths[i] += sum[9];
  }
}

CpuRasterStats cpu_last_raster_stats() {
  CpuRasterStats s;
  s.forward_lanes = g_fwd_lanes;
  s.forward_blended = g_fwd_blended;
  s.backward_lanes = g_bwd_lanes;
  s.n_isect = g_isect;
  return s;
}

const char* cpu_isa() { return cpu::isa_name(cpu::active_isa()); }

int cpu_isa_float_lanes() { return cpu::isa_float_lanes(cpu::active_isa()); }

double cpu_fma_rate(int64_t iters, int threads) {
  double lane_fmas = 0.0, sink = 0.0;
  const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : lane_fmas, sink)
  {
    double mine = 0.0;
    lane_fmas += cpu::fma_loop(iters, &mine);
    sink += mine;
  }
  const double dt = omp_get_wtime() - t0;
  return sink == 12345.678 ? 0.0 : lane_fmas / dt;
}

#define RECON_INSTANTIATE(T)                                                                                \
  template void cpu_count_tiles<T>(const TileParams&, const T*, const int32_t*, int32_t*);                  \
  template void cpu_bin_and_sort<T>(const TileParams&, const T*, const int32_t*, const T*, const int64_t*,  \
                                    int64_t, int64_t*, int32_t*, void*, size_t);                            \
  template void cpu_raster_forward<T>(const TileParams&, const T*, const T*, const T*, const T*, const T*,  \
                                      const int64_t*, const int32_t*, T*, T*, T*, int32_t*);                \
  template void cpu_raster_backward<T>(const TileParams&, const T*, const T*, const T*, const T*, const T*, \
                                       const int64_t*, const int32_t*, const T*, const int32_t*, const T*,  \
                                       const T*, const T*, T*, T*, T*, T*, T*);
RECON_INSTANTIATE(float)
RECON_INSTANTIATE(double)
#undef RECON_INSTANTIATE

}  // namespace recon
