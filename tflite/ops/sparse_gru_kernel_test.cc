// SparseGRU kernel without LiteRT in the loop: the options parser on real and
// hand-damaged flexbuffers, every validation check on in-memory inputs, the
// kernel object's Validate / Prepare / Run as the runtime drives them, and
// the computation against hand-computed values and against its own dense
// float32 path (CSR = dense, int8 = dequantized float), and each
// instruction-set variant against a scalar reference. Models through LiteRT
// are tested in tflite/runtime/litert_runtime_test.cc and from Python
// (tests/test_sparse_gru_kernel.py).

#include "tflite/ops/sparse_gru_kernel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using edgepipe::kernels::ElementType;
using edgepipe::kernels::KernelConfig;
using edgepipe::kernels::OpSite;
using edgepipe::kernels::OutputBuffer;
using edgepipe::ops::CheckSparseGru;
using edgepipe::ops::ComputeSparseGru;
using edgepipe::ops::GruFormat;
using edgepipe::ops::GruPrecision;
using edgepipe::ops::GruProblem;
using edgepipe::ops::GruScratch;
using edgepipe::ops::GruTensor;
using edgepipe::ops::ParseSparseGruOptions;
using edgepipe::ops::SparseGruKernel;
using edgepipe::ops::SparseGruOptions;

// EXPECT_PRED_FORMAT2 prints both strings when the needle is missing.
#define EXPECT_HAS(text, needle) EXPECT_PRED_FORMAT2(::testing::IsSubstring, (needle), (text))

// flexbuffers.Dumps({"version": 1, "units": 2, "input_size": 3, "reset_after":
// False, "return_sequences": True, "precision": "int8", "format": "dense"})
// from the Python flatbuffers package (1-byte widths).
const std::vector<uint8_t> kPythonDense = {
    0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x75, 0x6e, 0x69, 0x74, 0x73, 0x00, 0x69,
    0x6e, 0x70, 0x75, 0x74, 0x5f, 0x73, 0x69, 0x7a, 0x65, 0x00, 0x72, 0x65, 0x73, 0x65, 0x74,
    0x5f, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x72, 0x65, 0x74, 0x75, 0x72, 0x6e, 0x5f, 0x73,
    0x65, 0x71, 0x75, 0x65, 0x6e, 0x63, 0x65, 0x73, 0x00, 0x70, 0x72, 0x65, 0x63, 0x69, 0x73,
    0x69, 0x6f, 0x6e, 0x00, 0x04, 0x69, 0x6e, 0x74, 0x38, 0x00, 0x66, 0x6f, 0x72, 0x6d, 0x61,
    0x74, 0x00, 0x05, 0x64, 0x65, 0x6e, 0x73, 0x65, 0x00, 0x07, 0x0f, 0x48, 0x21, 0x3f, 0x34,
    0x52, 0x5b, 0x07, 0x01, 0x07, 0x11, 0x03, 0x20, 0x00, 0x01, 0x02, 0x01, 0x14, 0x04, 0x14,
    0x68, 0x68, 0x04, 0x04, 0x0e, 0x24, 0x01};

// The same for units 300, input_size 1000, reset_after True, return_sequences
// False, "float32", "csr": the map is written with 2-byte widths.
const std::vector<uint8_t> kPythonCsrWide = {
    0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x75, 0x6e, 0x69, 0x74, 0x73, 0x00, 0x69,
    0x6e, 0x70, 0x75, 0x74, 0x5f, 0x73, 0x69, 0x7a, 0x65, 0x00, 0x72, 0x65, 0x73, 0x65, 0x74,
    0x5f, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x72, 0x65, 0x74, 0x75, 0x72, 0x6e, 0x5f, 0x73,
    0x65, 0x71, 0x75, 0x65, 0x6e, 0x63, 0x65, 0x73, 0x00, 0x70, 0x72, 0x65, 0x63, 0x69, 0x73,
    0x69, 0x6f, 0x6e, 0x00, 0x07, 0x66, 0x6c, 0x6f, 0x61, 0x74, 0x33, 0x32, 0x00, 0x66, 0x6f,
    0x72, 0x6d, 0x61, 0x74, 0x00, 0x03, 0x63, 0x73, 0x72, 0x00, 0x07, 0x0d, 0x49, 0x22, 0x40,
    0x35, 0x53, 0x5c, 0x00, 0x08, 0x00, 0x01, 0x00, 0x07, 0x00, 0x13, 0x00, 0xe8, 0x03, 0x27,
    0x00, 0x01, 0x00, 0x00, 0x00, 0x2c, 0x01, 0x01, 0x00, 0x14, 0x05, 0x14, 0x69, 0x69, 0x05,
    0x05, 0x15, 0x25, 0x01};

// A minimal flexbuffer map writer (1-byte widths) so tests can write what an
// encoder never would: wrong types, repeated keys, odd values.
struct FlexEntry {
  std::string key;
  int type;  // 1 int, 3 float, 5 string, 26 bool
  int64_t number;
  std::string text;
};

std::vector<uint8_t> Flex(const std::vector<FlexEntry>& entries) {
  std::vector<uint8_t> out;
  std::vector<size_t> key_at, text_at;
  for (const FlexEntry& e : entries) {
    key_at.push_back(out.size());
    out.insert(out.end(), e.key.begin(), e.key.end());
    out.push_back(0);
  }
  for (const FlexEntry& e : entries) {
    out.push_back(static_cast<uint8_t>(e.text.size()));
    text_at.push_back(out.size());
    out.insert(out.end(), e.text.begin(), e.text.end());
    out.push_back(0);
  }
  out.push_back(static_cast<uint8_t>(entries.size()));
  const size_t keys = out.size();
  for (size_t i = 0; i < entries.size(); ++i) {
    out.push_back(static_cast<uint8_t>(out.size() - key_at[i]));
  }
  out.push_back(static_cast<uint8_t>(out.size() - keys));  // keys vector offset
  out.push_back(1);                                        // keys width
  out.push_back(static_cast<uint8_t>(entries.size()));
  const size_t map = out.size();
  for (size_t i = 0; i < entries.size(); ++i) {
    const FlexEntry& e = entries[i];
    out.push_back(e.type == 5 ? static_cast<uint8_t>(out.size() - text_at[i])
                              : static_cast<uint8_t>(e.number));
  }
  for (const FlexEntry& e : entries) out.push_back(static_cast<uint8_t>(e.type << 2));
  out.push_back(static_cast<uint8_t>(out.size() - map));
  out.push_back(9 << 2);  // map, 1-byte elements
  out.push_back(1);       // root width
  return out;
}

std::vector<FlexEntry> GoodEntries() {
  return {{"version", 1, 1, ""},      {"units", 1, 2, ""},
          {"input_size", 1, 3, ""},   {"reset_after", 26, 1, ""},
          {"return_sequences", 26, 0, ""}, {"precision", 5, 0, "float32"},
          {"format", 5, 0, "csr"}};
}

