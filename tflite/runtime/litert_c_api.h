// The subset of the LiteRT C API (libLiteRt.so from the ai-edge-litert 2.3.0
// wheel) that edgepipe calls, declared here so the build needs no LiteRT source
// tree. Every declaration was checked against the library: the symbol exists
// (`nm -D --defined-only libLiteRt.so`), the argument order matches what the
// function tests for null (objdump), and the behaviour was exercised by
// tflite/runtime/litert_runtime_test.cc. The layouts of the structs we declare
// are pinned by static_asserts at the end, so an upgrade that changes them
// fails the build, not a run. Facts that differ between LiteRT
// releases are marked "2.3.0"; re-check them when the wheel is upgraded.

#ifndef EDGEPIPE_TFLITE_RUNTIME_LITERT_C_API_H_
#define EDGEPIPE_TFLITE_RUNTIME_LITERT_C_API_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Status codes: 0 is success; only the ones we name are listed.
typedef int LiteRtStatus;
#define kLiteRtStatusOk 0
#define kLiteRtStatusErrorInvalidArgument 1
#define kLiteRtStatusErrorRuntimeFailure 3

// Opaque handles.
typedef struct LiteRtEnvironmentT* LiteRtEnvironment;
typedef struct LiteRtModelT* LiteRtModel;
typedef struct LiteRtSubgraphT* LiteRtSubgraph;
typedef struct LiteRtOpT* LiteRtOp;
typedef struct LiteRtTensorT* LiteRtTensor;
typedef struct LiteRtWeightsT* LiteRtWeights;
typedef struct LiteRtSignatureT* LiteRtSignature;
typedef struct LiteRtOptionsT* LiteRtOptions;
typedef struct LiteRtOpaqueOptionsT* LiteRtOpaqueOptions;
typedef struct LiteRtCompiledModelT* LiteRtCompiledModel;
typedef struct LiteRtTensorBufferT* LiteRtTensorBuffer;

typedef size_t LiteRtParamIndex;

// Element types use TfLiteType's numbering.
typedef int LiteRtElementType;
#define kLiteRtElementTypeNone 0
#define kLiteRtElementTypeFloat32 1
#define kLiteRtElementTypeInt32 2
#define kLiteRtElementTypeUInt8 3
#define kLiteRtElementTypeInt64 4
#define kLiteRtElementTypeBool 6
#define kLiteRtElementTypeInt16 7
#define kLiteRtElementTypeInt8 9
#define kLiteRtElementTypeFloat16 10
#define kLiteRtElementTypeUInt16 17

// Op codes use TFLite's BuiltinOperator numbering; CUSTOM is 32.
typedef int LiteRtOpCode;
#define kLiteRtOpCodeTflCustom 32

// LiteRtGetTensorTypeId results.
typedef int LiteRtTensorTypeId;
#define kLiteRtRankedTensorType 0

// Hardware accelerator bits for LiteRtSetOptionsHardwareAccelerators.
typedef int LiteRtHwAcceleratorSet;
#define kLiteRtHwAcceleratorCpu 1
#define kLiteRtHwAcceleratorGpu 2

typedef int LiteRtTensorBufferLockMode;
#define kLiteRtTensorBufferLockModeRead 0
#define kLiteRtTensorBufferLockModeWrite 1

#define LITERT_TENSOR_MAX_RANK 8
// Host memory handed to LiteRtCreateTensorBufferFromHostMemory must be aligned
// to this; the library refuses other addresses.
#define LITERT_HOST_MEMORY_BUFFER_ALIGNMENT 64

// 2.3.0: rank (7 bits) and has_strides (1 bit) share the first 4 bytes, then
// 8 int32 dimensions and 8 uint32 strides (68 bytes, GCC/Clang layout).
typedef struct {
  unsigned int rank : 7;
  unsigned int has_strides : 1;
  int32_t dimensions[LITERT_TENSOR_MAX_RANK];
  uint32_t strides[LITERT_TENSOR_MAX_RANK];
} LiteRtLayout;

typedef struct {
  LiteRtElementType element_type;
  LiteRtLayout layout;
} LiteRtRankedTensorType;

// Custom op kernel callbacks. 2.3.0: the statuses returned by Init and Run are
// ignored by the runtime, so a kernel must report failures another way.
typedef struct {
  LiteRtStatus (*Init)(void* user_data, const void* init_data,
                       size_t init_data_size);
  LiteRtStatus (*GetOutputLayouts)(void* user_data, size_t num_inputs,
                                   const LiteRtLayout* input_layouts,
                                   size_t num_outputs,
                                   LiteRtLayout* output_layouts);
  LiteRtStatus (*Run)(void* user_data, size_t num_inputs,
                      const LiteRtTensorBuffer* inputs, size_t num_outputs,
                      LiteRtTensorBuffer* outputs);
  LiteRtStatus (*Destroy)(void* user_data);
} LiteRtCustomOpKernel;

// Environment (no options).
LiteRtStatus LiteRtCreateEnvironment(int num_options, const void* options,
                                     LiteRtEnvironment* environment);
