// The custom op kernels edgepipe ships, by op name. A new op joins by adding
// its files under tflite/ops/ and one line to registry.cc; the runtime reads
// this list and is not edited.

#ifndef EDGEPIPE_TFLITE_OPS_REGISTRY_H_
#define EDGEPIPE_TFLITE_OPS_REGISTRY_H_

#include <vector>

#include "tflite/ops/kernel_interface.h"

namespace edgepipe {
namespace kernels {

const std::vector<KernelRegistration>& ProjectKernels();

}  // namespace kernels
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_REGISTRY_H_
