// Runs edgepipe's LiteRT runtime on the real libLiteRt.so with the small models
// in testdata/ (made by testdata/make_testdata.py): known outputs, a custom op
// with and without a kernel, validation and run failures reported through the
// runtime's own channel, a custom op with a -1 input (LiteRT crashes on it),
// and damaged or missing files. Plain C++ checks, as in
// latency_stats_test.cc.

#include "android_bench/litert_runtime.h"
#include "android_bench/tflite_flatbuffer_scan.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

using edgepipe::runtime::CustomOpKernel;
using edgepipe::runtime::CustomOpSite;
using edgepipe::runtime::Runtime;
using edgepipe::runtime::RuntimeOptions;

int failures = 0;
const char kData[] = "android_bench/testdata/";

#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond)) {                                               \
      std::fprintf(stderr, "line %d: %s: ", __LINE__, #cond);    \
      std::fprintf(stderr, __VA_ARGS__);                         \
      std::fprintf(stderr, "\n");                                \
      ++failures;                                                \
    }                                                            \
  } while (0)

std::string Path(const char* name) { return std::string(kData) + name; }

std::vector<char> ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// expected.txt: "input v..." and "output v..." lines.
std::vector<float> Expected(const std::string& key) {
  std::ifstream file(Path("expected.txt"));
  std::string word;
  std::vector<float> values;
  bool in_line = false;
  while (file >> word) {
    if (word == "input" || word == "output") {
      in_line = word == key;
    } else if (in_line) {
      values.push_back(std::stof(word));
    }
  }
  return values;
}

// y = x W^T + b for the test model's op turned custom ("EdgepipeTestLinear").
class LinearKernel : public CustomOpKernel {
 public:
  LinearKernel() : callbacks_{Init, OutputLayouts, RunKernel, Destroy} {}
  const char* name() const override { return "EdgepipeTestLinear"; }
  std::string Validate(const CustomOpSite& site) const override {
    if (reject_) return "rejected by the test";
    if (site.inputs.size() != 3 || site.num_outputs != 1) return "expects 3 inputs, 1 output";
    const auto& w = site.inputs[1];
    const auto& b = site.inputs[2];
    if (!w.data || w.element_type != kLiteRtElementTypeFloat32 || w.dims.size() != 2 ||
        w.size != 4u * static_cast<size_t>(w.dims[0]) * static_cast<size_t>(w.dims[1])) {
      return "weights must be a constant float32 matrix";
    }
    if (!b.data || b.size != 4u * static_cast<size_t>(w.dims[0])) return "bad bias";
    return "";
  }
  const LiteRtCustomOpKernel& callbacks() const override { return callbacks_; }
  void* user_data() override { return this; }
  std::string TakeRunError() override {
    std::string error;
    error.swap(run_error_);
    return error;
  }

  bool reject_ = false;
  bool fail_run_ = false;
  int runs_ = 0;

 private:
  static LiteRtStatus Init(void*, const void*, size_t) { return kLiteRtStatusOk; }
  static LiteRtStatus OutputLayouts(void*, size_t, const LiteRtLayout*, size_t, LiteRtLayout*) {
    return kLiteRtStatusOk;
  }
  static LiteRtStatus Destroy(void*) { return kLiteRtStatusOk; }
  static LiteRtStatus RunKernel(void* user_data, size_t num_inputs, const LiteRtTensorBuffer* inputs,
                                size_t num_outputs, LiteRtTensorBuffer* outputs) {
    auto* self = static_cast<LinearKernel*>(user_data);
    ++self->runs_;
    if (self->fail_run_ || num_inputs != 3 || num_outputs != 1) {
      self->run_error_ = "asked to fail";
      return kLiteRtStatusErrorRuntimeFailure;
    }
    void* x = nullptr;
    void* w = nullptr;
    void* b = nullptr;
    void* y = nullptr;
    LiteRtLockTensorBuffer(inputs[0], &x, kLiteRtTensorBufferLockModeRead);
    LiteRtLockTensorBuffer(inputs[1], &w, kLiteRtTensorBufferLockModeRead);
    LiteRtLockTensorBuffer(inputs[2], &b, kLiteRtTensorBufferLockModeRead);
    LiteRtLockTensorBuffer(outputs[0], &y, kLiteRtTensorBufferLockModeWrite);
    if (x && w && b && y) {
      for (int o = 0; o < 3; ++o) {
        float sum = static_cast<const float*>(b)[o];
        for (int i = 0; i < 4; ++i) {
          sum += static_cast<const float*>(x)[i] * static_cast<const float*>(w)[o * 4 + i];
        }
        static_cast<float*>(y)[o] = sum;
      }
    } else {
      self->run_error_ = "could not map a tensor buffer";
    }
    for (size_t i = 0; i < 3; ++i) LiteRtUnlockTensorBuffer(inputs[i]);
    LiteRtUnlockTensorBuffer(outputs[0]);
    return kLiteRtStatusOk;
  }

