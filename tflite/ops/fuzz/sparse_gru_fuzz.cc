// libFuzzer target: bytes -> SparseGRU custom options and op inputs -> the
// kernel's pre-flight Validate, then, for what it accepts, the computation.
// Built and run by tests/test_sparse_gru_kernel.py with clang
// -fsanitize=fuzzer,address,undefined, so any read outside the arrays the
// checks accepted, or any crash on what they refused, is a finding.
//
// Input layout (little-endian), mirrored by the seed writer in that test:
//   u16 options size, options bytes,
//   10 × { u8 present, u8 element type, u8 rank, rank × i32 dims,
//          u32 data size, data },
// an input not present is left out, as LiteRT shows an absent one.
//   u8 number of outputs.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tflite/ops/sparse_gru_kernel.h"

namespace {

class Stream {
 public:
  Stream(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  bool Read(T* out) {
    if (size_ - pos_ < sizeof(T)) return false;
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t n, const uint8_t** out) {
    if (size_ - pos_ < n) return false;
    *out = data_ + pos_;
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Work per input is bounded so the fuzzer keeps its pace.
constexpr int64_t kMaxComputeWork = int64_t{1} << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Stream in(data, size);
  uint16_t options_size = 0;
  const uint8_t* options = nullptr;
  if (!in.Read(&options_size) || !in.Bytes(options_size, &options)) return 0;

  edgepipe::runtime::CustomOpSite site;
  site.name = "SparseGRU";
  site.options = options_size ? options : nullptr;
  site.options_size = options_size;
  // Each array in memory of its own, exactly its claimed size (8-byte aligned
  // as the model's constants are), so AddressSanitizer sees any overread.
  std::vector<std::vector<uint64_t>> storage;
  storage.reserve(edgepipe::ops::kGruNumSlots);
  for (size_t i = 0; i < edgepipe::ops::kGruNumSlots; ++i) {
    uint8_t present = 0, type = 0, rank = 0;
    if (!in.Read(&present) || !in.Read(&type) || !in.Read(&rank) || rank > 8) return 0;
    edgepipe::runtime::OpInput input;
    input.element_type = type;
    for (uint8_t d = 0; d < rank; ++d) {
      int32_t dim = 0;
      if (!in.Read(&dim)) return 0;
      input.dims.push_back(dim);
    }
    uint32_t bytes = 0;
    const uint8_t* payload = nullptr;
    if (!in.Read(&bytes) || !in.Bytes(bytes, &payload)) return 0;
    storage.emplace_back((bytes + 7) / 8);
    if (bytes > 0) {
      std::memcpy(storage.back().data(), payload, bytes);
      input.data = storage.back().data();
      input.size = bytes;
    }
    if (present) site.inputs.push_back(std::move(input));
  }
  uint8_t outputs = 1;
  in.Read(&outputs);
  site.num_outputs = outputs;

  static edgepipe::ops::SparseGruKernel kernel;
  if (!kernel.Validate(site).empty()) return 0;

  // Accepted: the run-time check must agree, and computing must stay inside
  // the arrays (x has data here, as it does at run time).
  edgepipe::ops::SparseGruOptions parsed;
  edgepipe::ops::ParseSparseGruOptions(site.options, site.options_size, &parsed);
  std::vector<edgepipe::ops::GruTensor> tensors;
  for (const auto& input : site.inputs) {
    edgepipe::ops::GruTensor tensor;
    tensor.type = input.element_type;
    tensor.dims = input.dims;
    tensor.data = input.data;
    tensor.size = input.size;
    tensors.push_back(tensor);
  }
  if (!tensors[0].data) return 0;
  edgepipe::ops::GruProblem problem;
  const std::string error = edgepipe::ops::CheckSparseGru(
      parsed, tensors, site.num_outputs, edgepipe::ops::GruCheck::kRun, &problem);
  if (!error.empty()) __builtin_trap();  // Validate accepted what Run would refuse
  const int64_t work = problem.batch * problem.steps * 3 * parsed.units *
                       (parsed.units + parsed.input_size);
  if (work > kMaxComputeWork) return 0;
  const std::vector<int32_t> dims = edgepipe::ops::SparseGruOutputDims(problem);
  size_t count = 1;
  for (int32_t d : dims) count *= static_cast<size_t>(d);
  std::vector<float> out(count);
  edgepipe::ops::GruScratch scratch;
  edgepipe::ops::ComputeSparseGru(problem, static_cast<const float*>(tensors[0].data),
                                  out.data(), &scratch);
  return 0;
}
