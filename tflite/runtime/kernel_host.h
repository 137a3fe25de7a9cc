// One project kernel (tflite/ops/kernel_interface.h) as LiteRT sees it: the
// LiteRtCustomOpKernel callbacks, registered with this object as user_data,
// so every compiled model has a kernel object of its own. The host maps
// LiteRT's tensor buffers to the interface's tensors, serializes calls with
// its lock, and keeps the errors, because LiteRT 2.3.0 ignores the statuses
// its callbacks return: the runtime collects them after compiling and after
// every run.

#ifndef EDGEPIPE_TFLITE_RUNTIME_KERNEL_HOST_H_
#define EDGEPIPE_TFLITE_RUNTIME_KERNEL_HOST_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tflite/ops/kernel_interface.h"
#include "tflite/runtime/litert_c_api.h"

namespace edgepipe {
namespace runtime {

class KernelHost {
 public:
  KernelHost(const kernels::KernelRegistration& registration,
             const kernels::KernelConfig& config);
  KernelHost(const KernelHost&) = delete;
  KernelHost& operator=(const KernelHost&) = delete;

  const char* name() const { return registration_.name; }
  int version() const { return registration_.version; }
  const LiteRtCustomOpKernel& callbacks() const { return callbacks_; }

  // At load: the kernel's Validate, and the op's options kept so that Init
  // can tell the ops LiteRT initializes from ops never checked.
  std::string Validate(const kernels::OpSite& site);
  // Errors recorded by the callbacks since the last call ("" if none).
  std::string TakeErrors();

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
  LiteRtStatus Fail(const std::string& error);

  const kernels::KernelRegistration registration_;
  const LiteRtCustomOpKernel callbacks_;
  std::mutex mutex_;
  std::unique_ptr<kernels::OpKernel> kernel_;
  std::vector<std::vector<uint8_t>> validated_options_;
  std::string errors_;
};

}  // namespace runtime
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_RUNTIME_KERNEL_HOST_H_
