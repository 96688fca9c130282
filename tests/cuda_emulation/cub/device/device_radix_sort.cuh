// Test-only stand-in for cub's radix sort (see ../../cuda_runtime.h): a stable sort on the
// key bits [begin_bit, end_bit), which is what the LSD radix sort computes; the result goes
// to the alternate buffers, as cub's may, so the caller's DoubleBuffer handling is exercised.
#pragma once
#include <cuda_runtime.h>
#include <numeric>
namespace cub {
template <class T> struct DoubleBuffer {
  T *d_buffers[2]; int selector = 0;
  DoubleBuffer(T *a, T *b) { d_buffers[0] = a; d_buffers[1] = b; }
  T *Current() { return d_buffers[selector]; }
  T *Alternate() { return d_buffers[selector ^ 1]; }
};
struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void *temp, size_t &bytes, DoubleBuffer<K> &keys, DoubleBuffer<V> &values,
                               int n, int begin_bit, int end_bit, cudaStream_t = nullptr) {
    if (temp == nullptr) { bytes = 64; return 0; }
    const K mask = end_bit >= 64 ? ~K(0) : ((K(1) << end_bit) - 1);
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    K *k = keys.Current(); V *v = values.Current();
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ((k[a] & mask) >> begin_bit) < ((k[b] & mask) >> begin_bit); });
    K *ko = keys.Alternate(); V *vo = values.Alternate();
    for (int i = 0; i < n; ++i) { ko[i] = k[order[i]]; vo[i] = v[order[i]]; }
    keys.selector ^= 1; values.selector ^= 1;
    return 0;
  }
};
}  // namespace cub
