#include "android_bench/litert_runtime.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cerrno>
#include <utility>

#include "android_bench/tflite_flatbuffer_scan.h"
#include "tflite/ops/sparse_gru_kernel.h"

namespace edgepipe {
namespace runtime {
namespace {

constexpr std::size_t kAlignment = LITERT_HOST_MEMORY_BUFFER_ALIGNMENT;
// Flatbuffers address at most 2 GiB; anything larger is not a model.
constexpr std::size_t kMaxModelBytes = std::size_t{1} << 31;
constexpr int kMaxThreads = 256;

double MicrosSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now() - start)
      .count();
}

// posix_memalign exists on glibc, bionic and musl; aligned_alloc is missing on
// older Android API levels.
void* AllocateAligned(std::size_t size) {
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kAlignment, size == 0 ? kAlignment : size) != 0) {
    return nullptr;
  }
  std::memset(ptr, 0, size);
  return ptr;
}

std::string StatusText(LiteRtStatus status) {
  return "LiteRT status " + std::to_string(status);
}

std::string Where(const CustomOpSite& site) {
  return "custom op '" + PrintableModelText(site.name) + "' (subgraph " +
         std::to_string(site.subgraph) + ", op " + std::to_string(site.op) +
         ")";
}

bool ReadTensorType(LiteRtTensor tensor, OpInput* out) {
  const char* name = nullptr;
  if (LiteRtGetTensorName(tensor, &name) == kLiteRtStatusOk && name) {
    out->name = name;
  }
  LiteRtTensorTypeId type_id = -1;
  if (LiteRtGetTensorTypeId(tensor, &type_id) != kLiteRtStatusOk) return false;
  if (type_id != kLiteRtRankedTensorType) return true;
  LiteRtRankedTensorType type;
  if (LiteRtGetRankedTensorType(tensor, &type) != kLiteRtStatusOk) return false;
  if (type.layout.rank > LITERT_TENSOR_MAX_RANK) return false;
  out->ranked = true;
  out->element_type = type.element_type;
  out->dims.assign(type.layout.dimensions,
                   type.layout.dimensions + type.layout.rank);
  return true;
}

}  // namespace

std::vector<CustomOpKernel*> ProjectKernels() {
  return {ops::SparseGruKernelInstance()};
}

std::size_t ElementSize(LiteRtElementType type) {
  switch (type) {
    case kLiteRtElementTypeFloat32:
    case kLiteRtElementTypeInt32:
      return 4;
    case kLiteRtElementTypeInt64:
      return 8;
    case kLiteRtElementTypeInt16:
    case kLiteRtElementTypeFloat16:
      return 2;
    case kLiteRtElementTypeInt8:
    case kLiteRtElementTypeUInt8:
    case kLiteRtElementTypeBool:
      return 1;
    default:
      return 0;
  }
}

const char* ElementTypeName(LiteRtElementType type) {
  switch (type) {
    case kLiteRtElementTypeFloat32: return "float32";
    case kLiteRtElementTypeInt32: return "int32";
    case kLiteRtElementTypeInt64: return "int64";
    case kLiteRtElementTypeInt16: return "int16";
    case kLiteRtElementTypeFloat16: return "float16";
    case kLiteRtElementTypeInt8: return "int8";
    case kLiteRtElementTypeUInt8: return "uint8";
    case kLiteRtElementTypeBool: return "bool";
    default: return "unsupported";
  }
}

std::unique_ptr<Runtime> Runtime::Open(const std::string& path,
                                       const void* data, std::size_t size,
                                       const RuntimeOptions& options,
                                       std::string* error) {
  if (options.num_threads < 1 || options.num_threads > kMaxThreads) {
    *error = "num_threads must be between 1 and " + std::to_string(kMaxThreads) +
             ", got " + std::to_string(options.num_threads);
    return nullptr;
  }
  std::unique_ptr<Runtime> runtime(new Runtime());
  auto start = std::chrono::steady_clock::now();
  if (!runtime->Load(path, data, size, error)) return nullptr;
  runtime->times_.load_us = MicrosSince(start);
  start = std::chrono::steady_clock::now();
  if (!runtime->CheckCustomOps(options, error)) return nullptr;
  runtime->times_.check_us = MicrosSince(start);
  start = std::chrono::steady_clock::now();
  if (!runtime->Compile(options, error)) return nullptr;
  runtime->times_.compile_us = MicrosSince(start);
  return runtime;
}

