// edgepipe's runtime over the LiteRT C API: loads a .tflite model, refuses
// operators LiteRT would crash on (tflite_flatbuffer_scan.h), checks every
// custom op against the kernels edgepipe registers BEFORE compiling (LiteRT
// itself compiles such a model and only fails at run, and ignores the status
// codes kernels return), compiles for the CPU with a thread count, runs on
// 64-byte aligned host buffers owned here and times each phase. Errors are
// returned as messages; nothing here aborts.

#ifndef EDGEPIPE_ANDROID_BENCH_LITERT_RUNTIME_H_
#define EDGEPIPE_ANDROID_BENCH_LITERT_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "android_bench/litert_c_api.h"

namespace edgepipe {
namespace runtime {

// One input of a custom op as the pre-flight check sees it. `data` is null for
// a tensor computed at run time; for a constant it points into the model and
// is 64-byte aligned (the runtime refuses the model otherwise, because LiteRT
// does not hand unaligned constants to a kernel).
struct OpInput {
  std::string name;
  bool ranked = false;
  LiteRtElementType element_type = kLiteRtElementTypeNone;
  std::vector<int32_t> dims;
  const void* data = nullptr;
  std::size_t size = 0;
};

// One occurrence of a custom op in the model.
struct CustomOpSite {
  std::string name;
  std::size_t subgraph = 0;
  std::size_t op = 0;
  const uint8_t* options = nullptr;  // the op's custom options (a flexbuffer)
  std::size_t options_size = 0;
  std::vector<OpInput> inputs;
  std::size_t num_outputs = 0;
};

// A custom op kernel edgepipe provides. One object serves every op of its
// name in a model; its callbacks receive user_data().
class CustomOpKernel {
 public:
  virtual ~CustomOpKernel() = default;
  virtual const char* name() const = 0;
  virtual int version() const { return 1; }
  // Checks an op's custom options and inputs (shapes, types, constants)
  // before the model is compiled. Returns an empty string when the kernel can
  // run it, otherwise what is wrong.
  virtual std::string Validate(const CustomOpSite& site) const = 0;
  virtual const LiteRtCustomOpKernel& callbacks() const = 0;
  virtual void* user_data() = 0;
  // LiteRT ignores the status a kernel's Run returns, so a kernel records its
  // failure and the runtime collects it here after every run (empty: none).
  virtual std::string TakeRunError() = 0;
  // The thread count of the model being compiled, for kernels that split
  // their work; a kernel shared by several models follows the latest.
  virtual void SetNumThreads(int /*threads*/) {}
};

// The kernels edgepipe ships: SparseGRU (tflite/ops/).
std::vector<CustomOpKernel*> ProjectKernels();

enum class Accelerator { kCpu, kGpu };

struct RuntimeOptions {
  int num_threads = 1;
  Accelerator accelerator = Accelerator::kCpu;
  std::vector<CustomOpKernel*> kernels = ProjectKernels();
};

struct TensorInfo {
  std::string name;
  LiteRtElementType element_type = kLiteRtElementTypeNone;
  std::vector<int32_t> dims;
  std::size_t bytes = 0;
};

struct PhaseTimes {
  double load_us = 0;     // reading the file and parsing the model
  double check_us = 0;    // custom-op pre-flight
  double compile_us = 0;  // LiteRtCreateCompiledModel and buffer set-up
};

// Bytes of one element, or 0 for a type the runtime does not handle.
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
            std::string* error);
  bool CheckCustomOps(const RuntimeOptions& options, std::string* error);
  bool Compile(const RuntimeOptions& options, std::string* error);
  bool SetUpTensors(bool is_input, std::string* error);

  AlignedBuffer model_memory_;
  std::size_t model_size_ = 0;
  LiteRtEnvironment environment_ = nullptr;
  LiteRtModel model_ = nullptr;
  LiteRtOptions options_ = nullptr;
  LiteRtCompiledModel compiled_ = nullptr;
  std::vector<CustomOpKernel*> used_kernels_;
  std::vector<TensorInfo> inputs_, outputs_;
  std::vector<AlignedBuffer> input_memory_, output_memory_;
  std::vector<LiteRtTensorBuffer> input_buffers_, output_buffers_;
  PhaseTimes times_;
};

}  // namespace runtime
}  // namespace edgepipe

#endif  // EDGEPIPE_ANDROID_BENCH_LITERT_RUNTIME_H_