void LiteRtDestroyEnvironment(LiteRtEnvironment environment);

// Models. 2.3.0: the environment comes first. The buffer is not copied and
// must outlive the model.
LiteRtStatus LiteRtCreateModelFromFile(LiteRtEnvironment environment,
                                       const char* filename,
                                       LiteRtModel* model);
LiteRtStatus LiteRtCreateModelFromBuffer(LiteRtEnvironment environment,
                                         const void* buffer_addr,
                                         size_t buffer_size,
                                         LiteRtModel* model);
void LiteRtDestroyModel(LiteRtModel model);

// Model structure, for the pre-flight check.
LiteRtStatus LiteRtGetNumModelSubgraphs(LiteRtModel model,
                                        LiteRtParamIndex* num_subgraphs);
LiteRtStatus LiteRtGetModelSubgraph(LiteRtModel model,
                                    LiteRtParamIndex subgraph_index,
                                    LiteRtSubgraph* subgraph);
LiteRtStatus LiteRtGetNumSubgraphOps(LiteRtSubgraph subgraph,
                                     LiteRtParamIndex* num_ops);
LiteRtStatus LiteRtGetSubgraphOp(LiteRtSubgraph subgraph,
                                 LiteRtParamIndex op_index, LiteRtOp* op);
LiteRtStatus LiteRtGetOpCode(LiteRtOp op, LiteRtOpCode* code);
LiteRtStatus LiteRtGetCustomCode(LiteRtOp op, const char** code);
// 2.3.0: the size is written as int32.
LiteRtStatus LiteRtGetCustomOptions(LiteRtOp op, const uint8_t** options,
                                    int32_t* size);
LiteRtStatus LiteRtGetNumOpInputs(LiteRtOp op, LiteRtParamIndex* num_inputs);
LiteRtStatus LiteRtGetOpInput(LiteRtOp op, LiteRtParamIndex input_index,
                              LiteRtTensor* input);
LiteRtStatus LiteRtGetNumOpOutputs(LiteRtOp op, LiteRtParamIndex* num_outputs);
LiteRtStatus LiteRtGetOpOutput(LiteRtOp op, LiteRtParamIndex output_index,
                               LiteRtTensor* output);
LiteRtStatus LiteRtGetTensorName(LiteRtTensor tensor, const char** name);
LiteRtStatus LiteRtGetTensorTypeId(LiteRtTensor tensor,
                                   LiteRtTensorTypeId* type_id);
LiteRtStatus LiteRtGetRankedTensorType(LiteRtTensor tensor,
                                       LiteRtRankedTensorType* type);
LiteRtStatus LiteRtGetTensorWeights(LiteRtTensor tensor,
                                    LiteRtWeights* weights);
// Constant data of a tensor; size 0 for a non-constant tensor.
LiteRtStatus LiteRtGetWeightsBytes(LiteRtWeights weights, const void** addr,
                                   size_t* size);

// Signatures: inputs and outputs in the order LiteRtRunCompiledModel uses.
LiteRtStatus LiteRtGetNumModelSignatures(LiteRtModel model,
                                         LiteRtParamIndex* num_signatures);
LiteRtStatus LiteRtGetModelSignature(LiteRtModel model,
                                     LiteRtParamIndex signature_index,
                                     LiteRtSignature* signature);
LiteRtStatus LiteRtGetNumSignatureInputs(LiteRtSignature signature,
                                         LiteRtParamIndex* num_inputs);
LiteRtStatus LiteRtGetNumSignatureOutputs(LiteRtSignature signature,
                                          LiteRtParamIndex* num_outputs);
LiteRtStatus LiteRtGetSignatureInputName(LiteRtSignature signature,
                                         LiteRtParamIndex input_index,
                                         const char** name);
LiteRtStatus LiteRtGetSignatureOutputName(LiteRtSignature signature,
                                          LiteRtParamIndex output_index,
                                          const char** name);
LiteRtStatus LiteRtGetSignatureInputTensorByIndex(LiteRtSignature signature,
                                                  LiteRtParamIndex input_index,
                                                  LiteRtTensor* tensor);
LiteRtStatus LiteRtGetSignatureOutputTensorByIndex(
    LiteRtSignature signature, LiteRtParamIndex output_index,
    LiteRtTensor* tensor);

// Compilation options.
LiteRtStatus LiteRtCreateOptions(LiteRtOptions* options);
void LiteRtDestroyOptions(LiteRtOptions options);
LiteRtStatus LiteRtSetOptionsHardwareAccelerators(
    LiteRtOptions options, LiteRtHwAcceleratorSet accelerators);
// 2.3.0: four arguments, none of them may be null. The CPU accelerator reads
// the payload of the options identified "xnnpack" as TOML text
// ("num_threads = N").
LiteRtStatus LiteRtCreateOpaqueOptions(const char* payload_identifier,
                                       void* payload_data,
                                       void (*payload_destructor)(void*),
                                       LiteRtOpaqueOptions* options);
