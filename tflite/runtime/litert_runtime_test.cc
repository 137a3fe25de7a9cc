// Runs edgepipe's LiteRT runtime on the real libLiteRt.so with the small models
// in testdata/ (made by testdata/make_testdata.py): known outputs, a custom op
// with and without a kernel, validation, output-shape and run failures
// reported through the runtime's own channel, a custom op with a -1 input
// (LiteRT crashes on it), damaged or missing files, dynamic inputs resized,
// and real SparseGRU models: one kernel object per model, so thread count,
// repacked weights and errors belong to that model alone.
//
// The test kernels are real kernels (kernel_interface.h) registered with real
// LiteRT through RuntimeOptions.kernels.

#include "tflite/runtime/litert_runtime.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tflite/ops/sparse_gru_kernel.h"
#include "tflite/runtime/model_checks.h"

namespace {

using edgepipe::kernels::ElementType;
using edgepipe::kernels::KernelConfig;
using edgepipe::kernels::KernelRegistration;
using edgepipe::kernels::OpKernel;
using edgepipe::kernels::OpSite;
using edgepipe::kernels::OutputBuffer;
using edgepipe::kernels::Tensor;
using edgepipe::ops::SparseGruKernel;
using edgepipe::runtime::InputShape;
using edgepipe::runtime::ParseInputShapes;
using edgepipe::runtime::Runtime;
using edgepipe::runtime::RuntimeOptions;

#define EXPECT_HAS(text, needle) EXPECT_PRED_FORMAT2(::testing::IsSubstring, (needle), (text))

const char kData[] = "tflite/runtime/testdata/";

std::string Path(const std::string& name) { return kData + name; }

std::vector<char> ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// expected.txt: lines "name v0 v1 ...".
std::vector<float> Expected(const std::string& key) {
  std::ifstream file(Path("expected.txt"));
  std::string text;
  while (std::getline(file, text)) {
    std::istringstream line(text);
    std::string name;
    line >> name;
    if (name != key) continue;
    std::vector<float> values;
    for (std::string word; line >> word;) values.push_back(std::stof(word));
    return values;
  }
  ADD_FAILURE() << "expected.txt has no line '" << key << "'";
  return {};
}

// y = x W^T + b for the test model's op turned custom ("EdgepipeTestLinear"):
// x [N, F], W [O, F], b [O] -> y [N, O].
class LinearKernel : public OpKernel {
 public:
  explicit LinearKernel(const KernelConfig& config) : threads(config.num_threads) {}

  std::string Validate(const OpSite& site) override {
    if (reject) return "rejected by the test";
    if (site.inputs.size() != 3 || site.outputs.size() != 1) return "expects 3 inputs, 1 output";
    const Tensor& w = site.inputs[1];
    const Tensor& b = site.inputs[2];
    if (!w.data || w.type != ElementType::kFloat32 || w.dims.size() != 2 ||
        w.size != 4u * static_cast<size_t>(w.dims[0]) * static_cast<size_t>(w.dims[1])) {
      return "weights must be a constant float32 matrix";
    }
    if (!b.data || b.size != 4u * static_cast<size_t>(w.dims[0])) return "bad bias";
    return "";
  }

  std::string Prepare(const std::vector<std::vector<int32_t>>& input_dims,
                      std::vector<std::vector<int32_t>>* output_dims) override {
    ++prepares;
    if (fail_prepare) return "prepare refused by the test";
    if (input_dims.size() != 3 || input_dims[0].size() != 2 || input_dims[1].size() != 2) {
      return "unexpected input shapes";
    }
    *output_dims = {{input_dims[0][0], input_dims[1][0]}};
    return "";
  }

