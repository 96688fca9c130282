// The only torch-aware C++ of the rasteriser: checks shapes, dtypes and devices, allocates
// outputs and dispatches to the torch-free stages of recon/api.h (cpu_* for CPU tensors,
// cuda_* for CUDA tensors when built with RECON_WITH_CUDA).
#include <torch/extension.h>

#include <sstream>
#include <string>
#include <vector>

#include "cpu_ssim.h"
#include "recon/api.h"
#include "recon/constants.h"

#ifdef RECON_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace {

using torch::Tensor;

std::string shape_str(const std::vector<std::string>& dims) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << "]";
  return s.str();
}

// Checks `t` against `dims` (-1 = any size, named by `names`) and the reference tensor's
// dtype and device; returns a contiguous tensor.
Tensor check(const Tensor& t, const char* name, const std::vector<int64_t>& dims,
             const std::vector<std::string>& names, const Tensor& like) {
  bool ok = t.dim() == int64_t(dims.size());
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = dims[i] < 0 || t.size(i) == dims[i];
  TORCH_CHECK(ok, name, " must have shape ", shape_str(names), ", got ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but means is on ", like.device(),
              "; move every input to one device");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), " but means has ",
              like.scalar_type(), "; use one dtype");
  return t.contiguous();
}

void check_float(const Tensor& means) {
  const bool cuda = means.is_cuda();
  TORCH_CHECK(means.scalar_type() == torch::kFloat32 || (!cuda && means.scalar_type() == torch::kFloat64),
              "means must be float32", cuda ? "" : " or float64", ", got ", means.scalar_type());
#ifndef RECON_WITH_CUDA
  TORCH_CHECK(!cuda,
              "this rasteriser extension was built without CUDA; rebuild it on a machine "
              "with a CUDA torch (delete the extension cache) or use CPU tensors");
#endif
}

recon::ProjectParams project_params(const Tensor& means, const Tensor& sh, const Tensor& viewmats,
                                    int64_t width, int64_t height, int64_t sh_degree, double near, double far,
                                    bool antialiased) {
  recon::ProjectParams p;
  p.C = int(viewmats.size(0));
  p.N = int(means.size(0));
  p.K = int(sh.size(1));
  p.sh_degree = int(sh_degree);
  p.width = int(width);
  p.height = int(height);
  p.near_plane = float(near);
  p.far_plane = float(far);
  p.antialiased = antialiased;
  TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3 && (sh_degree + 1) * (sh_degree + 1) <= p.K,
              "sh_degree must be in 0..3 with (sh_degree + 1)^2 <= K = ", p.K, ", got ", sh_degree);
  TORCH_CHECK(width > 0 && height > 0, "image size must be positive, got ", width, "x", height);
  return p;
}

struct Inputs {
  Tensor means, log_scales, quats, opacity_logits, sh, viewmats, Ks;
};

Inputs check_inputs(const Tensor& means, const Tensor& log_scales, const Tensor& quats,
                    const Tensor& opacity_logits, const Tensor& sh, const Tensor& viewmats,
                    const Tensor& Ks) {
  check_float(means);
  const int64_t N = means.size(0), C = viewmats.dim() > 0 ? viewmats.size(0) : -1;
  Inputs in;
  in.means = check(means, "means", {-1, 3}, {"N", "3"}, means);
  in.log_scales = check(log_scales, "log_scales", {N, 3}, {"N", "3"}, means);
  in.quats = check(quats, "quats", {N, 4}, {"N", "4"}, means);
  in.opacity_logits = check(opacity_logits, "opacity_logits", {N}, {"N"}, means);
  in.sh = check(sh, "sh", {N, -1, 3}, {"N", "K", "3"}, means);
  in.viewmats = check(viewmats, "viewmats", {-1, 4, 4}, {"C", "4", "4"}, means);
  in.Ks = check(Ks, "Ks", {C, 3, 3}, {"C", "3", "3"}, means);
  return in;
}

template <typename T> T* ptr(const Tensor& t) { return t.data_ptr<T>(); }

// The one CPU/CUDA dispatch: calls f(tag) with tag::type the scalar type and tag::cuda
// whether the tensors are on a GPU (CUDA stages are float only).
template <typename T, bool kCuda> struct Backend {
  using type = T;
  static constexpr bool cuda = kCuda;
};

template <typename F> void dispatch(const Tensor& like, F&& f) {
  if (like.is_cuda()) {
#ifdef RECON_WITH_CUDA
    f(Backend<float, true>{});
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "recon_stage", [&] { f(Backend<scalar_t, false>{}); });
  }
}