  LiteRtCustomOpKernel callbacks_;
  std::string run_error_;
};

bool RunAndCompare(Runtime& runtime, const char* what) {
  const std::vector<float> x = Expected("input");
  const std::vector<float> want = Expected("output");
  if (runtime.inputs().size() != 1 || runtime.inputs()[0].bytes != x.size() * 4 ||
      runtime.outputs()[0].bytes != want.size() * 4) {
    std::fprintf(stderr, "%s: unexpected tensor sizes\n", what);
    return false;
  }
  std::memcpy(runtime.input_data(0), x.data(), x.size() * 4);
  std::string error;
  if (!runtime.Run(&error)) {
    std::fprintf(stderr, "%s: run failed: %s\n", what, error.c_str());
    return false;
  }
  const float* y = static_cast<const float*>(runtime.output_data(0));
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::fabs(y[i] - want[i]) > 1e-5f) {
      std::fprintf(stderr, "%s: output %zu = %g, expected %g\n", what, i, y[i], want[i]);
      return false;
    }
  }
  return true;
}

std::string OpenError(const std::string& path, RuntimeOptions options = RuntimeOptions()) {
  std::string error;
  auto runtime = Runtime::Open(path, nullptr, 0, options, &error);
  return runtime ? std::string("<opened>") : error;
}

bool Contains(const std::string& text, const char* needle) {
  return text.find(needle) != std::string::npos;
}

void TestFloatModel() {
  std::string error;
  RuntimeOptions options;
  auto from_file = Runtime::Open(Path("linear_float.tflite"), nullptr, 0, options, &error);
  CHECK(from_file, "%s", error.c_str());
  if (from_file) {
    CHECK(RunAndCompare(*from_file, "float from file"), "see above");
    CHECK(from_file->inputs()[0].element_type == kLiteRtElementTypeFloat32, "type");
    CHECK(from_file->inputs()[0].dims == std::vector<int32_t>({1, 4}), "dims");
  }
  const std::vector<char> bytes = ReadFile(Path("linear_float.tflite"));
  options.num_threads = 2;
  auto from_buffer = Runtime::Open("", bytes.data(), bytes.size(), options, &error);
  CHECK(from_buffer, "%s", error.c_str());
  if (from_buffer) CHECK(RunAndCompare(*from_buffer, "float from buffer"), "see above");
}

void TestInt8Model() {
  std::string error;
  auto runtime = Runtime::Open(Path("linear_int8.tflite"), nullptr, 0, RuntimeOptions(), &error);
  CHECK(runtime, "%s", error.c_str());
  if (!runtime) return;
  CHECK(runtime->inputs()[0].element_type == kLiteRtElementTypeInt8, "input type");
  CHECK(runtime->outputs()[0].element_type == kLiteRtElementTypeInt8, "output type");
  CHECK(runtime->outputs()[0].bytes == 3, "output bytes %zu", runtime->outputs()[0].bytes);
  CHECK(runtime->Run(&error), "%s", error.c_str());
}