  std::string Run(const std::vector<Tensor>& inputs,
                  const std::vector<OutputBuffer>& outputs) override {
    ++runs;
    if (fail_run) return "asked to fail";
    if (inputs.size() != 3 || outputs.size() != 1 || inputs[0].dims.size() != 2 ||
        inputs[1].dims.size() != 2) {
      return "unexpected tensors";
    }
    const int32_t rows = inputs[0].dims[0], features = inputs[0].dims[1];
    const int32_t units = inputs[1].dims[0];
    const auto* x = static_cast<const float*>(inputs[0].data);
    const auto* w = static_cast<const float*>(inputs[1].data);
    const auto* b = static_cast<const float*>(inputs[2].data);
    auto* y = static_cast<float*>(outputs[0].data);
    if (!x || !w || !b || !y || inputs[1].dims[1] != features ||
        outputs[0].size < 4u * static_cast<size_t>(rows) * static_cast<size_t>(units)) {
      return "tensors do not fit";
    }
    for (int32_t n = 0; n < rows; ++n) {
      for (int32_t o = 0; o < units; ++o) {
        float sum = b[o];
        for (int32_t i = 0; i < features; ++i) sum += x[n * features + i] * w[o * features + i];
        y[n * units + o] = sum;
      }
    }
    return "";
  }

  const int threads;
  bool reject = false;
  bool fail_prepare = false;
  bool fail_run = false;
  int prepares = 0;
  int runs = 0;
};

// A registration's create() is a plain function: what the next LinearKernel
// does is set here before Runtime::Open, and every kernel created is
// recorded (the runtimes own them; a test reads a pointer while its runtime
// is open).
struct LinearBehaviour {
  bool reject = false;
  bool fail_prepare = false;
};
LinearBehaviour next_linear;
std::vector<LinearKernel*> linear_kernels;
std::vector<SparseGruKernel*> gru_kernels;

std::unique_ptr<OpKernel> CreateLinear(const KernelConfig& config) {
  auto kernel = std::make_unique<LinearKernel>(config);
  kernel->reject = next_linear.reject;
  kernel->fail_prepare = next_linear.fail_prepare;
  linear_kernels.push_back(kernel.get());
  return kernel;
}

// The project's SparseGRU kernel, recorded.
std::unique_ptr<OpKernel> CreateRecordedGru(const KernelConfig& config) {
  std::unique_ptr<OpKernel> kernel = edgepipe::ops::SparseGruRegistration().create(config);
  gru_kernels.push_back(dynamic_cast<SparseGruKernel*>(kernel.get()));
  return kernel;
}

const std::vector<KernelRegistration> kTestKernels = {
    {"EdgepipeTestLinear", 1, CreateLinear},
    {"SparseGRU", 1, CreateRecordedGru},
};

RuntimeOptions TestOptions(int num_threads = 1) {
  RuntimeOptions options;
  options.num_threads = num_threads;
  options.kernels = &kTestKernels;
  return options;
}

std::unique_ptr<Runtime> Open(const std::string& name, const RuntimeOptions& options,
                              std::string* error) {
  return Runtime::Open(Path(name), nullptr, 0, options, error);
}

std::string OpenError(const std::string& name, const RuntimeOptions& options = RuntimeOptions()) {
  std::string error;
  auto runtime = Open(name, options, &error);
  return runtime ? std::string("<opened>") : error;
}

// Writes the input `x_key`, runs, and compares the output with `y_key`.
::testing::AssertionResult RunAndCompare(Runtime& runtime, const std::string& x_key,
                                         const std::string& y_key, float tolerance = 1e-5f) {
  const std::vector<float> x = Expected(x_key);
  const std::vector<float> want = Expected(y_key);
  if (runtime.inputs().size() != 1 || runtime.outputs().size() != 1 ||
      runtime.inputs()[0].bytes != x.size() * 4 || runtime.outputs()[0].bytes != want.size() * 4) {
    return ::testing::AssertionFailure()
           << x_key << ": tensor sizes " << runtime.inputs()[0].bytes << " and "
           << runtime.outputs()[0].bytes << " bytes, expected " << x.size() * 4 << " and "
           << want.size() * 4;
  }
  std::memcpy(runtime.input_data(0), x.data(), x.size() * 4);
  std::string error;
  if (!runtime.Run(&error)) return ::testing::AssertionFailure() << x_key << ": " << error;
  if (!error.empty()) {
    return ::testing::AssertionFailure() << x_key << ": a good run left the error '" << error << "'";
  }
  const float* y = static_cast<const float*>(runtime.output_data(0));
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(std::fabs(y[i] - want[i]) <= tolerance)) {
      return ::testing::AssertionFailure()
             << y_key << ": output " << i << " = " << y[i] << ", expected " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    next_linear = LinearBehaviour();
    linear_kernels.clear();
    gru_kernels.clear();
  }
};

