// The SparseSeparableConv op's custom options (a flexbuffer map; contract:
// tflite/ops/SPARSE_SEPARABLE.md), verified with flexbuffers::VerifyBuffer
// and read with its accessors; what is ours is the op's rules for the keys
// and values.

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_OPTIONS_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgepipe {
namespace ops {

enum class SepPadding { kSame, kValid };
enum class SepActivation { kNone, kRelu, kRelu6 };
enum class SepPrecision { kFloat32, kInt8 };
enum class SepFormat { kCsr, kDense };
enum class SepLayout { kNhwc, kChw };

// Cin is bounded by the 16-bit column indices; Cout by the same order of
// magnitude, which keeps every size product inside size_t on 32-bit devices.
constexpr int64_t kMaxSepInChannels = 65535;
constexpr int64_t kMaxSepOutChannels = 65536;

struct SparseSeparableOptions {
  int64_t kernel_size = 3;
  int64_t stride = 1;
  SepPadding padding = SepPadding::kSame;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  SepActivation dw_activation = SepActivation::kNone;
  SepActivation pw_activation = SepActivation::kNone;
  SepPrecision precision = SepPrecision::kFloat32;
  SepFormat format = SepFormat::kCsr;
  int64_t block = 1;
  SepLayout input_layout = SepLayout::kNhwc;
  SepLayout output_layout = SepLayout::kNhwc;
};

// Parses and checks the options: every key present once, no other key, each
// of its type with an allowed value, and the rules between keys (block 4
// needs csr and Cout a multiple of 4). Returns "" and fills `*options`, or
// what is wrong.
std::string ParseSparseSeparableOptions(const uint8_t* data, std::size_t size,
                                        SparseSeparableOptions* options);

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_SEPARABLE_OPTIONS_H_
