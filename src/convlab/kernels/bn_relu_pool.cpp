// BatchNorm (training statistics) -> ReLU -> 2x2 max pool, forward and backward, in one
// pass each over the full-resolution activations, for channels_last CPU tensors (float32
// or bfloat16). See convlab/kernels/__init__.py for why and for the Python side.
//
// Forward: per-channel mean and biased variance over N*H*W (one pass, double sums), then
// for each 2x2 window: y = x * scale + shift, rounded to the input's dtype as BatchNorm's
// output would be, the window's first maximum (as ATen's max pool picks it), ReLU. It
// writes the pooled output, the window position of the maximum (0..3, one byte) and the
// input value there, never the full-resolution BatchNorm output.
//
// Backward: the gradient reaching BatchNorm is zero except at each window's maximum when
// the output is positive, so BatchNorm's two per-channel sums are taken over pooled-size
// arrays only; then one pass writes the input gradient of every position.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

using at::Tensor;

// Loads and rounding stores written without branches, so that the loops over channels
// vectorise (c10::BFloat16's own conversions check for NaN, which stops that).
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const c10::BFloat16* p, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// f rounded (to nearest even) to the dtype of T, as a float
inline float round_to(const float*, float f) { return f; }
inline float round_to(const c10::BFloat16*, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, int64_t i, float f) { p[i] = f; }
inline void store(c10::BFloat16* p, int64_t i, float f) {
  uint32_t u;
  f = round_to(p, f);
  std::memcpy(&u, &f, 4);
  reinterpret_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(u >> 16);
}

void check_input(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "bn_relu_pool2: a CPU tensor is needed");
  TORCH_CHECK(x.dim() == 4, "bn_relu_pool2: a 4-D (N, C, H, W) tensor is needed");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "bn_relu_pool2: the input must be channels_last");
  TORCH_CHECK(x.size(2) % 2 == 0 && x.size(3) % 2 == 0,
              "bn_relu_pool2: height and width must be even");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "bn_relu_pool2: float32 or bfloat16 input is needed");
}

// Adds up per-thread partials (thread t's two C-long runs at part[2*C*t]) into a and b.
void add_partials(const std::vector<double>& part, int nt, int64_t C, std::vector<double>& a,
                  std::vector<double>& b) {
  a.assign(C, 0.0);
  b.assign(C, 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < C; ++c) {
      a[c] += part[static_cast<size_t>(t) * 2 * C + c];
      b[c] += part[static_cast<size_t>(t) * 2 * C + C + c];
    }
}

// Per-channel sum and sum of squares over the rows of a (rows, C) array, in double.
template <typename T>
void channel_sums(const T* x, int64_t rows, int64_t C, std::vector<double>& sum,
                  std::vector<double>& sumsq) {
  const int nt = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nt) * 2 * C, 0.0);
  at::parallel_for(0, rows, 2048, [&](int64_t begin, int64_t end) {
    double* s = part.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
    double* q = s + C;
    std::vector<float> fs(C), fq(C);
    for (int64_t r0 = begin; r0 < end; r0 += 64) {  // float sums of 64 rows, then double
      std::fill(fs.begin(), fs.end(), 0.f);
      std::fill(fq.begin(), fq.end(), 0.f);
      for (int64_t r = r0; r < std::min(end, r0 + 64); ++r) {
        const T* row = x + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const float v = load(row, c);
          fs[c] += v;
          fq[c] += v * v;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        s[c] += fs[c];
        q[c] += fq[c];
      }
    }
  });
  add_partials(part, nt, C, sum, sumsq);
}

// One 2x2 window, all channels: BatchNorm's output rounded to T, the first maximum
// (a later position wins only when greater, as in ATen's max pool), ReLU.
template <typename T>
inline void window_forward(const T* __restrict r0, const T* __restrict r1, int64_t C,
                           const float* __restrict sc, const float* __restrict sh,
                           T* __restrict out, uint8_t* __restrict idx, T* __restrict xmax) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float x0 = load(r0, c), x1 = load(r0, C + c), x2 = load(r1, c), x3 = load(r1, C + c);
    const float v0 = round_to(r0, x0 * sc[c] + sh[c]);
    const float v1 = round_to(r0, x1 * sc[c] + sh[c]);
    const float v2 = round_to(r0, x2 * sc[c] + sh[c]);
    const float v3 = round_to(r0, x3 * sc[c] + sh[c]);
    // the position as a float too: selects of one width are what the loop vectorises to
    float k = 0.f, best = v0, xm = x0;
    k = v1 > best ? 1.f : k;
    xm = v1 > best ? x1 : xm;
    best = v1 > best ? v1 : best;
    k = v2 > best ? 2.f : k;
    xm = v2 > best ? x2 : xm;
    best = v2 > best ? v2 : best;
    k = v3 > best ? 3.f : k;
    xm = v3 > best ? x3 : xm;
    best = v3 > best ? v3 : best;
    store(out, c, best < 0.f ? 0.f : best);
    idx[c] = static_cast<uint8_t>(static_cast<int>(k));
    store(xmax, c, xm);  // exact: a value of T stored back as T
  }
}