// ---- stock ops ----------------------------------------------------------

TEST_F(RuntimeTest, FloatModelFromFileAndBuffer) {
  std::string error;
  auto from_file = Open("linear_float.tflite", RuntimeOptions(), &error);
  ASSERT_TRUE(from_file) << error;
  EXPECT_TRUE(RunAndCompare(*from_file, "input", "output"));
  EXPECT_EQ(from_file->inputs()[0].element_type, kLiteRtElementTypeFloat32);
  EXPECT_EQ(from_file->inputs()[0].dims, std::vector<int32_t>({1, 4}));

  const std::vector<char> bytes = ReadFile(Path("linear_float.tflite"));
  RuntimeOptions options;
  options.num_threads = 2;
  auto from_buffer = Runtime::Open("", bytes.data(), bytes.size(), options, &error);
  ASSERT_TRUE(from_buffer) << error;
  EXPECT_TRUE(RunAndCompare(*from_buffer, "input", "output"));
}

TEST_F(RuntimeTest, Int8Model) {
  std::string error;
  auto runtime = Open("linear_int8.tflite", RuntimeOptions(), &error);
  ASSERT_TRUE(runtime) << error;
  EXPECT_EQ(runtime->inputs()[0].element_type, kLiteRtElementTypeInt8);
  EXPECT_EQ(runtime->outputs()[0].element_type, kLiteRtElementTypeInt8);
  EXPECT_EQ(runtime->outputs()[0].bytes, 3u);
  EXPECT_TRUE(runtime->Run(&error)) << error;
}

// ---- custom ops through the test kernel ----------------------------------

// The project's kernels only: refused before compiling, naming the op.
TEST_F(RuntimeTest, CustomOpWithoutKernelIsRefused) {
  const std::string error = OpenError("linear_custom_aligned.tflite");
  EXPECT_HAS(error, "custom op 'EdgepipeTestLinear'");
  EXPECT_HAS(error, "no kernel");
  EXPECT_HAS(error, "registered: SparseGRU");
}

// The converter's unaligned constants never reach a kernel: refused.
TEST_F(RuntimeTest, UnalignedConstantsAreRefused) {
  EXPECT_HAS(OpenError("linear_custom.tflite", TestOptions()), "not 64-byte aligned");
}

TEST_F(RuntimeTest, CustomOpRunsItsKernel) {
  std::string error;
  auto runtime = Open("linear_custom_aligned.tflite", TestOptions(3), &error);
  ASSERT_TRUE(runtime) << error;
  ASSERT_EQ(linear_kernels.size(), 1u) << "one kernel object for the model";
  LinearKernel* kernel = linear_kernels[0];
  EXPECT_EQ(kernel->threads, 3) << "the model's thread count";
  EXPECT_TRUE(RunAndCompare(*runtime, "input", "output"));
  EXPECT_EQ(kernel->runs, 1);

  kernel->fail_run = true;
  std::string run_error;
  EXPECT_FALSE(runtime->Run(&run_error)) << "a failing kernel must fail the run";
  EXPECT_HAS(run_error, "EdgepipeTestLinear");
  EXPECT_HAS(run_error, "asked to fail");
  // Reported once: the next good run has no error left over.
  kernel->fail_run = false;
  EXPECT_TRUE(RunAndCompare(*runtime, "input", "output"));
}

TEST_F(RuntimeTest, ValidationErrorFailsTheLoad) {
  next_linear.reject = true;
  EXPECT_HAS(OpenError("linear_custom_aligned.tflite", TestOptions()),
             "failed validation: rejected by the test");
}

