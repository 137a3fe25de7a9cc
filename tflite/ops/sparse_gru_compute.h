// The SparseGRU computation's data: the checked problem, scratch memory and
// the packed recurrent matrix (the checks and the LiteRT kernel:
// sparse_gru_kernel.h).

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_GRU_COMPUTE_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_GRU_COMPUTE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tflite/ops/sparse_gru_options.h"
#include "tflite/ops/worker_team.h"

namespace edgepipe {
namespace ops {

// W ([3U, F]) or R ([3U, U]) as stored, after the checks.
struct GruMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  const void* values = nullptr;        // float or int8
  const uint16_t* col_indices = nullptr;  // csr
  const int32_t* row_ptr = nullptr;       // csr
  const float* scales = nullptr;          // int8
};

// Everything the computation needs, filled only by a successful check.
struct GruProblem {
  SparseGruOptions options;
  int64_t batch = 0;
  int64_t steps = 0;
  GruMatrix w;
  GruMatrix r;
  const float* bias = nullptr;
};

// Time steps the input projection pads its transposed copies to a multiple
// of (GruScratch::inputs_t, gx_t).
constexpr int64_t kStepBlock = 8;

// Rows per slice of a SlicedMatrix.
constexpr int64_t kSliceRows = 8;

// A csr R ([3U, U]) repacked for the recurrence, which reads it once per time
// step: within each gate its rows are sorted by length and cut into slices of
// kSliceRows, and a slice is stored as groups of kSliceRows (value, column)
// pairs, one per row, rows shorter than the slice padded with zeros. A step
// then streams each slice without per-row loop exits and forms vectors of
// products from contiguous values. int8 values are stored as float with
// their row's scale applied.
struct SlicedMatrix {
  // The csr arrays it was made from (the key of GruScratch::packs).
  const void* source_values = nullptr;
  const uint16_t* source_col_indices = nullptr;
  const float* source_scales = nullptr;
  std::vector<int32_t> source_row_ptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> values;         // [groups * kSliceRows]
  std::vector<uint16_t> col_indices;  // [groups * kSliceRows]
  std::vector<int32_t> slice_ptr;    // [slices + 1]: first group of each slice
  std::vector<int32_t> lane_row;     // [slices * kSliceRows]: row of each lane, -1 if none
};

// A small dense int8 R ([3U, U], at most kMaxFloatRowsWeights weights) as
// float rows with the row scales applied: such an R sits in cache, where
// widening int8 in the loop costs more than the bytes it saves (timing the
// computation alone, widened int8 was slower than float32 at hidden 48-96 and
// faster from 128 on).
struct FloatRows {
  const void* source_values = nullptr;  // the int8 arrays it was made from (the key)
  const float* source_scales = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> values;  // [rows * cols]
};

constexpr int64_t kMaxFloatRowsWeights = 32768;  // 128 KiB as float

// Packs kept at most (of each kind); more distinct R matrices than this start
// the list over.
constexpr std::size_t kMaxPacks = 16;

// Scratch memory of computations, reused across runs, and the packed R of
// the ops run so far. LiteRT tells a kernel nothing about which op it runs,
// so a pack is found again by the addresses of the constant arrays it came
// from (and its row pointers, compared in full); the kernel drops all packs
// (DropPacks) whenever an op is destroyed, before its model's constants can be
// freed.
struct GruScratch {
  std::vector<float> inputs_t;  // x transposed [F, B*T padded to 8], zero padding
  std::vector<float> gx_t;      // W x_t for all steps, transposed [3U, B*T padded]
  std::vector<float> gx;     // W x_t + b_x for all steps [B*T, 3U]
  std::vector<float> gh;     // recurrent projection of one step [3U]
  std::vector<float> state;  // h [U]
  std::vector<float> reset_state;  // r ⊙ h, then the candidate n [U]
  std::vector<SlicedMatrix> packs;
  std::vector<FloatRows> float_rows;

  // Forgets every copy of a model's constants (before they may be freed).
  void DropPacks() {
    packs.clear();
    float_rows.clear();
  }
};

// Multiply-adds of one step's recurrent product (R's stored values) from
// which a layer's work is split among a team's threads: below it, handing the
// parts over costs more than it saves (edgepipe bench-ops --threads 1,2: at
// hidden 64 and 128 two threads gained only from about this size on).
constexpr int64_t kMinSplitWork = 8192;

// Runs a checked problem (CheckSparseGru): x [B, T, F] to `out`
// (SparseGruOutputDims), with the fastest variant this CPU runs, sharing the
// large phases with `team` when one is given.
void ComputeSparseGru(const GruProblem& problem, const float* x, float* out,
                      GruScratch* scratch, WorkerTeam* team = nullptr);

// The variants (sparse_gru_compute.cc built per instruction set).
namespace baseline {
void ComputeSparseGru(const GruProblem& problem, const float* x, float* out,
                      GruScratch* scratch, WorkerTeam* team);
}  // namespace baseline
namespace avx2 {  // x86-64 with AVX2 and FMA; built only for x86-64
void ComputeSparseGru(const GruProblem& problem, const float* x, float* out,
                      GruScratch* scratch, WorkerTeam* team);
}  // namespace avx2

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_GRU_COMPUTE_H_
