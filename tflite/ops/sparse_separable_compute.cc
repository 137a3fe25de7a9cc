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

// f - 0 is f for every f, so this compiles to one broadcast (Vec{} + f
// keeps an add, for -0).
inline Vec Broadcast(float f) { return f - Vec{}; }

// The first `count` floats at p (all lanes when count >= kLanes), 0 after.
inline Vec LoadFirst(const float* p, int64_t count) {
  if (count >= kLanes) return Load(p);
  Vec v = {};
  std::memcpy(&v, p, static_cast<std::size_t>(count) * sizeof(float));
  return v;
}

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

// Four rows of four floats into their four columns.
inline void Transpose4x4(Vec4 (&m)[4]) {
  const Vec4 ab_lo = __builtin_shufflevector(m[0], m[1], 0, 4, 1, 5);
  const Vec4 ab_hi = __builtin_shufflevector(m[0], m[1], 2, 6, 3, 7);
  const Vec4 ef_lo = __builtin_shufflevector(m[2], m[3], 0, 4, 1, 5);
  const Vec4 ef_hi = __builtin_shufflevector(m[2], m[3], 2, 6, 3, 7);
  m[0] = __builtin_shufflevector(ab_lo, ef_lo, 0, 1, 4, 5);
  m[1] = __builtin_shufflevector(ab_lo, ef_lo, 2, 3, 6, 7);
  m[2] = __builtin_shufflevector(ab_hi, ef_hi, 0, 1, 4, 5);
  m[3] = __builtin_shufflevector(ab_hi, ef_hi, 2, 3, 6, 7);
}

// out[c * out_stride + r] = t[r * t_stride + c] for r < rows, c < cols, in
// 4x4 blocks (depthwise tiles into D, and output tiles into NHWC).
void Transpose(const float* t, int64_t t_stride, int64_t rows, int64_t cols, float* out,
               int64_t out_stride) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      Vec4 m[4];
      for (int i = 0; i < 4; ++i) std::memcpy(&m[i], t + (r + i) * t_stride + c, sizeof(Vec4));
      Transpose4x4(m);
      for (int i = 0; i < 4; ++i) std::memcpy(out + (c + i) * out_stride + r, &m[i], sizeof(Vec4));
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

// dst[u] = src[2 * u] for u < n: pairs of vectors split into their even
// lanes, reading no further than src[2 * n - 2]; one by one at the end.
template <std::size_t... I>
inline Vec EvenLanes(const Vec& a, const Vec& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}
inline void CopyEven(const float* src, float* dst, int64_t n) {
  int64_t u = 0;
  for (; u + kLanes < n; u += kLanes) {
    const Vec even = EvenLanes(Load(src + 2 * u), Load(src + 2 * u + kLanes),
                               std::make_index_sequence<kLanes>());
    std::memcpy(dst + u, &even, sizeof(even));
  }
  for (; u < n; ++u) dst[u] = src[2 * u];
}