Runtime::~Runtime() {
  for (LiteRtTensorBuffer buffer : input_buffers_) LiteRtDestroyTensorBuffer(buffer);
  for (LiteRtTensorBuffer buffer : output_buffers_) LiteRtDestroyTensorBuffer(buffer);
  if (compiled_) LiteRtDestroyCompiledModel(compiled_);
  if (options_) LiteRtDestroyOptions(options_);
  if (model_) LiteRtDestroyModel(model_);
  if (environment_) LiteRtDestroyEnvironment(environment_);
  for (AlignedBuffer& memory : input_memory_) std::free(memory.ptr);
  for (AlignedBuffer& memory : output_memory_) std::free(memory.ptr);
  std::free(model_memory_.ptr);
}

bool Runtime::Load(const std::string& path, const void* data, std::size_t size,
                   std::string* error) {
  const std::string label = path.empty() ? std::string("<buffer>") : path;
  if (!path.empty()) {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (!file) {
      *error = "cannot open model file " + path + ": " + std::strerror(errno);
      return false;
    }
    long length = -1;
    if (std::fseek(file, 0, SEEK_END) == 0) length = std::ftell(file);
    if (length < 0 || static_cast<std::size_t>(length) > kMaxModelBytes ||
        std::fseek(file, 0, SEEK_SET) != 0) {
      std::fclose(file);
      *error = "cannot read model file " + path + " (not a regular file or larger than 2 GiB)";
      return false;
    }
    size = static_cast<std::size_t>(length);
    model_memory_.ptr = AllocateAligned(size);
    model_memory_.size = size;
    const bool read_ok = model_memory_.ptr &&
                         std::fread(model_memory_.ptr, 1, size, file) == size;
    std::fclose(file);
    if (!read_ok) {
      *error = "cannot read model file " + path;
      return false;
    }
  } else {
    if (!data || size > kMaxModelBytes) {
      *error = "no model given (empty path and no buffer, or a buffer over 2 GiB)";
      return false;
    }
    // A copy at a 64-byte aligned address: constant tensors placed at aligned
    // file offsets then stay aligned in memory, which custom ops need.
    model_memory_.ptr = AllocateAligned(size);
    model_memory_.size = size;
    if (!model_memory_.ptr) {
      *error = "out of memory for a model of " + std::to_string(size) + " bytes";
      return false;
    }
    std::memcpy(model_memory_.ptr, data, size);
  }
  model_size_ = size;
  const char* bytes = static_cast<const char*>(model_memory_.ptr);
  if (size < 8 || std::memcmp(bytes + 4, "TFL3", 4) != 0) {
    *error = "not a TFLite model: " + label +
             " lacks the 'TFL3' file identifier; pass a .tflite file written by the converter";
    return false;
  }
  // LiteRT's accessors hide -1 op inputs, yet it crashes at run on one in a
  // custom op; our own reader of the raw flatbuffer sees them, and checks the
  // operators before LiteRT's parser does.
  const std::string scan = ScanTfliteOperators(static_cast<const uint8_t*>(model_memory_.ptr), size);
  if (!scan.empty()) {
    *error = "refusing " + label + ": " + scan;
    return false;
  }
  LiteRtStatus status = LiteRtCreateEnvironment(0, nullptr, &environment_);
  if (status != kLiteRtStatusOk) {
    *error = "cannot create the LiteRT environment (" + StatusText(status) + ")";
    return false;
  }
  status = LiteRtCreateModelFromBuffer(environment_, model_memory_.ptr, size, &model_);
  if (status != kLiteRtStatusOk || !model_) {
    *error = "LiteRT cannot parse " + label + " as a TFLite model (" +
             StatusText(status) + "); the file is damaged or not a model";
    return false;
  }
  return true;
}

