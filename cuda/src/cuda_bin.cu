// CUDA tile binning and depth sorting: every visible (camera, Gaussian) is duplicated once
// per tile its bounding box touches, keyed by (camera, tile, depth) in one 64-bit key, and
// one cub radix sort orders them so that each (camera, tile) list is contiguous and
// nearest-first. Tile ranges are then found by binary search in the sorted keys.
//
// Key layout (most significant first): [camera * n_tiles + tile : up to 32 bits][depth : 32
// bits]. The depth bits are the float's bits mapped to an unsigned order (positive floats
// already sort as integers; the map also orders negative depths, should a caller allow them).
// Only the bits in use are sorted, which saves radix passes for small tile counts.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "recon/api.h"
#include "recon/cuda_common.cuh"
#include "recon/math.h"

namespace recon {
namespace {

using cuda::kThreadsPerBlock;

// Scratch layout inside `temp`: sort keys (input and alternate buffer), the sort values'
// input buffer (their alternate buffer is flat_ids itself) and cub's own scratch.
constexpr size_t kAlign = 256;

size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

struct Scratch {
  uint64_t *keys_a, *keys_b;
  int32_t* values_a;
  void* cub_temp;
  size_t cub_bytes;
};

int64_t total_tiles(const TileParams& p) { return int64_t(p.tiles_x()) * p.tiles_y() * p.C; }

// The sort reads key bits [0, 32 + tile_bits); cub takes int item counts.
int key_end_bit(const TileParams& p) {
  const int tile_bits = cuda::bits_for(total_tiles(p));
  if (tile_bits > 32) {
    throw std::runtime_error("recon CUDA rasteriser: " + std::to_string(p.C) + " cameras x " +
                             std::to_string(p.tiles_x() * p.tiles_y()) +
                             " tiles do not fit the 32-bit tile key; render fewer cameras "
                             "per call or use a larger tile_size");
  }
  return 32 + tile_bits;
}

void check_isect_count(int64_t n_isect) {
  if (n_isect > INT_MAX) {
    throw std::runtime_error("recon CUDA rasteriser: " + std::to_string(n_isect) +
                             " tile intersections exceed the sort's 2^31 limit; render fewer "
                             "cameras or Gaussians per call");
  }
}

size_t cub_sort_bytes(int64_t n_isect, int end_bit) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint64_t> keys(nullptr, nullptr);
  cub::DoubleBuffer<int32_t> values(nullptr, nullptr);
  cuda::check(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, values, int(n_isect), 0, end_bit),
              "sizing the tile sort");
  return bytes;
}

Scratch carve(void* temp, int64_t n_isect, size_t cub_bytes) {
  char* base = static_cast<char*>(temp);
  Scratch s;
  const size_t key_bytes = align_up(sizeof(uint64_t) * size_t(n_isect));
  s.keys_a = reinterpret_cast<uint64_t*>(base);
  s.keys_b = reinterpret_cast<uint64_t*>(base + key_bytes);
  s.values_a = reinterpret_cast<int32_t*>(base + 2 * key_bytes);
  s.cub_temp = base + 2 * key_bytes + align_up(sizeof(int32_t) * size_t(n_isect));
  s.cub_bytes = cub_bytes;
  return s;
}

__device__ __forceinline__ uint32_t depth_key(float depth) {
  const uint32_t bits = __float_as_uint(depth);
  // Flip all bits of negatives and the sign bit of positives: unsigned order = float order.
  return bits ^ ((bits & 0x80000000u) ? 0xffffffffu : 0x80000000u);
}

__global__ void count_tiles_kernel(TileParams p, const float* __restrict__ means2d,
                                   const int32_t* __restrict__ radii,
                                   int32_t* __restrict__ tiles_per_gaussian) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(p.C) * p.N) return;
  const int rx = radii[2 * i], ry = radii[2 * i + 1];
  if (rx <= 0 || ry <= 0) {
    tiles_per_gaussian[i] = 0;
    return;
  }
  const TileRange r = tile_range(means2d[2 * i], means2d[2 * i + 1], rx, ry, p.tile_size,
                                 tiles_along(p.width, p.tile_size), tiles_along(p.height, p.tile_size));
  tiles_per_gaussian[i] = (r.x1 - r.x0) * (r.y1 - r.y0);
}

