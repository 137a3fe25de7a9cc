// The SparseGRU computation (kernel: sparse_gru_kernel.cc), built once per
// instruction set: the file is compiled with EDGEPIPE_GRU_ISA naming the
// namespace of its variant (baseline when unset; avx2 with -mavx2 -mfma on
// x86-64), and ComputeSparseGru picks the variant the CPU runs.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "tflite/ops/sparse_gru_compute.h"

#ifndef EDGEPIPE_GRU_ISA
#define EDGEPIPE_GRU_ISA baseline
#endif

namespace edgepipe {
namespace ops {
namespace EDGEPIPE_GRU_ISA {
namespace {

// A register of floats in the compiler's portable vector extension (GCC and
// Clang), as wide as the target has: 8 with AVX, else 4 (SSE2, NEON). No
// intrinsics, so the same code builds for every ABI.
#if defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof(v)); }

inline Vec Broadcast(float f) { return Vec{} + f; }

// N vectors of weights from w, as floats. For int8 the form matters: GCC 12
// emits one widening load and one conversion per vector (AVX2: vpmovsxbd +
// vcvtdq2ps) only for an element-wise initializer, and vectorizes a plain
// loop into a buffer well only elsewhere (NEON: sxtl + scvtf; with AVX2 that
// loop measured slower than the float32 rows).
template <int N>
inline void LoadAsFloat(const float* w, Vec (&out)[N]) {
  for (int i = 0; i < N; ++i) out[i] = Load(w + kLanes * i);
}

#if defined(__AVX2__)
typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

template <std::size_t... K>
inline Vec WidenInt8(const int8_t* p, std::index_sequence<K...>) {
  const IntVec widened = {p[K]...};
  return __builtin_convertvector(widened, Vec);
}

template <int N>
inline void LoadAsFloat(const int8_t* w, Vec (&out)[N]) {
  for (int i = 0; i < N; ++i) out[i] = WidenInt8(w + kLanes * i, std::make_index_sequence<kLanes>());
}
#else
template <int N>
inline void LoadAsFloat(const int8_t* w, Vec (&out)[N]) {
  float converted[N * kLanes];
  for (int k = 0; k < N * kLanes; ++k) converted[k] = static_cast<float>(w[k]);
  LoadAsFloat(converted, out);
}
#endif

// Dense mat-vec: each row keeps four vectors of partial sums (four
// independent add chains), then takes the rest a vector at a time; the
// caller applies an int8 row's scale once.
template <typename T>
void DenseRows(const T* m, int64_t cols, int64_t rows, const float* v, float* y) {
  constexpr int kChains = 4, kBlock = kChains * kLanes;
  const int64_t blocks_end = cols - cols % kBlock, vectors_end = cols - cols % kLanes;
  for (int64_t row = 0; row < rows; ++row) {
    const T* w = m + row * cols;
    Vec p[kChains] = {};
    for (int64_t j = 0; j < blocks_end; j += kBlock) {
      Vec wv[kChains];
      LoadAsFloat(w + j, wv);
      for (int i = 0; i < kChains; ++i) p[i] += wv[i] * Load(v + j + kLanes * i);
    }
    for (int64_t j = blocks_end; j < vectors_end; j += kLanes) {
      Vec wv[1];
      LoadAsFloat(w + j, wv);
      p[0] += wv[0] * Load(v + j);
    }
    float sum = 0;
    for (int64_t j = vectors_end; j < cols; ++j) sum += static_cast<float>(w[j]) * v[j];
    const Vec total = (p[0] + p[1]) + (p[2] + p[3]);
    for (int i = 0; i < kLanes; ++i) sum += total[i];
    y[row] = sum;
  }
}

// y[i] = (M v)[row_begin + i] for rows [row_begin, row_end) of a dense M,
// int8 or float; int8 rows get their scale.
void DenseMatVec(const GruMatrix& m, int64_t row_begin, int64_t row_end, const float* v,
                 float* y) {
  if (m.scales) {
    DenseRows(static_cast<const int8_t*>(m.values) + row_begin * m.cols, m.cols,
              row_end - row_begin, v, y);
    for (int64_t row = row_begin; row < row_end; ++row) y[row - row_begin] *= m.scales[row];
  } else {
    DenseRows(static_cast<const float*>(m.values) + row_begin * m.cols, m.cols,
              row_end - row_begin, v, y);
  }
}

typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

// Slices [slice_begin, slice_end) of a sliced matrix times v, into y[row]
// (rows as numbered in the matrix). Each group holds one (value, column) of
// each of the slice's eight rows: two vectors of four products per group,
// the column indices four to a 64-bit load; rows of similar length share a
// slice, so the loop runs without per-row exits.
void SlicedMatVec(const SlicedMatrix& m, int64_t slice_begin, int64_t slice_end,
                  const float* v, float* y) {
  static_assert(kSliceRows == 8, "the loop below handles eight rows per slice");
  for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
    const int64_t first = m.slice_ptr[slice], groups = m.slice_ptr[slice + 1] - first;
    const float* values = m.values.data() + first * kSliceRows;
    const uint16_t* cols = m.col_indices.data() + first * kSliceRows;
    Vec4 low = {}, high = {};
    for (int64_t g = 0; g < groups; ++g, values += kSliceRows, cols += kSliceRows) {
      uint64_t c0, c1;
      std::memcpy(&c0, cols, sizeof(c0));
      std::memcpy(&c1, cols + 4, sizeof(c1));
      const Vec4 x0 = {v[c0 & 0xffff], v[(c0 >> 16) & 0xffff], v[(c0 >> 32) & 0xffff],
                       v[c0 >> 48]};
      const Vec4 x1 = {v[c1 & 0xffff], v[(c1 >> 16) & 0xffff], v[(c1 >> 32) & 0xffff],
                       v[c1 >> 48]};
      Vec4 w0, w1;
      std::memcpy(&w0, values, sizeof(w0));
      std::memcpy(&w1, values + 4, sizeof(w1));
      low += w0 * x0;
      high += w1 * x1;
    }
    const int32_t* lane_row = m.lane_row.data() + slice * kSliceRows;
    for (int i = 0; i < 4; ++i) {
      if (lane_row[i] >= 0) y[lane_row[i]] = low[i];
      if (lane_row[i + 4] >= 0) y[lane_row[i + 4]] = high[i];
    }
  }
}

template <typename T>
void FillSliced(const GruMatrix& m, SlicedMatrix* out) {
  const T* values = static_cast<const T*>(m.values);
  const int64_t per_gate = m.rows / 3;
  std::vector<int32_t> order(static_cast<std::size_t>(per_gate));
  auto length = [&m](int32_t row) { return m.row_ptr[row + 1] - m.row_ptr[row]; };
  out->slice_ptr.assign(1, 0);
  for (int64_t gate = 0; gate < 3; ++gate) {
    for (int64_t j = 0; j < per_gate; ++j) order[j] = static_cast<int32_t>(gate * per_gate + j);
    std::stable_sort(order.begin(), order.end(),
                     [&length](int32_t a, int32_t b) { return length(a) > length(b); });
    for (int64_t start = 0; start < per_gate; start += kSliceRows) {
      const int64_t lanes = std::min<int64_t>(kSliceRows, per_gate - start);
      const int64_t groups = length(order[start]);  // the slice's longest row
      const std::size_t base = out->values.size();
      out->values.resize(base + groups * kSliceRows, 0.0f);
      out->col_indices.resize(base + groups * kSliceRows, 0);
      for (int64_t lane = 0; lane < kSliceRows; ++lane) {
        const int32_t row = lane < lanes ? order[start + lane] : -1;
        out->lane_row.push_back(row);
        if (row < 0) continue;
        const float scale = m.scales ? m.scales[row] : 1.0f;
        for (int32_t k = m.row_ptr[row], g = 0; k < m.row_ptr[row + 1]; ++k, ++g) {
          out->values[base + g * kSliceRows + lane] = static_cast<float>(values[k]) * scale;
          out->col_indices[base + g * kSliceRows + lane] = m.col_indices[k];
        }
      }
      out->slice_ptr.push_back(out->slice_ptr.back() + static_cast<int32_t>(groups));
    }
  }
}

// The entry of `cache` that `matches`, else a new one made by `fill` (the
// list starts over beyond kMaxPacks entries).
template <typename Pack, typename Matches, typename Fill>
const Pack& CachedPack(std::vector<Pack>* cache, const Matches& matches, const Fill& fill) {
  for (const Pack& pack : *cache) {
    if (matches(pack)) return pack;
  }
  if (cache->size() >= kMaxPacks) cache->clear();
  cache->emplace_back();
  fill(&cache->back());
  return cache->back();
}

// The sliced form of a checked csr matrix with 3 gates of rows, from the
// scratch's packs when one was made from the same arrays.
const SlicedMatrix& Sliced(const GruMatrix& m, GruScratch* scratch) {
  const int32_t* row_ptr_end = m.row_ptr + m.rows + 1;
  auto matches = [&](const SlicedMatrix& packed) {
    return packed.source_values == m.values && packed.source_col_indices == m.col_indices &&
           packed.source_scales == m.scales && packed.rows == m.rows && packed.cols == m.cols &&
           std::equal(m.row_ptr, row_ptr_end, packed.source_row_ptr.begin(),
                      packed.source_row_ptr.end());
  };
  return CachedPack(&scratch->packs, matches, [&](SlicedMatrix* packed) {
    packed->source_values = m.values;
    packed->source_col_indices = m.col_indices;
    packed->source_scales = m.scales;
    packed->source_row_ptr.assign(m.row_ptr, row_ptr_end);
    packed->rows = m.rows;
    packed->cols = m.cols;
    if (m.scales) {
      FillSliced<int8_t>(m, packed);
    } else {
      FillSliced<float>(m, packed);
    }
  });
}

// The float rows of a small dense int8 R, from the scratch when made from the
// same arrays before.
const FloatRows& AsFloatRows(const GruMatrix& m, GruScratch* scratch) {
  auto matches = [&](const FloatRows& copy) {
    return copy.source_values == m.values && copy.source_scales == m.scales &&
           copy.rows == m.rows && copy.cols == m.cols;
  };
  return CachedPack(&scratch->float_rows, matches, [&](FloatRows* copy) {
    copy->source_values = m.values;
    copy->source_scales = m.scales;
    copy->rows = m.rows;
    copy->cols = m.cols;
    copy->values.resize(static_cast<std::size_t>(m.rows * m.cols));
    const int8_t* values = static_cast<const int8_t*>(m.values);
    for (int64_t row = 0; row < m.rows; ++row) {
      for (int64_t col = 0; col < m.cols; ++col) {
        copy->values[row * m.cols + col] = values[row * m.cols + col] * m.scales[row];
      }
    }
  });
}


// o[s0 + i] = sum_k w[k] * xt[col_k][s0 + i], i < V lanes (col_k = cols[k], or k
// when dense): the V vectors of sums stay in registers while the row streams
// by, V independent chains so no add waits on the one before. An int8 weight
// is converted as it is broadcast, in the shadow of its V multiply-adds, and
// the sums take the row's scale in registers.
template <int V, typename T>
void ProjectRow(const T* w, const uint16_t* cols, int64_t n, const float* xt, int64_t stride,
                int64_t s0, float scale, float* o) {
  Vec acc[V] = {};
  for (int64_t k = 0; k < n; ++k) {
    const Vec v = Broadcast(static_cast<float>(w[k]));
    const float* x = xt + (cols ? cols[k] : k) * stride + s0;
    for (int i = 0; i < V; ++i) acc[i] += v * Load(x + kLanes * i);
  }
  if constexpr (std::is_same<T, int8_t>::value) {
    for (int i = 0; i < V; ++i) acc[i] *= scale;
  }
  for (int i = 0; i < V; ++i) Store(o + s0 + kLanes * i, acc[i]);
}

// out[row][s] = (M x_s)[row] for rows [row_begin, row_end) and all padded
// steps s < stride (a multiple of kStepBlock), from xt = x transposed
// ([cols][stride]): each row is read once for all steps.
template <typename T>
void ProjectRows(const GruMatrix& m, int64_t row_begin, int64_t row_end, const float* xt,
                 int64_t stride, float* out) {
  const T* values = static_cast<const T*>(m.values);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t begin = m.row_ptr ? m.row_ptr[row] : row * m.cols;
    const int64_t n = m.row_ptr ? m.row_ptr[row + 1] - begin : m.cols;
    const T* w = values + begin;
    const uint16_t* cols = m.row_ptr ? m.col_indices + begin : nullptr;
    float* o = out + row * stride;
    const float scale = m.scales ? m.scales[row] : 1.0f;
    int64_t s0 = 0;  // passes of at most 8 vectors: 8 chains, and registers to spare
    for (; stride - s0 >= 8 * kLanes; s0 += 8 * kLanes) {
      ProjectRow<8>(w, cols, n, xt, stride, s0, scale, o);
    }
    switch ((stride - s0) / kLanes) {
      case 7: ProjectRow<7>(w, cols, n, xt, stride, s0, scale, o); break;
      case 6: ProjectRow<6>(w, cols, n, xt, stride, s0, scale, o); break;
      case 5: ProjectRow<5>(w, cols, n, xt, stride, s0, scale, o); break;
      case 4: ProjectRow<4>(w, cols, n, xt, stride, s0, scale, o); break;
      case 3: ProjectRow<3>(w, cols, n, xt, stride, s0, scale, o); break;
      case 2: ProjectRow<2>(w, cols, n, xt, stride, s0, scale, o); break;
      case 1: ProjectRow<1>(w, cols, n, xt, stride, s0, scale, o); break;
      default: break;
    }
  }
}

// exp on an array, vectorizable: Cephes' expf polynomial (about 1 ulp on
// [-87, 88]; arguments are clamped there, NaN stays NaN) and 2^n built from
// the exponent bits.
void ExpInPlace(float* a, int64_t n) {
  // Clamped in a loop of its own (in the main loop the compiler would branch
  // on it); NaN passes through both bounds.
  for (int64_t i = 0; i < n; ++i) a[i] = std::min(std::max(a[i], -87.0f), 88.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float x = a[i];
    constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float shifted = x * 1.44269504088896341f + kMagic;
    const float k = shifted - kMagic;
    const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = (p * r) * r + r + 1.0f;
    uint32_t bits;
    std::memcpy(&bits, &shifted, sizeof(bits));
    bits = (bits + 127u) << 23;  // the integer sits in the low mantissa bits
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    a[i] = e * scale;
  }
}

// a = sigmoid(a) in place.
void SigmoidInPlace(float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = -a[i];
  ExpInPlace(a, n);
  for (int64_t i = 0; i < n; ++i) a[i] = 1.0f / (1.0f + a[i]);
}

// a = tanh(a) in place, as 1 - 2 / (e^{2a} + 1).
void TanhInPlace(float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = 2.0f * a[i];
  ExpInPlace(a, n);
  for (int64_t i = 0; i < n; ++i) a[i] = 1.0f - 2.0f / (a[i] + 1.0f);
}

// Where part `part` of `parts` of [begin, end) starts, so that the parts hold
// about equal shares of work: prefix[i] is the work before item i (csr row
// pointers, slice group pointers), or items count alike when prefix is null.
int64_t PartStart(const int32_t* prefix, int64_t begin, int64_t end, int part, int parts) {
  if (part == 0) return begin;
  if (part == parts) return end;
  if (!prefix) return begin + (end - begin) * part / parts;
  const int64_t target = prefix[begin] + (int64_t{prefix[end]} - prefix[begin]) * part / parts;
  return std::lower_bound(prefix + begin, prefix + end, target) - prefix;
}

// Runs work(begin, end) over [begin, end) split among the team's threads (or
// on this thread alone when there is no team).
template <typename Work>
void Split(WorkerTeam* team, const int32_t* prefix, int64_t begin, int64_t end,
           const Work& work) {
  if (!team) {
    work(begin, end);
    return;
  }
  const int parts = team->size();
  team->Run([&](int part) {
    work(PartStart(prefix, begin, end, part, parts), PartStart(prefix, begin, end, part + 1, parts));
  });
}

}  // namespace

void ComputeSparseGru(const GruProblem& p, const float* x, float* out, GruScratch* scratch,
                      WorkerTeam* team) {
  const int64_t u = p.options.units, f = p.options.input_size, gates = 3 * u;
  const int64_t sequences = p.batch * p.steps;
  const int64_t stride = (sequences + kStepBlock - 1) / kStepBlock * kStepBlock;
  scratch->gx.resize(static_cast<std::size_t>(sequences * gates));
  scratch->gh.resize(static_cast<std::size_t>(gates));
  scratch->state.resize(static_cast<std::size_t>(u));
  scratch->reset_state.resize(static_cast<std::size_t>(u));
  float* gx_all = scratch->gx.data();
  float* gh = scratch->gh.data();
  float* h = scratch->state.data();
  float* rh = scratch->reset_state.data();
  const float* b_x = p.bias;
  const float* b_h = p.options.reset_after ? p.bias + gates : nullptr;
  // Work is split among threads only when a step's recurrent product is long
  // enough to pay for the hand-over; the input projection then shares the
  // team, which the first phase has woken anyway.
  const int64_t r_work = p.r.row_ptr ? p.r.row_ptr[p.r.rows] : p.r.rows * p.r.cols;
  WorkerTeam* split_team = team && team->size() > 1 && r_work >= kMinSplitWork ? team : nullptr;

  // The input projection does not depend on the state: all steps first, as
  // one sparse-times-dense product over transposed copies (steps padded with
  // zeros to `stride`).
  scratch->inputs_t.assign(static_cast<std::size_t>(f * stride), 0.0f);
  scratch->gx_t.resize(static_cast<std::size_t>(gates * stride));
  float* xt = scratch->inputs_t.data();
  float* gx_t = scratch->gx_t.data();
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t j = 0; j < f; ++j) xt[j * stride + s] = x[s * f + j];
  }
  Split(split_team, p.w.row_ptr, 0, p.w.rows, [&](int64_t begin, int64_t end) {
    if (p.w.scales) {
      ProjectRows<int8_t>(p.w, begin, end, xt, stride, gx_t);
    } else {
      ProjectRows<float>(p.w, begin, end, xt, stride, gx_t);
    }
  });
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t i = 0; i < gates; ++i) gx_all[s * gates + i] = gx_t[i * stride + s] + b_x[i];
  }
  // R times a state: sliced when R is csr (gate g's rows are slices
  // [g * per_gate, (g + 1) * per_gate)), into gh indexed by R's row.
  const SlicedMatrix* sliced = p.r.row_ptr ? &Sliced(p.r, scratch) : nullptr;
  GruMatrix dense_r = p.r;
  if (!sliced && p.r.scales && p.r.rows * p.r.cols <= kMaxFloatRowsWeights) {
    dense_r.values = AsFloatRows(p.r, scratch).values.data();
    dense_r.scales = nullptr;
  }
  const int64_t slices_per_gate = (u + kSliceRows - 1) / kSliceRows;
  auto recurrent = [&](int64_t gate_begin, int64_t gate_end, const float* state) {
    if (sliced) {
      Split(split_team, sliced->slice_ptr.data(), gate_begin * slices_per_gate,
            gate_end * slices_per_gate, [&](int64_t begin, int64_t end) {
              SlicedMatVec(*sliced, begin, end, state, gh);
            });
    } else {
      Split(split_team, nullptr, gate_begin * u, gate_end * u, [&](int64_t begin, int64_t end) {
        DenseMatVec(dense_r, begin, end, state, gh + begin);
      });
    }
  };
  for (int64_t b = 0; b < p.batch; ++b) {
    std::memset(h, 0, static_cast<std::size_t>(u) * sizeof(float));
    for (int64_t t = 0; t < p.steps; ++t) {
      const float* gx = gx_all + (b * p.steps + t) * gates;
      if (b_h) {
        recurrent(0, 3, h);
        for (int64_t j = 0; j < 2 * u; ++j) gh[j] += gx[j] + b_h[j];
        SigmoidInPlace(gh, 2 * u);  // z, r
        for (int64_t j = 0; j < u; ++j) {
          rh[j] = gx[2 * u + j] + gh[u + j] * (gh[2 * u + j] + b_h[2 * u + j]);
        }
        TanhInPlace(rh, u);  // n
      } else {
        recurrent(0, 2, h);
        for (int64_t j = 0; j < 2 * u; ++j) gh[j] += gx[j];
        SigmoidInPlace(gh, 2 * u);  // z, r
        for (int64_t j = 0; j < u; ++j) rh[j] = gh[u + j] * h[j];
        recurrent(2, 3, rh);
        for (int64_t j = 0; j < u; ++j) rh[j] = gx[2 * u + j] + gh[2 * u + j];
        TanhInPlace(rh, u);  // n
      }
      for (int64_t j = 0; j < u; ++j) h[j] = gh[j] * h[j] + (1.0f - gh[j]) * rh[j];
      if (p.options.return_sequences) {
        std::memcpy(out + (b * p.steps + t) * u, h, static_cast<std::size_t>(u) * sizeof(float));
      }
    }
    if (!p.options.return_sequences) {
      std::memcpy(out + b * u, h, static_cast<std::size_t>(u) * sizeof(float));
    }
  }
}

}  // namespace EDGEPIPE_GRU_ISA
}  // namespace ops
}  // namespace edgepipe