bool Runtime::CheckCustomOps(const RuntimeOptions& options, std::string* error) {
  LiteRtParamIndex num_subgraphs = 0;
  if (LiteRtGetNumModelSubgraphs(model_, &num_subgraphs) != kLiteRtStatusOk ||
      num_subgraphs == 0) {
    *error = "the model has no subgraphs";
    return false;
  }
  for (LiteRtParamIndex s = 0; s < num_subgraphs; ++s) {
    LiteRtSubgraph subgraph = nullptr;
    LiteRtParamIndex num_ops = 0;
    if (LiteRtGetModelSubgraph(model_, s, &subgraph) != kLiteRtStatusOk ||
        LiteRtGetNumSubgraphOps(subgraph, &num_ops) != kLiteRtStatusOk) {
      *error = "cannot read subgraph " + std::to_string(s) + " of the model";
      return false;
    }
    for (LiteRtParamIndex o = 0; o < num_ops; ++o) {
      LiteRtOp op = nullptr;
      LiteRtOpCode code = -1;
      if (LiteRtGetSubgraphOp(subgraph, o, &op) != kLiteRtStatusOk ||
          LiteRtGetOpCode(op, &code) != kLiteRtStatusOk) {
        *error = "cannot read op " + std::to_string(o) + " of subgraph " + std::to_string(s);
        return false;
      }
      if (code != kLiteRtOpCodeTflCustom) continue;
      CustomOpSite site;
      site.subgraph = s;
      site.op = o;
      const char* name = nullptr;
      if (LiteRtGetCustomCode(op, &name) != kLiteRtStatusOk || !name) {
        *error = "op " + std::to_string(o) + " of subgraph " + std::to_string(s) +
                 " is CUSTOM but has no custom code";
        return false;
      }
      site.name = name;
      CustomOpKernel* kernel = nullptr;
      for (CustomOpKernel* candidate : options.kernels) {
        if (candidate && site.name == candidate->name()) kernel = candidate;
      }
      if (!kernel) {
        std::string known;
        for (CustomOpKernel* candidate : options.kernels) {
          if (!candidate) continue;
          known += known.empty() ? "" : ", ";
          known += candidate->name();
        }
        *error = Where(site) + " has no kernel in edgepipe's runtime (registered: " +
                 (known.empty() ? std::string("none") : known) +
                 "); lower the model without it or add a kernel under tflite/ops/";
        return false;
      }
      const uint8_t* custom_options = nullptr;
      int32_t options_size = 0;  // 2.3.0 writes the size as int32
      if (LiteRtGetCustomOptions(op, &custom_options, &options_size) != kLiteRtStatusOk ||
          options_size < 0) {
        *error = Where(site) + " has unreadable custom options";
        return false;
      }
      site.options = options_size > 0 ? custom_options : nullptr;
      site.options_size = static_cast<std::size_t>(options_size);
      LiteRtParamIndex num_inputs = 0;
      if (LiteRtGetNumOpInputs(op, &num_inputs) != kLiteRtStatusOk ||
          LiteRtGetNumOpOutputs(op, &site.num_outputs) != kLiteRtStatusOk) {
        *error = Where(site) + " has unreadable inputs or outputs";
        return false;
      }
      for (LiteRtParamIndex i = 0; i < num_inputs; ++i) {
        OpInput input;
        LiteRtTensor tensor = nullptr;
        LiteRtWeights weights = nullptr;
        if (LiteRtGetOpInput(op, i, &tensor) != kLiteRtStatusOk || !tensor ||
            !ReadTensorType(tensor, &input) ||
            LiteRtGetTensorWeights(tensor, &weights) != kLiteRtStatusOk ||
            LiteRtGetWeightsBytes(weights, &input.data, &input.size) != kLiteRtStatusOk) {
          *error = Where(site) + ": cannot read input " + std::to_string(i);
          return false;
        }
        if (input.size == 0) input.data = nullptr;
        if (input.data &&
            reinterpret_cast<std::uintptr_t>(input.data) % kAlignment != 0) {
          // LiteRT 2.3.0 refuses such a constant at run time ("Unaligned host
          // memory pointer") and the kernel never runs.
          *error = Where(site) + ": constant input " + std::to_string(i) + " ('" +
                   PrintableModelText(input.name) + "') is not 64-byte aligned in the model file; "
                   "re-export it with aligned buffers "
                   "(tflite.litert_runtime.align_constant_buffers)";
          return false;
        }
        site.inputs.push_back(std::move(input));
      }
      const std::string problem = kernel->Validate(site);
      if (!problem.empty()) {
        *error = Where(site) + " failed validation: " + problem;
        return false;
      }
      bool listed = false;
      for (CustomOpKernel* used : used_kernels_) listed = listed || used == kernel;
      if (!listed) used_kernels_.push_back(kernel);
    }
  }
  return true;
}