std::string ParseError(const std::vector<uint8_t>& bytes) {
  SparseGruOptions options;
  return ParseSparseGruOptions(bytes.data(), bytes.size(), &options);
}

std::string ParseWith(const std::string& key, int type, int64_t number, const std::string& text) {
  std::vector<FlexEntry> entries = GoodEntries();
  for (FlexEntry& e : entries) {
    if (e.key == key) e = {key, type, number, text};
  }
  return ParseError(Flex(entries));
}

TEST(SparseGruOptionsTest, ReadsWhatPythonWrites) {
  SparseGruOptions options;
  ASSERT_EQ(ParseSparseGruOptions(kPythonDense.data(), kPythonDense.size(), &options), "");
  EXPECT_TRUE(options.units == 2 && options.input_size == 3 && !options.reset_after &&
              options.return_sequences && options.precision == GruPrecision::kInt8 &&
              options.format == GruFormat::kDense)
      << "python dense options read wrong";
  ASSERT_EQ(ParseSparseGruOptions(kPythonCsrWide.data(), kPythonCsrWide.size(), &options), "");
  EXPECT_TRUE(options.units == 300 && options.input_size == 1000 && options.reset_after &&
              !options.return_sequences && options.precision == GruPrecision::kFloat32 &&
              options.format == GruFormat::kCsr)
      << "python wide options read wrong";
  EXPECT_EQ(ParseError(Flex(GoodEntries())), "");
}

TEST(SparseGruOptionsTest, RefusesMissingExtraAndRepeatedKeys) {
  EXPECT_HAS(ParseError({}), "missing");
  std::vector<FlexEntry> entries = GoodEntries();
  entries.pop_back();
  EXPECT_HAS(ParseError(Flex(entries)), "'format' is missing");
  entries = GoodEntries();
  entries.push_back({"activation", 5, 0, "tanh"});
  EXPECT_HAS(ParseError(Flex(entries)), "unknown custom option 'activation'");
  entries = GoodEntries();
  entries.push_back({"units", 1, 2, ""});
  EXPECT_HAS(ParseError(Flex(entries)), "repeat the key 'units'");
}

TEST(SparseGruOptionsTest, RefusesWrongTypesAndValues) {
  EXPECT_HAS(ParseWith("version", 1, 2, ""), "format version 1 only");
  EXPECT_HAS(ParseWith("version", 5, 0, "1"), "'version' must be an int, got string");
  EXPECT_HAS(ParseWith("units", 1, 0, ""), "'units' is 0");
  EXPECT_HAS(ParseWith("units", 1, -3, ""), "'units' is -3");
  EXPECT_HAS(ParseWith("input_size", 26, 1, ""), "'input_size' must be an int, got bool");
  EXPECT_HAS(ParseWith("units", 3, 0, ""), "must be an int, got float");
  EXPECT_HAS(ParseWith("reset_after", 1, 1, ""), "'reset_after' must be a bool, got int");
  EXPECT_HAS(ParseWith("return_sequences", 26, 2, ""), "not a valid bool");
  EXPECT_HAS(ParseWith("precision", 5, 0, "float16"), "'precision' is 'float16'");
  EXPECT_HAS(ParseWith("format", 5, 0, "bsr"), "'format' is 'bsr'");
  EXPECT_HAS(ParseWith("format", 1, 0, ""), "'format' must be a string");
  std::vector<uint8_t> not_map = Flex(GoodEntries());
  not_map[not_map.size() - 2] = 1 << 2;  // an int root
  EXPECT_HAS(ParseError(not_map), "must be a flexbuffer map");
}

// Every truncation and every single-byte change: an answer, never a crash
// (the fuzz target goes further under AddressSanitizer).
TEST(SparseGruOptionsTest, DamagedBytesGiveAnAnswer) {
  const std::vector<uint8_t> good = Flex(GoodEntries());
  for (size_t cut = 0; cut < good.size(); ++cut) {
    std::vector<uint8_t> part(good.begin(), good.begin() + static_cast<long>(cut));
    EXPECT_NE(ParseError(part), "") << "truncated at " << cut << " accepted";
  }
  for (size_t i = 0; i < good.size(); ++i) {
    for (int v : {0x00, 0x07, 0x7f, 0xff}) {
      std::vector<uint8_t> bent = good;
      bent[i] = static_cast<uint8_t>(v);
      ParseError(bent);
    }
  }
}

// A GRU's stored arrays, owning their memory.
struct Model {
  SparseGruOptions options;
  int batch = 1, steps = 1;
  std::vector<float> x;
  std::vector<float> w_float, r_float;  // values, csr or dense
  std::vector<int8_t> w_int8, r_int8;
  std::vector<uint16_t> w_cols, r_cols;
  std::vector<int32_t> w_ptr, r_ptr;
  std::vector<float> w_scales, r_scales;
  std::vector<float> bias;
};

template <typename T>
GruTensor MakeTensor(ElementType type, std::vector<int32_t> dims, const std::vector<T>& data) {
  GruTensor t;
  t.type = type;
  t.dims = std::move(dims);
  t.data = data.empty() ? nullptr : data.data();
  t.size = data.size() * sizeof(T);
  return t;
}

// The op's inputs as the runtime hands them over: the present ones, in
// contract order.
std::vector<GruTensor> Inputs(const Model& m) {
  const auto& o = m.options;
  const int u = static_cast<int>(o.units), f = static_cast<int>(o.input_size);
  const bool csr = o.format == GruFormat::kCsr, int8 = o.precision == GruPrecision::kInt8;
  std::vector<GruTensor> in;
  in.push_back(MakeTensor(ElementType::kFloat32, {m.batch, m.steps, f}, m.x));
  auto matrix = [&](int cols, const std::vector<float>& vf, const std::vector<int8_t>& vi,
                    const std::vector<uint16_t>& c, const std::vector<int32_t>& p,
                    const std::vector<float>& s) {
    const int nnz = static_cast<int>(int8 ? vi.size() : vf.size());
    const std::vector<int32_t> dims = csr ? std::vector<int32_t>{nnz} : std::vector<int32_t>{3 * u, cols};
    in.push_back(int8 ? MakeTensor(ElementType::kInt8, dims, vi)
                      : MakeTensor(ElementType::kFloat32, dims, vf));
    if (csr) {
      in.push_back(MakeTensor(ElementType::kUInt16, {nnz}, c));
      in.push_back(MakeTensor(ElementType::kInt32, {3 * u + 1}, p));
    }
    if (int8) in.push_back(MakeTensor(ElementType::kFloat32, {3 * u}, s));
  };
  matrix(f, m.w_float, m.w_int8, m.w_cols, m.w_ptr, m.w_scales);
  matrix(u, m.r_float, m.r_int8, m.r_cols, m.r_ptr, m.r_scales);
  in.push_back(MakeTensor(ElementType::kFloat32,
                          o.reset_after ? std::vector<int32_t>{2, 3 * u} : std::vector<int32_t>{3 * u},
                          m.bias));
  return in;
}