// Copies channels [c0, c0 + count) of batch item x (chw), as a band of
// output rows from y0 on reads them, into zero-padded planes: phase q, plane
// row r, column u holds x at row y0 * s + r - pad_top and column u * s + q -
// pad_left (0 outside the image), so tap (i, j) of the band's output (y, x)
// is phase j % s, row y * s + i, column x + j / s.
void PadPlanes(const SepProblem& p, const SepScratchLayout& l, const float* x, int64_t y0,
               int64_t c0, int64_t count, float* planes) {
  const int64_t s = p.options.stride, h = p.height, w = p.width;
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
      for (int64_t ch = 0; ch < count; ++ch) {
        const float* src = x + ((c0 + ch) * h + iy) * w + first;
        float* dst = row + ch * l.plane_floats + begin;
        if (s == 1) {
          CopyRow(src, dst, end - begin);
        } else {
          CopyEven(src, dst, end - begin);
        }
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
  float* planes;  // kSepPlaneGroup padded planes (chw input), or the NHWC tile
  float* tile;    // the pointwise sums (and NHWC output) tile
};

// ---- depthwise from NHWC input -------------------------------------------
//
// In NHWC a pixel's channels are together, so kLanes channels of a tap are
// one vector load. Each output row is computed four pixels at a time, all
// channels of those pixels before the next four, and stored into D's columns
// in 4x4 blocks from registers; no padded planes (taps outside the image are
// left out). Pixels near the image's sides and channels past the last full
// vector go through a small tile [pixels][Cin].

// act(bias + taps) of output pixel x, channels [c, c + count), each tap
// checked against the image's columns: `rows` are the n input rows inside
// the image and `taps` their weights ([K * K][Cin] from the first of them).
template <int K, int S>
Vec NhwcChecked(const SepProblem& p, const float* const* rows, int64_t n, const float* taps,
                const Clamp& act, int64_t x, int64_t c, int64_t count) {
  const int64_t cin = p.options.in_channels;
  Vec acc = LoadFirst(p.dw_bias + c, count);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < K; ++j) {
      const int64_t ix = x * S - p.pad_left + j;
      if (ix < 0 || ix >= p.width) continue;
      acc += LoadFirst(taps + (i * K + j) * cin + c, count) *
             LoadFirst(rows[i] + ix * cin + c, count);
    }
  }
  return act(acc);
}

static_assert(kSepNhwcPixels == 4, "NHWC input is computed in 4x4 blocks of pixels and channels");

// Four output pixels from the one whose tap column 0 is input column ix,
// all their taps inside the image, channels [c, c + kLanes), from N input
// rows, into d (at the first pixel's position).
template <int K, int S, int N>
inline void NhwcPixels(const SepProblem& p, const float* const* rows, const float* taps,
                       const Clamp& act, int64_t ix, int64_t c, float* d, int64_t d_stride) {
  const int64_t cin = p.options.in_channels;
  Vec acc[4];
  for (Vec& a : acc) a = Load(p.dw_bias + c);
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < K; ++j) {
      const Vec w = Load(taps + (n * K + j) * cin + c);
      for (int q = 0; q < 4; ++q) acc[q] += w * Load(rows[n] + (ix + q * S + j) * cin + c);
    }
  }
  float result[4][kLanes];
  for (int q = 0; q < 4; ++q) {
    const Vec v = act(acc[q]);
    std::memcpy(result[q], &v, sizeof(v));
  }
  for (int lane = 0; lane < kLanes; lane += 4) {
    Vec4 block[4];
    for (int q = 0; q < 4; ++q) std::memcpy(&block[q], result[q] + lane, sizeof(Vec4));
    Transpose4x4(block);
    for (int i = 0; i < 4; ++i) std::memcpy(d + (c + lane + i) * d_stride, &block[i], sizeof(Vec4));
  }
}

// One output row into d (its first position), from its n (<= N) input rows
// inside the image; `tile` holds kSepNhwcPixels (4) * Cin floats.
template <int K, int S, int N = K>
void DepthwiseRowNhwc(const SepProblem& p, int64_t n, const float* const* rows, const float* taps,
                      const Clamp& act, float* tile, float* d, int64_t d_stride) {
  if constexpr (N > 1) {
    if (n < N) return DepthwiseRowNhwc<K, S, N - 1>(p, n, rows, taps, act, tile, d, d_stride);
  }
  const int64_t cin = p.options.in_channels, wo = p.out_width, full = cin / kLanes * kLanes;
  // Output columns whose taps are all inside the image.
  const int64_t x_lo = std::min(wo, (p.pad_left + S - 1) / S);
  const int64_t x_hi = std::max(x_lo, std::min(wo, FloorDiv(p.width - K + p.pad_left, S) + 1));
  for (int64_t x = 0; x < wo;) {
    const bool inside = x >= x_lo && x + 4 <= x_hi;
    const int64_t pixels = inside ? 4 : 1, first = inside ? full : 0;
    for (int64_t c = 0; c < first; c += kLanes) {
      NhwcPixels<K, S, N>(p, rows, taps, act, x * S - p.pad_left, c, d + x, d_stride);
    }
    if (first < cin) {
      for (int64_t q = 0; q < pixels; ++q) {
        for (int64_t c = first; c < cin; c += kLanes) {
          const Vec v = NhwcChecked<K, S>(p, rows, N, taps, act, x + q, c, cin - c);
          StoreFirst(tile + q * cin + c, v, cin - c);
        }
      }
      Transpose(tile + first, cin, pixels, cin - first, d + first * d_stride + x, d_stride);
    }
    x += pixels;
  }
}

