// Checks of the raw .tflite flatbuffer before LiteRT parses it: the buffer is
// verified against our own schema subset (tflite_schema.fbs, read through the
// flatc-generated reader and flatbuffers::Verifier), then the rules the
// verifier cannot know: operator code and tensor indices in range, no -1
// input where the op cannot take an absent one (LiteRT 2.3.0 crashes on such
// inputs and its C API hides them), and what the tensors add up to.

#ifndef EDGEPIPE_TFLITE_RUNTIME_MODEL_CHECKS_H_
#define EDGEPIPE_TFLITE_RUNTIME_MODEL_CHECKS_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgepipe {
namespace runtime {

struct ModelSummary {
  // Bytes of every tensor without constant data, over all subgraphs (dynamic
  // dimensions counted as 1): what LiteRT may allocate at most for them.
  std::size_t activation_bytes = 0;
};

// "" and `*summary` filled when the model passes, otherwise one message
// naming the subgraph, the op (index and name), the tensor and the rule.
// Never reads outside data[0, size).
std::string CheckModel(const uint8_t* data, std::size_t size, ModelSummary* summary);

// A name read from a model (custom code, tensor name), safe to print in an
// error: bytes outside printable ASCII become \xNN, so a damaged name cannot
// break the UTF-8 of the messages the Python side decodes.
std::string PrintableModelText(const std::string& text);

}  // namespace runtime
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_RUNTIME_MODEL_CHECKS_H_
