// Fused CPU kernels of the fit's D-SSIM term (recon/optimise/losses.py `ssim`): mean SSIM of
// x against y with a separable Gaussian window over the valid region, and its gradient in x.
// Torch-free, float32; src/binding.cpp checks the tensors and calls these.
//
// Layout: x, y are [B, H, W, C] (row-major, channels last, as the renderer writes images), so a
// row is W * C floats and the window steps by C floats along it. The window g has S taps (odd,
// S <= H and S <= W); the valid map is Ho x Wo with Ho = H - S + 1, Wo = W - S + 1, and
// L = Wo * C floats per map row. Each output element is computed by one thread in a fixed
// order, so the results do not depend on the number of threads.
#pragma once

#include <cstdint>

namespace recon {

struct SsimShape {
  int64_t B = 0, H = 0, W = 0, C = 0;  // images, rows, columns, channels
  int64_t S = 0;                       // window taps
  int64_t Ho() const { return H - S + 1; }
  int64_t Wo() const { return W - S + 1; }
  int64_t L() const { return Wo() * C; }
};

// Sum of the SSIM map over [B, Ho, Wo, C] (accumulated in double). When `coef` is not null it
// receives, per map element, the map's derivatives with respect to the three blurred
// statistics the gradient in x needs: coef [B, Ho, 3, L] = (dS/dmu_x, dS/dE[x^2], dS/dE[xy]).
double cpu_ssim_forward(const SsimShape& s, const float* x, const float* y, const float* g, float c1,
                        float c2, float* coef);

// dx [B, H, W, C] (written, not accumulated) = scale * d(sum of the SSIM map)/dx, from the
// forward's `coef`: the adjoint of the window applied to the three coefficient maps.
void cpu_ssim_backward(const SsimShape& s, const float* x, const float* y, const float* g, const float* coef,
                       float scale, float* dx);

}  // namespace recon