// Output rows [y0, y1) of the band into d.
template <int K, int S>
void DepthwiseRowsNhwc(const SepProblem& p, const Band& band, int64_t y0, int64_t y1,
                       const Clamp& act, float* tile, float* d, int64_t d_stride) {
  const int64_t cin = p.options.in_channels;
  for (int64_t y = y0; y < y1; ++y) {
    // Tap rows [i0, i1) are inside the image (at least one: the padding
    // never exceeds the kernel).
    const int64_t iy = (band.y0 + y) * S - p.pad_top;
    const int64_t i0 = std::max<int64_t>(0, -iy), i1 = std::min<int64_t>(K, p.height - iy);
    const float* rows[K];
    for (int64_t i = i0; i < i1; ++i) rows[i - i0] = band.x + (iy + i) * p.width * cin;
    DepthwiseRowNhwc<K, S>(p, i1 - i0, rows, p.dw_taps + i0 * K * cin, act, tile,
                           d + y * p.out_width, d_stride);
  }
}

using RowsNhwcFn = void (*)(const SepProblem&, const Band&, int64_t, int64_t, const Clamp&,
                            float*, float*, int64_t);

RowsNhwcFn RowsNhwcFor(int64_t k, int64_t s) {
  if (k == 3) return s == 1 ? DepthwiseRowsNhwc<3, 1> : DepthwiseRowsNhwc<3, 2>;
  return s == 1 ? DepthwiseRowsNhwc<5, 1> : DepthwiseRowsNhwc<5, 2>;
}

// The band's depthwise stage into d: this part's share of output rows (nhwc
// input, through the planes' room as its tile) or of channel groups (chw).
void DepthwiseBand(const SepProblem& p, const SepScratchLayout& l, const Band& band, float* d,
                   float* planes, int part, int parts) {
  const int64_t cin = p.options.in_channels, kk = p.options.kernel_size * p.options.kernel_size;
  const Clamp act = ClampOf(p.options.dw_activation);
  if (p.options.input_layout == SepLayout::kNhwc) {
    RowsNhwcFor(p.options.kernel_size, p.options.stride)(
        p, band, ShareStart(band.rows, part, parts), ShareStart(band.rows, part + 1, parts), act,
        planes, d, l.d_stride);
    return;
  }
  const int64_t groups = (cin + kSepPlaneGroup - 1) / kSepPlaneGroup;
  const DepthwiseFn plane_fn = DepthwiseFor(p.options.kernel_size, p.options.stride);
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

// Chunks of input channels a pass over a tile sums (256 channels): with
// more, the tile's rows of D no longer stay in cache between the output
// rows that read them (passes measured about 10% faster at 512 and 1024).
constexpr int64_t kChunksPerPass = 4;

// One pass over a tile of positions: which chunks it sums and where D is.
struct TilePass {
  const float* d;  // D at the tile's first position
  int64_t d_stride;
  int64_t count;   // positions in the tile
  bool first, last;
  const Clamp* act;
};

// What a pass adds for the R channels of a block row: its blocks [k, end)
// (those of the pass's chunks) onto the bias (first pass) or the sums so far
// in `sums` (R rows `tp` apart); the last pass stores act(sums) to `out`
// (rows `out_stride` apart), the others the sums back to `sums`.
template <int R, int V>
void PointwiseTile(const SepPointwise& pw, int32_t k, int32_t end, const TilePass& pass,
                   const float* bias, float* sums, int64_t tp, float* out, int64_t out_stride) {
  Vec acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      acc[r][v] = pass.first ? Broadcast(bias[r]) : Load(sums + r * tp + v * kLanes);
    }
  }
  for (; k < end; ++k) {
    const float* src = pass.d + pw.cols[k] * pass.d_stride;
    Vec dv[V];
    for (int v = 0; v < V; ++v) dv[v] = Load(src + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec w = Broadcast(pw.values[k * R + r]);
      for (int v = 0; v < V; ++v) acc[r][v] += w * dv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      if (pass.last) {
        StoreFirst(out + r * out_stride + v * kLanes, (*pass.act)(acc[r][v]),
                   pass.count - v * kLanes);
      } else {
        std::memcpy(sums + r * tp + v * kLanes, &acc[r][v], sizeof(Vec));
      }
    }
  }
}

