// libFuzzer target: any bytes -> CheckModel, which must answer with a message
// or accept, never read outside the buffer. Built and run by
// tests/test_litert_runtime.py with clang -fsanitize=fuzzer,address,undefined
// from real models as seeds; libFuzzer's input is exactly its size, so
// AddressSanitizer sees any overread.

#include <cstddef>
#include <cstdint>

#include "tflite/runtime/model_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  edgepipe::runtime::ModelSummary summary;
  edgepipe::runtime::CheckModel(data, size, &summary);
  return 0;
}
