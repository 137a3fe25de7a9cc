#include "tflite/ops/registry.h"

#include "tflite/ops/sparse_gru_kernel.h"
#include "tflite/ops/sparse_separable_kernel.h"

namespace edgepipe {
namespace kernels {

const std::vector<KernelRegistration>& ProjectKernels() {
  static const std::vector<KernelRegistration> kernels = {
      ops::SparseGruRegistration(),
      ops::SparseSeparableRegistration(),
  };
  return kernels;
}

}  // namespace kernels
}  // namespace edgepipe