bool Runtime::Compile(const RuntimeOptions& options, std::string* error) {
  LiteRtStatus status = LiteRtCreateOptions(&options_);
  if (status != kLiteRtStatusOk) {
    *error = "cannot create LiteRT options (" + StatusText(status) + ")";
    return false;
  }
  const LiteRtHwAcceleratorSet accelerators =
      options.accelerator == Accelerator::kGpu ? kLiteRtHwAcceleratorGpu
                                               : kLiteRtHwAcceleratorCpu;
  status = LiteRtSetOptionsHardwareAccelerators(options_, accelerators);
  if (status != kLiteRtStatusOk) {
    *error = "cannot select the accelerator (" + StatusText(status) + ")";
    return false;
  }
  // XNNPACK reads its thread count from TOML text in opaque options named
  // "xnnpack"; LiteRT frees the text with the destructor given here.
  const std::string text = "num_threads = " + std::to_string(options.num_threads);
  char* payload = static_cast<char*>(std::malloc(text.size() + 1));
  if (!payload) {
    *error = "out of memory";
    return false;
  }
  std::memcpy(payload, text.c_str(), text.size() + 1);
  LiteRtOpaqueOptions cpu_options = nullptr;
  status = LiteRtCreateOpaqueOptions("xnnpack", payload, std::free, &cpu_options);
  if (status != kLiteRtStatusOk) {
    std::free(payload);
    *error = "cannot create the CPU options (" + StatusText(status) + ")";
    return false;
  }
  status = LiteRtAddOpaqueOptions(options_, cpu_options);
  if (status != kLiteRtStatusOk) {
    LiteRtDestroyOpaqueOptions(cpu_options);
    *error = "cannot set the thread count (" + StatusText(status) + ")";
    return false;
  }
  for (CustomOpKernel* kernel : used_kernels_) {
    kernel->SetNumThreads(options.num_threads);
    status = LiteRtAddCustomOpKernelOption(options_, kernel->name(), kernel->version(),
                                           &kernel->callbacks(), kernel->user_data());
    if (status != kLiteRtStatusOk) {
      *error = std::string("cannot register the kernel of custom op '") + kernel->name() +
               "' (" + StatusText(status) + ")";
      return false;
    }
  }
  status = LiteRtCreateCompiledModel(environment_, model_, options_, &compiled_);
  if (status != kLiteRtStatusOk || !compiled_) {
    *error = options.accelerator == Accelerator::kGpu
                 ? "the GPU accelerator is not available here (" + StatusText(status) +
                       "); use --accelerator=cpu"
                 : "LiteRT cannot compile the model (" + StatusText(status) + ")";
    return false;
  }
  return SetUpTensors(true, error) && SetUpTensors(false, error);
}

