#include "tflite/runtime/litert_runtime.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include <unistd.h>

#include "tflite/runtime/model_checks.h"

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

std::string DimsText(const std::vector<int32_t>& dims) {
  std::string text = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return text + "]";
}

std::string MiB(std::size_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

std::string Where(const std::string& name, std::size_t subgraph, std::size_t op) {
  return "custom op '" + PrintableModelText(name) + "' (subgraph " + std::to_string(subgraph) +
         ", op " + std::to_string(op) + ")";
}

bool ReadTensor(LiteRtTensor tensor, kernels::Tensor* out) {
  const char* name = nullptr;
  if (LiteRtGetTensorName(tensor, &name) == kLiteRtStatusOk && name) out->name = name;
  LiteRtTensorTypeId type_id = -1;
  if (LiteRtGetTensorTypeId(tensor, &type_id) != kLiteRtStatusOk) return false;
  if (type_id != kLiteRtRankedTensorType) return true;  // unranked: no type, no dims
  LiteRtRankedTensorType type;
  if (LiteRtGetRankedTensorType(tensor, &type) != kLiteRtStatusOk ||
      type.layout.rank > LITERT_TENSOR_MAX_RANK) {
    return false;
  }
  out->type = static_cast<kernels::ElementType>(type.element_type);
  out->dims.assign(type.layout.dimensions, type.layout.dimensions + type.layout.rank);
  return true;
}

// Parses "1,224,224,3" into positive dimensions.
bool ParseDims(const std::string& text, std::vector<int32_t>* dims) {
  dims->clear();
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    char* end = nullptr;
    errno = 0;
    const long value = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno != 0 || value < 1 || value > (1L << 30)) {
      return false;
    }
    dims->push_back(static_cast<int32_t>(value));
    start = comma + 1;
  }
  return !dims->empty() && dims->size() <= LITERT_TENSOR_MAX_RANK;
}

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return parts;
    start = at + 1;
  }
}

// Opaque options whose payload is TOML text, which LiteRT frees.
bool AddTomlOptions(LiteRtOptions options, const char* identifier, const std::string& text,
                    std::string* error) {
  char* payload = static_cast<char*>(std::malloc(text.size() + 1));
  if (!payload) {
    *error = "out of memory";
    return false;
  }
  std::memcpy(payload, text.c_str(), text.size() + 1);
  LiteRtOpaqueOptions opaque = nullptr;
  LiteRtStatus status = LiteRtCreateOpaqueOptions(identifier, payload, std::free, &opaque);
  if (status != kLiteRtStatusOk) {
    std::free(payload);
    *error = std::string("cannot create the ") + identifier + " options (" + StatusText(status) + ")";
    return false;
  }
  status = LiteRtAddOpaqueOptions(options, opaque);
  if (status != kLiteRtStatusOk) {
    LiteRtDestroyOpaqueOptions(opaque);
    *error = std::string("cannot add the ") + identifier + " options (" + StatusText(status) + ")";
    return false;
  }
  return true;
}

// TFLite's messages as one line: "ERROR: [file:line] " prefixes and blank
// lines dropped, at most a few hundred characters.
std::string TfliteMessages(const std::string& text) {
  std::string joined;
  std::size_t start = 0;
  while (start < text.size() && joined.size() < 600) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.rfind("INFO:", 0) == 0 || line.rfind("WARNING:", 0) == 0) continue;
    if (line.rfind("ERROR: ", 0) == 0) line = line.substr(7);
    if (!line.empty() && line[0] == '[') {
      const std::size_t close = line.find("] ");
      if (close != std::string::npos) line = line.substr(close + 2);
    }
    while (!line.empty() && (line.back() == '.' || line.back() == ' ')) line.pop_back();
    if (line.empty()) continue;
    joined += (joined.empty() ? "" : "; ") + line;
  }
  return PrintableModelText(joined);
}

