#include "tflite/runtime/edgepipe_runtime.h"

#include <cstring>
#include <memory>
#include <string>

#include "tflite/runtime/litert_runtime.h"

struct EdgepipeRuntime {
  std::unique_ptr<edgepipe::runtime::Runtime> runtime;
};

namespace {

void WriteError(const std::string& message, char* err, size_t errlen) {
  if (!err || errlen == 0) return;
  const size_t n = message.size() < errlen - 1 ? message.size() : errlen - 1;
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

}  // namespace

extern "C" {

EdgepipeRuntime* edgepipe_runtime_open(const char* path, const void* data,
                                       size_t size, int num_threads,
                                       int accelerator, const char* input_layer,
                                       const char* input_layer_shape,
                                       uint64_t max_tensor_bytes, char* err,
                                       size_t errlen) {
  using edgepipe::runtime::Accelerator;
  if (accelerator != 0 && accelerator != 1) {
    WriteError("accelerator must be 0 (cpu) or 1 (gpu)", err, errlen);
    return nullptr;
  }
  edgepipe::runtime::RuntimeOptions options;
  options.num_threads = num_threads;
  options.accelerator = accelerator == 1 ? Accelerator::kGpu : Accelerator::kCpu;
  if (max_tensor_bytes > 0) options.max_tensor_bytes = static_cast<size_t>(max_tensor_bytes);
  std::string error = edgepipe::runtime::ParseInputShapes(
      input_layer ? input_layer : "", input_layer_shape ? input_layer_shape : "",
      &options.input_shapes);
  if (!error.empty()) {
    WriteError(error, err, errlen);
    return nullptr;
  }
  auto runtime = edgepipe::runtime::Runtime::Open(path ? path : "", data, size,
                                                  options, &error);
  if (!runtime) {
    WriteError(error, err, errlen);
    return nullptr;
  }
  return new EdgepipeRuntime{std::move(runtime)};
}

void edgepipe_runtime_close(EdgepipeRuntime* runtime) { delete runtime; }

int edgepipe_runtime_num_tensors(const EdgepipeRuntime* runtime, int is_output) {
  if (!runtime) return -1;
  return static_cast<int>(is_output ? runtime->runtime->outputs().size()
                                    : runtime->runtime->inputs().size());
}

int edgepipe_runtime_tensor_info(EdgepipeRuntime* runtime, int is_output,
                                 int index, int* element_type, int* rank,
                                 int32_t* dims, size_t* bytes,
                                 const char** name, void** data) {
  if (!runtime || !element_type || !rank || !dims || !bytes || !name || !data) return 1;
  const auto& infos = is_output ? runtime->runtime->outputs() : runtime->runtime->inputs();
  if (index < 0 || static_cast<size_t>(index) >= infos.size()) return 1;
  const auto& info = infos[static_cast<size_t>(index)];
  *element_type = info.element_type;
  *rank = static_cast<int>(info.dims.size());
  for (size_t d = 0; d < info.dims.size(); ++d) dims[d] = info.dims[d];
  *bytes = info.bytes;
  *name = info.name.c_str();
  *data = is_output ? const_cast<void*>(runtime->runtime->output_data(static_cast<size_t>(index)))
                    : runtime->runtime->input_data(static_cast<size_t>(index));
  return 0;
}

int edgepipe_runtime_run(EdgepipeRuntime* runtime, char* err, size_t errlen) {
  if (!runtime) {
    WriteError("no runtime", err, errlen);
    return 1;
  }
  std::string error;
  if (!runtime->runtime->Run(&error)) {
    WriteError(error, err, errlen);
    return 1;
  }
  return 0;
}

void edgepipe_runtime_times(const EdgepipeRuntime* runtime, double* load_us,
                            double* check_us, double* compile_us) {
  if (!runtime || !load_us || !check_us || !compile_us) return;
  const auto& times = runtime->runtime->times();
  *load_us = times.load_us;
  *check_us = times.check_us;
  *compile_us = times.compile_us;
}

}  // extern "C"
