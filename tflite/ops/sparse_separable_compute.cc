// The SparseSeparableConv computation (kernel: sparse_separable_kernel.cc),
// built once per instruction set: EDGEPIPE_SEPARABLE_ISA names the namespace
// of the variant (baseline when unset; on x86-64 avx2 with -mavx2 -mfma and
// avx512 with -mavx512f as well).
// Written in the compilers' portable vector extension, no intrinsics.

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "tflite/ops/sparse_separable_compute.h"

#ifndef EDGEPIPE_SEPARABLE_ISA
#define EDGEPIPE_SEPARABLE_ISA baseline
#endif

namespace edgepipe {
namespace ops {
namespace EDGEPIPE_SEPARABLE_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;  // SSE2, NEON
#endif
static_assert(kLanes <= kSepMaxLanes, "the scratch layout assumes at most 16 lanes");
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Stores the first `count` lanes of v (all when count >= kLanes).
inline void StoreFirst(float* p, const Vec& v, int64_t count) {
  if (count >= kLanes) {
    std::memcpy(p, &v, sizeof(v));
  } else if (count > 0) {
    std::memcpy(p, &v, static_cast<std::size_t>(count) * sizeof(float));
  }
}

inline Vec Broadcast(float f) { return Vec{} + f; }

// An activation as bounds; NaN passes (as the reference's maximum/minimum).
struct Clamp {
  Vec lo, hi;
  Vec operator()(Vec v) const {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
  }
};

Clamp ClampOf(SepActivation activation) {
  const float inf = std::numeric_limits<float>::infinity();
  const float lo = activation == SepActivation::kNone ? -inf : 0.0f;
  const float hi = activation == SepActivation::kRelu6 ? 6.0f : inf;
  return {Broadcast(lo), Broadcast(hi)};
}

// Where `part` of `parts` equal shares of [0, n) starts.
inline int64_t ShareStart(int64_t n, int part, int parts) { return n * part / parts; }

// a / b rounded down, for b > 0.
inline int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Runs work(part, parts) on every thread of the team, or once here.
template <typename Work>
void OnTeam(WorkerTeam* team, const Work& work) {
  if (!team) return work(0, 1);
  const int parts = team->size();
  team->Run([&](int part) { work(part, parts); });
}

// ---- depthwise ---------------------------------------------------------

// out[c * out_stride + r] = t[r * t_stride + c] for r < rows, c < cols, in
// 4x4 blocks (channels-last pixels into planes, and output tiles into NHWC).
void Transpose(const float* t, int64_t t_stride, int64_t rows, int64_t cols, float* out,
               int64_t out_stride) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      Vec4 a, b, e, f;
      std::memcpy(&a, t + r * t_stride + c, sizeof(a));
      std::memcpy(&b, t + (r + 1) * t_stride + c, sizeof(b));
      std::memcpy(&e, t + (r + 2) * t_stride + c, sizeof(e));
      std::memcpy(&f, t + (r + 3) * t_stride + c, sizeof(f));
      const Vec4 ab_lo = __builtin_shufflevector(a, b, 0, 4, 1, 5);
      const Vec4 ab_hi = __builtin_shufflevector(a, b, 2, 6, 3, 7);
      const Vec4 ef_lo = __builtin_shufflevector(e, f, 0, 4, 1, 5);
      const Vec4 ef_hi = __builtin_shufflevector(e, f, 2, 6, 3, 7);
      const Vec4 columns[4] = {__builtin_shufflevector(ab_lo, ef_lo, 0, 1, 4, 5),
                               __builtin_shufflevector(ab_lo, ef_lo, 2, 3, 6, 7),
                               __builtin_shufflevector(ab_hi, ef_hi, 0, 1, 4, 5),
                               __builtin_shufflevector(ab_hi, ef_hi, 2, 3, 6, 7)};
      for (int i = 0; i < 4; ++i) std::memcpy(out + (c + i) * out_stride + r, &columns[i], 16);
    }
    for (; c < cols; ++c) {
      for (int64_t i = r; i < r + 4; ++i) out[c * out_stride + i] = t[i * t_stride + c];
    }
  }
  for (; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[c * out_stride + r] = t[r * t_stride + c];
  }
}