#ifdef RECON_WITH_CUDA
#define RECON_CALL_CUDA(stage, ...) recon::cuda_##stage(__VA_ARGS__, at::cuda::getCurrentCUDAStream())
#else
#define RECON_CALL_CUDA(stage, ...) (void)0
#endif

// Runs stage `stage` of recon/api.h on the backend of `like`: recon::cpu_<stage><scalar_t>(...)
// or recon::cuda_<stage>(..., stream). The arguments may use scalar_t.
#define RECON_STAGE(like, stage, ...)              \
  dispatch(like, [&](auto tag) {                   \
    using scalar_t = typename decltype(tag)::type; \
    if constexpr (decltype(tag)::cuda) {           \
      RECON_CALL_CUDA(stage, __VA_ARGS__);         \
    } else {                                       \
      recon::cpu_##stage<scalar_t>(__VA_ARGS__);   \
    }                                              \
  })

std::vector<Tensor> project_forward(const Tensor& means, const Tensor& log_scales, const Tensor& quats,
                                    const Tensor& opacity_logits, const Tensor& sh, const Tensor& viewmats,
                                    const Tensor& Ks, int64_t width, int64_t height, int64_t sh_degree,
                                    double near, double far, bool antialiased) {
  const Inputs in = check_inputs(means, log_scales, quats, opacity_logits, sh, viewmats, Ks);
  const auto p =
      project_params(in.means, in.sh, in.viewmats, width, height, sh_degree, near, far, antialiased);
  const auto opt = in.means.options();
  Tensor means2d = torch::empty({p.C, p.N, 2}, opt), conics = torch::empty({p.C, p.N, 3}, opt);
  Tensor colors = torch::empty({p.C, p.N, 3}, opt), opacities = torch::empty({p.C, p.N}, opt);
  Tensor depths = torch::empty({p.C, p.N}, opt);
  Tensor radii = torch::empty({p.C, p.N, 2}, opt.dtype(torch::kInt32));
  RECON_STAGE(in.means, project_forward, p, ptr<scalar_t>(in.means), ptr<scalar_t>(in.log_scales),
              ptr<scalar_t>(in.quats), ptr<scalar_t>(in.opacity_logits), ptr<scalar_t>(in.sh),
              ptr<scalar_t>(in.viewmats), ptr<scalar_t>(in.Ks), ptr<scalar_t>(means2d), ptr<scalar_t>(conics),
              ptr<scalar_t>(colors), ptr<scalar_t>(opacities), ptr<scalar_t>(depths), ptr<int32_t>(radii));
  return {means2d, conics, colors, opacities, depths, radii};
}

std::vector<Tensor> project_backward(const Tensor& means, const Tensor& log_scales, const Tensor& quats,
                                     const Tensor& opacity_logits, const Tensor& sh, const Tensor& viewmats,
                                     const Tensor& Ks, int64_t width, int64_t height, int64_t sh_degree,
                                     double near, double far, bool antialiased, const Tensor& radii_in,
                                     const Tensor& v_means2d_in, const Tensor& v_conics_in,
                                     const Tensor& v_colors_in, const Tensor& v_opacities_in,
                                     const Tensor& v_depths_in) {
  const Inputs in = check_inputs(means, log_scales, quats, opacity_logits, sh, viewmats, Ks);
  const auto p =
      project_params(in.means, in.sh, in.viewmats, width, height, sh_degree, near, far, antialiased);
  const int64_t C = p.C, N = p.N;
  TORCH_CHECK(radii_in.sizes() == torch::IntArrayRef({C, N, 2}) && radii_in.scalar_type() == torch::kInt32,
              "radii must be int32 with shape [C, N, 2], got ", radii_in.sizes());
  const Tensor radii = radii_in.contiguous();
  const Tensor v_means2d = check(v_means2d_in, "v_means2d", {C, N, 2}, {"C", "N", "2"}, in.means);
  const Tensor v_conics = check(v_conics_in, "v_conics", {C, N, 3}, {"C", "N", "3"}, in.means);
  const Tensor v_colors = check(v_colors_in, "v_colors", {C, N, 3}, {"C", "N", "3"}, in.means);
  const Tensor v_opacities = check(v_opacities_in, "v_opacities", {C, N}, {"C", "N"}, in.means);
  const Tensor v_depths = check(v_depths_in, "v_depths", {C, N}, {"C", "N"}, in.means);
  Tensor v_means = torch::zeros_like(in.means), v_log_scales = torch::zeros_like(in.log_scales);
  Tensor v_quats = torch::zeros_like(in.quats), v_logits = torch::zeros_like(in.opacity_logits);
  Tensor v_sh = torch::zeros_like(in.sh), v_viewmats = torch::zeros_like(in.viewmats);
  RECON_STAGE(in.means, project_backward, p, ptr<scalar_t>(in.means), ptr<scalar_t>(in.log_scales),
              ptr<scalar_t>(in.quats), ptr<scalar_t>(in.opacity_logits), ptr<scalar_t>(in.sh),
              ptr<scalar_t>(in.viewmats), ptr<scalar_t>(in.Ks), ptr<int32_t>(radii), ptr<scalar_t>(v_means2d),
              ptr<scalar_t>(v_conics), ptr<scalar_t>(v_colors), ptr<scalar_t>(v_opacities),
              ptr<scalar_t>(v_depths), ptr<scalar_t>(v_means), ptr<scalar_t>(v_log_scales),
              ptr<scalar_t>(v_quats), ptr<scalar_t>(v_logits), ptr<scalar_t>(v_sh),
              ptr<scalar_t>(v_viewmats));
  return {v_means, v_log_scales, v_quats, v_logits, v_sh, v_viewmats};
}