template <typename T>
void forward_impl(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                  Tensor& out, Tensor& idx, Tensor& xmax, Tensor& mean_t, Tensor& invstd_t) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2, M = N * H * W;
  const T* xp = x.data_ptr<T>();
  std::vector<double> sum, sumsq;
  channel_sums(xp, M, C, sum, sumsq);
  float* mean = mean_t.data_ptr<float>();
  float* invstd = invstd_t.data_ptr<float>();
  std::vector<float> scale(C), shift(C);
  const float* w = weight.defined() ? weight.data_ptr<float>() : nullptr;
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    const double m = sum[c] / M;
    const double var = std::max(sumsq[c] / M - m * m, 0.0);
    mean[c] = static_cast<float>(m);
    invstd[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
    scale[c] = (w ? w[c] : 1.f) * invstd[c];
    shift[c] = (b ? b[c] : 0.f) - mean[c] * scale[c];
  }
  T* op = out.data_ptr<T>();
  uint8_t* ip = idx.data_ptr<uint8_t>();
  T* xm = xmax.data_ptr<T>();
  const float* sc = scale.data();
  const float* sh = shift.data();
  at::parallel_for(0, N * Ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / Ho, i = nh % Ho;
      const T* r0 = xp + ((n * H + 2 * i) * W) * C;
      const T* r1 = r0 + W * C;
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t o = (nh * Wo + j) * C;
        window_forward(r0 + 2 * j * C, r1 + 2 * j * C, C, sc, sh, op + o, ip + o, xm + o);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_relu_pool2_forward(
    const Tensor& x, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    double eps) {
  check_input(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor w = weight.has_value() ? weight->contiguous().to(at::kFloat) : Tensor();
  Tensor b = bias.has_value() ? bias->contiguous().to(at::kFloat) : Tensor();
  auto cl = at::MemoryFormat::ChannelsLast;
  Tensor out = at::empty({N, C, H / 2, W / 2}, x.options().memory_format(cl));
  Tensor idx = at::empty({N, C, H / 2, W / 2}, x.options().dtype(at::kByte).memory_format(cl));
  Tensor xmax = at::empty({N, C, H / 2, W / 2}, x.options().memory_format(cl));
  Tensor mean = at::empty({C}, x.options().dtype(at::kFloat));
  Tensor invstd = at::empty({C}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kFloat)
    forward_impl<float>(x, w, b, eps, out, idx, xmax, mean, invstd);
  else
    forward_impl<c10::BFloat16>(x, w, b, eps, out, idx, xmax, mean, invstd);
  return {out, idx, xmax, mean, invstd};
}

// One window's share of BatchNorm's two backward sums: the gradient reaches the window's
// maximum only (whose input value the forward pass kept in xmax), and only when the
// output is positive. So this pass reads pooled-size arrays only.
template <typename T>
inline void window_sums(const T* __restrict xmax, int64_t C, const T* __restrict grad,
                        const T* __restrict out, const float* __restrict mean,
                        const float* __restrict invstd, float* __restrict s,
                        float* __restrict q) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float o = load(out, c), gv = load(grad, c);
    const float g = o > 0.f ? gv : 0.f;
    const float xv = load(xmax, c);
    s[c] += g;
    q[c] += g * (xv - mean[c]) * invstd[c];
  }
}

// One window's input gradient, every position: k1 * (dy - a - xhat * b).
template <typename T>
inline void window_backward(const T* __restrict x0, const T* __restrict x1, T* __restrict d0,
                            T* __restrict d1, int64_t C, const T* __restrict grad,
                            const T* __restrict out, const uint8_t* __restrict idx,
                            const float* __restrict k1, const float* __restrict a,
                            const float* __restrict b, const float* __restrict mu,
                            const float* __restrict is) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float o = load(out, c), gv = load(grad, c);
    const float g = o > 0.f ? gv : 0.f;
    const int k = idx[c];
    const float base = a[c];
    const float e0 = (load(x0, c) - mu[c]) * is[c];
    const float e1 = (load(x0, C + c) - mu[c]) * is[c];
    const float e2 = (load(x1, c) - mu[c]) * is[c];
    const float e3 = (load(x1, C + c) - mu[c]) * is[c];
    store(d0, c, k1[c] * ((k == 0 ? g : 0.f) - base - e0 * b[c]));
    store(d0, C + c, k1[c] * ((k == 1 ? g : 0.f) - base - e1 * b[c]));
    store(d1, c, k1[c] * ((k == 2 ? g : 0.f) - base - e2 * b[c]));
    store(d1, C + c, k1[c] * ((k == 3 ? g : 0.f) - base - e3 * b[c]));
  }
}

