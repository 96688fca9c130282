// Test-only C entry points over the cuda_* stages of recon/api.h, for ctypes: the test
// passes host pointers, which the emulated kernels (cuda_runtime.h here) read directly.
#include "recon/api.h"
using namespace recon;
extern "C" {
void d_project_forward(int C, int N, int K, int deg, int W, int H, float near, float far, int aa,
  const float* means, const float* ls, const float* q, const float* op, const float* sh, const float* vm, const float* Ks,
  float* m2, float* con, float* col, float* opa, float* dep, int32_t* radii) {
  ProjectParams p; p.C=C; p.N=N; p.K=K; p.sh_degree=deg; p.width=W; p.height=H; p.near_plane=near; p.far_plane=far; p.antialiased=aa;
  cuda_project_forward(p, means, ls, q, op, sh, vm, Ks, m2, con, col, opa, dep, radii, nullptr);
}
void d_project_backward(int C, int N, int K, int deg, int W, int H, float near, float far, int aa,
  const float* means, const float* ls, const float* q, const float* op, const float* sh, const float* vm, const float* Ks,
  const int32_t* radii, const float* vm2, const float* vcon, const float* vcol, const float* vop, const float* vdep,
  float* g_means, float* g_ls, float* g_q, float* g_op, float* g_sh, float* g_vm) {
  ProjectParams p; p.C=C; p.N=N; p.K=K; p.sh_degree=deg; p.width=W; p.height=H; p.near_plane=near; p.far_plane=far; p.antialiased=aa;
  cuda_project_backward(p, means, ls, q, op, sh, vm, Ks, radii, vm2, vcon, vcol, vop, vdep, g_means, g_ls, g_q, g_op, g_sh, g_vm, nullptr);
}
static TileParams tp(int C, int N, int W, int H, int ts) { TileParams p; p.C=C; p.N=N; p.width=W; p.height=H; p.tile_size=ts; return p; }
void d_count_tiles(int C, int N, int W, int H, int ts, const float* m2, const int32_t* radii, int32_t* out) {
  cuda_count_tiles(tp(C,N,W,H,ts), m2, radii, out, nullptr);
}
size_t d_temp_bytes(int C, int N, int W, int H, int ts, int64_t n) { return cuda_bin_and_sort_temp_bytes(tp(C,N,W,H,ts), n); }
void d_bin_and_sort(int C, int N, int W, int H, int ts, const float* m2, const int32_t* radii, const float* dep,
  const int64_t* offs, int64_t n, int64_t* tile_offsets, int32_t* flat_ids, void* temp, size_t tb) {
  cuda_bin_and_sort(tp(C,N,W,H,ts), m2, radii, dep, offs, n, tile_offsets, flat_ids, temp, tb, nullptr);
}
void d_raster_forward(int C, int N, int W, int H, int ts, const float* m2, const float* con, const float* col,
  const float* opa, const float* dep, const int64_t* to, const int32_t* fi, float* rgb, float* ds, float* al, int32_t* nc) {
  cuda_raster_forward(tp(C,N,W,H,ts), m2, con, col, opa, dep, to, fi, rgb, ds, al, nc, nullptr);
}
void d_raster_backward(int C, int N, int W, int H, int ts, const float* m2, const float* con, const float* col,
  const float* opa, const float* dep, const int64_t* to, const int32_t* fi, const float* al, const int32_t* nc,
  const float* vrgb, const float* vds, const float* val, float* gm2, float* gcon, float* gcol, float* gop, float* gdep) {
  cuda_raster_backward(tp(C,N,W,H,ts), m2, con, col, opa, dep, to, fi, al, nc, vrgb, vds, val, gm2, gcon, gcol, gop, gdep, nullptr);
}
}