// 4. What a kernel records while LiteRT asks for the output shapes fails the
// load with the kernel's message (LiteRT itself drops the status).
TEST_F(RuntimeTest, PrepareErrorsFailTheLoad) {
  next_linear.fail_prepare = true;
  std::string error;
  auto runtime = Open("linear_custom_aligned.tflite", TestOptions(), &error);
  EXPECT_FALSE(runtime);
  EXPECT_HAS(error, "cannot compile the model: custom op 'EdgepipeTestLinear': "
                    "prepare refused by the test");
  ASSERT_EQ(linear_kernels.size(), 1u);
}

// LiteRT shows the kernel 3 inputs and would crash at run on the hidden -1.
TEST_F(RuntimeTest, AbsentInputIsRefusedBeforeCompiling) {
  EXPECT_HAS(OpenError("linear_custom_absent.tflite", TestOptions()),
             "subgraph 0, op 0 (custom op 'EdgepipeTestLinear'): input 3 is -1");
  EXPECT_TRUE(linear_kernels.empty()) << "no kernel is created for a model refused by its checks";
}

// 3. A run error belongs to the model whose kernel failed: the same op in
// another model, and a SparseGRU model, run cleanly after it.
TEST_F(RuntimeTest, OneModelsErrorIsNotReportedByAnother) {
  std::string error;
  auto a = Open("linear_custom_aligned.tflite", TestOptions(), &error);
  ASSERT_TRUE(a) << error;
  auto b = Open("linear_custom_aligned.tflite", TestOptions(), &error);
  ASSERT_TRUE(b) << error;
  auto gru = Open("gru_b.tflite", TestOptions(), &error);
  ASSERT_TRUE(gru) << error;
  ASSERT_EQ(linear_kernels.size(), 2u) << "one kernel object per model";
  ASSERT_NE(linear_kernels[0], linear_kernels[1]);
  linear_kernels[0]->fail_run = true;

  std::string a_error;
  EXPECT_FALSE(a->Run(&a_error));
  EXPECT_HAS(a_error, "asked to fail");
  std::string b_error;
  EXPECT_TRUE(b->Run(&b_error)) << b_error;
  EXPECT_EQ(b_error, "");
  EXPECT_EQ(linear_kernels[1]->runs, 1);
  EXPECT_TRUE(RunAndCompare(*b, "input", "output"));
  EXPECT_TRUE(RunAndCompare(*gru, "gru_b_x0", "gru_b_y0"));
  // a's error stays a's: it fails again, b still does not.
  a_error.clear();
  EXPECT_FALSE(a->Run(&a_error));
  EXPECT_HAS(a_error, "asked to fail");
  EXPECT_TRUE(RunAndCompare(*b, "input", "output"));
}

// ---- SparseGRU models -----------------------------------------------------

// 1. Two SparseGRU models in one process, 1 and 2 threads: each has its own
// kernel object running at its model's count, and runs that interleave give
// each model's outputs.
TEST_F(RuntimeTest, SparseGruModelsKeepTheirOwnThreadCounts) {
  std::string error;
  auto a = Open("gru_a.tflite", TestOptions(1), &error);
  ASSERT_TRUE(a) << error;
  auto b = Open("gru_b.tflite", TestOptions(2), &error);
  ASSERT_TRUE(b) << error;
  ASSERT_EQ(gru_kernels.size(), 2u) << "one kernel object per model";
  ASSERT_NE(gru_kernels[0], nullptr);
  ASSERT_NE(gru_kernels[1], nullptr);
  EXPECT_NE(gru_kernels[0], gru_kernels[1]);
  EXPECT_EQ(gru_kernels[0]->threads(), 1);
  EXPECT_EQ(gru_kernels[1]->threads(), 2);
  EXPECT_EQ(a->outputs()[0].dims, std::vector<int32_t>({1, 3, 5}));
  EXPECT_EQ(b->outputs()[0].dims, std::vector<int32_t>({1, 6}));
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    EXPECT_TRUE(RunAndCompare(*a, "gru_a_x0", "gru_a_y0"));
    EXPECT_TRUE(RunAndCompare(*b, "gru_b_x0", "gru_b_y0"));
    EXPECT_TRUE(RunAndCompare(*b, "gru_b_x1", "gru_b_y1"));
    EXPECT_TRUE(RunAndCompare(*a, "gru_a_x1", "gru_a_y1"));
  }
  EXPECT_EQ(gru_kernels[0]->threads(), 1);
  EXPECT_EQ(gru_kernels[1]->threads(), 2);
}

