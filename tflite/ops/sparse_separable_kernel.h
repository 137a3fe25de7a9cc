// The SparseSeparableConv custom op kernel (contract:
// tflite/ops/SPARSE_SEPARABLE.md): a depthwise KxK convolution and its
// activation, then a 1x1 convolution with CSR (or dense) weights, float32 or
// int8 with per-channel scales, in one invocation.
//
// One kernel object serves one model (kernel_interface.h). Validate checks
// every op completely once, constants included, and keeps the checked
// problem with its weights repacked (dequantized for int8); Prepare sizes the
// scratch; a run finds its op by the addresses of the constants it is handed
// and checks only what changes between runs: x and the output buffer.

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_KERNEL_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_KERNEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tflite/ops/kernel_interface.h"
#include "tflite/ops/sparse_separable_compute.h"
#include "tflite/ops/sparse_separable_options.h"

namespace edgepipe {
namespace ops {

// Input slots of the contract's table (0 x ... 7 pw_bias).
constexpr std::size_t kSepNumSlots = 8;

// How many inputs an op has: 5 dense float32, 6 dense int8, 7 csr float32,
// 8 csr int8 (absent inputs are left out).
std::size_t SparseSeparableInputCount(SepFormat format, SepPrecision precision);

// Checks the op's present inputs (weights must be constants; x's data is not
// read) against its options and fills `*problem`, weights repacked. "" or
// the problem.
std::string CheckSparseSeparable(const SparseSeparableOptions& options,
                                 const std::vector<kernels::Tensor>& inputs,
                                 std::size_t num_outputs, SepProblem* problem);

// Output shape: [B, Ho, Wo, Cout] (nhwc) or [B, Cout, Ho, Wo] (chw).
std::vector<int32_t> SparseSeparableOutputDims(const SepProblem& problem);

class SparseSeparableKernel : public kernels::OpKernel {
 public:
  explicit SparseSeparableKernel(const kernels::KernelConfig& config);
  std::string Validate(const kernels::OpSite& site) override;
  std::string Prepare(const std::vector<std::vector<int32_t>>& input_dims,
                      std::vector<std::vector<int32_t>>* output_dims) override;
  std::string Run(const std::vector<kernels::Tensor>& inputs,
                  const std::vector<kernels::OutputBuffer>& outputs) override;

  int threads() const { return team_ ? team_->size() : 1; }

 private:
  struct CheckedOp {
    SepProblem problem;
    std::vector<std::vector<int32_t>> input_dims;
    std::vector<int32_t> output_dims;
    std::size_t scratch_floats = 0;  // shared by all ops
    std::size_t kept_bytes = 0;      // repacked weights, kept per op
  };
  const CheckedOp* FindOp(const std::vector<kernels::Tensor>& inputs) const;

  const kernels::KernelConfig config_;
  std::vector<CheckedOp> ops_;
  std::size_t prepare_cursor_ = 0;
  std::vector<float> scratch_;  // sized by Prepare for the largest op
  std::unique_ptr<WorkerTeam> team_;  // null: one thread
};

kernels::KernelRegistration SparseSeparableRegistration();

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_KERNEL_H_
