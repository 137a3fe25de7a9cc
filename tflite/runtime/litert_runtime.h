// edgepipe's runtime over the LiteRT C API: loads a .tflite model, verifies
// its flatbuffer and refuses what LiteRT would crash on (model_checks.h),
// creates one kernel object per custom op name for this model from the
// registry and validates every custom op BEFORE compiling (LiteRT itself
// compiles such a model and only fails at run, and ignores the status codes
// kernels return), compiles for the CPU with a thread count, resizes dynamic
// inputs, runs on 64-byte aligned host buffers owned here and times each
// phase. Errors are returned as messages; nothing here aborts.

#ifndef EDGEPIPE_TFLITE_RUNTIME_LITERT_RUNTIME_H_
#define EDGEPIPE_TFLITE_RUNTIME_LITERT_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tflite/ops/kernel_interface.h"
#include "tflite/ops/registry.h"
#include "tflite/runtime/kernel_host.h"
#include "tflite/runtime/litert_c_api.h"

namespace edgepipe {
namespace runtime {

enum class Accelerator { kCpu, kGpu };

// The shape chosen for one input with dynamic dimensions.
struct InputShape {
  std::string name;
  std::vector<int32_t> dims;
};

// Reads benchmark_model's --input_layer ("a,b") and --input_layer_shape
// ("1,224,224,3:1,20"): as many shapes as names. "" when both are empty.
std::string ParseInputShapes(const std::string& names, const std::string& shapes,
                             std::vector<InputShape>* out);

// Activation memory a model may ask for unless told otherwise: far more than
// any model edgepipe targets, far less than the build machines' RAM.
constexpr std::size_t kDefaultMaxTensorBytes = std::size_t{2} << 30;

struct RuntimeOptions {
  int num_threads = 1;
  Accelerator accelerator = Accelerator::kCpu;
  const std::vector<kernels::KernelRegistration>* kernels = &kernels::ProjectKernels();
  std::vector<InputShape> input_shapes;  // dynamic dimensions not named become 1
  std::size_t max_tensor_bytes = kDefaultMaxTensorBytes;
};

struct TensorInfo {
  std::string name;
  LiteRtElementType element_type = kLiteRtElementTypeNone;
  std::vector<int32_t> dims;
  std::size_t bytes = 0;
};

struct PhaseTimes {
  double load_us = 0;     // reading the file, the model checks and parsing
  double check_us = 0;    // validating the custom ops
  double compile_us = 0;  // LiteRtCreateCompiledModel, resizing and buffer set-up
};

// Bytes of one element (0 for a type the runtime does not handle), and its name.
std::size_t ElementSize(LiteRtElementType type);
const char* ElementTypeName(LiteRtElementType type);

class Runtime {
 public:
  // Loads from a file (`path`) or, when `path` is empty, from `data`/`size`
  // (copied). Returns null and sets `*error` on failure.
  static std::unique_ptr<Runtime> Open(const std::string& path,
                                       const void* data, std::size_t size,
                                       const RuntimeOptions& options,
                                       std::string* error);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const std::vector<TensorInfo>& inputs() const { return inputs_; }
  const std::vector<TensorInfo>& outputs() const { return outputs_; }
  // Host memory of input/output `index` (inputs().size() etc. checked by the
  // caller); bytes as in TensorInfo::bytes, 64-byte aligned.
  void* input_data(std::size_t index);
  const void* output_data(std::size_t index) const;
  // Runs once on the current input memory; false with `*error` on failure.
  bool Run(std::string* error);
  const PhaseTimes& times() const { return times_; }
  std::size_t model_bytes() const { return model_size_; }

 private:
  struct AlignedBuffer {
    void* ptr = nullptr;
    std::size_t size = 0;
  };
  Runtime() = default;
  bool Load(const std::string& path, const void* data, std::size_t size,
            const RuntimeOptions& options, std::string* error);
  bool CheckCustomOps(const RuntimeOptions& options, std::string* error);
  // LiteRT options for this model: accelerator, threads, where TFLite's
  // messages go (reporter_mode, see litert_c_api.h) and our kernels.
  LiteRtOptions MakeOptions(const RuntimeOptions& options, int reporter_mode, std::string* error);
  bool Compile(const RuntimeOptions& options, std::string* error);
  bool ResizeInputs(const RuntimeOptions& options, std::string* error);
  // Has LiteRT work out the output shapes (our kernels' Prepare runs here).
  bool PlanOutputs(std::string* error);
  bool SetUpTensors(bool is_input, std::string* error);
  std::string TakeKernelErrors();
  // TFLite's messages kept by the compiled model since the last call, one line.
  std::string TakeLiteRtMessages();

  AlignedBuffer model_memory_;
  std::size_t model_size_ = 0;
  std::size_t activation_bytes_ = 0;
  bool resized_ = false;  // some input was resized after compiling
  LiteRtEnvironment environment_ = nullptr;
  LiteRtModel model_ = nullptr;
  LiteRtOptions options_ = nullptr;
  LiteRtCompiledModel compiled_ = nullptr;
  // This model's kernels; they outlive compiled_, whose ops call them.
  std::vector<std::unique_ptr<KernelHost>> kernels_;
  std::vector<LiteRtLayout> output_layouts_;
  std::vector<TensorInfo> inputs_, outputs_;
  std::vector<AlignedBuffer> input_memory_, output_memory_;
  std::vector<LiteRtTensorBuffer> input_buffers_, output_buffers_;
  PhaseTimes times_;
};

}  // namespace runtime
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_RUNTIME_LITERT_RUNTIME_H_
