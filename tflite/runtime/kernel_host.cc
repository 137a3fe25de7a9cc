#include "tflite/runtime/kernel_host.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace edgepipe {
namespace runtime {
namespace {

static_assert(static_cast<int>(kernels::ElementType::kFloat32) == kLiteRtElementTypeFloat32 &&
                  static_cast<int>(kernels::ElementType::kInt32) == kLiteRtElementTypeInt32 &&
                  static_cast<int>(kernels::ElementType::kUInt8) == kLiteRtElementTypeUInt8 &&
                  static_cast<int>(kernels::ElementType::kInt64) == kLiteRtElementTypeInt64 &&
                  static_cast<int>(kernels::ElementType::kBool) == kLiteRtElementTypeBool &&
                  static_cast<int>(kernels::ElementType::kInt16) == kLiteRtElementTypeInt16 &&
                  static_cast<int>(kernels::ElementType::kInt8) == kLiteRtElementTypeInt8 &&
                  static_cast<int>(kernels::ElementType::kFloat16) == kLiteRtElementTypeFloat16 &&
                  static_cast<int>(kernels::ElementType::kUInt16) == kLiteRtElementTypeUInt16,
              "the kernel interface numbers element types as LiteRT does");

std::vector<int32_t> Dims(const LiteRtLayout& layout) {
  const unsigned rank = std::min<unsigned>(layout.rank, LITERT_TENSOR_MAX_RANK);
  return std::vector<int32_t>(layout.dimensions, layout.dimensions + rank);
}

// Locks every buffer of one run and unlocks them all when it goes.
class LockedBuffers {
 public:
  ~LockedBuffers() {
    for (LiteRtTensorBuffer buffer : locked_) LiteRtUnlockTensorBuffer(buffer);
  }
  bool Map(LiteRtTensorBuffer buffer, LiteRtTensorBufferLockMode mode,
           kernels::ElementType* type, std::vector<int32_t>* dims, void** data,
           std::size_t* size) {
    LiteRtRankedTensorType tensor_type;
    if (!buffer || LiteRtGetTensorBufferTensorType(buffer, &tensor_type) != kLiteRtStatusOk ||
        LiteRtGetTensorBufferSize(buffer, size) != kLiteRtStatusOk ||
        tensor_type.layout.rank > LITERT_TENSOR_MAX_RANK ||
        LiteRtLockTensorBuffer(buffer, data, mode) != kLiteRtStatusOk) {
      return false;
    }
    locked_.push_back(buffer);
    *type = static_cast<kernels::ElementType>(tensor_type.element_type);
    *dims = Dims(tensor_type.layout);
    return *data != nullptr || *size == 0;
  }

 private:
  std::vector<LiteRtTensorBuffer> locked_;
};

}  // namespace

KernelHost::KernelHost(const kernels::KernelRegistration& registration,
                       const kernels::KernelConfig& config)
    : registration_(registration),
      callbacks_{Init, OutputLayouts, Run, Destroy},
      kernel_(registration.create(config)) {}

std::string KernelHost::Validate(const kernels::OpSite& site) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string error = kernel_->Validate(site);
  if (error.empty()) {
    validated_options_.emplace_back(site.options, site.options + site.options_size);
  }
  return error;
}

std::string KernelHost::TakeErrors() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string errors;
  errors.swap(errors_);
  return errors;
}

LiteRtStatus KernelHost::Fail(const std::string& error) {
  errors_ += errors_.empty() ? "" : "; ";
  errors_ += error;
  return kLiteRtStatusErrorRuntimeFailure;
}

LiteRtStatus KernelHost::Init(void* user_data, const void* init_data, std::size_t size) {
  auto* self = static_cast<KernelHost*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  const auto* bytes = static_cast<const uint8_t*>(init_data);
  for (const std::vector<uint8_t>& options : self->validated_options_) {
    if (options.size() == size && (size == 0 || std::memcmp(options.data(), bytes, size) == 0)) {
      return kLiteRtStatusOk;
    }
  }
  return self->Fail("LiteRT initialized an op whose custom options were not checked at load");
}

LiteRtStatus KernelHost::OutputLayouts(void* user_data, std::size_t num_inputs,
                                       const LiteRtLayout* input_layouts,
                                       std::size_t num_outputs, LiteRtLayout* output_layouts) {
  auto* self = static_cast<KernelHost*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  if ((num_inputs > 0 && !input_layouts) || (num_outputs > 0 && !output_layouts)) {
    return self->Fail("LiteRT asked for output shapes without the layouts");
  }
  std::vector<std::vector<int32_t>> input_dims, output_dims;
  for (std::size_t i = 0; i < num_inputs; ++i) input_dims.push_back(Dims(input_layouts[i]));
  const std::string error = self->kernel_->Prepare(input_dims, &output_dims);
  if (!error.empty()) return self->Fail(error);
  if (output_dims.size() != num_outputs) {
    return self->Fail("the kernel gave " + std::to_string(output_dims.size()) +
                      " output shapes for an op with " + std::to_string(num_outputs) + " outputs");
  }
  for (std::size_t o = 0; o < num_outputs; ++o) {
    if (output_dims[o].size() > LITERT_TENSOR_MAX_RANK) return self->Fail("output rank above 8");
    LiteRtLayout& layout = output_layouts[o];
    std::memset(&layout, 0, sizeof(layout));
    layout.rank = static_cast<unsigned>(output_dims[o].size());
    std::copy(output_dims[o].begin(), output_dims[o].end(), layout.dimensions);
  }
  return kLiteRtStatusOk;
}

LiteRtStatus KernelHost::Run(void* user_data, std::size_t num_inputs,
                             const LiteRtTensorBuffer* inputs, std::size_t num_outputs,
                             LiteRtTensorBuffer* outputs) {
  auto* self = static_cast<KernelHost*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  const std::string error = self->RunLocked(num_inputs, inputs, num_outputs, outputs);
  return error.empty() ? kLiteRtStatusOk : self->Fail(error);
}

std::string KernelHost::RunLocked(std::size_t num_inputs, const LiteRtTensorBuffer* inputs,
                                  std::size_t num_outputs, LiteRtTensorBuffer* outputs) {
  if ((num_inputs > 0 && !inputs) || (num_outputs > 0 && !outputs)) {
    return "LiteRT ran the op without its tensor buffers";
  }
  LockedBuffers locked;
  std::vector<kernels::Tensor> tensors(num_inputs);
  for (std::size_t i = 0; i < num_inputs; ++i) {
    void* data = nullptr;
    if (!locked.Map(inputs[i], kLiteRtTensorBufferLockModeRead, &tensors[i].type,
                    &tensors[i].dims, &data, &tensors[i].size)) {
      return "cannot map input " + std::to_string(i);
    }
    tensors[i].data = data;
  }
  std::vector<kernels::OutputBuffer> buffers(num_outputs);
  for (std::size_t o = 0; o < num_outputs; ++o) {
    if (!locked.Map(outputs[o], kLiteRtTensorBufferLockModeWrite, &buffers[o].type,
                    &buffers[o].dims, &buffers[o].data, &buffers[o].size)) {
      return "cannot map output " + std::to_string(o);
    }
  }
  return kernel_->Run(tensors, buffers);
}

LiteRtStatus KernelHost::Destroy(void* user_data) {
  auto* self = static_cast<KernelHost*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  self->kernel_->Destroy();
  return kLiteRtStatusOk;
}

}  // namespace runtime
}  // namespace edgepipe