// 2. Closing one model leaves the other's kernel and its repacked R alone.
TEST_F(RuntimeTest, ClosingOneModelKeepsTheOthersPacks) {
  std::string error;
  auto a = Open("gru_a.tflite", TestOptions(1), &error);
  ASSERT_TRUE(a) << error;
  auto b = Open("gru_b.tflite", TestOptions(2), &error);
  ASSERT_TRUE(b) << error;
  ASSERT_EQ(gru_kernels.size(), 2u);
  SparseGruKernel* b_kernel = gru_kernels[1];
  ASSERT_TRUE(RunAndCompare(*a, "gru_a_x0", "gru_a_y0"));
  ASSERT_TRUE(RunAndCompare(*b, "gru_b_x0", "gru_b_y0"));
  // gru_b's R is csr: its run made one pack, kept in b's kernel only.
  EXPECT_EQ(b_kernel->scratch().packs.size(), 1u);
  EXPECT_EQ(gru_kernels[0]->scratch().packs.size(), 1u);

  a.reset();
  EXPECT_EQ(b_kernel->scratch().packs.size(), 1u) << "closing a emptied b's packs";
  EXPECT_TRUE(RunAndCompare(*b, "gru_b_x1", "gru_b_y1"));
  EXPECT_EQ(b_kernel->scratch().packs.size(), 1u);
}

// 5. The declared output shape of a SparseGRU op must be the one its options
// and x give: refused at load, naming the output.
TEST_F(RuntimeTest, SparseGruOutputShapeMustMatchItsOptions) {
  const std::string message =
      "custom op 'SparseGRU' (subgraph 0, op 0) failed validation: output 0 ('gru_a') is "
      "declared float32 [1, 3, 6], but x [1, 3, 4] with units 5 and return_sequences true give "
      "float32 [1, 3, 5]";
  EXPECT_HAS(OpenError("gru_bad_output.tflite"), message);  // the project's kernels
  EXPECT_HAS(OpenError("gru_bad_output.tflite", TestOptions()), message);
}

// The project's registry runs SparseGRU models without any test kernel.
TEST_F(RuntimeTest, ProjectKernelsRunSparseGru) {
  std::string error;
  auto runtime = Open("gru_a.tflite", RuntimeOptions(), &error);
  ASSERT_TRUE(runtime) << error;
  EXPECT_TRUE(RunAndCompare(*runtime, "gru_a_x1", "gru_a_y1"));
  EXPECT_TRUE(gru_kernels.empty());
}

// ---- dynamic inputs (6.) ---------------------------------------------------

TEST_F(RuntimeTest, DynamicBatchIsOneByDefault) {
  std::string error;
  auto runtime = Open("linear_dynamic.tflite", RuntimeOptions(), &error);
  ASSERT_TRUE(runtime) << error;
  ASSERT_EQ(runtime->inputs().size(), 1u);
  EXPECT_EQ(runtime->inputs()[0].name, "x");
  EXPECT_EQ(runtime->inputs()[0].dims, std::vector<int32_t>({1, 4}));
  EXPECT_EQ(runtime->outputs()[0].dims, std::vector<int32_t>({1, 3}));
  EXPECT_TRUE(RunAndCompare(*runtime, "input", "output"));
}