// What a failing LiteRT call wrote to stderr, for the one retry that is made
// only to learn why a compile failed (the buffer reporter keeps nothing then).
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    file_ = std::tmpfile();
    saved_ = file_ ? dup(2) : -1;
    if (saved_ >= 0) dup2(fileno(file_), 2);
  }
  ~StderrCapture() { Restore(); if (file_) std::fclose(file_); }
  std::string Take() {
    Restore();
    std::string text;
    if (!file_) return text;
    std::rewind(file_);
    char chunk[4096];
    std::size_t got;
    while (text.size() < (1 << 16) && (got = std::fread(chunk, 1, sizeof(chunk), file_)) > 0) {
      text.append(chunk, got);
    }
    return text;
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
  }
  std::FILE* file_ = nullptr;
  int saved_ = -1;
};

}  // namespace

std::string ParseInputShapes(const std::string& names, const std::string& shapes,
                             std::vector<InputShape>* out) {
  out->clear();
  if (names.empty() && shapes.empty()) return "";
  if (names.empty() || shapes.empty()) {
    return "--input_layer and --input_layer_shape go together: name the inputs and give "
           "their shapes (e.g. --input_layer=x --input_layer_shape=1,224,224,3)";
  }
  const std::vector<std::string> name_list = Split(names, ',');
  const std::vector<std::string> shape_list = Split(shapes, ':');
  if (name_list.size() != shape_list.size()) {
    return "--input_layer names " + std::to_string(name_list.size()) +
           " input(s) but --input_layer_shape gives " + std::to_string(shape_list.size()) +
           " shape(s); separate shapes with ':' and dimensions with ','";
  }
  for (std::size_t i = 0; i < name_list.size(); ++i) {
    InputShape shape;
    shape.name = name_list[i];
    if (shape.name.empty()) return "--input_layer has an empty name";
    for (const InputShape& seen : *out) {
      if (seen.name == shape.name) return "--input_layer names '" + shape.name + "' twice";
    }
    if (!ParseDims(shape_list[i], &shape.dims)) {
      return "--input_layer_shape: '" + shape_list[i] + "' for input '" + shape.name +
             "' is not a list of 1 to 8 positive dimensions like 1,224,224,3";
    }
    out->push_back(std::move(shape));
  }
  return "";
}

std::size_t ElementSize(LiteRtElementType type) {
  return kernels::ElementSize(static_cast<kernels::ElementType>(type));
}

const char* ElementTypeName(LiteRtElementType type) {
  return ElementSize(type) ? kernels::ElementTypeName(static_cast<kernels::ElementType>(type))
                           : "unsupported";
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
  if (!runtime->Load(path, data, size, options, error)) return nullptr;
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
  kernels_.clear();  // after the compiled model: its ops call them until then
  if (options_) LiteRtDestroyOptions(options_);
  if (model_) LiteRtDestroyModel(model_);
  if (environment_) LiteRtDestroyEnvironment(environment_);
  for (AlignedBuffer& memory : input_memory_) std::free(memory.ptr);
  for (AlignedBuffer& memory : output_memory_) std::free(memory.ptr);
  std::free(model_memory_.ptr);
}

