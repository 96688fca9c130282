// Test-only CPU emulation of the small part of CUDA that cuda/src/*.cu uses, so the real
// kernel sources can run (slowly) on a machine without a GPU: tests/test_cuda_emulated.py
// compiles them with g++ against this header instead of the CUDA toolkit's.
//
// Model: one std::thread per CUDA thread of a block; the blocks of a grid run one after
// another, so a function-level `static` array behaves like __shared__ memory; barriers
// (__syncthreads*, warp shuffles/votes) are mutex + condition-variable rendezvous; atomics
// take one global lock. Kernel launches `k<<<grid, block, shmem, stream>>>(args)` are
// rewritten by the test to `emu::launch(grid, block, shmem, stream, k, args)`.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstddef>
#include <mutex>
#include <condition_variable>
#include <thread>
#include <vector>
#include <functional>
#include <algorithm>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static

struct dim3 { unsigned x = 1, y = 1, z = 1; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
template <class A> inline A min(A a, A b) { return a < b ? a : b; }
template <class A> inline A max(A a, A b) { return a > b ? a : b; }

typedef void *cudaStream_t;
typedef int cudaError_t;
constexpr int cudaSuccess = 0;
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3 };
inline const char *cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = nullptr) { std::memset(p, v, n); return 0; }
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) { std::memcpy(d, s, n); return 0; }

namespace emu {
struct Barrier {
  std::mutex m; std::condition_variable cv; int expected = 0, count = 0; long gen = 0;
  void reset(int n) { expected = n; count = 0; }
  void wait() {
    std::unique_lock<std::mutex> lk(m);
    long g = gen;
    if (++count >= expected) { count = 0; ++gen; cv.notify_all(); return; }
    cv.wait(lk, [&] { return gen != g; });
  }
  void drop() {  // a thread left the kernel: later barriers of this block wait for one fewer
    std::unique_lock<std::mutex> lk(m);
    --expected;
    if (count > 0 && count >= expected) { count = 0; ++gen; cv.notify_all(); }
  }
};
inline Barrier block_barrier, end_barrier;
inline Barrier warp_barriers[32];
inline float shfl_slots[32][32];
inline int shfl_islots[32][32];
inline std::mutex atomic_mutex;
inline int sync_counter[2];
inline int sync_phase = 0;
}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline int emu_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline void __syncthreads() { emu::block_barrier.wait(); }
inline int __syncthreads_count(int pred) {
  emu::block_barrier.wait();
  { std::lock_guard<std::mutex> lk(emu::atomic_mutex); emu::sync_counter[0] += pred ? 1 : 0; }
  emu::block_barrier.wait();
  int v = emu::sync_counter[0];
  emu::block_barrier.wait();
  if (emu_tid() == 0) emu::sync_counter[0] = 0;
  emu::block_barrier.wait();
  return v;
}
inline int __syncthreads_or(int pred) { return __syncthreads_count(pred) > 0; }
inline float __shfl_xor_sync(unsigned, float v, int off) {
  int t = emu_tid(), w = t / 32, l = t % 32;
  emu::shfl_slots[w][l] = v; emu::warp_barriers[w].wait();
  float r = emu::shfl_slots[w][l ^ off]; emu::warp_barriers[w].wait();
  return r;
}
inline int __shfl_xor_sync(unsigned, int v, int off) {
  int t = emu_tid(), w = t / 32, l = t % 32;
  emu::shfl_islots[w][l] = v; emu::warp_barriers[w].wait();
  int r = emu::shfl_islots[w][l ^ off]; emu::warp_barriers[w].wait();
  return r;
}
inline bool __any_sync(unsigned, int pred) {
  int t = emu_tid(), w = t / 32, l = t % 32;
  emu::shfl_islots[w][l] = pred ? 1 : 0; emu::warp_barriers[w].wait();
  bool any = false;
  for (int i = 0; i < 32; ++i) any = any || emu::shfl_islots[w][i] != 0;
  emu::warp_barriers[w].wait();
  return any;
}
inline float atomicAdd(float *p, float v) { std::lock_guard<std::mutex> lk(emu::atomic_mutex); float o = *p; *p += v; return o; }
inline int atomicMax(int *p, int v) { std::lock_guard<std::mutex> lk(emu::atomic_mutex); int o = *p; *p = std::max(o, v); return o; }

namespace emu {
template <class G, class B, class F, class... Args>
void launch(G grid_, B block_, int, cudaStream_t, F kernel, Args... args) {
  dim3 grid = dim3(grid_), block = dim3(block_);
  ::gridDim = grid; ::blockDim = block;
  const int nt = block.x * block.y * block.z;
  end_barrier.reset(nt);
  for (auto &wb : warp_barriers) wb.reset(32);
  block_barrier.reset(nt);
  std::vector<std::thread> threads;
  for (int t = 0; t < nt; ++t) {
    threads.emplace_back([=]() {
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            blockIdx = dim3(bx, by, bz);
            kernel(args...);
            block_barrier.drop();
            end_barrier.wait();
            if (t == 0) block_barrier.reset(nt);
            end_barrier.wait();
          }
    });
  }
  for (auto &th : threads) th.join();
}
}  // namespace emu
