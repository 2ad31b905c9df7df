// Grouped 2-D convolution (NHWC input, HWIO kernel with I = C_in / groups, stride 1) on CPU as
// XLA FFI custom calls: forward and weight gradient (the input gradient is a forward pass with
// the flipped kernel, see senet_jax/kernels/__init__.py).
//
// XLA:CPU has no fast grouped convolution (its own is 10-100x slower than a dense one) and the
// dense reformulations waste arithmetic. Two forms, both vectorised over output channels with
// accumulators for a tile of pixels x channels in registers:
// - broadcast (groups of a multiple of 8 output channels): one input value times a vector of
//   that group's weights;
// - expanded rows (other groups): every input row is first copied so that each output channel
//   c finds the input value of its own group at the same place,
//     expanded[w, ci, c] = x[w - pad_left, group(c) * cin_g + ci]   (zero in the padding),
//   after which every kernel tap is a contiguous multiply-add over all output channels.
// Work is split into a fixed number of chunks (by output rows; the weight gradient of large
// kernels by groups), partial sums added in chunk order, so results do not depend on the
// thread count.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunks = 16;
constexpr int64_t kMaxPartialFloats = 1 << 15;  // per chunk, for row-split weight gradients
constexpr int64_t kPixels = 4;    // output pixels per register tile
constexpr int64_t kLanes = 64;    // output channels per register tile

#if defined(__x86_64__) && defined(__GNUC__)
#define SENET_VECTORIZED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SENET_VECTORIZED
#endif

struct Geometry {
  int64_t n, h, w, cin, ho, wo, cout, kh, kw, cin_g, cout_g, pad_top, pad_left;
  int64_t padded_w() const { return wo + kw - 1; }
  // Groups of a multiple of 8 output channels fill whole vectors: their kernels broadcast one
  // input value against a vector of weights and need no expanded rows.
  bool broadcast() const { return cout_g % 8 == 0; }
  int64_t lanes() const { return cout_g % 16 == 0 ? 16 : 8; }  // vector width of that form
  int64_t row_floats() const { return padded_w() * (broadcast() ? cin : cin_g * cout); }
};

// Input rows, zero-padded and (unless broadcast()) expanded, made on demand; consecutive output
// rows reuse kh - 1 of them.
class ExpandedRows {
 public:
  ExpandedRows(const Geometry& g, const float* x)
      : g_(g), x_(x), data_(g.kh * g.row_floats()), tags_(g.kh, -1) {}

  // The expanded row (n, hi), or nullptr when hi lies in the padding.
  const float* Get(int64_t n, int64_t hi) {
    if (hi < 0 || hi >= g_.h) return nullptr;
    const int64_t tag = n * g_.h + hi, slot = tag % g_.kh;
    float* row = data_.data() + slot * g_.row_floats();
    if (tags_[slot] != tag) {
      Expand(x_ + tag * g_.w * g_.cin, row);
      tags_[slot] = tag;
    }
    return row;
  }

 private:
  void Expand(const float* src, float* dst) const {
    if (g_.broadcast()) {
      for (int64_t pw = 0; pw < g_.padded_w(); ++pw) {
        const int64_t wi = pw - g_.pad_left;
        float* out = dst + pw * g_.cin;
        if (wi < 0 || wi >= g_.w) {
          std::fill(out, out + g_.cin, 0.0f);
        } else {
          std::copy(src + wi * g_.cin, src + (wi + 1) * g_.cin, out);
        }
      }
      return;
    }
    for (int64_t pw = 0; pw < g_.padded_w(); ++pw) {
      const int64_t wi = pw - g_.pad_left;
      for (int64_t ci = 0; ci < g_.cin_g; ++ci) {
        float* out = dst + (pw * g_.cin_g + ci) * g_.cout;
        if (wi < 0 || wi >= g_.w) {
          std::fill(out, out + g_.cout, 0.0f);
          continue;
        }
        const float* px = src + wi * g_.cin;
        for (int64_t group = 0; group < g_.cout / g_.cout_g; ++group) {
          std::fill(out + group * g_.cout_g, out + (group + 1) * g_.cout_g,
                    px[group * g_.cin_g + ci]);
        }
      }
    }
  }

  const Geometry& g_;
  const float* x_;
  std::vector<float> data_;
  std::vector<int64_t> tags_;
};