bool Runtime::Load(const std::string& path, const void* data, std::size_t size,
                   const RuntimeOptions& options, std::string* error) {
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
    *error = "not a TFLite model: it lacks the 'TFL3' file identifier; pass a .tflite file "
             "written by the converter";
    return false;
  }
  // Before LiteRT's parser sees it: a verified flatbuffer, no -1 input LiteRT
  // would crash on (its accessors hide them), activations within the limit.
  ModelSummary summary;
  const std::string problem =
      CheckModel(static_cast<const uint8_t*>(model_memory_.ptr), size, &summary);
  if (!problem.empty()) {
    *error = problem;  // the caller names the file
    return false;
  }
  activation_bytes_ = summary.activation_bytes;
  if (activation_bytes_ > options.max_tensor_bytes) {
    *error = "its tensors need " + MiB(activation_bytes_) +
             ", more than the limit of " + MiB(options.max_tensor_bytes) +
             " (--max_tensor_bytes); raise the limit if the device has the memory";
    return false;
  }
  LiteRtStatus status = LiteRtCreateEnvironment(0, nullptr, &environment_);
  if (status != kLiteRtStatusOk) {
    *error = "cannot create the LiteRT environment (" + StatusText(status) + ")";
    return false;
  }
  status = LiteRtCreateModelFromBuffer(environment_, model_memory_.ptr, size, &model_);
  if (status != kLiteRtStatusOk || !model_) {
    // Parsing again with stderr captured is the only way to learn why.
    LiteRtModel again = nullptr;
    StderrCapture capture;
    LiteRtCreateModelFromBuffer(environment_, model_memory_.ptr, size, &again);
    const std::string why = TfliteMessages(capture.Take());
    if (again) LiteRtDestroyModel(again);
    *error = "LiteRT cannot parse it as a TFLite model (" + StatusText(status) + ")" +
             (why.empty() ? std::string("; the file is damaged or not a model") : ": " + why);
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
      const char* custom_code = nullptr;
      if (LiteRtGetCustomCode(op, &custom_code) != kLiteRtStatusOk || !custom_code) {
        *error = "op " + std::to_string(o) + " of subgraph " + std::to_string(s) +
                 " is CUSTOM but has no custom code";
        return false;
      }
      const std::string name = custom_code;
      const std::string where = Where(name, s, o);
      KernelHost* host = nullptr;
      for (const auto& existing : kernels_) {
        if (name == existing->name()) host = existing.get();
      }
      if (!host) {
        const kernels::KernelRegistration* registration = nullptr;
        std::string known;
        for (const kernels::KernelRegistration& candidate : *options.kernels) {
          if (name == candidate.name) registration = &candidate;
          known += (known.empty() ? "" : ", ") + std::string(candidate.name);
        }
        if (!registration) {
          *error = where + " has no kernel in edgepipe's runtime (registered: " +
                   (known.empty() ? std::string("none") : known) +
                   "); lower the model without it or add a kernel under tflite/ops/";
          return false;
        }
        kernels::KernelConfig config;
        config.num_threads = options.num_threads;
        kernels_.emplace_back(new KernelHost(*registration, config));
        host = kernels_.back().get();
      }
      kernels::OpSite site;
      site.subgraph = s;
      site.op = o;
      const uint8_t* custom_options = nullptr;
      int32_t options_size = 0;  // 2.3.0 writes the size as int32
      if (LiteRtGetCustomOptions(op, &custom_options, &options_size) != kLiteRtStatusOk ||
          options_size < 0) {
        *error = where + " has unreadable custom options";
        return false;
      }
      site.options = options_size > 0 ? custom_options : nullptr;
      site.options_size = static_cast<std::size_t>(options_size);
      LiteRtParamIndex num_inputs = 0, num_outputs = 0;
      if (LiteRtGetNumOpInputs(op, &num_inputs) != kLiteRtStatusOk ||
          LiteRtGetNumOpOutputs(op, &num_outputs) != kLiteRtStatusOk) {
        *error = where + " has unreadable inputs or outputs";
        return false;
      }
      for (LiteRtParamIndex i = 0; i < num_inputs; ++i) {
        kernels::Tensor input;
        LiteRtTensor tensor = nullptr;
        LiteRtWeights weights = nullptr;
        if (LiteRtGetOpInput(op, i, &tensor) != kLiteRtStatusOk || !tensor ||
            !ReadTensor(tensor, &input) ||
            LiteRtGetTensorWeights(tensor, &weights) != kLiteRtStatusOk ||
            LiteRtGetWeightsBytes(weights, &input.data, &input.size) != kLiteRtStatusOk) {
          *error = where + ": cannot read input " + std::to_string(i);
          return false;
        }
        if (input.size == 0) input.data = nullptr;
        if (input.data &&
            reinterpret_cast<std::uintptr_t>(input.data) % kAlignment != 0) {
          // LiteRT 2.3.0 refuses such a constant at run time ("Unaligned host
          // memory pointer") and the kernel never runs.
          *error = where + ": constant input " + std::to_string(i) + " ('" +
                   PrintableModelText(input.name) + "') is not 64-byte aligned in the model file; "
                   "re-export it with aligned buffers "
                   "(tflite.flatbuffer_rewrite.align_constant_buffers)";
          return false;
        }
        site.inputs.push_back(std::move(input));
      }
      for (LiteRtParamIndex i = 0; i < num_outputs; ++i) {
        kernels::Tensor output;
        LiteRtTensor tensor = nullptr;
        if (LiteRtGetOpOutput(op, i, &tensor) != kLiteRtStatusOk || !tensor ||
            !ReadTensor(tensor, &output)) {
          *error = where + ": cannot read output " + std::to_string(i);
          return false;
        }
        output.name = PrintableModelText(output.name);
        site.outputs.push_back(std::move(output));
      }
      const std::string problem = host->Validate(site);
      if (!problem.empty()) {
        // Kernels quote what they read from the model (option keys, strings).
        *error = where + " failed validation: " + PrintableModelText(problem);
        return false;
      }
    }
  }
  return true;
}