template <typename T>
void backward_impl(const Tensor& grad, const Tensor& x, const Tensor& idx, const Tensor& xmax,
                   const Tensor& out,
                   const Tensor& mean_t, const Tensor& invstd_t, const Tensor& weight,
                   Tensor& dx, std::vector<double>& sum_dy, std::vector<double>& sum_dy_xhat) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2, M = N * H * W;
  const T* xp = x.data_ptr<T>();
  const T* gp = grad.data_ptr<T>();
  const T* op = out.data_ptr<T>();
  const uint8_t* ip = idx.data_ptr<uint8_t>();
  const T* xm = xmax.data_ptr<T>();
  const float* mean = mean_t.data_ptr<float>();
  const float* invstd = invstd_t.data_ptr<float>();
  // 1. BatchNorm's sums, over the pooled positions (the gradient is zero elsewhere)
  const int nt = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nt) * 2 * C, 0.0);
  at::parallel_for(0, N * Ho, 16, [&](int64_t begin, int64_t end) {
    double* s = part.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
    double* q = s + C;
    std::vector<float> fs(C), fq(C);
    for (int64_t nh = begin; nh < end; ++nh) {  // float sums of one row of windows, then double
      std::fill(fs.begin(), fs.end(), 0.f);
      std::fill(fq.begin(), fq.end(), 0.f);
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t o = (nh * Wo + j) * C;
        window_sums(xm + o, C, gp + o, op + o, mean, invstd, fs.data(), fq.data());
      }
      for (int64_t c = 0; c < C; ++c) {
        s[c] += fs[c];
        q[c] += fq[c];
      }
    }
  });
  add_partials(part, nt, C, sum_dy, sum_dy_xhat);
  // 2. dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), every position
  const float* w = weight.defined() ? weight.data_ptr<float>() : nullptr;
  std::vector<float> k1(C), a(C), bq(C), mu(C), is(C);
  for (int64_t c = 0; c < C; ++c) {
    k1[c] = (w ? w[c] : 1.f) * invstd[c];
    a[c] = static_cast<float>(sum_dy[c] / M);
    bq[c] = static_cast<float>(sum_dy_xhat[c] / M);
    mu[c] = mean[c];
    is[c] = invstd[c];
  }
  T* dp = dx.data_ptr<T>();
  at::parallel_for(0, N * Ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / Ho, i = nh % Ho;
      const int64_t base = ((n * H + 2 * i) * W) * C;
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t o = (nh * Wo + j) * C;
        const int64_t e = base + 2 * j * C;
        window_backward(xp + e, xp + e + W * C, dp + e, dp + e + W * C, C, gp + o, op + o,
                        ip + o, k1.data(), a.data(), bq.data(), mu.data(), is.data());
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> bn_relu_pool2_backward(
    const Tensor& grad_in, const Tensor& x, const Tensor& idx, const Tensor& xmax, const Tensor& out,
    const Tensor& mean, const Tensor& invstd, const c10::optional<Tensor>& weight) {
  check_input(x);
  auto cl = at::MemoryFormat::ChannelsLast;
  Tensor grad = grad_in.to(x.scalar_type()).contiguous(cl);
  TORCH_CHECK(grad.sizes() == out.sizes(), "bn_relu_pool2_backward: gradient of the wrong shape");
  Tensor w = weight.has_value() ? weight->contiguous().to(at::kFloat) : Tensor();
  Tensor dx = at::empty_like(x, x.options().memory_format(cl));
  std::vector<double> sum_dy, sum_dy_xhat;
  if (x.scalar_type() == at::kFloat)
    backward_impl<float>(grad, x, idx, xmax, out, mean, invstd, w, dx, sum_dy, sum_dy_xhat);
  else
    backward_impl<c10::BFloat16>(grad, x, idx, xmax, out, mean, invstd, w, dx, sum_dy, sum_dy_xhat);
  const int64_t C = x.size(1);
  Tensor dweight = at::empty({C}, x.options().dtype(at::kFloat));
  Tensor dbias = at::empty({C}, x.options().dtype(at::kFloat));
  for (int64_t c = 0; c < C; ++c) {
    dweight.data_ptr<float>()[c] = static_cast<float>(sum_dy_xhat[c]);
    dbias.data_ptr<float>()[c] = static_cast<float>(sum_dy[c]);
  }
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY(convlab, m) {
  m.def("bn_relu_pool2_forward(Tensor x, Tensor? weight, Tensor? bias, float eps) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("bn_relu_pool2_backward(Tensor grad, Tensor x, Tensor idx, Tensor xmax, Tensor out, Tensor mean, "
        "Tensor invstd, Tensor? weight) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(convlab, CPU, m) {
  m.impl("bn_relu_pool2_forward", &bn_relu_pool2_forward);
  m.impl("bn_relu_pool2_backward", &bn_relu_pool2_backward);
}
