// The SparseGRU custom op kernel (contract: tflite/ops/SPARSE_GRU.md): a whole
// Keras GRU layer over all time steps in one invocation, weights in CSR with
// 16-bit column indices or dense, float32 or int8 with per-row scales.
//
// One kernel object serves every SparseGRU op of every model the process
// opens, and LiteRT tells its callbacks nothing about which op they serve, so
// the kernel keeps the options of every op it initialized, derives the op's
// configuration from the tensors it is handed, and accepts a configuration
// only when an initialized op has exactly those options.

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "android_bench/litert_runtime.h"
#include "tflite/ops/sparse_gru_options.h"

namespace edgepipe {
namespace ops {

// TfLiteType numbering; android_bench/litert_c_api.h does not name uint16.
constexpr LiteRtElementType kGruElementTypeUInt16 = 17;
// Input slots of the contract's table (0 x ... 9 bias).
constexpr std::size_t kGruNumSlots = 10;

// How many inputs an op has: LiteRT shows only the present ones (4 dense
// float32, 6 dense int8, 8 csr float32, 10 csr int8).
std::size_t SparseGruInputCount(GruFormat format, GruPrecision precision);

// One op input as the checks see it; `data` is null for a tensor computed at
// run time (or an empty constant).
struct GruTensor {
  LiteRtElementType type = kLiteRtElementTypeNone;
  std::vector<int32_t> dims;
  const void* data = nullptr;
  std::size_t size = 0;
};

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

// What a check can expect to see of the arrays.
enum class GruCheck {
  kShapes,     // shapes only (GetOutputLayouts has no data)
  kPreflight,  // the model: the weights must be constants, x has no data yet
  kRun,        // a run: every input has data
};

// Checks the op's inputs (the present ones, in the contract's order) against
// its options: count, types, shapes,
// sizes, and (where `data` is set) the contents: CSR row pointers and column
// indices, finite scales. Returns "" or the problem.
std::string CheckSparseGru(const SparseGruOptions& options,
                           const std::vector<GruTensor>& inputs,
                           std::size_t num_outputs, GruCheck mode,
                           GruProblem* problem);

// Output shape: [B, T, U] or [B, U].
std::vector<int32_t> SparseGruOutputDims(const GruProblem& problem);

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

// Packs kept at most; more distinct R matrices than this start the list over.
constexpr std::size_t kMaxPacks = 16;

// Scratch memory of computations, reused across runs, and the packed R of
// the ops run so far. LiteRT tells a kernel nothing about which op it runs,
// so a pack is found again by the addresses of the constant arrays it came
// from (and its row pointers, compared in full); the kernel drops all packs
// whenever an op is destroyed, before its model's constants can be freed.
struct GruScratch {
  std::vector<float> inputs_t;  // x transposed [F, B*T padded to 8], zero padding
  std::vector<float> gx_t;      // W x_t for all steps, transposed [3U, B*T padded]
  std::vector<float> gx;     // W x_t + b_x for all steps [B*T, 3U]
  std::vector<float> gh;     // recurrent projection of one step [3U]
  std::vector<float> state;  // h [U]
  std::vector<float> reset_state;  // r ⊙ h, then the candidate n [U]
  std::vector<float> row;     // one int8 W row as float [F]
  std::vector<SlicedMatrix> packs;
};

// Runs a checked problem: x [B, T, F] to `out` (SparseGruOutputDims).
void ComputeSparseGru(const GruProblem& problem, const float* x, float* out,
                      GruScratch* scratch);

class SparseGruKernel : public runtime::CustomOpKernel {
 public:
  SparseGruKernel();
  const char* name() const override { return "SparseGRU"; }
  std::string Validate(const runtime::CustomOpSite& site) const override;
  const LiteRtCustomOpKernel& callbacks() const override { return callbacks_; }
  void* user_data() override { return this; }
  std::string TakeRunError() override;

 private:
  static LiteRtStatus Init(void* user_data, const void* init_data, std::size_t size);
  static LiteRtStatus OutputLayouts(void* user_data, std::size_t num_inputs,
                                    const LiteRtLayout* input_layouts,
                                    std::size_t num_outputs, LiteRtLayout* output_layouts);
  static LiteRtStatus Run(void* user_data, std::size_t num_inputs,
                          const LiteRtTensorBuffer* inputs, std::size_t num_outputs,
                          LiteRtTensorBuffer* outputs);
  static LiteRtStatus Destroy(void* user_data);

  std::string RunLocked(std::size_t num_inputs, const LiteRtTensorBuffer* inputs,
                        std::size_t num_outputs, LiteRtTensorBuffer* outputs);
  void AddError(const std::string& error);

  LiteRtCustomOpKernel callbacks_;
  std::mutex mutex_;
  // Options of the ops initialized and not yet destroyed, in Init order.
  std::vector<SparseGruOptions> ops_;
  std::size_t live_ops_ = 0;
  std::size_t prepare_cursor_ = 0;
  std::string error_;
  GruScratch scratch_;
};

// The kernel instance the runtime registers (ProjectKernels()).
SparseGruKernel* SparseGruKernelInstance();

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_