std::string Runtime::TakeKernelErrors() {
  std::string errors;
  for (const auto& host : kernels_) {
    const std::string problem = host->TakeErrors();
    if (problem.empty()) continue;
    errors += errors.empty() ? "" : "; ";
    errors += std::string("custom op '") + host->name() + "': " + PrintableModelText(problem);
  }
  return errors;
}

std::string Runtime::TakeLiteRtMessages() {
  char* messages = nullptr;
  std::string why;
  if (LiteRtCompiledModelGetErrorMessages(compiled_, &messages) == kLiteRtStatusOk && messages) {
    why = TfliteMessages(messages);
  }
  std::free(messages);
  LiteRtCompiledModelClearErrors(compiled_);
  return why;
}

LiteRtOptions Runtime::MakeOptions(const RuntimeOptions& options, int reporter_mode,
                                   std::string* error) {
  LiteRtOptions made = nullptr;
  LiteRtStatus status = LiteRtCreateOptions(&made);
  if (status != kLiteRtStatusOk) {
    *error = "cannot create LiteRT options (" + StatusText(status) + ")";
    return nullptr;
  }
  const LiteRtHwAcceleratorSet accelerators =
      options.accelerator == Accelerator::kGpu ? kLiteRtHwAcceleratorGpu
                                               : kLiteRtHwAcceleratorCpu;
  status = LiteRtSetOptionsHardwareAccelerators(made, accelerators);
  // XNNPACK reads its thread count from the options named "xnnpack".
  bool ok = status == kLiteRtStatusOk &&
            AddTomlOptions(made, "xnnpack", "num_threads = " + std::to_string(options.num_threads),
                           error) &&
            AddTomlOptions(made, "runtime_options_string",
                           "error_reporter_mode = " + std::to_string(reporter_mode), error);
  if (status != kLiteRtStatusOk) *error = "cannot select the accelerator (" + StatusText(status) + ")";
  for (std::size_t i = 0; ok && i < kernels_.size(); ++i) {
    // The host is this model's kernel: LiteRT hands it back to every callback.
    const KernelHost& host = *kernels_[i];
    status = LiteRtAddCustomOpKernelOption(made, host.name(), host.version(), &host.callbacks(),
                                           kernels_[i].get());
    if (status != kLiteRtStatusOk) {
      *error = std::string("cannot register the kernel of custom op '") + host.name() + "' (" +
               StatusText(status) + ")";
      ok = false;
    }
  }
  if (!ok) {
    LiteRtDestroyOptions(made);
    return nullptr;
  }
  return made;
}

bool Runtime::Compile(const RuntimeOptions& options, std::string* error) {
  constexpr int kReportToBuffer = 2, kReportToStderr = 1;
  options_ = MakeOptions(options, kReportToBuffer, error);
  if (!options_) return false;
  LiteRtStatus status = LiteRtCreateCompiledModel(environment_, model_, options_, &compiled_);
  // Init and output-shape errors of our kernels: LiteRT drops their statuses.
  const std::string kernel_errors = TakeKernelErrors();
  if (!kernel_errors.empty()) {
    *error = "cannot compile the model: " + kernel_errors;
    return false;
  }
  if (status != kLiteRtStatusOk || !compiled_) {
    if (options.accelerator == Accelerator::kGpu) {
      *error = "the GPU accelerator is not available here (" + StatusText(status) +
               "); use --accelerator=cpu";
      return false;
    }
    // Compiling again with the messages on stderr is the only way to learn why.
    std::string why;
    LiteRtOptions retry = MakeOptions(options, kReportToStderr, &why);
    if (retry) {
      LiteRtCompiledModel again = nullptr;
      StderrCapture capture;
      LiteRtCreateCompiledModel(environment_, model_, retry, &again);
      why = TfliteMessages(capture.Take());
      TakeKernelErrors();
      if (again) LiteRtDestroyCompiledModel(again);
      LiteRtDestroyOptions(retry);
    }
    *error = "LiteRT cannot compile the model (" + StatusText(status) + ")" +
             (why.empty() ? std::string("; the model is damaged or an op does not fit its tensors")
                          : ": " + why);
    return false;
  }
  return ResizeInputs(options, error) && PlanOutputs(error) && SetUpTensors(true, error) &&
         SetUpTensors(false, error);
}