TEST_F(RuntimeTest, DynamicBatchTakesTheGivenShape) {
  RuntimeOptions options;
  options.input_shapes = {{"x", {3, 4}}};
  std::string error;
  auto runtime = Open("linear_dynamic.tflite", options, &error);
  ASSERT_TRUE(runtime) << error;
  EXPECT_EQ(runtime->inputs()[0].dims, std::vector<int32_t>({3, 4}));
  EXPECT_EQ(runtime->inputs()[0].bytes, 3u * 4 * 4);
  EXPECT_EQ(runtime->outputs()[0].dims, std::vector<int32_t>({3, 3}));
  EXPECT_TRUE(RunAndCompare(*runtime, "dynamic_x", "dynamic_y"));
}

TEST_F(RuntimeTest, FixedDimensionsAndUnknownInputsAreRefused) {
  RuntimeOptions options;
  options.input_shapes = {{"x", {3, 5}}};
  EXPECT_HAS(OpenError("linear_dynamic.tflite", options),
             "input 0 ('x') has shape [-1, 4]: dimension 1 is fixed at 4; only dynamic (-1) "
             "dimensions can be resized");
  // A fixed model cannot be resized either.
  std::string error;
  auto fixed = Open("linear_float.tflite", RuntimeOptions(), &error);
  ASSERT_TRUE(fixed) << error;
  const std::string name = fixed->inputs()[0].name;
  options.input_shapes = {{name, {2, 4}}};
  EXPECT_HAS(OpenError("linear_float.tflite", options),
             "input 0 ('" + name + "') has shape [1, 4]: dimension 0 is fixed at 1");
  options.input_shapes = {{name, {1, 4}}};  // the fixed size itself is fine
  EXPECT_EQ(OpenError("linear_float.tflite", options), "<opened>");
  options.input_shapes = {{"x", {3, 4, 1}}};
  EXPECT_HAS(OpenError("linear_dynamic.tflite", options),
             "input 0 ('x') has rank 2 [-1, 4]; --input_layer_shape gives [3, 4, 1]");
  options.input_shapes = {{"image", {3, 4}}};
  EXPECT_HAS(OpenError("linear_dynamic.tflite", options),
             "--input_layer names 'image', which is not an input of the model (inputs: x)");
}

TEST(ParseInputShapesTest, ReadsNamesAndShapes) {
  std::vector<InputShape> shapes = {{"stale", {1}}};
  EXPECT_EQ(ParseInputShapes("", "", &shapes), "");
  EXPECT_TRUE(shapes.empty());
  ASSERT_EQ(ParseInputShapes("x,mask", "3,4:1,20,1", &shapes), "");
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(shapes[0].name, "x");
  EXPECT_EQ(shapes[0].dims, std::vector<int32_t>({3, 4}));
  EXPECT_EQ(shapes[1].name, "mask");
  EXPECT_EQ(shapes[1].dims, std::vector<int32_t>({1, 20, 1}));
  ASSERT_EQ(ParseInputShapes("x", "1,2,3,4,5,6,7,8", &shapes), "");
  EXPECT_EQ(shapes[0].dims.size(), 8u);
}

TEST(ParseInputShapesTest, RefusesWhatIsNotAShapeList) {
  std::vector<InputShape> shapes;
  EXPECT_HAS(ParseInputShapes("x", "", &shapes), "go together");
  EXPECT_HAS(ParseInputShapes("", "1,4", &shapes), "go together");
  EXPECT_HAS(ParseInputShapes("x,y", "1,4", &shapes),
             "--input_layer names 2 input(s) but --input_layer_shape gives 1 shape(s)");
  EXPECT_HAS(ParseInputShapes("x", "1,4:2", &shapes), "names 1 input(s)");
  EXPECT_HAS(ParseInputShapes("x,", "1:2", &shapes), "--input_layer has an empty name");
  EXPECT_HAS(ParseInputShapes("x,x", "1:2", &shapes), "--input_layer names 'x' twice");
  for (const char* bad : {"0,4", "-1,4", "a", "1,,4", "1,4,", "", "1.5", "4x", "1073741825",
                          "99999999999999999999", "1,2,3,4,5,6,7,8,9"}) {
    EXPECT_HAS(ParseInputShapes("x,y", std::string("1:") + bad, &shapes),
               "' for input 'y' is not a list of 1 to 8 positive dimensions")
        << "'" << bad << "'";
  }
}