// Fills a model from dense float matrices, keeping entries whose |value| is at
// least `threshold` (so some rows end up empty).
void Store(const std::vector<float>& dense, int rows, int cols, const SparseGruOptions& o,
           float threshold, std::vector<float>* vf, std::vector<int8_t>* vi,
           std::vector<uint16_t>* c, std::vector<int32_t>* p, std::vector<float>* s) {
  const bool csr = o.format == GruFormat::kCsr, int8 = o.precision == GruPrecision::kInt8;
  p->assign(1, 0);
  for (int row = 0; row < rows; ++row) {
    float scale = 1;
    if (int8) {
      float max_abs = 0;
      for (int j = 0; j < cols; ++j) max_abs = std::fmax(max_abs, std::fabs(dense[row * cols + j]));
      scale = max_abs > 0 ? max_abs / 127 : 1;
      s->push_back(scale);
    }
    for (int j = 0; j < cols; ++j) {
      const float v = dense[row * cols + j];
      if (csr && std::fabs(v) < threshold) continue;
      if (int8) {
        vi->push_back(static_cast<int8_t>(std::lround(v / scale)));
      } else {
        vf->push_back(v);
      }
      if (csr) c->push_back(static_cast<uint16_t>(j));
    }
    p->push_back(static_cast<int32_t>(int8 ? vi->size() : vf->size()));
  }
}

Model RandomModel(SparseGruOptions o, int batch, int steps, uint32_t seed, float threshold,
                  std::vector<float>* w_dense, std::vector<float>* r_dense) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-0.8f, 0.8f);
  Model m;
  m.options = o;
  m.batch = batch;
  m.steps = steps;
  const int u = static_cast<int>(o.units), f = static_cast<int>(o.input_size);
  m.x.resize(static_cast<size_t>(batch * steps * f));
  for (float& v : m.x) v = uniform(rng);
  w_dense->resize(static_cast<size_t>(3 * u * f));
  r_dense->resize(static_cast<size_t>(3 * u * u));
  for (float& v : *w_dense) v = uniform(rng);
  for (float& v : *r_dense) v = uniform(rng);
  for (int j = 0; j < f; ++j) (*w_dense)[static_cast<size_t>(j)] = 0;  // an empty row
  m.bias.resize(static_cast<size_t>((o.reset_after ? 6 : 3) * u));
  for (float& v : m.bias) v = uniform(rng);
  Store(*w_dense, 3 * u, f, o, threshold, &m.w_float, &m.w_int8, &m.w_cols, &m.w_ptr, &m.w_scales);
  Store(*r_dense, 3 * u, u, o, threshold, &m.r_float, &m.r_int8, &m.r_cols, &m.r_ptr, &m.r_scales);
  return m;
}

// Checks and runs `m` with `scratch` (kept packs and all).
std::vector<float> ComputeWith(const Model& m, GruScratch* scratch, std::string* error) {
  GruProblem problem;
  *error = CheckSparseGru(m.options, Inputs(m), 1, edgepipe::ops::GruCheck::kRun, &problem);
  if (!error->empty()) return {};
  const std::vector<int32_t> dims = edgepipe::ops::SparseGruOutputDims(problem);
  size_t n = 1;
  for (int32_t d : dims) n *= static_cast<size_t>(d);
  std::vector<float> out(n, -99.0f);
  ComputeSparseGru(problem, m.x.data(), out.data(), scratch);
  return out;
}

std::vector<float> Compute(const Model& m, std::string* error) {
  GruScratch scratch;
  return ComputeWith(m, &scratch, error);
}

float Sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

float MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
  return worst;
}

const char* Name(GruPrecision precision) {
  return precision == GruPrecision::kInt8 ? "int8" : "float32";
}
const char* Name(GruFormat format) { return format == GruFormat::kCsr ? "csr" : "dense"; }

TEST(SparseGruComputeTest, MatchesHandComputedSteps) {
  // One unit, one feature, two steps: W = (z 0.5, r -1, h 2), R = (z 1, r 0.5, h -1).
  for (bool reset_after : {true, false}) {
    SCOPED_TRACE(reset_after ? "reset_after" : "reset_before");
    Model m;
    m.options = {1, 1, reset_after, true, GruPrecision::kFloat32, GruFormat::kDense};
    m.steps = 2;
    m.x = {1.0f, -0.5f};
    m.w_float = {0.5f, -1.0f, 2.0f};
    m.r_float = {1.0f, 0.5f, -1.0f};
    m.bias = reset_after ? std::vector<float>{0.1f, 0.2f, 0.3f, -0.1f, 0.05f, 0.4f}
                         : std::vector<float>{0.1f, 0.2f, 0.3f};
    float h = 0;
    std::vector<float> want;
    for (float x : m.x) {
      float z, r, n;
      if (reset_after) {
        z = Sigmoid(0.5f * x + 0.1f + 1.0f * h - 0.1f);
        r = Sigmoid(-1.0f * x + 0.2f + 0.5f * h + 0.05f);
        n = std::tanh(2.0f * x + 0.3f + r * (-1.0f * h + 0.4f));
      } else {
        z = Sigmoid(0.5f * x + 0.1f + 1.0f * h);
        r = Sigmoid(-1.0f * x + 0.2f + 0.5f * h);
        n = std::tanh(2.0f * x + 0.3f + -1.0f * (r * h));
      }
      h = z * h + (1 - z) * n;
      want.push_back(h);
    }
    std::string error;
    const std::vector<float> got = Compute(m, &error);
    ASSERT_EQ(error, "");
    ASSERT_EQ(got.size(), 2u);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-6f) << "step " << i;
    }
    m.options.return_sequences = false;
    const std::vector<float> last = Compute(m, &error);
    ASSERT_EQ(last.size(), 1u) << "last state";
    EXPECT_NEAR(last[0], want[1], 1e-6f) << "last state";
  }
}