// out[p, c0 + k] for pixels p0 .. p0 + P - 1 and k < L, over every tap of the rows `rows`.
template <int64_t P, int64_t L>
inline __attribute__((always_inline)) void ForwardTile(const Geometry& g, const float* const* rows,
                                                       const float* w, float* out, int64_t p0,
                                                       int64_t c0, int64_t lanes) {
  float acc[P][L] = {};
  for (int64_t i = 0; i < g.kh; ++i) {
    if (rows[i] == nullptr) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      for (int64_t ci = 0; ci < g.cin_g; ++ci) {
        const float* wv = w + ((i * g.kw + j) * g.cin_g + ci) * g.cout + c0;
        for (int64_t p = 0; p < P; ++p) {
          const float* xv = rows[i] + ((p0 + p + j) * g.cin_g + ci) * g.cout + c0;
          for (int64_t k = 0; k < L; ++k) acc[p][k] += xv[k] * wv[k];
        }
      }
    }
  }
  for (int64_t p = 0; p < P; ++p) std::copy(acc[p], acc[p] + lanes, out + (p0 + p) * g.cout + c0);
}

// N floats as one vector (split in two or four where the machine's vectors are shorter), with
// unaligned loads and stores.
template <int64_t N> struct Vec;
template <> struct Vec<16> {
  typedef float type __attribute__((vector_size(64)));
  typedef float unaligned __attribute__((vector_size(64), aligned(4)));
};
template <> struct Vec<8> {
  typedef float type __attribute__((vector_size(32)));
  typedef float unaligned __attribute__((vector_size(32), aligned(4)));
};
template <int64_t N>
inline typename Vec<N>::type Load(const float* p) {
  return *reinterpret_cast<const typename Vec<N>::unaligned*>(p);
}
template <int64_t N>
inline void Store(float* p, typename Vec<N>::type v) {
  *reinterpret_cast<typename Vec<N>::unaligned*>(p) = v;
}

// Broadcast form: out[p, c0 .. c0 + N - 1] for P pixels inside one group
// (c0 = group * cout_g + o0).
template <int64_t P, int64_t N>
inline __attribute__((always_inline)) void BroadcastTile(const Geometry& g,
                                                         const float* const* rows, const float* w,
                                                         float* out, int64_t p0, int64_t group,
                                                         int64_t c0) {
  typename Vec<N>::type acc[P] = {};
  for (int64_t i = 0; i < g.kh; ++i) {
    if (rows[i] == nullptr) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const float* xs = rows[i] + (p0 + j) * g.cin + group * g.cin_g;
      for (int64_t ci = 0; ci < g.cin_g; ++ci) {
        const auto wv = Load<N>(w + ((i * g.kw + j) * g.cin_g + ci) * g.cout + c0);
        for (int64_t p = 0; p < P; ++p) acc[p] += xs[p * g.cin + ci] * wv;
      }
    }
  }
  for (int64_t p = 0; p < P; ++p) Store<N>(out + (p0 + p) * g.cout + c0, acc[p]);
}

template <int64_t N>
inline __attribute__((always_inline)) void BroadcastForwardRowN(const Geometry& g,
                                                                const float* const* rows,
                                                                const float* w, float* out) {
  for (int64_t group = 0; group < g.cout / g.cout_g; ++group) {
    for (int64_t o0 = 0; o0 < g.cout_g; o0 += N) {
      const int64_t c0 = group * g.cout_g + o0;
      // Tiles of 8, 7, 4, 2, 1 pixels: independent accumulators hide the FMA latency, and
      // ResNeXt's maps (56, 28, 14, 7 at 224 px; 16, 8, 4, 2 at 64 px) split without 1s.
      int64_t p0 = 0;
      for (; p0 + 8 <= g.wo; p0 += 8) BroadcastTile<8, N>(g, rows, w, out, p0, group, c0);
      for (; p0 + 7 <= g.wo; p0 += 7) BroadcastTile<7, N>(g, rows, w, out, p0, group, c0);
      for (; p0 + 4 <= g.wo; p0 += 4) BroadcastTile<4, N>(g, rows, w, out, p0, group, c0);
      for (; p0 + 2 <= g.wo; p0 += 2) BroadcastTile<2, N>(g, rows, w, out, p0, group, c0);
      for (; p0 < g.wo; ++p0) BroadcastTile<1, N>(g, rows, w, out, p0, group, c0);
    }
  }
}

SENET_VECTORIZED void BroadcastForwardRow(const Geometry& g, const float* const* rows,
                                          const float* w, float* out) {
  if (g.lanes() == 16) return BroadcastForwardRowN<16>(g, rows, w, out);
  BroadcastForwardRowN<8>(g, rows, w, out);
}