bool Runtime::PlanOutputs(std::string* error) {
  LiteRtSignature signature = nullptr;
  LiteRtParamIndex count = 0;
  if (LiteRtGetModelSignature(model_, 0, &signature) != kLiteRtStatusOk ||
      LiteRtGetNumSignatureOutputs(signature, &count) != kLiteRtStatusOk || count == 0) {
    *error = "the model's signature has no outputs";
    return false;
  }
  // LiteRT 2.3.0 asks custom kernels for their output shapes only here (or at
  // the first run): their errors must fail the load, not the first inference.
  output_layouts_.assign(count, LiteRtLayout());
  const LiteRtStatus status = LiteRtGetCompiledModelOutputTensorLayouts(
      compiled_, 0, count, output_layouts_.data(), /*update_allocation=*/true);
  const std::string kernel_errors = TakeKernelErrors();
  if (!kernel_errors.empty()) {
    *error = "cannot compile the model: " + kernel_errors;
    return false;
  }
  if (status != kLiteRtStatusOk) {
    const std::string why = TakeLiteRtMessages();
    *error = "LiteRT cannot work out the model's output shapes (" + StatusText(status) + ")" +
             (why.empty() ? std::string("; the model is damaged") : ": " + why);
    return false;
  }
  return true;
}

bool Runtime::ResizeInputs(const RuntimeOptions& options, std::string* error) {
  LiteRtSignature signature = nullptr;
  LiteRtParamIndex count = 0;
  if (LiteRtGetModelSignature(model_, 0, &signature) != kLiteRtStatusOk ||
      LiteRtGetNumSignatureInputs(signature, &count) != kLiteRtStatusOk) {
    *error = "the model has no signature to run";
    return false;
  }
  std::vector<std::string> names(count);
  for (LiteRtParamIndex i = 0; i < count; ++i) {
    const char* name = nullptr;
    if (LiteRtGetSignatureInputName(signature, i, &name) == kLiteRtStatusOk && name) names[i] = name;
  }
  for (const InputShape& wanted : options.input_shapes) {
    bool found = false;
    for (const std::string& name : names) found = found || name == wanted.name;
    if (!found) {
      std::string list;
      for (const std::string& name : names) list += (list.empty() ? "" : ", ") + PrintableModelText(name);
      *error = "--input_layer names '" + PrintableModelText(wanted.name) +
               "', which is not an input of the model (inputs: " + list + ")";
      return false;
    }
  }
  // Intermediate tensors grow with the inputs: the largest growth bounds them.
  double growth = 1.0;
  bool resized = false;
  for (LiteRtParamIndex i = 0; i < count; ++i) {
    LiteRtTensor tensor = nullptr;
    kernels::Tensor declared;
    if (LiteRtGetSignatureInputTensorByIndex(signature, i, &tensor) != kLiteRtStatusOk ||
        !tensor || !ReadTensor(tensor, &declared)) {
      *error = "cannot read the shape of input " + std::to_string(i);
      return false;
    }
    const std::string named = "input " + std::to_string(i) + " ('" + PrintableModelText(names[i]) + "')";
    std::vector<int32_t> dims = declared.dims;
    bool dynamic = false;
    for (int32_t& dim : dims) {
      if (dim < 0) dynamic = true, dim = 1;
    }
    for (const InputShape& wanted : options.input_shapes) {
      if (wanted.name != names[i]) continue;
      if (wanted.dims.size() != declared.dims.size()) {
        *error = named + " has rank " + std::to_string(declared.dims.size()) + " " +
                 DimsText(declared.dims) + "; --input_layer_shape gives " + DimsText(wanted.dims);
        return false;
      }
      for (std::size_t d = 0; d < dims.size(); ++d) {
        if (declared.dims[d] >= 0 && wanted.dims[d] != declared.dims[d]) {
          *error = named + " has shape " + DimsText(declared.dims) + ": dimension " +
                   std::to_string(d) + " is fixed at " + std::to_string(declared.dims[d]) +
                   "; only dynamic (-1) dimensions can be resized";
          return false;
        }
      }
      dims = wanted.dims;
    }
    if (!dynamic) continue;
    double elements = 1.0;
    for (int32_t dim : dims) elements *= dim;
    double declared_elements = 1.0;
    for (int32_t dim : declared.dims) declared_elements *= dim < 0 ? 1 : dim;
    growth = std::max(growth, elements / declared_elements);
    const std::vector<int> resize(dims.begin(), dims.end());
    const LiteRtStatus status =
        LiteRtCompiledModelResizeInputTensor(compiled_, 0, i, resize.data(), resize.size());
    const std::string kernel_errors = TakeKernelErrors();
    if (status != kLiteRtStatusOk || !kernel_errors.empty()) {
      *error = "cannot resize " + named + " from " + DimsText(declared.dims) + " to " +
               DimsText(dims) + " (" + (kernel_errors.empty() ? StatusText(status) : kernel_errors) +
               "); the model cannot take that shape";
      return false;
    }
    resized = true;
  }
  if (resized && static_cast<double>(activation_bytes_) * growth >
                     static_cast<double>(options.max_tensor_bytes)) {
    *error = "with these input shapes the model's tensors need about " +
             MiB(static_cast<std::size_t>(static_cast<double>(activation_bytes_) * growth)) +
             ", more than the limit of " + MiB(options.max_tensor_bytes) +
             " (--max_tensor_bytes); choose smaller shapes or raise the limit";
    return false;
  }
  resized_ = resized;
  return true;
}