TEST(SparseGruComputeTest, CsrEqualsDenseAndInt8EqualsDequantized) {
  for (bool reset_after : {true, false}) {
    for (bool sequences : {true, false}) {
      SCOPED_TRACE(std::string("reset_after ") + (reset_after ? "1" : "0") +
                   " return_sequences " + (sequences ? "1" : "0"));
      SparseGruOptions dense_opts{5, 17, reset_after, sequences, GruPrecision::kFloat32,
                                  GruFormat::kDense};
      std::vector<float> w, r;
      // Dense weights with the small ones zeroed equal the CSR of threshold 0.4.
      Model csr = RandomModel({5, 17, reset_after, sequences, GruPrecision::kFloat32,
                               GruFormat::kCsr}, 3, 4, 7, 0.4f, &w, &r);
      for (float& v : w) v = std::fabs(v) < 0.4f ? 0 : v;
      for (float& v : r) v = std::fabs(v) < 0.4f ? 0 : v;
      Model dense = csr;
      dense.options = dense_opts;
      dense.w_float = w;
      dense.r_float = r;
      std::string e1, e2;
      const std::vector<float> a = Compute(csr, &e1), b = Compute(dense, &e2);
      EXPECT_EQ(e1, "");
      EXPECT_EQ(e2, "");
      EXPECT_LT(MaxDiff(a, b), 1e-5f) << "csr vs dense";
      EXPECT_EQ(a.size(), static_cast<size_t>(sequences ? 3 * 4 * 5 : 3 * 5));

      // int8: the same arrays dequantized to float32 give the same result.
      for (GruFormat format : {GruFormat::kCsr, GruFormat::kDense}) {
        Model q = RandomModel({5, 17, reset_after, sequences, GruPrecision::kInt8, format}, 2, 3,
                              11, 0.3f, &w, &r);
        Model f = q;
        f.options.precision = GruPrecision::kFloat32;
        f.w_scales.clear();
        f.r_scales.clear();
        // Row of stored value k: from row_ptr (csr) or k / cols (dense).
        auto dequant = [&](const std::vector<int8_t>& v, const std::vector<int32_t>& ptr,
                           const std::vector<float>& s, int cols) {
          std::vector<float> out(v.size());
          for (size_t k = 0; k < v.size(); ++k) {
            const size_t row =
                format == GruFormat::kCsr
                    ? static_cast<size_t>(std::upper_bound(ptr.begin(), ptr.end(),
                                                           static_cast<int32_t>(k)) -
                                          ptr.begin() - 1)
                    : k / static_cast<size_t>(cols);
            out[k] = v[k] * s[row];
          }
          return out;
        };
        f.w_float = dequant(q.w_int8, q.w_ptr, q.w_scales, 17);
        f.r_float = dequant(q.r_int8, q.r_ptr, q.r_scales, 5);
        const std::vector<float> qa = Compute(q, &e1), fa = Compute(f, &e2);
        EXPECT_EQ(e1, "");
        EXPECT_EQ(e2, "");
        EXPECT_LT(MaxDiff(qa, fa), 1e-5f) << "int8 vs dequantized, " << Name(format);
      }
    }
  }
}

// A scratch that served one csr model serves another from its own arrays:
// packs are told apart by the arrays they came from. Sizes span partial and
// several slices per gate; each csr result equals the dense one.
TEST(SparseGruComputeTest, PacksFollowTheirArrays) {
  for (int units : {5, 19}) {
    SCOPED_TRACE("units " + std::to_string(units));
    std::vector<float> w, r;
    const SparseGruOptions csr{units, 6, false, true, GruPrecision::kFloat32, GruFormat::kCsr};
    Model a = RandomModel(csr, 2, 3, 21, 0.4f, &w, &r);
    Model b = RandomModel(csr, 2, 3, 22, 0.4f, &w, &r);
    for (float& v : w) v = std::fabs(v) < 0.4f ? 0 : v;
    for (float& v : r) v = std::fabs(v) < 0.4f ? 0 : v;
    Model b_dense = b;
    b_dense.options.format = GruFormat::kDense;
    b_dense.w_float = w;
    b_dense.r_float = r;
    std::string error;
    const std::vector<float> want_a = Compute(a, &error);
    ASSERT_EQ(error, "");
    const std::vector<float> want_b = Compute(b_dense, &error);
    ASSERT_EQ(error, "");
    GruScratch shared;
    for (int round = 0; round < 2; ++round) {
      EXPECT_EQ(MaxDiff(ComputeWith(a, &shared, &error), want_a), 0) << "round " << round;
      EXPECT_EQ(error, "");
      EXPECT_LT(MaxDiff(ComputeWith(b, &shared, &error), want_b), 1e-5f) << "round " << round;
      EXPECT_EQ(error, "");
    }
    EXPECT_EQ(shared.packs.size(), 2u) << "packs for two models";
  }
  // The float rows of small dense int8 Rs are told apart the same way.
  std::vector<float> w, r;
  const SparseGruOptions dense{6, 4, true, true, GruPrecision::kInt8, GruFormat::kDense};
  const Model a = RandomModel(dense, 1, 3, 23, 0, &w, &r), b = RandomModel(dense, 1, 3, 24, 0, &w, &r);
  std::string error;
  const std::vector<float> want_a = Compute(a, &error), want_b = Compute(b, &error);
  ASSERT_EQ(error, "");
  GruScratch shared;
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(ComputeWith(a, &shared, &error), want_a) << "round " << round << ": float rows mixed up";
    EXPECT_EQ(ComputeWith(b, &shared, &error), want_b) << "round " << round << ": float rows mixed up";
    EXPECT_EQ(error, "");
  }
  EXPECT_EQ(shared.float_rows.size(), 2u) << "float rows for two models";
  shared.DropPacks();
  EXPECT_TRUE(shared.float_rows.empty() && shared.packs.empty()) << "DropPacks kept copies";
}

// The matrix a model stores, as dense doubles (int8: times the row scales).
std::vector<double> StoredDense(const Model& m, bool recurrent) {
  const auto& o = m.options;
  const int64_t rows = 3 * o.units, cols = recurrent ? o.units : o.input_size;
  const bool int8 = o.precision == GruPrecision::kInt8;
  const std::vector<float>& vf = recurrent ? m.r_float : m.w_float;
  const std::vector<int8_t>& vi = recurrent ? m.r_int8 : m.w_int8;
  const std::vector<uint16_t>& c = recurrent ? m.r_cols : m.w_cols;
  const std::vector<int32_t>& p = recurrent ? m.r_ptr : m.w_ptr;
  const std::vector<float>& s = recurrent ? m.r_scales : m.w_scales;
  std::vector<double> dense(static_cast<size_t>(rows * cols), 0.0);
  for (int64_t row = 0; row < rows; ++row) {
    for (int32_t k = p[row]; k < p[row + 1]; ++k) {
      const int64_t col = o.format == GruFormat::kCsr ? c[k] : k - p[row];
      dense[row * cols + col] = int8 ? vi[k] * static_cast<double>(s[row]) : vf[k];
    }
  }
  return dense;
}