SENET_VECTORIZED void ForwardRow(const Geometry& g, ExpandedRows& expanded, const float* w,
                                 float* y, int64_t n, int64_t ho) {
  std::vector<const float*> rows(g.kh);
  for (int64_t i = 0; i < g.kh; ++i) rows[i] = expanded.Get(n, ho - g.pad_top + i);
  float* out = y + (n * g.ho + ho) * g.wo * g.cout;
  if (g.broadcast()) return BroadcastForwardRow(g, rows.data(), w, out);
  for (int64_t c0 = 0; c0 < g.cout; c0 += kLanes) {
    if (c0 + kLanes > g.cout) {  // a partial channel block: one lane at a time
      for (int64_t p = 0; p < g.wo; ++p) {
        for (int64_t c = c0; c < g.cout; ++c) ForwardTile<1, 1>(g, rows.data(), w, out, p, c, 1);
      }
      continue;
    }
    int64_t p0 = 0;
    for (; p0 + kPixels <= g.wo; p0 += kPixels) {
      ForwardTile<kPixels, kLanes>(g, rows.data(), w, out, p0, c0, kLanes);
    }
    for (; p0 < g.wo; ++p0) ForwardTile<1, kLanes>(g, rows.data(), w, out, p0, c0, kLanes);
  }
}

// Broadcast form: dw[i, j, ci0 + c, c0 .. c0 + N - 1] += sum_p x[wi, group * cin_g + ci0 + c]
// * dy[p, c0 .. c0 + N - 1] with wi = p + j - pad_left, for C input channels at once. `x_row` is
// the unpadded input row; pixels whose wi falls into the padding are skipped.
template <int64_t C, int64_t N>
inline __attribute__((always_inline)) void BroadcastGradTile(const Geometry& g, const float* x_row,
                                                             const float* dy_row, float* dw,
                                                             int64_t i, int64_t j, int64_t group,
                                                             int64_t ci0, int64_t c0) {
  typename Vec<N>::type acc[C] = {};
  const int64_t p_begin = std::max<int64_t>(0, g.pad_left - j);
  const int64_t p_end = std::min(g.wo, g.w + g.pad_left - j);
  for (int64_t p = p_begin; p < p_end; ++p) {
    const float* xs = x_row + (p + j - g.pad_left) * g.cin + group * g.cin_g + ci0;
    const auto gv = Load<N>(dy_row + p * g.cout + c0);
    for (int64_t c = 0; c < C; ++c) acc[c] += xs[c] * gv;
  }
  for (int64_t c = 0; c < C; ++c) {
    float* out = dw + ((i * g.kw + j) * g.cin_g + ci0 + c) * g.cout + c0;
    Store<N>(out, Load<N>(out) + acc[c]);
  }
}

// One output row's contribution to the weight gradient of groups [group_begin, group_end).
template <int64_t N>
inline __attribute__((always_inline)) void BroadcastWeightGradRowN(
    const Geometry& g, const float* x, const float* dy_row, float* dw, int64_t n, int64_t ho,
    int64_t group_begin, int64_t group_end) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t hi = ho - g.pad_top + i;
    if (hi < 0 || hi >= g.h) continue;
    const float* x_row = x + (n * g.h + hi) * g.w * g.cin;
    for (int64_t j = 0; j < g.kw; ++j) {
      for (int64_t group = group_begin; group < group_end; ++group) {
        for (int64_t c0 = group * g.cout_g; c0 < (group + 1) * g.cout_g; c0 += N) {
          int64_t ci0 = 0;
          for (; ci0 + 8 <= g.cin_g; ci0 += 8) {
            BroadcastGradTile<8, N>(g, x_row, dy_row, dw, i, j, group, ci0, c0);
          }
          for (; ci0 + 4 <= g.cin_g; ci0 += 4) {
            BroadcastGradTile<4, N>(g, x_row, dy_row, dw, i, j, group, ci0, c0);
          }
          for (; ci0 < g.cin_g; ++ci0) {
            BroadcastGradTile<1, N>(g, x_row, dy_row, dw, i, j, group, ci0, c0);
          }
        }
      }
    }
  }
}

// Rows [row_begin, row_end)'s contribution to groups [group_begin, group_end).
SENET_VECTORIZED void BroadcastWeightGrad(const Geometry& g, const float* x, const float* dy,
                                          float* dw, int64_t row_begin, int64_t row_end,
                                          int64_t group_begin, int64_t group_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* dy_row = dy + r * g.wo * g.cout;
    if (g.lanes() == 16) {
      BroadcastWeightGradRowN<16>(g, x, dy_row, dw, r / g.ho, r % g.ho, group_begin, group_end);
    } else {
      BroadcastWeightGradRowN<8>(g, x, dy_row, dw, r / g.ho, r % g.ho, group_begin, group_end);
    }
  }
}