recon::TileParams tile_params(const Tensor& means2d, int64_t width, int64_t height, int64_t tile_size) {
  TORCH_CHECK(tile_size == 8 || tile_size == 16 || tile_size == 32, "tile_size must be 8, 16 or 32, got ",
              tile_size);
  TORCH_CHECK(width > 0 && height > 0, "image size must be positive, got ", width, "x", height);
  recon::TileParams p;
  p.C = int(means2d.size(0));
  p.N = int(means2d.size(1));
  p.width = int(width);
  p.height = int(height);
  p.tile_size = int(tile_size);
  return p;
}

// Screen-space Gaussians [C,N,*] -> rgb, depth_sum, alpha, n_contrib, tile_offsets, flat_ids.
std::vector<Tensor> rasterize_forward(const Tensor& means2d_in, const Tensor& conics_in,
                                      const Tensor& colors_in, const Tensor& opacities_in,
                                      const Tensor& depths_in, const Tensor& radii_in, int64_t width,
                                      int64_t height, int64_t tile_size) {
  check_float(means2d_in);
  TORCH_CHECK(means2d_in.dim() == 3 && means2d_in.size(2) == 2, "means2d must have shape [C, N, 2], got ",
              means2d_in.sizes());
  const int64_t C = means2d_in.size(0), N = means2d_in.size(1);
  const Tensor means2d = means2d_in.contiguous();
  const Tensor conics = check(conics_in, "conics", {C, N, 3}, {"C", "N", "3"}, means2d);
  const Tensor colors = check(colors_in, "colors", {C, N, 3}, {"C", "N", "3"}, means2d);
  const Tensor opacities = check(opacities_in, "opacities", {C, N}, {"C", "N"}, means2d);
  const Tensor depths = check(depths_in, "depths", {C, N}, {"C", "N"}, means2d);
  TORCH_CHECK(radii_in.sizes() == torch::IntArrayRef({C, N, 2}) && radii_in.scalar_type() == torch::kInt32,
              "radii must be int32 with shape [C, N, 2], got ", radii_in.sizes());
  const Tensor radii = radii_in.contiguous();
  const auto p = tile_params(means2d, width, height, tile_size);
  const auto opt = means2d.options();
  const int64_t n_tiles = int64_t(p.tiles_x()) * p.tiles_y() * C;
  Tensor tiles_per = torch::empty({C, N}, opt.dtype(torch::kInt32));
  Tensor tile_offsets = torch::empty({n_tiles + 1}, opt.dtype(torch::kInt64));
  Tensor rgb = torch::empty({C, height, width, 3}, opt), depth_sum = torch::empty({C, height, width}, opt);
  Tensor alpha = torch::empty({C, height, width}, opt);
  Tensor n_contrib = torch::empty({C, height, width}, opt.dtype(torch::kInt32));
  RECON_STAGE(means2d, count_tiles, p, ptr<scalar_t>(means2d), ptr<int32_t>(radii), ptr<int32_t>(tiles_per));
  const Tensor csum = torch::cumsum(tiles_per.view({-1}), 0, torch::kInt64);
  const int64_t n_isect = C * N > 0 ? csum[-1].item<int64_t>() : 0;
  const Tensor offsets = csum - tiles_per.view({-1}).to(torch::kInt64);
  Tensor flat_ids = torch::empty({n_isect}, opt.dtype(torch::kInt32));
  size_t temp_bytes = 0;  // sort scratch (CUDA only)
#ifdef RECON_WITH_CUDA
  if (means2d.is_cuda()) temp_bytes = recon::cuda_bin_and_sort_temp_bytes(p, n_isect);
#endif
  Tensor temp = torch::empty({int64_t(temp_bytes)}, opt.dtype(torch::kUInt8));
  RECON_STAGE(means2d, bin_and_sort, p, ptr<scalar_t>(means2d), ptr<int32_t>(radii), ptr<scalar_t>(depths),
              ptr<int64_t>(offsets), n_isect, ptr<int64_t>(tile_offsets), ptr<int32_t>(flat_ids),
              temp.data_ptr(), temp_bytes);
  RECON_STAGE(means2d, raster_forward, p, ptr<scalar_t>(means2d), ptr<scalar_t>(conics),
              ptr<scalar_t>(colors), ptr<scalar_t>(opacities), ptr<scalar_t>(depths),
              ptr<int64_t>(tile_offsets), ptr<int32_t>(flat_ids), ptr<scalar_t>(rgb),
              ptr<scalar_t>(depth_sum), ptr<scalar_t>(alpha), ptr<int32_t>(n_contrib));
  return {rgb, depth_sum, alpha, n_contrib, tile_offsets, flat_ids};
}

