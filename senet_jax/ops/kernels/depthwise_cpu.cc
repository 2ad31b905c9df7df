// Weight gradient of a depthwise 2-D convolution (NHWC input, one filter per channel) on CPU,
// as an XLA FFI custom call.
//
//   dw[i, j, c] = sum_{n, ho, wo} x[n, ho*s - pad_top + i, wo*s - pad_left + j, c] * g[n, ho, wo, c]
//
// (taps that fall into the padding contribute nothing). XLA:CPU computes this as k*k reductions,
// each over a shifted slice of x that it first copies, so it reads the activations 2*k*k times;
// this kernel reads them once. Work is split into a fixed number of row chunks with one partial
// sum each, added in chunk order, so results do not depend on thread count or scheduling.
#include <cstdint>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunks = 8;  // fixed, so the summation order never changes

struct Shape {
  int64_t n, h, w, c, ho, wo, kh, kw, stride, pad_top, pad_left;
};

// One output row (n, ho): acc[i, j, :] += x[n, hi, wi, :] * g[n, ho, wo, :] over wo.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void AccumulateRow(const Shape& s, const float* __restrict x, const float* __restrict g,
                   float* __restrict acc, int64_t n, int64_t ho) {
  const int64_t c = s.c;
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t hi = ho * s.stride - s.pad_top + i;
    if (hi < 0 || hi >= s.h) continue;
    const float* x_row = x + (n * s.h + hi) * s.w * c;
    for (int64_t wo = 0; wo < s.wo; ++wo) {
      const float* g_px = g + ((n * s.ho + ho) * s.wo + wo) * c;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t wi = wo * s.stride - s.pad_left + j;
        if (wi < 0 || wi >= s.w) continue;
        const float* x_px = x_row + wi * c;
        float* a = acc + (i * s.kw + j) * c;
        for (int64_t k = 0; k < c; ++k) a[k] += x_px[k] * g_px[k];
      }
    }
  }
}

ffi::Error DepthwiseWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                               int64_t stride, int64_t pad_top, int64_t pad_left) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 3 || xd[0] != gd[0] ||
      xd[3] != gd[3] || wd[2] != xd[3] || stride < 1) {
    return ffi::Error::InvalidArgument(
        "senet_depthwise_weight_grad: expected x (N,H,W,C), g (N,Ho,Wo,C), dw (KH,KW,C)");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], wd[0], wd[1], stride, pad_top,
                pad_left};
  const int64_t rows = s.n * s.ho, taps = s.kh * s.kw * s.c;
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  senet::ChunkedSum(pool, kChunks, taps, dw->typed_data(), [&](int64_t chunk, float* acc) {
    for (int64_t r = rows * chunk / kChunks; r < rows * (chunk + 1) / kChunks; ++r) {
      AccumulateRow(s, xp, gp, acc, r / s.ho, r % s.ho);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SenetDepthwiseWeightGrad, DepthwiseWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