// dw[i, j, ci, c0 + k] += sum over the row's pixels of expanded[p + j, ci, c] * dy[p, c].
SENET_VECTORIZED void WeightGradRow(const Geometry& g, ExpandedRows& expanded, const float* dy,
                                    float* dw, int64_t n, int64_t ho) {
  const float* dy_row = dy + (n * g.ho + ho) * g.wo * g.cout;
  for (int64_t i = 0; i < g.kh; ++i) {
    const float* row = expanded.Get(n, ho - g.pad_top + i);
    if (row == nullptr) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      for (int64_t ci = 0; ci < g.cin_g; ++ci) {
        float* acc = dw + ((i * g.kw + j) * g.cin_g + ci) * g.cout;
        for (int64_t c0 = 0; c0 < g.cout; c0 += kLanes) {
          const int64_t lanes = std::min(kLanes, g.cout - c0);
          float sum[kLanes] = {};
          for (int64_t p = 0; p < g.wo; ++p) {
            const float* xv = row + ((p + j) * g.cin_g + ci) * g.cout + c0;
            const float* gv = dy_row + p * g.cout + c0;
            if (lanes == kLanes) {
              for (int64_t k = 0; k < kLanes; ++k) sum[k] += xv[k] * gv[k];
            } else {
              for (int64_t k = 0; k < lanes; ++k) sum[k] += xv[k] * gv[k];
            }
          }
          for (int64_t k = 0; k < lanes; ++k) acc[c0 + k] += sum[k];
        }
      }
    }
  }
}

bool Describe(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> yd,
              ffi::Span<const int64_t> wd, int64_t pad_top, int64_t pad_left, Geometry* g) {
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4 || xd[0] != yd[0] || wd[3] != yd[3] ||
      wd[2] <= 0 || xd[3] % wd[2] != 0) {
    return false;
  }
  const int64_t groups = xd[3] / wd[2];
  if (yd[3] % groups != 0 || pad_top < 0 || pad_left < 0) return false;
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], wd[2],
                yd[3] / groups, pad_top, pad_left};
  return true;
}

const char kShapeError[] =
    "senet_grouped_conv: expected x (N,H,W,Cin), y (N,Ho,Wo,Cout), w (KH,KW,Cin/G,Cout)";

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (!Describe(x.dimensions(), y->dimensions(), w.dimensions(), pad_top, pad_left, &g)) {
    return ffi::Error::InvalidArgument(kShapeError);
  }
  const int64_t rows = g.n * g.ho;
  senet::ParallelFor(pool, kChunks, [&](int64_t chunk) {
    ExpandedRows expanded(g, x.typed_data());
    for (int64_t r = rows * chunk / kChunks; r < rows * (chunk + 1) / kChunks; ++r) {
      ForwardRow(g, expanded, w.typed_data(), y->typed_data(), r / g.ho, r % g.ho);
    }
  });
  return ffi::Error::Success();
}

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (!Describe(x.dimensions(), dy.dimensions(), dw->dimensions(), pad_top, pad_left, &g)) {
    return ffi::Error::InvalidArgument(kShapeError);
  }
  const int64_t rows = g.n * g.ho, size = g.kh * g.kw * g.cin_g * g.cout;
  const int64_t groups = g.cout / g.cout_g;
  if (g.broadcast() && size > kMaxPartialFloats) {
    // Chunks own disjoint groups and write the result directly: no partial sums, which for
    // 1024 channels would be 1.2 MB each. (Slower where partials are small: strided reads.)
    float* out = dw->typed_data();
    std::fill(out, out + size, 0.0f);
    senet::ParallelFor(pool, kChunks, [&](int64_t chunk) {
      BroadcastWeightGrad(g, x.typed_data(), dy.typed_data(), out, 0, rows,
                          groups * chunk / kChunks, groups * (chunk + 1) / kChunks);
    });
    return ffi::Error::Success();
  }
  senet::ChunkedSum(pool, kChunks, size, dw->typed_data(), [&](int64_t chunk, float* acc) {
    const int64_t begin = rows * chunk / kChunks, end = rows * (chunk + 1) / kChunks;
    if (g.broadcast()) {
      return BroadcastWeightGrad(g, x.typed_data(), dy.typed_data(), acc, begin, end, 0, groups);
    }
    ExpandedRows expanded(g, x.typed_data());
    for (int64_t r = begin; r < end; ++r) {
      WeightGradRow(g, expanded, dy.typed_data(), acc, r / g.ho, r % g.ho);
    }
  });
  return ffi::Error::Success();
}

auto GroupedConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

}  // namespace

// Both handlers take (x, w or dy) and return one buffer, with the same attributes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(SenetGroupedConvForward, Forward, GroupedConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SenetGroupedConvWeightGrad, WeightGrad, GroupedConvBinding());