// Zeroes a row of n >= kLanes floats outside [begin, end) (all of it when
// begin == end), with vector stores that may also cover the interior, which
// is written after: rows are a few vectors, where memset calls cost more.
inline void ZeroBorders(float* dst, int64_t n, int64_t begin, int64_t end) {
  const Vec zero = {};
  const bool all = begin == end;
  if (begin > 0 || all) std::memcpy(dst, &zero, sizeof(zero));  // begin <= 2 < kLanes
  for (int64_t i = all ? 0 : end; i + kLanes < n; i += kLanes) {
    std::memcpy(dst + i, &zero, sizeof(zero));
  }
  if (end < n || all) std::memcpy(dst + n - kLanes, &zero, sizeof(zero));
}

// Copies n floats with vector moves (the last one ending at n), or one by
// one when there are fewer than a vector.
inline void CopyRow(const float* src, float* dst, int64_t n) {
  if (n < kLanes) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
    return;
  }
  for (int64_t i = 0; i + kLanes < n; i += kLanes) std::memcpy(dst + i, src + i, sizeof(Vec));
  std::memcpy(dst + n - kLanes, src + n - kLanes, sizeof(Vec));
}

// Copies channels [c0, c0 + count) of batch item x, as a band of output rows
// from y0 on reads them, into zero-padded planes: phase q, plane row r,
// column u holds x at row y0 * s + r - pad_top and column u * s + q -
// pad_left (0 outside the image), so tap (i, j) of the band's output (y, x)
// is phase j % s, row y * s + i, column x + j / s.
void PadPlanes(const SepProblem& p, const SepScratchLayout& l, const float* x, int64_t y0,
               int64_t c0, int64_t count, float* planes) {
  const int64_t s = p.options.stride, h = p.height, w = p.width, cin = p.options.in_channels;
  const bool chw = p.options.input_layout == SepLayout::kChw;
  for (int64_t q = 0; q < s; ++q) {
    // Columns u whose input column u * s + q - pad_left is in the image.
    const int64_t u0 = std::min(l.plane_cols, -FloorDiv(q - p.pad_left, s));
    const int64_t last = FloorDiv(w - 1 + p.pad_left - q, s);
    const int64_t u1 = std::max(u0, std::min(l.plane_cols, last + 1));
    const int64_t first = u0 * s + q - p.pad_left;  // input column of u0
    for (int64_t r = 0; r < l.plane_rows; ++r) {
      const int64_t iy = y0 * s + r - p.pad_top;
      const bool inside = iy >= 0 && iy < h;
      const int64_t begin = inside ? u0 : l.plane_cols, end = inside ? u1 : l.plane_cols;
      float* row = planes + (q * l.plane_rows + r) * l.plane_cols;
      for (int64_t ch = 0; ch < count; ++ch) {
        ZeroBorders(row + ch * l.plane_floats, l.plane_cols, begin, end);
      }
      if (begin == end) continue;
      if (!chw) {
        Transpose(x + (iy * w + first) * cin + c0, s * cin, end - begin, count, row + begin,
                  l.plane_floats);
        continue;
      }
      for (int64_t ch = 0; ch < count; ++ch) {
        const float* src = x + ((c0 + ch) * h + iy) * w + first;
        float* dst = row + ch * l.plane_floats + begin;
        if (s == 1) {
          CopyRow(src, dst, end - begin);
          continue;
        }
        for (int64_t u = 0; u < end - begin; ++u) dst[u] = src[u * s];
      }
    }
  }
}

