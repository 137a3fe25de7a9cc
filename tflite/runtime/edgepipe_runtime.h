// C ABI of edgepipe's LiteRT runtime (libedgepipe_runtime.so), for Python's
// ctypes (tflite/runtime/binding.py). Functions returning int return 0 on
// success; on failure they write a NUL-terminated message into err[errlen].

#ifndef EDGEPIPE_TFLITE_RUNTIME_EDGEPIPE_RUNTIME_H_
#define EDGEPIPE_TFLITE_RUNTIME_EDGEPIPE_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct EdgepipeRuntime EdgepipeRuntime;

// Opens `path`, or when path is NULL or empty the `size` bytes at `data`
// (copied). accelerator: 0 CPU, 1 GPU. input_layer and input_layer_shape
// (NULL or "" for none) choose the shapes of dynamic inputs in
// benchmark_model's syntax ("a,b" and "1,224,224,3:1,20"); dynamic
// dimensions not chosen become 1. max_tensor_bytes caps the model's
// activation memory (0: the runtime's default). Returns NULL on failure.
EdgepipeRuntime* edgepipe_runtime_open(const char* path, const void* data,
                                       size_t size, int num_threads,
                                       int accelerator, const char* input_layer,
                                       const char* input_layer_shape,
                                       uint64_t max_tensor_bytes, char* err,
                                       size_t errlen);
void edgepipe_runtime_close(EdgepipeRuntime* runtime);
int edgepipe_runtime_num_tensors(const EdgepipeRuntime* runtime, int is_output);
// Element type (LiteRT/TFLite numbering), rank, dims (8 entries), byte size,
// name (valid until close) and host memory of one input or output tensor.
int edgepipe_runtime_tensor_info(EdgepipeRuntime* runtime, int is_output,
                                 int index, int* element_type, int* rank,
                                 int32_t* dims, size_t* bytes,
                                 const char** name, void** data);
int edgepipe_runtime_run(EdgepipeRuntime* runtime, char* err, size_t errlen);
// Microseconds spent loading, checking custom ops and compiling.
void edgepipe_runtime_times(const EdgepipeRuntime* runtime, double* load_us,
                            double* check_us, double* compile_us);

#ifdef __cplusplus
}
#endif

#endif  // EDGEPIPE_TFLITE_RUNTIME_EDGEPIPE_RUNTIME_H_
