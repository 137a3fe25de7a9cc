// The SparseSeparableConv computation's data: the checked problem with its
// repacked weights, and the scratch it needs (the checks and the kernel
// object: sparse_separable_kernel.h).
//
// A run goes over bands of output rows (sized so that a band's depthwise
// output stays in cache) and computes, per band, the depthwise stage into a
// channels-first scratch D [Cin, band positions] (from NHWC input straight,
// a vector of channels per tap; from CHW input each channel from a
// zero-padded copy of its input rows, split by column phase when the stride
// is 2, so every tap is a contiguous vector load), then the pointwise stage
// as CSR times D: for a tile of positions and one row of 1 or 4 output
// channels, every nonzero adds its weight times D's row tile into registers,
// and the tile is stored once with bias and activation applied
// (channels-first straight into the output, or through a per-thread tile
// transposed into NHWC); with many input channels a tile is summed in
// passes over chunks of them, its sums kept in that tile between passes, so
// that the rows of D a pass reads stay in cache. Threads take whole bands
// when there are enough, else share each band's stages (channel groups, then
// tiles or rows).

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_COMPUTE_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_COMPUTE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tflite/ops/sparse_separable_options.h"
#include "tflite/ops/worker_team.h"

namespace edgepipe {
namespace ops {

// Input channels per chunk of the pointwise weights' columns (see
// SepPointwise::chunk_ptr).
constexpr int64_t kSepChunk = 64;

// The pointwise weights as every format and precision is computed: rows of
// `block` output channels (dense is stored as rows of every column, in
// blocks of 4 when Cout allows), float values with int8 scales applied.
struct SepPointwise {
  int64_t block = 1;
  std::vector<int32_t> row_ptr;   // [Cout / block + 1]
  std::vector<uint16_t> cols;     // [blocks]
  std::vector<float> values;      // [blocks * block], a block's channels together
  // Where each row's blocks of each chunk of kSepChunk input channels start:
  // row r's blocks with columns in chunks [i, j) are those from
  // chunk_ptr[r * (chunks + 1) + i] to chunk_ptr[r * (chunks + 1) + j] (the
  // pointwise stage sums a few chunks at a time, their rows of D in cache).
  int64_t chunks = 1;             // ceil(Cin / kSepChunk)
  std::vector<int32_t> chunk_ptr; // [Cout / block][chunks + 1]
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
  const float* dw_taps = nullptr;   // [K * K][Cin]: the model's dw_weights
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
// Pixels of the depthwise tile [pixels][Cin] of NHWC input (which has no
// padded planes: it takes their room).
constexpr int64_t kSepNhwcPixels = 4;
// The computation aligns the scratch to this many floats (64 bytes), and
// with it D's rows and each thread's part: vector loads that straddle cache
// lines measured 20% slower.
constexpr int64_t kSepAlignFloats = 16;
// D of a band holds about this many floats (256 KiB): it stays in L2 between
// the stages, and with bands of more rows the padded planes repeat fewer
// rows and the pointwise tiles are fuller.
constexpr int64_t kSepBandFloats = 65536;

struct SepScratchLayout {
  int64_t band_rows = 0;     // output rows per band
  int64_t plane_floats = 0;  // one padded input plane of a band (all its phases)
  int64_t plane_rows = 0;    // padded rows per phase
  int64_t plane_cols = 0;    // columns per phase row
  int64_t d_stride = 0;      // floats per channel row of D
  int64_t tile_floats = 0;   // one thread's pointwise sums (and NHWC output) tile
  int64_t tile_offset = 0;   // where the tile starts in a part (after D and planes)
  int64_t part_floats = 0;   // one thread's D, planes and tile
  int64_t total_floats = 0;  // for `parts` threads, and room to align them
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