// ---- the model checks and damaged files ------------------------------------

TEST(ModelChecksTest, AcceptsTheTestModels) {
  for (const char* name : {"linear_float.tflite", "linear_int8.tflite", "linear_custom.tflite",
                           "linear_custom_aligned.tflite", "linear_dynamic.tflite", "gru_a.tflite",
                           "gru_b.tflite", "gru_bad_output.tflite"}) {
    const std::vector<char> bytes = ReadFile(Path(name));
    ASSERT_FALSE(bytes.empty()) << name;
    edgepipe::runtime::ModelSummary summary;
    EXPECT_EQ(edgepipe::runtime::CheckModel(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            bytes.size(), &summary),
              "")
        << name;
  }
}

// Every cut and a scrambled copy: a message, never a read past the end.
TEST(ModelChecksTest, RefusesEveryCut) {
  const std::vector<char> bytes = ReadFile(Path("linear_custom_absent.tflite"));
  ASSERT_FALSE(bytes.empty());
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  edgepipe::runtime::ModelSummary summary;
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    const std::vector<uint8_t> head(data, data + cut);
    EXPECT_NE(edgepipe::runtime::CheckModel(head.data(), head.size(), &summary), "")
        << "cut at " << cut << " accepted";
  }
  std::vector<uint8_t> scrambled(data, data + bytes.size());
  for (size_t i = 0; i < scrambled.size(); i += 3) scrambled[i] ^= 0x5A;
  edgepipe::runtime::CheckModel(scrambled.data(), scrambled.size(), &summary);
}

TEST_F(RuntimeTest, MissingAndForeignFilesAreRefused) {
  EXPECT_HAS(OpenError("missing.tflite"), "cannot open");
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string garbage = std::string(tmp ? tmp : "/tmp") + "/garbage.tflite";
  {
    std::ofstream out(garbage, std::ios::binary);
    out << "this is not a model at all";
  }
  std::string error;
  EXPECT_FALSE(Runtime::Open(garbage, nullptr, 0, RuntimeOptions(), &error));
  EXPECT_HAS(error, "TFL3");
  EXPECT_FALSE(Runtime::Open("", nullptr, 0, RuntimeOptions(), &error));
  EXPECT_HAS(error, "no model given");
}

// A real header followed by damage at every cut: refused, never a crash.
TEST_F(RuntimeTest, DamagedModelsAreRefused) {
  const std::vector<char> bytes = ReadFile(Path("linear_float.tflite"));
  ASSERT_FALSE(bytes.empty());
  for (size_t cut = 8; cut < bytes.size(); cut += 37) {
    std::string error;
    auto runtime = Runtime::Open("", bytes.data(), cut, RuntimeOptions(), &error);
    EXPECT_FALSE(runtime) << "truncated at " << cut << " accepted";
    EXPECT_NE(error, "") << "truncated at " << cut;
  }
  std::vector<char> scrambled = bytes;
  for (size_t i = 8; i < scrambled.size(); i += 5) scrambled[i] = static_cast<char>(0xA5);
  std::string error;
  auto runtime = Runtime::Open("", scrambled.data(), scrambled.size(), RuntimeOptions(), &error);
  EXPECT_FALSE(runtime) << "scrambled model accepted";
  EXPECT_NE(error, "");
}

TEST_F(RuntimeTest, ThreadCountIsChecked) {
  RuntimeOptions options;
  options.num_threads = 0;
  EXPECT_HAS(OpenError("linear_float.tflite", options), "num_threads must be between 1 and 256");
  options.num_threads = 257;
  EXPECT_HAS(OpenError("linear_float.tflite", options), "num_threads");
}

}  // namespace