// The GRU in doubles, scalar loops, from the stored matrices: the reference
// both instruction-set variants are held to.
std::vector<float> ScalarGru(const Model& m) {
  const auto& o = m.options;
  const int64_t u = o.units, f = o.input_size;
  const std::vector<double> w = StoredDense(m, false), r = StoredDense(m, true);
  // rows [g * u, (g + 1) * u) of M times v, plus bias[offset + row] when given
  auto gate = [](const std::vector<double>& mat, int64_t g, int64_t rows,
                 const std::vector<double>& v, const float* bias) {
    std::vector<double> out(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) {
      const double* row = &mat[(g * rows + i) * v.size()];
      out[i] = bias ? bias[g * rows + i] : 0.0;
      for (size_t j = 0; j < v.size(); ++j) out[i] += row[j] * v[j];
    }
    return out;
  };
  auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
  const float* b_h = o.reset_after ? m.bias.data() + 3 * u : nullptr;
  std::vector<float> out;
  for (int b = 0; b < m.batch; ++b) {
    std::vector<double> h(static_cast<size_t>(u), 0.0);
    for (int t = 0; t < m.steps; ++t) {
      const float* x_t = m.x.data() + (b * m.steps + t) * f;
      const std::vector<double> x(x_t, x_t + f);
      std::vector<double> z = gate(w, 0, u, x, m.bias.data()), rg = gate(w, 1, u, x, m.bias.data()),
                          n = gate(w, 2, u, x, m.bias.data());
      const std::vector<double> hz = gate(r, 0, u, h, b_h), hr = gate(r, 1, u, h, b_h);
      for (int64_t i = 0; i < u; ++i) {
        z[i] = sigmoid(z[i] + hz[i]);
        rg[i] = sigmoid(rg[i] + hr[i]);
      }
      std::vector<double> rh = h;
      if (!o.reset_after) {
        for (int64_t i = 0; i < u; ++i) rh[i] *= rg[i];
      }
      const std::vector<double> hn = gate(r, 2, u, rh, b_h);
      for (int64_t i = 0; i < u; ++i) {
        n[i] = std::tanh(n[i] + (o.reset_after ? rg[i] * hn[i] : hn[i]));
        h[i] = z[i] * h[i] + (1 - z[i]) * n[i];
      }
      if (o.return_sequences || t == m.steps - 1) out.insert(out.end(), h.begin(), h.end());
    }
  }
  return out;
}

// Each instruction-set variant this machine runs against the scalar
// reference, for every precision, format and gate form, at sizes where the
// vector loops, their tails and several slices per gate all run.
TEST(SparseGruComputeTest, VariantsMatchScalarReference) {
  typedef void (*Variant)(const GruProblem&, const float*, float*, GruScratch*,
                          edgepipe::ops::WorkerTeam*);
  std::vector<std::pair<const char*, Variant>> variants = {
      {"baseline", edgepipe::ops::baseline::ComputeSparseGru}};
#if defined(EDGEPIPE_GRU_AVX2)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    variants.push_back({"avx2", edgepipe::ops::avx2::ComputeSparseGru});
  }
#endif
  // 37 units: a dense int8 R small enough to run as float rows; 120: widened
  // as it is read.
  for (int units : {37, 120}) {
    for (GruPrecision precision : {GruPrecision::kFloat32, GruPrecision::kInt8}) {
      for (GruFormat format : {GruFormat::kDense, GruFormat::kCsr}) {
        for (bool reset_after : {true, false}) {
          std::vector<float> w, r;
          const Model m = RandomModel({units, 70, reset_after, true, precision, format}, 2, 13,
                                      31, 0.6f, &w, &r);
          const std::vector<float> want = ScalarGru(m);
          // float32 sums of 190 products of weights up to 0.8 round at ~1e-5
          const float tolerance = units < 100 ? 1e-5f : 1e-4f;
          for (const auto& [name, compute] : variants) {
            GruProblem problem;
            const std::string error = CheckSparseGru(m.options, Inputs(m), 1,
                                                     edgepipe::ops::GruCheck::kRun, &problem);
            std::vector<float> got(want.size(), -99.0f);
            GruScratch scratch;
            EXPECT_EQ(error, "");
            if (error.empty()) compute(problem, m.x.data(), got.data(), &scratch, nullptr);
            EXPECT_LT(MaxDiff(got, want), tolerance)
                << name << ", " << Name(precision) << " " << Name(format) << " reset_after "
                << reset_after << " units " << units;
          }
        }
      }
    }
  }
}

// A team runs every part of every phase, part 0 on the caller.
TEST(WorkerTeamTest, RunsEveryPart) {
  for (int size : {1, 2, 4}) {
    edgepipe::ops::WorkerTeam team(size);
    std::vector<int> runs(static_cast<size_t>(size), 0);
    const std::thread::id caller = std::this_thread::get_id();
    bool part0_on_caller = true;
    for (int phase = 0; phase < 500; ++phase) {
      team.Run([&](int part) {
        ++runs[static_cast<size_t>(part)];
        if (part == 0) part0_on_caller = part0_on_caller && std::this_thread::get_id() == caller;
      });
    }
    EXPECT_EQ(team.size(), size);
    EXPECT_TRUE(part0_on_caller) << "size " << size;
    for (int part = 0; part < size; ++part) {
      EXPECT_EQ(runs[static_cast<size_t>(part)], 500) << "size " << size << " part " << part;
    }
  }
}

// Split among threads, every phase computes the same rows the same way: the
// results equal the single-threaded ones bit for bit, at sizes above
// kMinSplitWork for both the recurrence and the input projection.
TEST(SparseGruComputeTest, TeamsMatchOneThread) {
  for (GruPrecision precision : {GruPrecision::kFloat32, GruPrecision::kInt8}) {
    for (GruFormat format : {GruFormat::kDense, GruFormat::kCsr}) {
      for (bool reset_after : {true, false}) {
        std::vector<float> w, r;
        const Model m = RandomModel({128, 96, reset_after, true, precision, format}, 2, 5, 41,
                                    0.1f, &w, &r);
        std::string error;
        const std::vector<float> alone = Compute(m, &error);
        ASSERT_EQ(error, "");
        for (int threads : {2, 3}) {
          edgepipe::ops::WorkerTeam team(threads);
          GruProblem problem;
          error = CheckSparseGru(m.options, Inputs(m), 1, edgepipe::ops::GruCheck::kRun, &problem);
          ASSERT_EQ(error, "");
          std::vector<float> shared(alone.size(), -99.0f);
          GruScratch scratch;
          ComputeSparseGru(problem, m.x.data(), shared.data(), &scratch, &team);
          EXPECT_EQ(shared, alone) << threads << " threads, " << Name(precision) << " "
                                   << Name(format) << " reset_after " << reset_after
                                   << ": differs by " << MaxDiff(shared, alone);
        }
      }
    }
  }
}

std::string CheckError(const Model& m, std::vector<GruTensor> inputs, size_t outputs = 1) {
  return CheckSparseGru(m.options, inputs, outputs, edgepipe::ops::GruCheck::kPreflight, nullptr);
}

// A csr int8 model (every input present) and its checked inputs, for the
// validation tests to damage one input at a time.
class SparseGruCheckTest : public ::testing::Test {
 protected:
  SparseGruCheckTest() {
    std::vector<float> w, r;
    m_ = RandomModel({4, 6, true, false, GruPrecision::kInt8, GruFormat::kCsr}, 1, 2, 3, 0.3f,
                     &w, &r);
    good_ = Inputs(m_);
  }
  std::string With(size_t index, const GruTensor& t) const {
    std::vector<GruTensor> in = good_;
    in[index] = t;
    return CheckError(m_, in);
  }
  std::string RowPtrError(size_t at, int32_t value) const {
    std::vector<int32_t> ptr = m_.w_ptr;
    ptr[at] = value;
    return With(3, MakeTensor(ElementType::kInt32, {13}, ptr));
  }