void LiteRtDestroyOpaqueOptions(LiteRtOpaqueOptions options);
// Takes ownership of `opaque_options`.
LiteRtStatus LiteRtAddOpaqueOptions(LiteRtOptions options,
                                    LiteRtOpaqueOptions opaque_options);
LiteRtStatus LiteRtAddCustomOpKernelOption(
    LiteRtOptions options, const char* custom_op_name, int custom_op_version,
    const LiteRtCustomOpKernel* custom_op_kernel, void* user_data);

// Runtime options (2.3.0): opaque options identified "runtime_options_string"
// hold TOML text; "error_reporter_mode = 2" makes LiteRT keep TFLite's error
// messages in a buffer of the compiled model instead of printing them, read
// with LiteRtCompiledModelGetErrorMessages (the text is freed with free()),
// and "= 1" prints them to stderr (what LiteRT does without the option).
LiteRtStatus LiteRtCompiledModelGetErrorMessages(LiteRtCompiledModel compiled_model,
                                                 char** error_messages);
LiteRtStatus LiteRtCompiledModelClearErrors(LiteRtCompiledModel compiled_model);

// Compiled models.
LiteRtStatus LiteRtCreateCompiledModel(LiteRtEnvironment environment,
                                       LiteRtModel model, LiteRtOptions options,
                                       LiteRtCompiledModel* compiled_model);
void LiteRtDestroyCompiledModel(LiteRtCompiledModel compiled_model);
LiteRtStatus LiteRtRunCompiledModel(LiteRtCompiledModel compiled_model,
                                    LiteRtParamIndex signature_index,
                                    size_t num_inputs,
                                    LiteRtTensorBuffer* inputs,
                                    size_t num_outputs,
                                    LiteRtTensorBuffer* outputs);

// Dynamic shapes (2.3.0): only dimensions that are -1 in the model may be
// resized; afterwards the output layouts are read back with
// update_allocation set, which makes LiteRT plan the new sizes.
LiteRtStatus LiteRtCompiledModelResizeInputTensor(
    LiteRtCompiledModel compiled_model, LiteRtParamIndex signature_index,
    LiteRtParamIndex input_index, const int* dims, size_t dims_size);
LiteRtStatus LiteRtGetCompiledModelInputTensorLayout(
    LiteRtCompiledModel compiled_model, LiteRtParamIndex signature_index,
    LiteRtParamIndex input_index, LiteRtLayout* layout);
LiteRtStatus LiteRtGetCompiledModelOutputTensorLayouts(
    LiteRtCompiledModel compiled_model, LiteRtParamIndex signature_index,
    size_t num_layouts, LiteRtLayout* layouts, bool update_allocation);

// Tensor buffers over memory we own (64-byte aligned; no deallocator needed).
LiteRtStatus LiteRtCreateTensorBufferFromHostMemory(
    const LiteRtRankedTensorType* tensor_type, void* host_memory,
    size_t size, void (*deallocator)(void*), LiteRtTensorBuffer* buffer);
void LiteRtDestroyTensorBuffer(LiteRtTensorBuffer buffer);
LiteRtStatus LiteRtGetTensorBufferTensorType(LiteRtTensorBuffer buffer,
                                             LiteRtRankedTensorType* type);
LiteRtStatus LiteRtGetTensorBufferSize(LiteRtTensorBuffer buffer, size_t* size);
LiteRtStatus LiteRtLockTensorBuffer(LiteRtTensorBuffer buffer, void** host_addr,
                                    LiteRtTensorBufferLockMode mode);
LiteRtStatus LiteRtUnlockTensorBuffer(LiteRtTensorBuffer buffer);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
#include <cstddef>
// 2.3.0's layouts (GCC/Clang, LP64 and ILP32 alike): a change here means the
// declarations above no longer match the library.
static_assert(sizeof(LiteRtLayout) == 68, "LiteRtLayout changed");
static_assert(offsetof(LiteRtLayout, dimensions) == 4, "LiteRtLayout.dimensions moved");
static_assert(offsetof(LiteRtLayout, strides) == 36, "LiteRtLayout.strides moved");
static_assert(sizeof(LiteRtRankedTensorType) == 72, "LiteRtRankedTensorType changed");
static_assert(offsetof(LiteRtRankedTensorType, layout) == 4,
              "LiteRtRankedTensorType.layout moved");
static_assert(sizeof(LiteRtCustomOpKernel) == 4 * sizeof(void*), "LiteRtCustomOpKernel changed");
static_assert(offsetof(LiteRtCustomOpKernel, GetOutputLayouts) == sizeof(void*) &&
                  offsetof(LiteRtCustomOpKernel, Run) == 2 * sizeof(void*) &&
                  offsetof(LiteRtCustomOpKernel, Destroy) == 3 * sizeof(void*),
              "LiteRtCustomOpKernel callbacks moved");
#endif

#endif  // EDGEPIPE_TFLITE_RUNTIME_LITERT_C_API_H_
