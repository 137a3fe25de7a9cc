// A bounds-checked reader of the raw .tflite flatbuffer for what LiteRT's C API
// hides: it drops -1 (absent optional) op inputs from its accessors, yet
// LiteRT 2.3.0 crashes (SIGSEGV in LiteRtRunCompiledModel) running a CUSTOM
// op that has one. Only Model.subgraphs -> SubGraph.tensors/operators ->
// Operator.opcode_index/inputs/outputs and Model.operator_codes are read; every
// offset, vtable and vector length is checked against the buffer's size.

#ifndef EDGEPIPE_ANDROID_BENCH_TFLITE_FLATBUFFER_SCAN_H_
#define EDGEPIPE_ANDROID_BENCH_TFLITE_FLATBUFFER_SCAN_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgepipe {
namespace runtime {

// Returns an empty string when every operator's opcode index and tensor
// indices are in range (-1 allowed for builtin ops only), otherwise one message
// naming the subgraph, op index and op name. Never reads outside
// data[0, size).
std::string ScanTfliteOperators(const uint8_t* data, std::size_t size);

// A name read from a model (custom code, tensor name), safe to print in an
// error: bytes outside printable ASCII become \xNN, so a damaged name cannot
// break the UTF-8 of the messages the Python side decodes.
std::string PrintableModelText(const std::string& text);

}  // namespace runtime
}  // namespace edgepipe

#endif  // EDGEPIPE_ANDROID_BENCH_TFLITE_FLATBUFFER_SCAN_H_