bool Runtime::SetUpTensors(bool is_input, std::string* error) {
  const char* kind = is_input ? "input" : "output";
  LiteRtSignature signature = nullptr;
  if (LiteRtGetModelSignature(model_, 0, &signature) != kLiteRtStatusOk) {
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
  if (!is_input && output_layouts_.size() != count) {
    *error = "the model's outputs changed after planning";
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
    // The compiled model knows the shapes after resizing and planning; the
    // model itself does not.
    if (resized_ || !is_input) {
      LiteRtLayout layout = is_input ? LiteRtLayout() : output_layouts_[i];
      if (is_input &&
          LiteRtGetCompiledModelInputTensorLayout(compiled_, 0, i, &layout) != kLiteRtStatusOk) {
        *error = "cannot read the shape of " + which + " after resizing";
        return false;
      }
      if (layout.rank > LITERT_TENSOR_MAX_RANK) {
        *error = which + " has rank " + std::to_string(layout.rank) + " after resizing";
        return false;
      }
      type.layout = layout;
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
      int32_t& dim = type.layout.dimensions[d];
      if (dim < 0 && is_input) dim = 1;  // a dynamic input the model was not resized for
      if (dim < 0) {
        *error = named + " has a dynamic dimension " + std::to_string(d) +
                 " that LiteRT did not resolve; give the inputs' shapes with "
                 "--input_layer and --input_layer_shape";
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
  // Kernels report through their hosts: LiteRT drops their statuses.
  const std::string kernel_errors = TakeKernelErrors();
  if (!kernel_errors.empty()) {
    *error = "inference failed: " + kernel_errors;
    return false;
  }
  if (status != kLiteRtStatusOk) {
    const std::string why = TakeLiteRtMessages();
    *error = "inference failed (" + StatusText(status) + ")" +
             (why.empty() ? std::string("; the model is damaged or an op cannot run on its inputs")
                          : ": " + why);
    return false;
  }
  return true;
}

}  // namespace runtime
}  // namespace edgepipe