// One thread per (camera, Gaussian) writes its keys at its exclusive-prefix offset.
__global__ void emit_keys_kernel(TileParams p, const float* __restrict__ means2d,
                                 const int32_t* __restrict__ radii, const float* __restrict__ depths,
                                 const int64_t* __restrict__ isect_offsets, uint64_t* __restrict__ keys,
                                 int32_t* __restrict__ values) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(p.C) * p.N) return;
  const int rx = radii[2 * i], ry = radii[2 * i + 1];
  if (rx <= 0 || ry <= 0) return;
  const int tiles_x = tiles_along(p.width, p.tile_size);
  const int tiles_y = tiles_along(p.height, p.tile_size);
  const TileRange r = tile_range(means2d[2 * i], means2d[2 * i + 1], rx, ry, p.tile_size, tiles_x, tiles_y);
  const int c = int(i / p.N);
  const int32_t n = int32_t(i - int64_t(c) * p.N);
  const uint64_t camera_base = uint64_t(c) * uint64_t(tiles_x) * uint64_t(tiles_y);
  const uint64_t depth_bits = depth_key(depths[i]);
  int64_t out = isect_offsets[i];
  for (int ty = r.y0; ty < r.y1; ++ty) {
    for (int tx = r.x0; tx < r.x1; ++tx) {
      const uint64_t tile = camera_base + uint64_t(ty) * tiles_x + tx;
      keys[out] = (tile << 32) | depth_bits;
      values[out] = n;
      ++out;
    }
  }
}

// tile_offsets[t] = first sorted entry whose tile is >= t (t in [0, total_tiles]): a
// lower-bound binary search per tile, so empty tiles cost nothing special.
__global__ void tile_offsets_kernel(int64_t n_tiles_total, const uint64_t* __restrict__ keys, int64_t n_isect,
                                    int64_t* __restrict__ tile_offsets) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t > n_tiles_total) return;
  int64_t lo = 0, hi = n_isect;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (int64_t(keys[mid] >> 32) < t) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  tile_offsets[t] = lo;
}

}  // namespace

void cuda_count_tiles(const TileParams& p, const float* means2d, const int32_t* radii,
                      int32_t* tiles_per_gaussian, cudaStream_t stream) {
  const int64_t total = int64_t(p.C) * p.N;
  if (total == 0) return;
  count_tiles_kernel<<<cuda::blocks_for(total), kThreadsPerBlock, 0, stream>>>(p, means2d, radii,
                                                                               tiles_per_gaussian);
  cuda::check_launch("count_tiles_kernel");
}

size_t cuda_bin_and_sort_temp_bytes(const TileParams& p, int64_t n_isect) {
  if (n_isect <= 0) return 0;
  check_isect_count(n_isect);
  const size_t cub_bytes = cub_sort_bytes(n_isect, key_end_bit(p));
  return 2 * align_up(sizeof(uint64_t) * size_t(n_isect)) + align_up(sizeof(int32_t) * size_t(n_isect)) +
         cub_bytes;
}

void cuda_bin_and_sort(const TileParams& p, const float* means2d, const int32_t* radii, const float* depths,
                       const int64_t* isect_offsets, int64_t n_isect, int64_t* tile_offsets,
                       int32_t* flat_ids, void* temp, size_t temp_bytes, cudaStream_t stream) {
  const int64_t n_tiles_total = total_tiles(p);
  if (n_isect <= 0) {
    // every tile list is empty: all offsets are 0
    cuda::check(cudaMemsetAsync(tile_offsets, 0, sizeof(int64_t) * size_t(n_tiles_total + 1), stream),
                "clearing tile offsets");
    return;
  }
  const size_t needed = cuda_bin_and_sort_temp_bytes(p, n_isect);
  if (temp == nullptr || temp_bytes < needed) {
    throw std::runtime_error("recon CUDA rasteriser: bin_and_sort got " + std::to_string(temp_bytes) +
                             " scratch bytes, needs " + std::to_string(needed) +
                             " (call cuda_bin_and_sort_temp_bytes)");
  }
  const int end_bit = key_end_bit(p);
  Scratch s = carve(temp, n_isect, cub_sort_bytes(n_isect, end_bit));

  const int64_t total = int64_t(p.C) * p.N;
  emit_keys_kernel<<<cuda::blocks_for(total), kThreadsPerBlock, 0, stream>>>(
      p, means2d, radii, depths, isect_offsets, s.keys_a, s.values_a);
  cuda::check_launch("emit_keys_kernel");

  // Double buffers let cub ping-pong between our two halves instead of allocating a full
  // copy of keys and values in its own scratch; flat_ids doubles as the values' alternate.
  cub::DoubleBuffer<uint64_t> keys(s.keys_a, s.keys_b);
  cub::DoubleBuffer<int32_t> values(s.values_a, flat_ids);
  cuda::check(cub::DeviceRadixSort::SortPairs(s.cub_temp, s.cub_bytes, keys, values, int(n_isect), 0, end_bit,
                                              stream),
              "sorting tile intersections");
  if (values.Current() != flat_ids) {
    cuda::check(cudaMemcpyAsync(flat_ids, values.Current(), sizeof(int32_t) * size_t(n_isect),
                                cudaMemcpyDeviceToDevice, stream),
                "copying sorted Gaussian ids");
  }
  tile_offsets_kernel<<<cuda::blocks_for(n_tiles_total + 1), kThreadsPerBlock, 0, stream>>>(
      n_tiles_total, keys.Current(), n_isect, tile_offsets);
  cuda::check_launch("tile_offsets_kernel");
}

}  // namespace recon