std::vector<Tensor> rasterize_backward(const Tensor& means2d_in, const Tensor& conics_in,
                                       const Tensor& colors_in, const Tensor& opacities_in,
                                       const Tensor& depths_in, const Tensor& tile_offsets,
                                       const Tensor& flat_ids, const Tensor& alpha, const Tensor& n_contrib,
                                       const Tensor& v_rgb_in, const Tensor& v_depth_sum_in,
                                       const Tensor& v_alpha_in, int64_t width, int64_t height,
                                       int64_t tile_size) {
  check_float(means2d_in);
  const int64_t C = means2d_in.size(0), N = means2d_in.size(1);
  const Tensor means2d = means2d_in.contiguous();
  const Tensor conics = check(conics_in, "conics", {C, N, 3}, {"C", "N", "3"}, means2d);
  const Tensor colors = check(colors_in, "colors", {C, N, 3}, {"C", "N", "3"}, means2d);
  const Tensor opacities = check(opacities_in, "opacities", {C, N}, {"C", "N"}, means2d);
  const Tensor depths = check(depths_in, "depths", {C, N}, {"C", "N"}, means2d);
  const Tensor v_rgb = check(v_rgb_in, "v_rgb", {C, height, width, 3}, {"C", "H", "W", "3"}, means2d);
  const Tensor v_depth_sum =
      check(v_depth_sum_in, "v_depth_sum", {C, height, width}, {"C", "H", "W"}, means2d);
  const Tensor v_alpha = check(v_alpha_in, "v_alpha", {C, height, width}, {"C", "H", "W"}, means2d);
  const auto p = tile_params(means2d, width, height, tile_size);
  Tensor v_means2d = torch::zeros_like(means2d), v_conics = torch::zeros_like(conics);
  Tensor v_colors = torch::zeros_like(colors), v_opacities = torch::zeros_like(opacities);
  Tensor v_depths = torch::zeros_like(depths);
  RECON_STAGE(means2d, raster_backward, p, ptr<scalar_t>(means2d), ptr<scalar_t>(conics),
              ptr<scalar_t>(colors), ptr<scalar_t>(opacities), ptr<scalar_t>(depths),
              ptr<int64_t>(tile_offsets), ptr<int32_t>(flat_ids), ptr<scalar_t>(alpha),
              ptr<int32_t>(n_contrib), ptr<scalar_t>(v_rgb), ptr<scalar_t>(v_depth_sum),
              ptr<scalar_t>(v_alpha), ptr<scalar_t>(v_means2d), ptr<scalar_t>(v_conics),
              ptr<scalar_t>(v_colors), ptr<scalar_t>(v_opacities), ptr<scalar_t>(v_depths));
  return {v_means2d, v_conics, v_colors, v_opacities, v_depths};
}

py::dict cpu_raster_stats() {
  const recon::CpuRasterStats s = recon::cpu_last_raster_stats();
  py::dict d;
  d["forward_lanes"] = s.forward_lanes;
  d["forward_blended"] = s.forward_blended;
  d["backward_lanes"] = s.backward_lanes;
  d["n_isect"] = s.n_isect;
  return d;
}