// N vectors of one depthwise output row from x0 on, into out: N independent
// chains of K * K multiply-adds, so they overlap instead of waiting.
template <int K, int S, int N>
inline void DepthwiseVectors(const float* plane, const SepScratchLayout& l, const Vec (&w)[K * K],
                             const Vec& bias, const Clamp& act, int64_t y, int64_t x0, float* out) {
  Vec acc[N];
  for (int n = 0; n < N; ++n) acc[n] = bias;
  for (int i = 0; i < K; ++i) {
    for (int j = 0; j < K; ++j) {
      const float* tap = plane + ((j % S) * l.plane_rows + y * S + i) * l.plane_cols + x0 + j / S;
      for (int n = 0; n < N; ++n) acc[n] += w[i * K + j] * Load(tap + n * kLanes);
    }
  }
  for (int n = 0; n < N; ++n) {
    const Vec result = act(acc[n]);
    std::memcpy(out + n * kLanes, &result, sizeof(result));
  }
}

// One channel's depthwise output rows into d (Ho * Wo, row after row). A
// row's last vector may write past its end: into the next row, computed
// after it, or into D's padding.
template <int K, int S>
void DepthwisePlane(const float* plane, const SepScratchLayout& l, const float* weights,
                    float bias, const Clamp& act, int64_t ho, int64_t wo, float* d) {
  constexpr int kBlock = 4;  // vectors per block of a row
  Vec w[K * K];
  for (int t = 0; t < K * K; ++t) w[t] = Broadcast(weights[t]);
  const Vec b = Broadcast(bias);
  const int64_t vectors = (wo + kLanes - 1) / kLanes;
  for (int64_t y = 0; y < ho; ++y) {
    int64_t v = 0;
    for (; v + kBlock <= vectors; v += kBlock) {
      DepthwiseVectors<K, S, kBlock>(plane, l, w, b, act, y, v * kLanes, d + y * wo + v * kLanes);
    }
    float* out = d + y * wo + v * kLanes;
    switch (vectors - v) {  // the rest of the row, still as independent chains
      case 3: DepthwiseVectors<K, S, 3>(plane, l, w, b, act, y, v * kLanes, out); break;
      case 2: DepthwiseVectors<K, S, 2>(plane, l, w, b, act, y, v * kLanes, out); break;
      case 1: DepthwiseVectors<K, S, 1>(plane, l, w, b, act, y, v * kLanes, out); break;
      default: break;
    }
  }
}

using DepthwiseFn = void (*)(const float*, const SepScratchLayout&, const float*, float,
                             const Clamp&, int64_t, int64_t, float*);

DepthwiseFn DepthwiseFor(int64_t k, int64_t s) {
  if (k == 3) return s == 1 ? DepthwisePlane<3, 1> : DepthwisePlane<3, 2>;
  return s == 1 ? DepthwisePlane<5, 1> : DepthwisePlane<5, 2>;
}

// Output rows [y0, y0 + rows) of one batch item, computed together so that
// their depthwise output stays in cache for the pointwise stage.
struct Band {
  const float* x;  // the batch item's input
  float* out;      // the batch item's output
  int64_t y0;
  int64_t rows;
};

// One thread's scratch (SparseSeparableScratch's per-part layout).
struct PartScratch {
  float* d;       // the band's depthwise output [Cin][d_stride]
  float* planes;  // kSepPlaneGroup padded planes
  float* tile;    // the NHWC output tile
};

