// libFuzzer target: bytes -> SparseGRU custom options, op inputs and declared
// outputs -> a fresh kernel object's Validate (as at load), then, for what it
// accepts, Prepare and Run as LiteRT would call them. Built and run by
// tests/test_sparse_gru_kernel.py with clang
// -fsanitize=fuzzer,address,undefined, so any read or write outside the
// arrays the checks accepted, a crash on what they refused, or a run refusing
// what Validate accepted (a trap) is a finding.
//
// Input layout (little-endian), mirrored by the seed writer in that test:
//   u16 options size, options bytes,
//   10 × { u8 present, u8 element type, u8 rank, rank × i32 dims,
//          u32 data size, data },
// an input not present is left out, as LiteRT shows an absent one.
//   u8 number of declared outputs,
//   then optionally u8 rank, rank × i32 dims: the declared outputs' shape.
// Without that shape (the seeds end after the output count) the outputs are
// declared as the options and x say, so the seeds reach the computation.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tflite/ops/sparse_gru_kernel.h"

namespace {

using edgepipe::kernels::ElementType;

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

// The shape the options give for x's shape, when both can be read.
bool ShapeFromOptions(const edgepipe::kernels::OpSite& site, std::vector<int32_t>* dims) {
  edgepipe::ops::SparseGruOptions options;
  if (site.inputs.empty() || site.inputs[0].dims.size() != 3 ||
      !edgepipe::ops::ParseSparseGruOptions(site.options, site.options_size, &options).empty()) {
    return false;
  }
  const std::vector<int32_t>& x = site.inputs[0].dims;
  const auto units = static_cast<int32_t>(options.units);
  *dims = options.return_sequences ? std::vector<int32_t>{x[0], x[1], units}
                                   : std::vector<int32_t>{x[0], units};
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Stream in(data, size);
  uint16_t options_size = 0;
  const uint8_t* options = nullptr;
  if (!in.Read(&options_size) || !in.Bytes(options_size, &options)) return 0;

  edgepipe::kernels::OpSite site;
  site.options = options_size ? options : nullptr;
  site.options_size = options_size;
  // Each array in memory of its own, exactly its claimed size (8-byte aligned
  // as the model's constants are), so AddressSanitizer sees any overread.
  std::vector<std::vector<uint64_t>> storage;
  storage.reserve(edgepipe::ops::kGruNumSlots);
  for (size_t i = 0; i < edgepipe::ops::kGruNumSlots; ++i) {
    uint8_t present = 0, type = 0, rank = 0;
    if (!in.Read(&present) || !in.Read(&type) || !in.Read(&rank) || rank > 8) return 0;
    edgepipe::kernels::Tensor input;
    input.type = static_cast<ElementType>(type);
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
  uint8_t num_outputs = 1;
  in.Read(&num_outputs);
  edgepipe::kernels::Tensor declared;
  declared.name = "y";
  declared.type = ElementType::kFloat32;
  uint8_t rank = 0;
  if (in.Read(&rank)) {
    if (rank > 8) return 0;
    for (uint8_t d = 0; d < rank; ++d) {
      int32_t dim = 0;
      if (!in.Read(&dim)) return 0;
      declared.dims.push_back(dim);
    }
  } else if (!ShapeFromOptions(site, &declared.dims)) {
    return 0;
  }
  site.outputs.assign(num_outputs, declared);

  // The runtime hands Validate x without data (it is not a constant); the
  // fuzzer's x data, if any, is what a run then reads.
  std::vector<edgepipe::kernels::Tensor> run_inputs = site.inputs;
  if (!site.inputs.empty()) {
    site.inputs[0].data = nullptr;
    site.inputs[0].size = 0;
  }
  edgepipe::ops::SparseGruKernel kernel{edgepipe::kernels::KernelConfig()};
  if (!kernel.Validate(site).empty()) return 0;

  // Accepted: one float32 [B, T, F] x and one output of the declared shape.
  edgepipe::ops::SparseGruOptions parsed;
  edgepipe::ops::ParseSparseGruOptions(site.options, site.options_size, &parsed);
  const std::vector<int32_t>& x_dims = run_inputs[0].dims;
  const int64_t batch = x_dims[0], steps = x_dims[1];
  const int64_t work = batch * steps * 3 * parsed.units * (parsed.units + parsed.input_size);
  if (work > kMaxComputeWork) return 0;

  // LiteRT asks for the output shapes first: the declared ones.
  std::vector<std::vector<int32_t>> input_dims, output_dims;
  for (const auto& input : site.inputs) input_dims.push_back(input.dims);
  if (!kernel.Prepare(input_dims, &output_dims).empty() ||
      output_dims != std::vector<std::vector<int32_t>>{declared.dims}) {
    __builtin_trap();  // Validate accepted what Prepare cannot shape
  }

  // x in memory of exactly its size: the fuzzer's bytes when they fit, else
  // zeros (Validate never saw x's data, so its size is not checked yet).
  const size_t x_bytes = static_cast<size_t>(batch * steps * parsed.input_size) * sizeof(float);
  std::vector<float> x(x_bytes / sizeof(float), 0.0f);
  if (run_inputs[0].data && run_inputs[0].size == x_bytes) {
    std::memcpy(x.data(), run_inputs[0].data, x_bytes);
  }
  run_inputs[0].data = x.data();
  run_inputs[0].size = x_bytes;
  size_t count = 1;
  for (int32_t d : declared.dims) count *= static_cast<size_t>(d);
  std::vector<float> out(count);
  edgepipe::kernels::OutputBuffer buffer;
  buffer.type = ElementType::kFloat32;
  buffer.dims = declared.dims;
  buffer.data = out.data();
  buffer.size = count * sizeof(float);
  if (!kernel.Run(run_inputs, {buffer}).empty()) {
    __builtin_trap();  // Validate accepted what Run refuses
  }
  return 0;
}