  Model m_;
  std::vector<GruTensor> good_;
};

TEST_F(SparseGruCheckTest, AcceptsTheGoodModel) { EXPECT_EQ(CheckError(m_, good_), ""); }

TEST_F(SparseGruCheckTest, CountsInputsAndOutputs) {
  std::vector<GruTensor> fewer(good_.begin(), good_.end() - 1);
  EXPECT_HAS(CheckError(m_, fewer),
             "expects 10 inputs for format 'csr' and precision 'int8' (absent inputs left out), got 9");
  EXPECT_HAS(CheckError(m_, good_, 2), "expects 1 output");
}

TEST_F(SparseGruCheckTest, RefusesBadX) {
  GruTensor t = good_[0];
  t.type = ElementType::kInt8;
  EXPECT_HAS(With(0, t), "input 0 (x) must be float32, got int8");
  t = good_[0];
  t.dims = {1, 2, 7};
  EXPECT_HAS(With(0, t), "input 0 (x) has shape [1, 2, 7], expected rank 3 [?, ?, 6]");
  t.dims = {1, 6};
  EXPECT_HAS(With(0, t), "expected rank 3");
  t.dims = {0, 2, 6};
  t.data = nullptr;
  t.size = 0;
  EXPECT_HAS(With(0, t), "batch and time steps must be at least 1");
  t.dims = {1, -1, 6};
  EXPECT_HAS(With(0, t), "input 0 (x) has shape [1, -1, 6]");
}

TEST_F(SparseGruCheckTest, RefusesBadWeightArrays) {
  GruTensor t = good_[1];
  t.type = ElementType::kFloat32;
  EXPECT_HAS(With(1, t), "input 1 (w_values) must be int8, got float32");
  t = good_[1];
  t.data = nullptr;
  EXPECT_HAS(With(1, t), "input 1 (w_values) must be a constant tensor");
  t = good_[1];
  t.size -= 1;
  EXPECT_HAS(With(1, t), "input 1 (w_values) holds");
  t = good_[2];
  t.dims = {t.dims[0] + 1};
  EXPECT_HAS(With(2, t), "input 2 (w_col_indices) has shape");
  t = good_[2];
  t.type = ElementType::kInt32;
  EXPECT_HAS(With(2, t), "must be uint16");
  t = good_[3];
  t.dims = {3 * 4};
  EXPECT_HAS(With(3, t), "input 3 (w_row_ptr) has shape [12], expected rank 1 [13]");
}

// Row pointers and column indices: edited copies of the good arrays.
TEST_F(SparseGruCheckTest, RefusesBadRowPointersAndColumns) {
  const int32_t nnz = static_cast<int32_t>(m_.w_int8.size());
  EXPECT_HAS(RowPtrError(0, 1), "row_ptr[0] is 1, must be 0");
  EXPECT_HAS(RowPtrError(5, m_.w_ptr[4] - 1), "decreases at row 4");
  EXPECT_HAS(RowPtrError(5, nnz + 5), "is past nnz");
  EXPECT_HAS(RowPtrError(12, nnz - 1), "last entry is");
  std::vector<uint16_t> cols = m_.w_cols;
  const size_t row2 = static_cast<size_t>(m_.w_ptr[2]);
  ASSERT_GE(m_.w_ptr[3] - m_.w_ptr[2], 2) << "test needs two entries in row 2";
  cols[row2] = 6;
  EXPECT_HAS(With(2, MakeTensor(ElementType::kUInt16, {nnz}, cols)),
             "column 6 in row 2 is out of range (< 6)");
  cols = m_.w_cols;
  cols[row2 + 1] = cols[row2];
  EXPECT_HAS(With(2, MakeTensor(ElementType::kUInt16, {nnz}, cols)),
             "columns of row 2 are not strictly increasing");
  std::vector<uint16_t> r_cols = m_.r_cols;
  r_cols[0] = 4;  // R has U = 4 columns
  EXPECT_HAS(With(6, MakeTensor(ElementType::kUInt16, {static_cast<int32_t>(r_cols.size())},
                                r_cols)),
             "input 6 (r_col_indices): column 4");
}

TEST_F(SparseGruCheckTest, RefusesBadScalesAndBias) {
  std::vector<float> scales = m_.w_scales;
  scales[3] = NAN;
  EXPECT_HAS(With(4, MakeTensor(ElementType::kFloat32, {12}, scales)),
             "input 4 (w_scales): scale of row 3 is not finite");
  scales[3] = INFINITY;
  EXPECT_HAS(With(4, MakeTensor(ElementType::kFloat32, {12}, scales)), "not finite");
  EXPECT_HAS(With(8, GruTensor()), "input 8 (r_scales) must be float32, got another type");
  GruTensor t = good_[9];
  t.dims = {12};
  EXPECT_HAS(With(9, t), "(reset_after = true)");
}

// Options decide which inputs exist.
TEST_F(SparseGruCheckTest, OptionsDecideTheInputs) {
  Model f = m_;
  f.options.precision = GruPrecision::kFloat32;
  EXPECT_HAS(CheckError(f, good_), "expects 8 inputs for format 'csr' and precision 'float32'");
  Model d = m_;
  d.options.format = GruFormat::kDense;
  EXPECT_HAS(CheckError(d, good_), "expects 6 inputs for format 'dense' and precision 'int8'");
  std::vector<GruTensor> in = good_;
  in.erase(in.begin() + 6, in.begin() + 8);  // r's csr arrays
  in.erase(in.begin() + 2, in.begin() + 4);  // w's
  EXPECT_HAS(CheckError(d, in), "input 1 (w_values) has shape");
  Model no_reset = m_;
  no_reset.options.reset_after = false;
  EXPECT_HAS(CheckError(no_reset, good_), "(reset_after = false)");
}

// The model's x has no data before running; a run's must.
TEST_F(SparseGruCheckTest, XHasDataOnlyAtRun) {
  std::vector<GruTensor> in = good_;
  in[0].data = nullptr;
  EXPECT_EQ(CheckError(m_, in), "");
  EXPECT_HAS(CheckSparseGru(m_.options, in, 1, edgepipe::ops::GruCheck::kRun, nullptr),
             "input 0 (x) has no data");
}

// ---- the kernel object, as the runtime drives it (kernel_interface.h) ----

// The options as a flexbuffer (values below 128: Flex writes 1-byte ints).
std::vector<uint8_t> OptionsBytes(const SparseGruOptions& o) {
  return Flex({{"version", 1, 1, ""},
               {"units", 1, o.units, ""},
               {"input_size", 1, o.input_size, ""},
               {"reset_after", 26, o.reset_after ? 1 : 0, ""},
               {"return_sequences", 26, o.return_sequences ? 1 : 0, ""},
               {"precision", 5, 0, o.precision == GruPrecision::kInt8 ? "int8" : "float32"},
               {"format", 5, 0, o.format == GruFormat::kCsr ? "csr" : "dense"}});
}

