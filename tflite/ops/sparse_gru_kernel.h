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
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "android_bench/litert_runtime.h"
#include "tflite/ops/sparse_gru_compute.h"
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

class SparseGruKernel : public runtime::CustomOpKernel {
 public:
  SparseGruKernel();
  const char* name() const override { return "SparseGRU"; }
  std::string Validate(const runtime::CustomOpSite& site) const override;
  const LiteRtCustomOpKernel& callbacks() const override { return callbacks_; }
  void* user_data() override { return this; }
  std::string TakeRunError() override;
  void SetNumThreads(int threads) override;

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
  std::unique_ptr<WorkerTeam> team_;  // null: one thread
};

// The kernel instance the runtime registers (ProjectKernels()).
SparseGruKernel* SparseGruKernelInstance();

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_
