// libFuzzer target: bytes -> SparseSeparableConv custom options, op inputs
// and declared output -> a fresh kernel object's Validate (as at load), then,
// for what it accepts, Prepare and Run as LiteRT would call them. Built and
// run by tests/test_sparse_separable_fuzz.py with clang
// -fsanitize=fuzzer,address,undefined: a read or write outside the arrays
// the checks accepted, a crash on what they refused, or Prepare or Run
// refusing what Validate accepted (a trap) is a finding.
//
// Input layout (little-endian), mirrored by the seed writer in that test:
//   u16 options size, options bytes,
//   8 × { u8 present, u8 element type, u8 rank, rank × i32 dims,
//         u32 data size, data },
// an input not present is left out, as LiteRT shows an absent one;
//   u8 number of declared outputs,
//   then optionally u8 rank, rank × i32 dims: the declared output's shape.
// Without that shape (the seeds end after the output count) the output is
// declared as Validate computes it, so the seeds reach the computation.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tflite/ops/sparse_separable_kernel.h"

namespace {

using edgepipe::kernels::ElementType;
using edgepipe::kernels::Tensor;

// Consumes the fuzzer's bytes front to back.
struct Bytes {
  const uint8_t* at;
  size_t left;

  const uint8_t* Take(size_t n) {
    if (left < n) return nullptr;
    const uint8_t* taken = at;
    at += n;
    left -= n;
    return taken;
  }
  template <typename T>
  bool Into(T* out) {
    const uint8_t* taken = Take(sizeof(T));
    if (taken) std::memcpy(out, taken, sizeof(T));
    return taken != nullptr;
  }
  bool Dims(std::vector<int32_t>* dims) {
    uint8_t rank = 0;
    if (!Into(&rank) || rank > 8) return false;
    dims->resize(rank);
    for (int32_t& d : *dims) {
      if (!Into(&d)) return false;
    }
    return true;
  }
};

// Work per input is bounded so the fuzzer keeps its pace.
constexpr int64_t kMaxComputeWork = int64_t{1} << 20;

int64_t Product(const std::vector<int32_t>& dims) {
  int64_t n = 1;
  for (int32_t d : dims) n *= d;
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  uint16_t options_size = 0;
  if (!in.Into(&options_size)) return 0;
  const uint8_t* options = in.Take(options_size);
  if (!options) return 0;
  edgepipe::kernels::OpSite site;
  site.options = options_size ? options : nullptr;
  site.options_size = options_size;
  // Each array in memory of its own, exactly its claimed size (8-byte
  // aligned as the model's constants are), so AddressSanitizer sees overreads.
  std::vector<std::vector<uint64_t>> storage(edgepipe::ops::kSepNumSlots);
  for (std::vector<uint64_t>& memory : storage) {
    uint8_t present = 0, type = 0;
    uint32_t bytes = 0;
    Tensor input;
    if (!in.Into(&present) || !in.Into(&type) || !in.Dims(&input.dims) || !in.Into(&bytes)) return 0;
    const uint8_t* payload = in.Take(bytes);
    if (!payload) return 0;
    input.type = static_cast<ElementType>(type);
    memory.resize((bytes + 7) / 8);
    if (bytes > 0) {
      std::memcpy(memory.data(), payload, bytes);
      input.data = memory.data();
      input.size = bytes;
    }
    if (present) site.inputs.push_back(std::move(input));
  }
  uint8_t num_outputs = 1;
  in.Into(&num_outputs);
  Tensor declared;
  declared.name = "y";
  declared.type = ElementType::kFloat32;
  const bool shape_given = in.left > 0;
  if (shape_given && !in.Dims(&declared.dims)) return 0;
  // The runtime hands Validate x without data (it is not a constant).
  std::vector<Tensor> run_inputs = site.inputs;
  if (!site.inputs.empty()) {
    site.inputs[0].data = nullptr;
    site.inputs[0].size = 0;
  }
  edgepipe::ops::SparseSeparableOptions parsed;
  edgepipe::ops::SepProblem problem;
  if (!shape_given) {
    // Declared as the options and x give, when they are valid at all.
    if (!edgepipe::ops::ParseSparseSeparableOptions(site.options, site.options_size, &parsed).empty() ||
        !edgepipe::ops::CheckSparseSeparable(parsed, site.inputs, num_outputs, &problem).empty()) {
      return 0;
    }
    declared.dims = edgepipe::ops::SparseSeparableOutputDims(problem);
  }
  site.outputs.assign(num_outputs, declared);
  edgepipe::ops::SparseSeparableKernel kernel{edgepipe::kernels::KernelConfig()};
  if (!kernel.Validate(site).empty()) return 0;

  edgepipe::ops::ParseSparseSeparableOptions(site.options, site.options_size, &parsed);
  edgepipe::ops::CheckSparseSeparable(parsed, site.inputs, num_outputs, &problem);
  const int64_t positions = problem.batch * problem.out_height * problem.out_width;
  const int64_t work = positions * parsed.in_channels * (parsed.kernel_size * parsed.kernel_size + parsed.out_channels);
  if (work > kMaxComputeWork) return 0;

  std::vector<std::vector<int32_t>> input_dims, output_dims;
  for (const Tensor& input : site.inputs) input_dims.push_back(input.dims);
  if (!kernel.Prepare(input_dims, &output_dims).empty() ||
      output_dims != std::vector<std::vector<int32_t>>{declared.dims}) {
    __builtin_trap();  // Validate accepted what Prepare cannot shape
  }
  // x in memory of exactly its size: the fuzzer's bytes when they fit, else
  // zeros (Validate never saw x's data).
  const size_t x_bytes = static_cast<size_t>(Product(run_inputs[0].dims)) * sizeof(float);
  std::vector<float> x(x_bytes / sizeof(float), 0.0f);
  if (run_inputs[0].data && run_inputs[0].size == x_bytes) std::memcpy(x.data(), run_inputs[0].data, x_bytes);
  run_inputs[0].data = x.data();
  run_inputs[0].size = x_bytes;
  std::vector<float> out(static_cast<size_t>(Product(declared.dims)));
  edgepipe::kernels::OutputBuffer buffer;
  buffer.type = ElementType::kFloat32;
  buffer.dims = declared.dims;
  buffer.data = out.data();
  buffer.size = out.size() * sizeof(float);
  if (!kernel.Run(run_inputs, {buffer}).empty()) {
    __builtin_trap();  // Validate accepted what Run refuses
  }
  return 0;
}
