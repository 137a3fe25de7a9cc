// The interface every edgepipe custom op kernel implements, and the only
// thing kernels share with the runtime (tflite/runtime/). It names no LiteRT
// type: the runtime adapts LiteRT's callbacks to it (kernel_host.h), so a
// kernel is plain C++ that tests and fuzz targets drive directly.
//
// One kernel object serves one compiled model (every op of its name there):
// the runtime creates it from the op's registration when it loads a model and
// deletes it after the compiled model is gone, so thread count, checked
// constants, repacked weights and errors belong to that model alone.
//
// Order of calls, as TFLite's Init/Prepare/Eval split: Validate for each op at
// load (everything is checked here, once), then Prepare for each op while
// LiteRT compiles, then Run for each op at every inference, then Destroy for
// each op. A non-empty string returned by any of them is the error the user
// sees; the runtime prefixes the op's name.

#ifndef EDGEPIPE_TFLITE_OPS_KERNEL_INTERFACE_H_
#define EDGEPIPE_TFLITE_OPS_KERNEL_INTERFACE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace edgepipe {
namespace kernels {

// TfLiteType numbering, which LiteRT's element types use too (the runtime
// asserts that at compile time).
enum class ElementType : int {
  kNone = 0,
  kFloat32 = 1,
  kInt32 = 2,
  kUInt8 = 3,
  kInt64 = 4,
  kBool = 6,
  kInt16 = 7,
  kInt8 = 9,
  kFloat16 = 10,
  kUInt16 = 17,
};

// An op input or output. At load `data` is set for constant inputs only (it
// points into the model and stays valid until the kernel is deleted); at run
// it is set for every tensor.
struct Tensor {
  std::string name;
  ElementType type = ElementType::kNone;
  std::vector<int32_t> dims;
  const void* data = nullptr;
  std::size_t size = 0;  // bytes at `data`
};

// An output as a run hands it over: the kernel writes `size` bytes at `data`.
struct OutputBuffer {
  ElementType type = ElementType::kNone;
  std::vector<int32_t> dims;
  void* data = nullptr;
  std::size_t size = 0;
};

// One op of the model as the runtime found it before compiling.
struct OpSite {
  std::size_t subgraph = 0;
  std::size_t op = 0;
  const uint8_t* options = nullptr;  // the op's custom options
  std::size_t options_size = 0;
  std::vector<Tensor> inputs;   // the present inputs, in order
  std::vector<Tensor> outputs;  // as the model declares them (no data)
};

struct KernelConfig {
  int num_threads = 1;  // the model's thread count
  // Memory the kernel may keep for scratch and repacked weights.
  std::size_t max_scratch_bytes = std::size_t{1} << 30;
};

class OpKernel {
 public:
  virtual ~OpKernel() = default;
  // At load, once per op: checks the options, every input (types, shapes,
  // constant contents) and the declared outputs against the op's contract,
  // and keeps what running the op needs. "" or the problem.
  virtual std::string Validate(const OpSite& site) = 0;
  // While compiling, once per op: the output shapes for these input shapes.
  virtual std::string Prepare(const std::vector<std::vector<int32_t>>& input_dims,
                              std::vector<std::vector<int32_t>>* output_dims) = 0;
  // One inference of one op.
  virtual std::string Run(const std::vector<Tensor>& inputs,
                          const std::vector<OutputBuffer>& outputs) = 0;
  // LiteRT destroys one op (the kernel object itself goes with its model).
  virtual void Destroy() {}
};

// What the registry lists for each op (tflite/ops/registry.h).
struct KernelRegistration {
  const char* name;
  int version;
  std::unique_ptr<OpKernel> (*create)(const KernelConfig& config);
};

// Bytes of one element of a type kernels handle, 0 for any other.
inline std::size_t ElementSize(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
    case ElementType::kInt32: return 4;
    case ElementType::kInt64: return 8;
    case ElementType::kInt16:
    case ElementType::kUInt16:
    case ElementType::kFloat16: return 2;
    case ElementType::kInt8:
    case ElementType::kUInt8:
    case ElementType::kBool: return 1;
    default: return 0;
  }
}

inline const char* ElementTypeName(ElementType type) {
  switch (type) {
    case ElementType::kFloat32: return "float32";
    case ElementType::kInt32: return "int32";
    case ElementType::kInt64: return "int64";
    case ElementType::kInt16: return "int16";
    case ElementType::kUInt16: return "uint16";
    case ElementType::kFloat16: return "float16";
    case ElementType::kInt8: return "int8";
    case ElementType::kUInt8: return "uint8";
    case ElementType::kBool: return "bool";
    default: return "another type";
  }
}

}  // namespace kernels
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_KERNEL_INTERFACE_H_
