// The SparseGRU op's custom options (a flexbuffer map; contract:
// tflite/ops/SPARSE_GRU.md), verified and read with the flatbuffers library's
// flexbuffers (flexbuffers::VerifyBuffer, then its accessors); what is ours is
// the op's rules for the keys and values.

#ifndef EDGEPIPE_TFLITE_OPS_SPARSE_GRU_OPTIONS_H_
#define EDGEPIPE_TFLITE_OPS_SPARSE_GRU_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgepipe {
namespace ops {

enum class GruPrecision { kFloat32, kInt8 };
enum class GruFormat { kCsr, kDense };

// 16-bit column indices bound both sizes; the bound also keeps every size
// product well inside size_t on 32-bit devices.
constexpr int64_t kMaxGruDimension = 65536;

struct SparseGruOptions {
  int64_t units = 0;
  int64_t input_size = 0;
  bool reset_after = true;
  bool return_sequences = false;
  GruPrecision precision = GruPrecision::kFloat32;
  GruFormat format = GruFormat::kCsr;
};

bool operator==(const SparseGruOptions& a, const SparseGruOptions& b);

// Parses and checks the options (every key present once, no other key, each of
// its type and with an allowed value). Returns "" and fills `*options`, or
// what is wrong.
std::string ParseSparseGruOptions(const uint8_t* data, std::size_t size,
                                  SparseGruOptions* options);

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_SPARSE_GRU_OPTIONS_H_