void TestCustomOps() {
  LinearKernel kernel;
  RuntimeOptions with_kernel;
  with_kernel.kernels = {&kernel};

  // Stock kernels only: refused before compiling, naming the op.
  std::string error = OpenError(Path("linear_custom_aligned.tflite"));
  CHECK(Contains(error, "custom op 'EdgepipeTestLinear'") && Contains(error, "no kernel"),
        "%s", error.c_str());

  // The converter's unaligned constants never reach a kernel: refused.
  error = OpenError(Path("linear_custom.tflite"), with_kernel);
  CHECK(Contains(error, "not 64-byte aligned"), "%s", error.c_str());

  std::string open_error;
  auto runtime =
      Runtime::Open(Path("linear_custom_aligned.tflite"), nullptr, 0, with_kernel, &open_error);
  CHECK(runtime, "%s", open_error.c_str());
  if (runtime) {
    CHECK(RunAndCompare(*runtime, "custom op"), "see above");
    CHECK(kernel.runs_ == 1, "kernel ran %d times", kernel.runs_);
    kernel.fail_run_ = true;
    std::string run_error;
    CHECK(!runtime->Run(&run_error), "a failing kernel must fail the run");
    CHECK(Contains(run_error, "EdgepipeTestLinear") && Contains(run_error, "asked to fail"),
          "%s", run_error.c_str());
  }

  kernel.reject_ = true;
  error = OpenError(Path("linear_custom_aligned.tflite"), with_kernel);
  CHECK(Contains(error, "failed validation: rejected by the test"), "%s", error.c_str());
  kernel.reject_ = false;

  // LiteRT shows the kernel 3 inputs and would crash at run on the hidden -1.
  error = OpenError(Path("linear_custom_absent.tflite"), with_kernel);
  CHECK(Contains(error, "subgraph 0, op 0 (custom op 'EdgepipeTestLinear'): input 3 is -1"),
        "%s", error.c_str());
}

void TestFlatbufferScan() {
  for (const char* name : {"linear_float.tflite", "linear_int8.tflite", "linear_custom.tflite",
                           "linear_custom_aligned.tflite"}) {
    const std::vector<char> bytes = ReadFile(Path(name));
    const std::string problem = edgepipe::runtime::ScanTfliteOperators(
        reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    CHECK(!bytes.empty() && problem.empty(), "%s: %s", name, problem.c_str());
  }
  // Every cut and a scrambled copy: a message, never a read past the end.
  const std::vector<char> bytes = ReadFile(Path("linear_custom_absent.tflite"));
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    const std::vector<uint8_t> head(data, data + cut);
    CHECK(!edgepipe::runtime::ScanTfliteOperators(head.data(), head.size()).empty(),
          "cut at %zu accepted", cut);
  }
  std::vector<uint8_t> scrambled(data, data + bytes.size());
  for (size_t i = 0; i < scrambled.size(); i += 3) scrambled[i] ^= 0x5A;
  edgepipe::runtime::ScanTfliteOperators(scrambled.data(), scrambled.size());
}

void TestBadInputs() {
  CHECK(Contains(OpenError(Path("missing.tflite")), "cannot open"), "missing file");
  const std::string dir = std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp";
  const std::string garbage = dir + "/garbage.tflite";
  {
    std::ofstream out(garbage, std::ios::binary);
    out << "this is not a model at all";
  }
  CHECK(Contains(OpenError(garbage), "TFL3"), "%s", OpenError(garbage).c_str());

  // A real header followed by damage at every cut: refused, never a crash.
  const std::vector<char> bytes = ReadFile(Path("linear_float.tflite"));
  for (size_t cut = 8; cut < bytes.size(); cut += 37) {
    std::string error;
    auto runtime = Runtime::Open("", bytes.data(), cut, RuntimeOptions(), &error);
    CHECK(!runtime && !error.empty(), "truncated at %zu accepted", cut);
  }
  std::vector<char> scrambled = bytes;
  for (size_t i = 8; i < scrambled.size(); i += 5) scrambled[i] = static_cast<char>(0xA5);
  std::string error;
  auto runtime = Runtime::Open("", scrambled.data(), scrambled.size(), RuntimeOptions(), &error);
  CHECK(!runtime && !error.empty(), "scrambled model accepted");

  RuntimeOptions zero_threads;
  zero_threads.num_threads = 0;
  CHECK(Contains(OpenError(Path("linear_float.tflite"), zero_threads), "num_threads"), "threads");
}

}  // namespace

int main() {
  TestFloatModel();
  TestInt8Model();
  TestCustomOps();
  TestFlatbufferScan();
  TestBadInputs();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
