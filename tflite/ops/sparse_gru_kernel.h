// The SparseGRU custom op kernel (contract: tflite/ops/SPARSE_GRU.md): a whole
// Keras GRU layer over all time steps in one invocation, weights in CSR with
// 16-bit column indices or dense, float32 or int8 with per-row scales.
//
// One kernel object serves one model (kernel_interface.h). Validate checks
// every op completely once, constants included, and keeps the checked
// problem; a run finds its op by the addresses of the constants it is handed
// (they point into the model, as at load) and checks only what changes
// between runs: the activations and the output buffer.

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tflite/ops/kernel_interface.h"
#include "tflite/ops/sparse_gru_compute.h"
#include "tflite/ops/sparse_gru_options.h"

namespace edgepipe {
namespace ops {

using GruTensor = kernels::Tensor;

// Input slots of the contract's table (0 x ... 9 bias).
constexpr std::size_t kGruNumSlots = 10;

// How many inputs an op has: only the present ones are given (4 dense
// float32, 6 dense int8, 8 csr float32, 10 csr int8).
std::size_t SparseGruInputCount(GruFormat format, GruPrecision precision);

// What a check can expect to see of the arrays.
enum class GruCheck {
  kPreflight,  // the model: the weights must be constants, x has no data yet
  kRun,        // every input has data
};

// Checks the op's inputs (the present ones, in the contract's order) against
// its options: count, types, shapes, sizes, and (where `data` is set) the
// contents: CSR row pointers and column indices, finite scales. Returns "" or
// the problem.
std::string CheckSparseGru(const SparseGruOptions& options,
                           const std::vector<GruTensor>& inputs,
                           std::size_t num_outputs, GruCheck mode,
                           GruProblem* problem);

// Output shape: [B, T, U] or [B, U].
std::vector<int32_t> SparseGruOutputDims(const GruProblem& problem);

// Bytes of scratch and repacked weights computing `problem` keeps.
std::size_t SparseGruScratchBytes(const GruProblem& problem);

class SparseGruKernel : public kernels::OpKernel {
 public:
  explicit SparseGruKernel(const kernels::KernelConfig& config);
  std::string Validate(const kernels::OpSite& site) override;
  std::string Prepare(const std::vector<std::vector<int32_t>>& input_dims,
                      std::vector<std::vector<int32_t>>* output_dims) override;
  std::string Run(const std::vector<kernels::Tensor>& inputs,
                  const std::vector<kernels::OutputBuffer>& outputs) override;

  // What tests look at: the copies of R kept for the recurrence, and the
  // threads a run uses.
  const GruScratch& scratch() const { return scratch_; }
  int threads() const { return team_ ? team_->size() : 1; }

 private:
  struct CheckedOp {
    GruProblem problem;  // pointers into the model's constants
    std::vector<std::vector<int32_t>> input_dims;
    std::vector<int32_t> output_dims;
    std::size_t scratch_bytes = 0;
  };
  const CheckedOp* FindOp(const std::vector<kernels::Tensor>& inputs) const;

  const kernels::KernelConfig config_;
  std::vector<CheckedOp> ops_;
  std::size_t prepare_cursor_ = 0;
  GruScratch scratch_;
  std::unique_ptr<WorkerTeam> team_;  // null: one thread
};

kernels::KernelRegistration SparseGruRegistration();

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_GRU_KERNEL_H_