// The band's depthwise stage into d: this part's share of channel groups.
void DepthwiseBand(const SepProblem& p, const SepScratchLayout& l, const Band& band, float* d,
                   float* planes, int part, int parts) {
  const int64_t cin = p.options.in_channels, kk = p.options.kernel_size * p.options.kernel_size;
  const int64_t groups = (cin + kSepPlaneGroup - 1) / kSepPlaneGroup;
  const DepthwiseFn plane_fn = DepthwiseFor(p.options.kernel_size, p.options.stride);
  const Clamp act = ClampOf(p.options.dw_activation);
  for (int64_t g = ShareStart(groups, part, parts); g < ShareStart(groups, part + 1, parts); ++g) {
    const int64_t c0 = g * kSepPlaneGroup, count = std::min(kSepPlaneGroup, cin - c0);
    PadPlanes(p, l, band.x, band.y0, c0, count, planes);
    for (int64_t ch = 0; ch < count; ++ch) {
      const int64_t c = c0 + ch;
      plane_fn(planes + ch * l.plane_floats, l, p.dw_weights.data() + c * kk, p.dw_bias[c], act,
               band.rows, p.out_width, d + c * l.d_stride);
    }
  }
}

// ---- pointwise ---------------------------------------------------------

// Positions per pointwise tile and its vectors: R rows of channels times V
// vectors of sums stay in registers (12 for four rows; for one row 8, or 4
// of 16 lanes, which measured faster than 8 of them).
template <int R>
constexpr int TileVectors() { return R == 4 ? 3 : kLanes == 16 ? 4 : 8; }
template <int R>
constexpr int64_t TilePositions() { return TileVectors<R>() * kLanes; }
static_assert(TilePositions<1>() <= kSepMaxTile && TilePositions<4>() <= kSepMaxTile,
              "tiles must fit the scratch layout");

// out[r][0:count] = act(bias[r] + sum_k values[k][r] * D[cols[k]][p0:p0+count])
// for the R channels of block row `row`; out rows `out_stride` apart.
template <int R, int V>
void PointwiseTile(const SepPointwise& pw, int64_t row, const float* d, int64_t d_stride,
                   int64_t p0, int64_t count, const float* bias, const Clamp& act, float* out,
                   int64_t out_stride) {
  Vec acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = Broadcast(bias[r]);
  }
  for (int32_t k = pw.row_ptr[row]; k < pw.row_ptr[row + 1]; ++k) {
    const float* src = d + pw.cols[k] * d_stride + p0;
    Vec dv[V];
    for (int v = 0; v < V; ++v) dv[v] = Load(src + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec w = Broadcast(pw.values[k * R + r]);
      for (int v = 0; v < V; ++v) acc[r][v] += w * dv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      StoreFirst(out + r * out_stride + v * kLanes, act(acc[r][v]), count - v * kLanes);
    }
  }
}

// PointwiseTile with the fewest vectors that cover `count` positions.
template <int R, int V = TileVectors<R>()>
void PointwiseRow(const SepPointwise& pw, int64_t row, const float* d, int64_t d_stride,
                  int64_t p0, int64_t count, const float* bias, const Clamp& act, float* out,
                  int64_t out_stride) {
  if constexpr (V > 1) {
    if (count <= (V - 1) * kLanes) {
      return PointwiseRow<R, V - 1>(pw, row, d, d_stride, p0, count, bias, act, out, out_stride);
    }
  }
  PointwiseTile<R, V>(pw, row, d, d_stride, p0, count, bias, act, out, out_stride);
}

// [begin, end) of block rows for `part` of `parts`: shares of equal
// nonzeros.
std::pair<int64_t, int64_t> RowShare(const SepPointwise& pw, int part, int parts) {
  const int64_t rows = static_cast<int64_t>(pw.row_ptr.size()) - 1;
  auto start = [&](int share) -> int64_t {
    if (share == 0 || share == parts) return share == 0 ? 0 : rows;
    const int64_t target = int64_t{pw.row_ptr[rows]} * share / parts;
    return std::lower_bound(pw.row_ptr.begin(), pw.row_ptr.end() - 1, target) - pw.row_ptr.begin();
  };
  return {start(part), start(part + 1)};
}