// PointwiseTile with the fewest vectors that cover the tile's positions.
template <int R, int V = TileVectors<R>()>
void PointwiseRow(const SepPointwise& pw, int32_t k, int32_t end, const TilePass& pass,
                  const float* bias, float* sums, int64_t tp, float* out, int64_t out_stride) {
  if constexpr (V > 1) {
    if (pass.count <= (V - 1) * kLanes) {
      return PointwiseRow<R, V - 1>(pw, k, end, pass, bias, sums, tp, out, out_stride);
    }
  }
  PointwiseTile<R, V>(pw, k, end, pass, bias, sums, tp, out, out_stride);
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
// Each tile is summed in passes over chunks of input channels, the sums
// between passes in the per-thread tile (which also holds NHWC output
// before its transpose).
template <int R>
void PointwiseBand(const SepProblem& p, const SepScratchLayout& l, const Band& band,
                   const float* d, float* tile, int part, int parts) {
  const SepPointwise& pw = p.pw;
  const int64_t positions = band.rows * p.out_width, first = band.y0 * p.out_width;
  const int64_t all_positions = p.out_height * p.out_width, cout = p.options.out_channels;
  const int64_t tp = TilePositions<R>(), tiles = (positions + tp - 1) / tp;
  const int64_t chunks = pw.chunks;
  const bool by_tiles = tiles >= parts;
  const std::pair<int64_t, int64_t> rows = RowShare(pw, by_tiles ? 0 : part, by_tiles ? 1 : parts);
  const int64_t t0 = by_tiles ? ShareStart(tiles, part, parts) : 0;
  const int64_t t1 = by_tiles ? ShareStart(tiles, part + 1, parts) : tiles;
  const bool chw = p.options.output_layout == SepLayout::kChw;
  const Clamp act = ClampOf(p.options.pw_activation);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t p0 = t * tp, count = std::min(tp, positions - p0);
    for (int64_t c0 = 0; c0 < chunks; c0 += kChunksPerPass) {
      const int64_t c1 = std::min(chunks, c0 + kChunksPerPass);
      const TilePass pass{d + p0, l.d_stride, count, c0 == 0, c1 == chunks, &act};
      for (int64_t row = rows.first; row < rows.second; ++row) {
        const int32_t* ptr = pw.chunk_ptr.data() + row * (chunks + 1);
        float* sums = tile + row * R * tp;
        float* dst = chw ? band.out + row * R * all_positions + first + p0 : sums;
        PointwiseRow<R>(pw, ptr[c0], ptr[c1], pass, p.pw_bias + row * R, sums, tp, dst,
                        chw ? all_positions : tp);
      }
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
  const std::uintptr_t align = kSepAlignFloats * sizeof(float);
  float* const aligned = reinterpret_cast<float*>(
      (reinterpret_cast<std::uintptr_t>(scratch) + align - 1) / align * align);
  auto part_scratch = [&](int part) {
    float* base = aligned + part * l.part_floats;
    return PartScratch{base, base + p.options.in_channels * l.d_stride, base + l.tile_offset};
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