std::vector<int32_t> OutputDims(const Model& m) {
  const auto u = static_cast<int32_t>(m.options.units);
  if (m.options.return_sequences) return {m.batch, m.steps, u};
  return {m.batch, u};
}

// The op as the runtime finds it at load: x without data, one declared
// output "y". `options` must outlive the site.
OpSite SiteOf(const Model& m, const std::vector<uint8_t>& options) {
  OpSite site;
  site.options = options.data();
  site.options_size = options.size();
  site.inputs = Inputs(m);
  site.inputs[0].data = nullptr;
  site.inputs[0].size = 0;
  GruTensor y;
  y.name = "y";
  y.type = ElementType::kFloat32;
  y.dims = OutputDims(m);
  site.outputs = {y};
  return site;
}

std::vector<std::vector<int32_t>> DimsOf(const std::vector<GruTensor>& tensors) {
  std::vector<std::vector<int32_t>> dims;
  for (const GruTensor& t : tensors) dims.push_back(t.dims);
  return dims;
}

// One run of the kernel on `inputs` into a buffer of `dims`; "" or the error.
std::string RunKernel(SparseGruKernel* kernel, const std::vector<GruTensor>& inputs,
                      const std::vector<int32_t>& dims, std::vector<float>* out) {
  size_t n = 1;
  for (int32_t d : dims) n *= static_cast<size_t>(d);
  out->assign(n, -99.0f);
  OutputBuffer buffer;
  buffer.type = ElementType::kFloat32;
  buffer.dims = dims;
  buffer.data = out->data();
  buffer.size = n * sizeof(float);
  return kernel->Run(inputs, {buffer});
}

TEST(SparseGruKernelTest, ValidatePrepareRunGiveTheComputation) {
  const SparseGruOptions cases[] = {
      {4, 6, false, false, GruPrecision::kInt8, GruFormat::kCsr},
      {5, 7, true, true, GruPrecision::kFloat32, GruFormat::kDense},
  };
  for (const SparseGruOptions& options : cases) {
    SCOPED_TRACE(std::string(Name(options.precision)) + " " + Name(options.format));
    std::vector<float> w, r;
    const Model m = RandomModel(options, 2, 3, 5, 0.3f, &w, &r);
    const std::vector<uint8_t> bytes = OptionsBytes(options);
    SparseGruKernel kernel{KernelConfig()};
    ASSERT_EQ(kernel.Validate(SiteOf(m, bytes)), "");
    std::vector<std::vector<int32_t>> output_dims;
    ASSERT_EQ(kernel.Prepare(DimsOf(Inputs(m)), &output_dims), "");
    EXPECT_EQ(output_dims, std::vector<std::vector<int32_t>>{OutputDims(m)});
    std::string error;
    const std::vector<float> want = Compute(m, &error);
    ASSERT_EQ(error, "");
    std::vector<float> got;
    ASSERT_EQ(RunKernel(&kernel, Inputs(m), OutputDims(m), &got), "");
    EXPECT_EQ(got, want);
    // Only a csr R is repacked; the kernel keeps it for the next run.
    EXPECT_EQ(kernel.scratch().packs.size(), options.format == GruFormat::kCsr ? 1u : 0u);
    ASSERT_EQ(RunKernel(&kernel, Inputs(m), OutputDims(m), &got), "");
    EXPECT_EQ(got, want);
    EXPECT_EQ(kernel.scratch().packs.size(), options.format == GruFormat::kCsr ? 1u : 0u);
  }
}

// The thread count is the model's (KernelConfig), and a team gives the
// single-thread results bit for bit (R's 3 * 64 * 64 multiply-adds per step
// are above kMinSplitWork, so the work is split).
TEST(SparseGruKernelTest, ThreadsComeFromTheConfig) {
  std::vector<float> w, r;
  const SparseGruOptions options{64, 40, true, true, GruPrecision::kFloat32, GruFormat::kDense};
  const Model m = RandomModel(options, 2, 4, 17, 0, &w, &r);
  const std::vector<uint8_t> bytes = OptionsBytes(options);
  std::vector<float> results[2];
  const int thread_counts[2] = {1, 3};
  for (int i = 0; i < 2; ++i) {
    KernelConfig config;
    config.num_threads = thread_counts[i];
    SparseGruKernel kernel(config);
    EXPECT_EQ(kernel.threads(), thread_counts[i]);
    ASSERT_EQ(kernel.Validate(SiteOf(m, bytes)), "");
    ASSERT_EQ(RunKernel(&kernel, Inputs(m), OutputDims(m), &results[i]), "");
  }
  EXPECT_EQ(results[1], results[0]) << "differs by " << MaxDiff(results[1], results[0]);
}

TEST(SparseGruKernelTest, RefusesADeclaredOutputTheOptionsDoNotGive) {
  std::vector<float> w, r;
  const SparseGruOptions options{4, 6, true, false, GruPrecision::kFloat32, GruFormat::kCsr};
  const Model m = RandomModel(options, 1, 2, 3, 0.3f, &w, &r);
  const std::vector<uint8_t> bytes = OptionsBytes(options);
  SparseGruKernel kernel{KernelConfig()};
  OpSite site = SiteOf(m, bytes);
  site.outputs[0].dims = {1, 2, 4};  // [B, T, U], but return_sequences is false
  EXPECT_EQ(kernel.Validate(site),
            "output 0 ('y') is declared float32 [1, 2, 4], but x [1, 2, 6] with units 4 and "
            "return_sequences false give float32 [1, 4]");
  site = SiteOf(m, bytes);
  site.outputs[0].type = ElementType::kInt8;
  EXPECT_HAS(kernel.Validate(site), "output 0 ('y') is declared int8 [1, 4]");
  site = SiteOf(m, bytes);
  site.outputs.push_back(site.outputs[0]);
  EXPECT_HAS(kernel.Validate(site), "expects 1 output, got 2");
  site.outputs.clear();
  EXPECT_HAS(kernel.Validate(site), "expects 1 output, got 0");
  // Nothing refused was kept: no op to prepare.
  std::vector<std::vector<int32_t>> output_dims;
  EXPECT_HAS(kernel.Prepare(DimsOf(Inputs(m)), &output_dims),
             "no SparseGRU op validated at load has inputs of shapes [1, 2, 6]");
}

TEST(SparseGruKernelTest, RefusesBadOptionsAndInputsAtValidate) {
  std::vector<float> w, r;
  const SparseGruOptions options{4, 6, true, false, GruPrecision::kInt8, GruFormat::kCsr};
  const Model m = RandomModel(options, 1, 2, 3, 0.3f, &w, &r);
  const std::vector<uint8_t> bytes = OptionsBytes(options);
  SparseGruKernel kernel{KernelConfig()};
  OpSite site = SiteOf(m, bytes);
  site.options = nullptr;
  site.options_size = 0;
  EXPECT_HAS(kernel.Validate(site), "missing");
  site = SiteOf(m, bytes);
  site.inputs[1].data = nullptr;  // weights that are not constants
  EXPECT_HAS(kernel.Validate(site), "input 1 (w_values) must be a constant tensor");
  EXPECT_EQ(kernel.Validate(SiteOf(m, bytes)), "");
}