// The band's pointwise stage from d: this part's share of tiles of
// positions when there are enough to go round, else of rows of channels.
template <int R>
void PointwiseBand(const SepProblem& p, const SepScratchLayout& l, const Band& band,
                   const float* d, float* tile, int part, int parts) {
  const SepPointwise& pw = p.pw;
  const int64_t positions = band.rows * p.out_width, first = band.y0 * p.out_width;
  const int64_t all_positions = p.out_height * p.out_width, cout = p.options.out_channels;
  const int64_t tp = TilePositions<R>(), tiles = (positions + tp - 1) / tp;
  const bool by_tiles = tiles >= parts;
  const std::pair<int64_t, int64_t> rows = RowShare(pw, by_tiles ? 0 : part, by_tiles ? 1 : parts);
  const int64_t t0 = by_tiles ? ShareStart(tiles, part, parts) : 0;
  const int64_t t1 = by_tiles ? ShareStart(tiles, part + 1, parts) : tiles;
  const bool chw = p.options.output_layout == SepLayout::kChw;
  const Clamp act = ClampOf(p.options.pw_activation);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t p0 = t * tp, count = std::min(tp, positions - p0);
    for (int64_t row = rows.first; row < rows.second; ++row) {
      float* dst = chw ? band.out + row * R * all_positions + first + p0 : tile + row * R * tp;
      PointwiseRow<R>(pw, row, d, l.d_stride, p0, count, p.pw_bias + row * R, act, dst,
                      chw ? all_positions : tp);
    }
    if (!chw) {
      Transpose(tile + rows.first * R * tp, tp, (rows.second - rows.first) * R, count,
                band.out + (first + p0) * cout + rows.first * R, cout);
    }
  }
}

void Pointwise(const SepProblem& p, const SepScratchLayout& l, const Band& band, const float* d,
               float* tile, int part, int parts) {
  if (p.pw.block == 4) return PointwiseBand<4>(p, l, band, d, tile, part, parts);
  PointwiseBand<1>(p, l, band, d, tile, part, parts);
}

}  // namespace

void ComputeSparseSeparable(const SepProblem& p, const float* x, float* out, float* scratch,
                            WorkerTeam* team) {
  const int parts = team ? team->size() : 1;
  const SepScratchLayout l = SparseSeparableScratch(p, parts);
  auto part_scratch = [&](int part) {
    float* base = scratch + part * l.part_floats;
    const int64_t d_floats = p.options.in_channels * l.d_stride;
    return PartScratch{base, base + d_floats, base + d_floats + kSepPlaneGroup * l.plane_floats};
  };
  const int64_t bands = (p.out_height + l.band_rows - 1) / l.band_rows, items = p.batch * bands;
  auto band_of = [&](int64_t item) {
    const int64_t b = item / bands, y0 = item % bands * l.band_rows;
    return Band{x + b * p.options.in_channels * p.height * p.width,
                out + b * p.options.out_channels * p.out_height * p.out_width, y0,
                std::min(l.band_rows, p.out_height - y0)};
  };
  if (items >= 2 * parts) {
    // Enough bands to go round: each thread computes whole bands alone.
    return OnTeam(team, [&](int part, int n) {
      const PartScratch mine = part_scratch(part);
      const int64_t end = ShareStart(items, part + 1, n);
      for (int64_t item = ShareStart(items, part, n); item < end; ++item) {
        DepthwiseBand(p, l, band_of(item), mine.d, mine.planes, 0, 1);
        Pointwise(p, l, band_of(item), mine.d, mine.tile, 0, 1);
      }
    });
  }
  // Few bands: the team shares each stage of each band, through part 0's d.
  float* shared_d = part_scratch(0).d;
  for (int64_t item = 0; item < items; ++item) {
    const Band band = band_of(item);
    OnTeam(team, [&](int part, int n) {
      DepthwiseBand(p, l, band, shared_d, part_scratch(part).planes, part, n);
    });
    OnTeam(team, [&](int part, int n) {
      Pointwise(p, l, band, shared_d, part_scratch(part).tile, part, n);
    });
  }
}

}  // namespace EDGEPIPE_SEPARABLE_ISA
}  // namespace ops
}  // namespace edgepipe
