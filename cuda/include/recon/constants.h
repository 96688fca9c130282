// Named constants shared by the CUDA kernels, the CPU backend and (mirrored, and checked
// by tests) recon/render/_reference.py. Change them here only.
#pragma once

#if defined(__CUDACC__)
#define RECON_HD __host__ __device__ inline
#else
#define RECON_HD inline
#endif

namespace recon {

// Default tile edge in pixels; RenderSettings.tile_size may pick 8, 16 or 32.
constexpr int kTileSize = 16;
constexpr int kMaxTileSize = 32;
// A Gaussian whose alpha at a pixel is below this is skipped there (1/255: invisible in 8 bits).
constexpr float kAlphaThreshold = 1.0f / 255.0f;
// Per-Gaussian alpha cap, so transmittance never reaches 0 and the backward pass can
// divide by (1 - alpha) to recover it.
constexpr float kAlphaCap = 0.99f;
// Blending stops before the transmittance would fall to this value.
constexpr float kTransmittanceMin = 1e-4f;
// Default near plane (camera z); Gaussians whose centre is nearer are culled.
constexpr float kNearDefault = 0.01f;
// Low-pass filter added to the diagonal of every 2D covariance (pixels^2), as in 3DGS.
constexpr float kDilation = 0.3f;
// Largest extent of the screen-space bounding box in standard deviations
// (exp(-0.5 * 3.33^2) < 1/255, so nothing beyond it can pass kAlphaThreshold).
constexpr float kMaxExtend = 3.33f;
// The Jacobian of the perspective projection is evaluated with x/z, y/z clamped to the
// field of view widened by this fraction of tan(fov / 2), which keeps Gaussians far
// outside the view from producing huge footprints.
constexpr float kFrustumSlack = 0.3f;
// Determinants below this (after dilation) make a Gaussian invalid.
constexpr float kMinDet = 1e-10f;

}  // namespace recon