bool has_cuda() {
#ifdef RECON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// recon.optimise.losses.ssim's fused CPU path (cpu_ssim.h). x, y [B, H, W, C] float32 CPU,
// window [S] -> (mean SSIM as a float32 scalar, coef [B, Ho, 3, Wo * C] or an empty tensor).
std::vector<Tensor> ssim_forward(const Tensor& x, const Tensor& y, const Tensor& window, double c1, double c2,
                                 bool need_grad) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 4,
              "ssim_forward: x must be a [B, H, W, C] float32 CPU tensor, got ", x.sizes(), " ",
              x.scalar_type());
  TORCH_CHECK(y.sizes() == x.sizes() && y.device().is_cpu() && y.scalar_type() == torch::kFloat32,
              "ssim_forward: y must match x ", x.sizes(), ", got ", y.sizes(), " ", y.scalar_type());
  TORCH_CHECK(window.dim() == 1 && window.scalar_type() == torch::kFloat32 && window.size(0) % 2 == 1 &&
                  window.size(0) <= std::min(x.size(1), x.size(2)),
              "ssim_forward: window must be an odd float32 [S] no larger than the image, got ",
              window.sizes());
  recon::SsimShape s{x.size(0), x.size(1), x.size(2), x.size(3), window.size(0)};
  const Tensor xc = x.contiguous(), yc = y.contiguous(), g = window.contiguous();
  Tensor coef =
      need_grad ? torch::empty({s.B, s.Ho(), 3, s.L()}, xc.options()) : torch::empty({0}, xc.options());
  const double total = recon::cpu_ssim_forward(s, ptr<float>(xc), ptr<float>(yc), ptr<float>(g), float(c1),
                                               float(c2), need_grad ? ptr<float>(coef) : nullptr);
  const double count = double(s.B) * double(s.Ho()) * double(s.L());
  return {torch::scalar_tensor(total / count, xc.options()), coef};
}

// d(mean SSIM)/dx [B, H, W, C] times `grad` (the upstream gradient of the mean).
Tensor ssim_backward(const Tensor& x, const Tensor& y, const Tensor& window, const Tensor& coef,
                     double grad) {
  recon::SsimShape s{x.size(0), x.size(1), x.size(2), x.size(3), window.size(0)};
  TORCH_CHECK(coef.dim() == 4 && coef.size(0) == s.B && coef.size(1) == s.Ho() && coef.size(2) == 3 &&
                  coef.size(3) == s.L(),
              "ssim_backward: coef must come from ssim_forward(..., need_grad=true), got ", coef.sizes());
  const Tensor xc = x.contiguous(), yc = y.contiguous(), g = window.contiguous(), cc = coef.contiguous();
  Tensor dx = torch::empty_like(xc);
  const double count = double(s.B) * double(s.Ho()) * double(s.L());
  recon::cpu_ssim_backward(s, ptr<float>(xc), ptr<float>(yc), ptr<float>(g), ptr<float>(cc),
                           float(grad / count), ptr<float>(dx));
  return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon Gaussian rasteriser (CPU + optional CUDA); see cuda/include/recon/api.h";
  // The stages run without the GIL (arguments are converted before, results after), so other
  // Python threads (the viewer, data loading) keep running during a long rasterisation. They
  // only call torch's C++ API, which needs no GIL.
  using release_gil = py::call_guard<py::gil_scoped_release>;
  m.def("project_forward", &project_forward, release_gil());
  m.def("project_backward", &project_backward, release_gil());
  m.def("rasterize_forward", &rasterize_forward, release_gil());
  m.def("rasterize_backward", &rasterize_backward, release_gil());
  m.def("has_cuda", &has_cuda);
  m.def("cpu_raster_stats", &cpu_raster_stats, "work counted by the last CPU raster forward/backward");
  m.def("cpu_isa", &recon::cpu_isa, "instruction set of the CPU blending kernels in use");
  m.def("cpu_isa_float_lanes", &recon::cpu_isa_float_lanes);
  m.def("cpu_fma_rate", &recon::cpu_fma_rate, "lane-FMAs per second of `threads` threads", py::arg("iters"),
        py::arg("threads"));
  m.attr("ALPHA_THRESHOLD") = recon::kAlphaThreshold;
  m.attr("ALPHA_CAP") = recon::kAlphaCap;
  m.attr("TRANSMITTANCE_MIN") = recon::kTransmittanceMin;
  m.attr("DILATION") = recon::kDilation;
  m.attr("MAX_EXTEND") = recon::kMaxExtend;
  m.def("ssim_forward", &ssim_forward, "fused mean SSIM (cpu_ssim.h)", py::arg("x"), py::arg("y"),
        py::arg("window"), py::arg("c1"), py::arg("c2"), py::arg("need_grad"));
  m.def("ssim_backward", &ssim_backward, "gradient of ssim_forward's mean in x", py::arg("x"), py::arg("y"),
        py::arg("window"), py::arg("coef"), py::arg("grad"));
}
