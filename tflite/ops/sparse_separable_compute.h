// The SparseSeparableConv computation's data: the checked problem with its
// repacked weights, and the scratch it needs (the checks and the kernel
// object: sparse_separable_kernel.h).
//
// A run goes over bands of output rows (sized so that a band's depthwise
// output stays in cache) and computes, per band, the depthwise stage into a
// channels-first scratch D [Cin, band positions] (each channel from a
// zero-padded copy of its input rows, split by column phase when the stride
// is 2, so every tap is a contiguous vector load), then the pointwise stage
// as CSR times D: for a tile of positions and one row of 1 or 4 output
// channels, every nonzero adds its weight times D's row tile into registers,
// and the tile is stored once with bias and activation applied
// (channels-first straight into the output, or through a per-thread tile
// transposed into NHWC). Threads take whole bands when there are enough,
// else share each band's stages (channel groups, then tiles or rows).

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_COMPUTE_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_COMPUTE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tflite/ops/sparse_separable_options.h"
#include "tflite/ops/worker_team.h"

namespace edgepipe {
namespace ops {

// The pointwise weights as every format and precision is computed: rows of
// `block` output channels (dense is stored as rows of every column, in
// blocks of 4 when Cout allows), float values with int8 scales applied.
struct SepPointwise {
  int64_t block = 1;
  std::vector<int32_t> row_ptr;   // [Cout / block + 1]
  std::vector<uint16_t> cols;     // [blocks]
  std::vector<float> values;      // [blocks * block], a block's channels together
};

// Everything the computation needs, filled only by a successful check.
struct SepProblem {
  SparseSeparableOptions options;
  int64_t batch = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t out_height = 0;
  int64_t out_width = 0;
  int64_t pad_top = 0;
  int64_t pad_left = 0;
  std::vector<float> dw_weights;  // [Cin][K * K]
  const float* dw_bias = nullptr;   // into the model's constants
  SepPointwise pw;
  const float* pw_bias = nullptr;
};

// Sizes the scratch is laid out by. They hold for every instruction-set
// variant: vectors are at most kSepMaxLanes wide and a pointwise tile is at
// most kSepMaxTile positions.
constexpr int64_t kSepMaxLanes = 16;
constexpr int64_t kSepMaxTile = 64;
constexpr int64_t kSepPlaneGroup = 8;  // channels whose planes a thread pads at once
// D of a band holds about this many floats (128 KiB): it stays in L2 between
// the stages.
constexpr int64_t kSepBandFloats = 32768;

struct SepScratchLayout {
  int64_t band_rows = 0;     // output rows per band
  int64_t plane_floats = 0;  // one padded input plane of a band (all its phases)
  int64_t plane_rows = 0;    // padded rows per phase
  int64_t plane_cols = 0;    // columns per phase row
  int64_t d_stride = 0;      // floats per channel row of D
  int64_t tile_floats = 0;   // one thread's NHWC output tile, 0 for chw output
  int64_t part_floats = 0;   // one thread's D, planes and tile
  int64_t total_floats = 0;  // for `parts` threads
};

SepScratchLayout SparseSeparableScratch(const SepProblem& problem, int parts);

// Runs a checked problem: x in its input layout to `out` in its output
// layout, with the fastest variant this CPU runs, the stages shared with
// `team` when one is given; `scratch` holds SparseSeparableScratch's
// total_floats for the team's size.
using SepCompute = void(const SepProblem& problem, const float* x, float* out, float* scratch,
                        WorkerTeam* team);
SepCompute ComputeSparseSeparable;

// The variants (sparse_separable_compute.cc built per instruction set; avx2
// (AVX2 and FMA) and avx512 (AVX-512F too) are built only for x86-64).
// AVX-512 pays where the FMA units are 512 bits wide (on the Zen 5 build
// machine it ran the 56x56x128 block 1.5-3x faster than AVX2).
namespace baseline { SepCompute ComputeSparseSeparable; }
namespace avx2 { SepCompute ComputeSparseSeparable; }
namespace avx512 { SepCompute ComputeSparseSeparable; }

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_COMPUTE_H_