bool Runtime::SetUpTensors(bool is_input, std::string* error) {
  const char* kind = is_input ? "input" : "output";
  LiteRtParamIndex num_signatures = 0;
  LiteRtSignature signature = nullptr;
  if (LiteRtGetNumModelSignatures(model_, &num_signatures) != kLiteRtStatusOk ||
      num_signatures == 0 ||
      LiteRtGetModelSignature(model_, 0, &signature) != kLiteRtStatusOk) {
    *error = "the model has no signature to run";
    return false;
  }
  LiteRtParamIndex count = 0;
  const LiteRtStatus status = is_input ? LiteRtGetNumSignatureInputs(signature, &count)
                                       : LiteRtGetNumSignatureOutputs(signature, &count);
  if (status != kLiteRtStatusOk || count == 0) {
    *error = std::string("the model's signature has no ") + kind + "s";
    return false;
  }
  std::vector<TensorInfo>& infos = is_input ? inputs_ : outputs_;
  std::vector<AlignedBuffer>& memory = is_input ? input_memory_ : output_memory_;
  std::vector<LiteRtTensorBuffer>& buffers = is_input ? input_buffers_ : output_buffers_;
  for (LiteRtParamIndex i = 0; i < count; ++i) {
    const std::string which = std::string(kind) + " " + std::to_string(i);
    LiteRtTensor tensor = nullptr;
    const char* name = nullptr;
    const bool found =
        is_input ? LiteRtGetSignatureInputTensorByIndex(signature, i, &tensor) == kLiteRtStatusOk &&
                       LiteRtGetSignatureInputName(signature, i, &name) == kLiteRtStatusOk
                 : LiteRtGetSignatureOutputTensorByIndex(signature, i, &tensor) == kLiteRtStatusOk &&
                       LiteRtGetSignatureOutputName(signature, i, &name) == kLiteRtStatusOk;
    LiteRtRankedTensorType type;
    LiteRtTensorTypeId type_id = -1;
    if (!found || !tensor || LiteRtGetTensorTypeId(tensor, &type_id) != kLiteRtStatusOk ||
        type_id != kLiteRtRankedTensorType ||
        LiteRtGetRankedTensorType(tensor, &type) != kLiteRtStatusOk ||
        type.layout.rank > LITERT_TENSOR_MAX_RANK) {
      *error = "cannot read the shape of " + which + " (unranked tensors are not supported)";
      return false;
    }
    TensorInfo info;
    info.name = name ? name : "";
    info.element_type = type.element_type;
    const std::string named = which + " ('" + PrintableModelText(info.name) + "')";
    const std::size_t element_size = ElementSize(type.element_type);
    if (element_size == 0) {
      *error = named + " has element type " +
               std::to_string(type.element_type) + ", which the runtime does not handle";
      return false;
    }
    std::size_t bytes = element_size;
    for (unsigned d = 0; d < type.layout.rank; ++d) {
      const int32_t dim = type.layout.dimensions[d];
      if (dim < 0) {
        *error = named + " has a dynamic dimension; convert with a fixed shape";
        return false;
      }
      if (dim > 0 && bytes > kMaxModelBytes / static_cast<std::size_t>(dim)) {
        *error = named + " is larger than 2 GiB";
        return false;
      }
      bytes *= static_cast<std::size_t>(dim);
      info.dims.push_back(dim);
    }
    info.bytes = bytes;
    AlignedBuffer host;
    host.size = bytes;
    host.ptr = AllocateAligned(bytes);
    if (!host.ptr) {
      *error = "out of memory for " + which;
      return false;
    }
    memory.push_back(host);
    LiteRtTensorBuffer buffer = nullptr;
    const LiteRtStatus created =
        LiteRtCreateTensorBufferFromHostMemory(&type, host.ptr, bytes, nullptr, &buffer);
    if (created != kLiteRtStatusOk || !buffer) {
      *error = "cannot create the tensor buffer of " + which + " (" + StatusText(created) + ")";
      return false;
    }
    buffers.push_back(buffer);
    infos.push_back(std::move(info));
  }
  return true;
}

void* Runtime::input_data(std::size_t index) {
  return index < input_memory_.size() ? input_memory_[index].ptr : nullptr;
}

const void* Runtime::output_data(std::size_t index) const {
  return index < output_memory_.size() ? output_memory_[index].ptr : nullptr;
}

bool Runtime::Run(std::string* error) {
  const LiteRtStatus status =
      LiteRtRunCompiledModel(compiled_, 0, input_buffers_.size(), input_buffers_.data(),
                             output_buffers_.size(), output_buffers_.data());
  // Kernels report through their own channel: LiteRT drops their statuses.
  std::string kernel_errors;
  for (CustomOpKernel* kernel : used_kernels_) {
    const std::string problem = kernel->TakeRunError();
    if (!problem.empty()) {
      kernel_errors += kernel_errors.empty() ? "" : "; ";
      kernel_errors += std::string("custom op '") + kernel->name() + "': " + problem;
    }
  }
  if (!kernel_errors.empty()) {
    *error = "inference failed: " + kernel_errors;
    return false;
  }
  if (status != kLiteRtStatusOk) {
    *error = "inference failed (" + StatusText(status) + ")";
    return false;
  }
  return true;
}

}  // namespace runtime
}  // namespace edgepipe