// A run checks what changes between runs: x and the output buffer; and it
// only runs the weights it checked at load.
TEST(SparseGruKernelTest, RunRefusesWhatWasNotChecked) {
  std::vector<float> w, r;
  const SparseGruOptions options{4, 6, true, false, GruPrecision::kFloat32, GruFormat::kCsr};
  const Model m = RandomModel(options, 1, 2, 3, 0.3f, &w, &r);
  const std::vector<uint8_t> bytes = OptionsBytes(options);
  SparseGruKernel kernel{KernelConfig()};
  ASSERT_EQ(kernel.Validate(SiteOf(m, bytes)), "");
  std::vector<float> out;
  ASSERT_EQ(RunKernel(&kernel, Inputs(m), OutputDims(m), &out), "");

  std::vector<GruTensor> in = Inputs(m);
  const std::vector<float> longer_x(2 * 3 * 6, 0.5f);
  in[0] = MakeTensor(ElementType::kFloat32, {2, 3, 6}, longer_x);
  EXPECT_HAS(RunKernel(&kernel, in, OutputDims(m), &out),
             "input 0 (x) must be float32 [1, 2, 6] (48 bytes), got float32 [2, 3, 6] (144 bytes)");
  in = Inputs(m);
  in[0].data = nullptr;
  EXPECT_HAS(RunKernel(&kernel, in, OutputDims(m), &out), "input 0 (x) must be float32 [1, 2, 6]");
  EXPECT_EQ(RunKernel(&kernel, Inputs(m), {1, 2, 4}, &out),
            "output 0 must be float32 [1, 4] (16 bytes)");
  EXPECT_HAS(kernel.Run(Inputs(m), {}), "output 0 must be float32 [1, 4]");
  // The same weights at other addresses were never checked.
  const Model copy = m;
  EXPECT_EQ(RunKernel(&kernel, Inputs(copy), OutputDims(m), &out),
            "the weights handed to the kernel are not those of any SparseGRU op checked at load");
  std::vector<std::vector<int32_t>> output_dims;
  EXPECT_EQ(kernel.Prepare(DimsOf(in), &output_dims), "");  // x's dims are unchanged
  std::vector<std::vector<int32_t>> other = DimsOf(in);
  other[0] = {2, 2, 6};
  EXPECT_HAS(kernel.Prepare(other, &output_dims),
             "no SparseGRU op validated at load has inputs of shapes [2, 2, 6], [");
}

// The converter shares one buffer between ops with the same constants: two
// ops on the same arrays are told apart by the shape of x.
TEST(SparseGruKernelTest, OpsSharingConstantsAreToldApartByX) {
  std::vector<float> w, r;
  const SparseGruOptions options{3, 5, true, true, GruPrecision::kFloat32, GruFormat::kCsr};
  const Model one = RandomModel(options, 1, 2, 9, 0.3f, &w, &r);
  Model three = one;  // for the expected output only
  three.batch = 3;
  three.x.resize(3 * 2 * 5);
  for (size_t i = 0; i < three.x.size(); ++i) three.x[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
  const std::vector<uint8_t> bytes = OptionsBytes(options);
  SparseGruKernel kernel{KernelConfig()};
  ASSERT_EQ(kernel.Validate(SiteOf(one, bytes)), "");
  OpSite second = SiteOf(one, bytes);
  second.inputs[0].dims = {3, 2, 5};
  second.outputs[0].dims = OutputDims(three);
  ASSERT_EQ(kernel.Validate(second), "");

  std::vector<GruTensor> in = Inputs(one);
  std::vector<std::vector<int32_t>> output_dims;
  ASSERT_EQ(kernel.Prepare(DimsOf(in), &output_dims), "");
  EXPECT_EQ(output_dims, std::vector<std::vector<int32_t>>{OutputDims(one)});
  in[0] = MakeTensor(ElementType::kFloat32, {3, 2, 5}, three.x);
  ASSERT_EQ(kernel.Prepare(DimsOf(in), &output_dims), "");
  EXPECT_EQ(output_dims, std::vector<std::vector<int32_t>>{OutputDims(three)});

  std::string error;
  std::vector<float> got;
  ASSERT_EQ(RunKernel(&kernel, in, OutputDims(three), &got), "");
  EXPECT_EQ(got, Compute(three, &error));
  ASSERT_EQ(RunKernel(&kernel, Inputs(one), OutputDims(one), &got), "");
  EXPECT_EQ(got, Compute(one, &error));
  EXPECT_EQ(error, "");
}

// Each op keeps its own repacked R: the limit counts every op's copy.
TEST(SparseGruKernelTest, KeepsScratchWithinItsLimit) {
  std::vector<float> w, r;
  const SparseGruOptions options{6, 5, true, false, GruPrecision::kFloat32, GruFormat::kCsr};
  const Model m = RandomModel(options, 1, 3, 4, 0.3f, &w, &r);
  GruProblem problem;
  ASSERT_EQ(CheckSparseGru(options, Inputs(m), 1, edgepipe::ops::GruCheck::kRun, &problem), "");
  const std::vector<uint8_t> bytes = OptionsBytes(options);
  KernelConfig config;
  config.max_scratch_bytes = edgepipe::ops::SparseGruScratchBytes(problem);
  SparseGruKernel kernel(config);
  EXPECT_EQ(kernel.Validate(SiteOf(m, bytes)), "");
  EXPECT_HAS(kernel.Validate(SiteOf(m, bytes)), "more than the kernel's limit");
  config.max_scratch_bytes -= 1;
  SparseGruKernel smaller(config);
  EXPECT_HAS(smaller.Validate(SiteOf(m, bytes)), "more than the kernel's limit");
}

TEST(SparseGruKernelTest, RegistrationCreatesOneKernelPerCall) {
  const edgepipe::kernels::KernelRegistration registration =
      edgepipe::ops::SparseGruRegistration();
  EXPECT_STREQ(registration.name, "SparseGRU");
  EXPECT_EQ(registration.version, 1);
  KernelConfig config;
  config.num_threads = 2;
  const std::unique_ptr<edgepipe::kernels::OpKernel> a = registration.create(config);
  const std::unique_ptr<edgepipe::kernels::OpKernel> b = registration.create(KernelConfig());
  const auto* gru_a = dynamic_cast<const SparseGruKernel*>(a.get());
  const auto* gru_b = dynamic_cast<const SparseGruKernel*>(b.get());
  ASSERT_NE(gru_a, nullptr);
  ASSERT_NE(gru_b, nullptr);
  EXPECT_NE(gru_a, gru_b);
  EXPECT_EQ(gru_a->threads(), 2);
  EXPECT_EQ(gru_b->threads(), 1);
}

}  // namespace
