// SparseSeparableConv kernel without LiteRT in the loop: the options parser,
// every refusal of the contract on in-memory inputs, the kernel object's
// Validate / Prepare / Run, and the computation (each instruction-set
// variant, every option combination, sizes that leave vector tails, several
// thread counts) against a scalar reference written from the contract's
// Math.

#include "tflite/ops/sparse_separable_kernel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#define FLATBUFFERS_LOCALE_INDEPENDENT 0
#include "flatbuffers/flexbuffers.h"

namespace {

using edgepipe::kernels::ElementType;
using edgepipe::kernels::KernelConfig;
using edgepipe::kernels::OpSite;
using edgepipe::kernels::OutputBuffer;
using edgepipe::kernels::Tensor;
using edgepipe::ops::CheckSparseSeparable;
using edgepipe::ops::ParseSparseSeparableOptions;
using edgepipe::ops::SepActivation;
using edgepipe::ops::SepFormat;
using edgepipe::ops::SepLayout;
using edgepipe::ops::SepPadding;
using edgepipe::ops::SepPrecision;
using edgepipe::ops::SepProblem;
using edgepipe::ops::SparseSeparableKernel;
using edgepipe::ops::SparseSeparableOptions;
using edgepipe::ops::WorkerTeam;

#define EXPECT_HAS(text, needle) EXPECT_PRED_FORMAT2(::testing::IsSubstring, (needle), (text))

// ---- options --------------------------------------------------------------

struct Entry {
  std::string key;
  bool is_string;
  int64_t number;
  std::string text;
};

const char* ActivationName(SepActivation a) {
  return a == SepActivation::kNone ? "none" : a == SepActivation::kRelu ? "relu" : "relu6";
}

std::vector<Entry> EntriesOf(const SparseSeparableOptions& o) {
  auto layout = [](SepLayout l) { return l == SepLayout::kChw ? "chw" : "nhwc"; };
  return {{"version", false, 1, ""},
          {"kernel_size", false, o.kernel_size, ""},
          {"stride", false, o.stride, ""},
          {"padding", true, 0, o.padding == SepPadding::kSame ? "same" : "valid"},
          {"in_channels", false, o.in_channels, ""},
          {"out_channels", false, o.out_channels, ""},
          {"dw_activation", true, 0, ActivationName(o.dw_activation)},
          {"pw_activation", true, 0, ActivationName(o.pw_activation)},
          {"precision", true, 0, o.precision == SepPrecision::kInt8 ? "int8" : "float32"},
          {"format", true, 0, o.format == SepFormat::kCsr ? "csr" : "dense"},
          {"block", false, o.block, ""},
          {"input_layout", true, 0, layout(o.input_layout)},
          {"output_layout", true, 0, layout(o.output_layout)}};
}

std::vector<uint8_t> Flex(const std::vector<Entry>& entries) {
  flexbuffers::Builder fbb;
  fbb.Map([&]() {
    for (const Entry& e : entries) {
      if (e.is_string) {
        fbb.String(e.key.c_str(), e.text);
      } else {
        fbb.Int(e.key.c_str(), e.number);
      }
    }
  });
  fbb.Finish();
  return fbb.GetBuffer();
}

SparseSeparableOptions BaseOptions() {
  SparseSeparableOptions o;
  o.in_channels = 5;
  o.out_channels = 8;
  return o;
}

std::string ParseError(const std::vector<Entry>& entries) {
  const std::vector<uint8_t> bytes = Flex(entries);
  SparseSeparableOptions parsed;
  return ParseSparseSeparableOptions(bytes.data(), bytes.size(), &parsed);
}

std::string ParseWith(const Entry& replacement) {
  std::vector<Entry> entries = EntriesOf(BaseOptions());
  for (Entry& e : entries) {
    if (e.key == replacement.key) e = replacement;
  }
  return ParseError(entries);
}

bool SameOptions(const SparseSeparableOptions& a, const SparseSeparableOptions& b) {
  return a.kernel_size == b.kernel_size && a.stride == b.stride && a.padding == b.padding &&
         a.in_channels == b.in_channels && a.out_channels == b.out_channels &&
         a.dw_activation == b.dw_activation && a.pw_activation == b.pw_activation &&
         a.precision == b.precision && a.format == b.format && a.block == b.block &&
         a.input_layout == b.input_layout && a.output_layout == b.output_layout;
}

TEST(SparseSeparableOptionsTest, ReadsEveryValue) {
  SparseSeparableOptions o;
  o.kernel_size = 5;
  o.stride = 2;
  o.padding = SepPadding::kValid;
  o.in_channels = 65535;
  o.out_channels = 300;
  o.dw_activation = SepActivation::kRelu6;
  o.pw_activation = SepActivation::kRelu;
  o.precision = SepPrecision::kInt8;
  o.block = 4;
  o.input_layout = SepLayout::kChw;
  o.output_layout = SepLayout::kChw;
  const std::vector<uint8_t> bytes = Flex(EntriesOf(o));
  SparseSeparableOptions parsed;
  ASSERT_EQ(ParseSparseSeparableOptions(bytes.data(), bytes.size(), &parsed), "");
  EXPECT_TRUE(SameOptions(parsed, o));
  const std::vector<uint8_t> base = Flex(EntriesOf(BaseOptions()));
  ASSERT_EQ(ParseSparseSeparableOptions(base.data(), base.size(), &parsed), "");
  EXPECT_TRUE(SameOptions(parsed, BaseOptions()));
}

TEST(SparseSeparableOptionsTest, RefusesMissingExtraAndRepeatedKeys) {
  std::vector<Entry> entries = EntriesOf(BaseOptions());
  entries.erase(entries.begin() + 4);
  EXPECT_EQ(ParseError(entries), "custom option 'in_channels' is missing");
  entries = EntriesOf(BaseOptions());
  entries.push_back({"dilation", false, 1, ""});
  EXPECT_EQ(ParseError(entries), "unknown custom option 'dilation'");
  entries = EntriesOf(BaseOptions());
  entries.push_back({"stride", false, 1, ""});
  EXPECT_EQ(ParseError(entries), "custom options repeat the key 'stride'");
  EXPECT_HAS(ParseSparseSeparableOptions(nullptr, 0, nullptr), "custom options are missing");
}

TEST(SparseSeparableOptionsTest, RefusesWrongTypesAndValues) {
  EXPECT_HAS(ParseWith({"version", false, 2, ""}), "'version' is 2, must be 1");
  EXPECT_HAS(ParseWith({"kernel_size", false, 4, ""}), "'kernel_size' is 4, must be 3, 5");
  EXPECT_HAS(ParseWith({"stride", false, 3, ""}), "'stride' is 3");
  EXPECT_HAS(ParseWith({"padding", true, 0, "full"}), "'padding' is 'full', must be one of 'same'");
  EXPECT_HAS(ParseWith({"in_channels", false, 0, ""}), "'in_channels' is 0, must be 1 to 65535");
  EXPECT_HAS(ParseWith({"in_channels", false, 65536, ""}), "'in_channels' is 65536");
  EXPECT_HAS(ParseWith({"out_channels", false, -4, ""}), "'out_channels' is -4");
  EXPECT_HAS(ParseWith({"dw_activation", true, 0, "gelu"}), "'dw_activation' is 'gelu'");
  EXPECT_HAS(ParseWith({"pw_activation", true, 0, "RELU"}), "'pw_activation' is 'RELU'");
  EXPECT_HAS(ParseWith({"precision", true, 0, "float16"}), "'precision' is 'float16'");
  EXPECT_HAS(ParseWith({"format", true, 0, "coo"}), "'format' is 'coo'");
  EXPECT_HAS(ParseWith({"block", false, 2, ""}), "'block' is 2, must be 1, 4");
  EXPECT_HAS(ParseWith({"input_layout", true, 0, "nchw"}), "'input_layout' is 'nchw'");
  EXPECT_HAS(ParseWith({"output_layout", false, 1, ""}), "'output_layout' must be a string, got an int");
  EXPECT_HAS(ParseWith({"stride", true, 0, "1"}), "'stride' must be an int, got a string");
}

TEST(SparseSeparableOptionsTest, RefusesBlockFourWithDenseOrUnevenChannels) {
  SparseSeparableOptions o = BaseOptions();
  o.block = 4;
  o.out_channels = 6;
  EXPECT_HAS(ParseError(EntriesOf(o)), "'out_channels' 6 is not a multiple of 4");
  o.out_channels = 8;
  o.format = SepFormat::kDense;
  EXPECT_HAS(ParseError(EntriesOf(o)), "'format' dense takes 1");
}

TEST(SparseSeparableOptionsTest, DamagedBytesGiveAnAnswer) {
  const std::vector<uint8_t> good = Flex(EntriesOf(BaseOptions()));
  SparseSeparableOptions parsed;
  for (std::size_t cut = 0; cut < good.size(); ++cut) {
    EXPECT_NE(ParseSparseSeparableOptions(good.data(), cut, &parsed), "") << "cut at " << cut;
  }
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<uint8_t> bytes = good;
    bytes[rng() % bytes.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    ParseSparseSeparableOptions(bytes.data(), bytes.size(), &parsed);  // answers, no crash
  }
}

// ---- a test case: random inputs, encodings and the scalar reference -------

template <typename T>
Tensor TensorOf(ElementType type, std::vector<int32_t> dims, const std::vector<T>& data) {
  return {"", type, std::move(dims), data.empty() ? nullptr : data.data(), data.size() * sizeof(T)};
}

struct Case {
  SparseSeparableOptions o = BaseOptions();
  int64_t batch = 1, height = 6, width = 7;
  double sparsity = 0.6;
  uint32_t seed = 1;

  std::vector<float> x, dw, dw_bias, pw_bias, scales, float_values;
  std::vector<float> weights;  // [Cout][Cin] as the reference uses them
  std::vector<int8_t> int8_values;
  std::vector<uint16_t> cols;
  std::vector<int32_t> row_ptr;

  int64_t K() const { return o.kernel_size; }
  bool Chw() const { return o.input_layout == SepLayout::kChw; }

  void Generate() {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    auto fill = [&](std::vector<float>* v, int64_t n) {
      v->resize(static_cast<std::size_t>(n));
      for (float& f : *v) f = uniform(rng);
    };
    const int64_t cin = o.in_channels, cout = o.out_channels;
    fill(&x, batch * height * width * cin);
    fill(&dw, K() * K() * cin);
    fill(&dw_bias, cin);
    fill(&pw_bias, cout);
    const bool int8 = o.precision == SepPrecision::kInt8, csr = o.format == SepFormat::kCsr;
    scales.clear();
    for (int64_t co = 0; int8 && co < cout; ++co) scales.push_back(0.004f + 0.01f * (uniform(rng) + 1));
    weights.assign(static_cast<std::size_t>(cout * cin), 0.0f);
    std::vector<int8_t> q(weights.size(), 0);
    const int64_t block = csr ? o.block : 1;
    std::bernoulli_distribution keep(1.0 - sparsity);
    for (int64_t row = 0; row < cout / block; ++row) {
      for (int64_t ci = 0; ci < cin; ++ci) {
        if (!keep(rng)) continue;
        for (int64_t j = 0; j < block; ++j) {
          const int64_t at = (row * block + j) * cin + ci;
          q[at] = static_cast<int8_t>(std::lround(uniform(rng) * 127));
          weights[at] = int8 ? q[at] * scales[row * block + j] : uniform(rng);
        }
      }
    }
    Encode(q, block, csr, int8);
  }

  // The pointwise weights in the op's format: csr blocks where a block was
  // drawn (even if its values came out 0), or dense [Cout, Cin].
  void Encode(const std::vector<int8_t>& q, int64_t block, bool csr, bool int8) {
    const int64_t cin = o.in_channels, cout = o.out_channels;
    float_values.clear();
    int8_values.clear();
    cols.clear();
    row_ptr.assign(1, 0);
    auto push = [&](int64_t at) {
      if (int8) int8_values.push_back(q[at]);
      else float_values.push_back(weights[at]);
    };
    for (int64_t row = 0; row < cout / block; ++row) {
      for (int64_t ci = 0; ci < cin; ++ci) {
        if (!csr) continue;
        bool stored = false;
        for (int64_t j = 0; j < block; ++j) {
          const int64_t at = (row * block + j) * cin + ci;
          stored |= weights[at] != 0 || q[at] != 0;
        }
        if (!stored) continue;
        cols.push_back(static_cast<uint16_t>(ci));
        for (int64_t j = 0; j < block; ++j) push((row * block + j) * cin + ci);
      }
      row_ptr.push_back(static_cast<int32_t>(cols.size()));
    }
    for (int64_t at = 0; !csr && at < cout * cin; ++at) push(at);
  }

  std::vector<int32_t> XDims() const {
    const auto b = static_cast<int32_t>(batch), h = static_cast<int32_t>(height),
               w = static_cast<int32_t>(width), c = static_cast<int32_t>(o.in_channels);
    return Chw() ? std::vector<int32_t>{b, c, h, w} : std::vector<int32_t>{b, h, w, c};
  }

  // The present inputs, in the contract's order.
  std::vector<Tensor> Inputs() const {
    const auto k = static_cast<int32_t>(K()), cin = static_cast<int32_t>(o.in_channels),
               cout = static_cast<int32_t>(o.out_channels);
    const bool int8 = o.precision == SepPrecision::kInt8, csr = o.format == SepFormat::kCsr;
    std::vector<Tensor> in = {TensorOf(ElementType::kFloat32, XDims(), x),
                              TensorOf(ElementType::kFloat32, {k, k, cin}, dw),
                              TensorOf(ElementType::kFloat32, {cin}, dw_bias)};
    const int32_t length = static_cast<int32_t>(int8 ? int8_values.size() : float_values.size());
    const std::vector<int32_t> value_dims = csr ? std::vector<int32_t>{length} : std::vector<int32_t>{cout, cin};
    in.push_back(int8 ? TensorOf(ElementType::kInt8, value_dims, int8_values)
                      : TensorOf(ElementType::kFloat32, value_dims, float_values));
    if (csr) {
      in.push_back(TensorOf(ElementType::kUInt16, {static_cast<int32_t>(cols.size())}, cols));
      in.push_back(TensorOf(ElementType::kInt32, {static_cast<int32_t>(row_ptr.size())}, row_ptr));
    }
    if (int8) in.push_back(TensorOf(ElementType::kFloat32, {cout}, scales));
    in.push_back(TensorOf(ElementType::kFloat32, {cout}, pw_bias));
    return in;
  }

  float X(int64_t b, int64_t c, int64_t y, int64_t xx) const {
    const int64_t cin = o.in_channels;
    return Chw() ? x[((b * cin + c) * height + y) * width + xx]
                 : x[((b * height + y) * width + xx) * cin + c];
  }

  // Output size and leading padding of one dimension, as the contract says.
  void Extent(int64_t in, int64_t* out, int64_t* pad) const {
    const int64_t k = K(), s = o.stride;
    if (o.padding == SepPadding::kValid) {
      *out = (in - k + 1 + s - 1) / s;
      *pad = 0;
    } else {
      *out = (in + s - 1) / s;
      *pad = std::max<int64_t>((*out - 1) * s + k - in, 0) / 2;
    }
  }

  static double Act(SepActivation a, double v) {
    if (a == SepActivation::kNone) return v;
    v = std::max(v, 0.0);
    return a == SepActivation::kRelu6 ? std::min(v, 6.0) : v;
  }

  // Expected output in its layout and, per element, the tolerance: 1e-5 of
  // the magnitude of the terms summed.
  void Reference(std::vector<float>* expected, std::vector<float>* tolerance) const {
    int64_t ho, wo, pt, pl;
    Extent(height, &ho, &pt);
    Extent(width, &wo, &pl);
    const int64_t cin = o.in_channels, cout = o.out_channels, k = K(), s = o.stride, p = ho * wo;
    const bool chw_out = o.output_layout == SepLayout::kChw;
    expected->assign(static_cast<std::size_t>(batch * cout * p), 0.0f);
    tolerance->assign(expected->size(), 0.0f);
    std::vector<double> d(static_cast<std::size_t>(cin * p)), magnitude(d.size());
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t c = 0; c < cin; ++c) {
        for (int64_t y = 0; y < ho; ++y) {
          for (int64_t xx = 0; xx < wo; ++xx) {
            double sum = dw_bias[c], mag = std::fabs(dw_bias[c]);
            for (int64_t i = 0; i < k; ++i) {
              for (int64_t j = 0; j < k; ++j) {
                const int64_t iy = y * s + i - pt, ix = xx * s + j - pl;
                if (iy < 0 || iy >= height || ix < 0 || ix >= width) continue;
                const double term = double{dw[(i * k + j) * cin + c]} * X(b, c, iy, ix);
                sum += term;
                mag += std::fabs(term);
              }
            }
            d[c * p + y * wo + xx] = Act(o.dw_activation, sum);
            magnitude[c * p + y * wo + xx] = mag;
          }
        }
      }
      for (int64_t co = 0; co < cout; ++co) {
        for (int64_t pos = 0; pos < p; ++pos) {
          double sum = pw_bias[co], mag = std::fabs(pw_bias[co]);
          for (int64_t ci = 0; ci < cin; ++ci) {
            const double w = weights[co * cin + ci];
            sum += w * d[ci * p + pos];
            mag += std::fabs(w) * (std::fabs(d[ci * p + pos]) + 1e-6 * magnitude[ci * p + pos]);
          }
          const int64_t at = chw_out ? (b * cout + co) * p + pos : (b * p + pos) * cout + co;
          (*expected)[at] = static_cast<float>(Act(o.pw_activation, sum));
          (*tolerance)[at] = static_cast<float>(1e-5 * mag + 1e-6);
        }
      }
    }
  }

  std::string Name() const {
    return "K" + std::to_string(K()) + " s" + std::to_string(o.stride) +
           (o.padding == SepPadding::kSame ? " same" : " valid") + " dw " +
           ActivationName(o.dw_activation) + " pw " + ActivationName(o.pw_activation) +
           (o.precision == SepPrecision::kInt8 ? " int8" : " float32") +
           (o.format == SepFormat::kCsr ? " csr" + std::to_string(o.block) : " dense") +
           (Chw() ? " chw" : " nhwc") + "->" + (o.output_layout == SepLayout::kChw ? "chw" : "nhwc") +
           " B" + std::to_string(batch) + " " + std::to_string(height) + "x" +
           std::to_string(width) + " Cin" + std::to_string(o.in_channels) + " Cout" +
           std::to_string(o.out_channels);
  }
};

using ComputeFn = edgepipe::ops::SepCompute*;

// Runs a case through the checks and `compute` with `threads` threads.
std::vector<float> Compute(const Case& c, ComputeFn compute, int threads) {
  SepProblem problem;
  const std::string error = CheckSparseSeparable(c.o, c.Inputs(), 1, &problem);
  EXPECT_EQ(error, "") << c.Name();
  if (!error.empty()) return {};
  WorkerTeam team(threads);
  const auto layout = edgepipe::ops::SparseSeparableScratch(problem, threads);
  std::vector<float> scratch(static_cast<std::size_t>(layout.total_floats),
                             std::numeric_limits<float>::quiet_NaN());
  std::vector<float> out(static_cast<std::size_t>(c.batch * c.o.out_channels * problem.out_height *
                                                  problem.out_width),
                         std::numeric_limits<float>::quiet_NaN());
  compute(problem, c.x.data(), out.data(), scratch.data(), threads > 1 ? &team : nullptr);
  return out;
}

// How many outputs of the case differ from the reference (the first few
// reported).
int Mismatches(const Case& c, ComputeFn compute, int threads) {
  const std::vector<float> got = Compute(c, compute, threads);
  std::vector<float> want, tol;
  c.Reference(&want, &tol);
  if (got.size() != want.size()) return -1;
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::fabs(got[i] - want[i]) <= tol[i]) continue;
    if (++bad <= 3) {
      ADD_FAILURE() << c.Name() << " threads " << threads << ": out[" << i << "] = " << got[i]
                    << ", reference " << want[i];
    }
  }
  return bad;
}

// Every combination of the options at one small size, cycling the options
// that only change the data.
std::vector<Case> EveryCombination() {
  std::vector<Case> cases;
  uint32_t seed = 0;
  for (int64_t k : {3, 5}) for (int64_t s : {1, 2}) for (SepPadding pad : {SepPadding::kSame, SepPadding::kValid})
  for (SepActivation dw_act : {SepActivation::kNone, SepActivation::kRelu, SepActivation::kRelu6})
  for (SepActivation pw_act : {SepActivation::kNone, SepActivation::kRelu, SepActivation::kRelu6})
  for (SepPrecision precision : {SepPrecision::kFloat32, SepPrecision::kInt8})
  for (int encoding : {0, 1, 4})  // dense, csr block 1, csr block 4
  for (SepLayout in : {SepLayout::kNhwc, SepLayout::kChw}) for (SepLayout out : {SepLayout::kNhwc, SepLayout::kChw}) {
    Case c;
    c.o.kernel_size = k;
    c.o.stride = s;
    c.o.padding = pad;
    c.o.dw_activation = dw_act;
    c.o.pw_activation = pw_act;
    c.o.precision = precision;
    c.o.format = encoding == 0 ? SepFormat::kDense : SepFormat::kCsr;
    c.o.block = encoding == 4 ? 4 : 1;
    c.o.input_layout = in;
    c.o.output_layout = out;
    c.o.in_channels = 3 + seed % 4;
    c.o.out_channels = encoding == 4 ? 8 : 5 + seed % 3;
    c.height = 6 + seed % 3;
    c.width = 5 + seed % 5;
    c.batch = 1 + seed % 2;
    c.seed = ++seed;
    c.Generate();
    cases.push_back(c);
  }
  return cases;
}

// Sizes around the vector and tile widths: 1x1 images, H != W, rows of
// positions not a multiple of 8 or 16, odd and even channel counts.
std::vector<Case> TailSizes() {
  std::vector<Case> cases;
  uint32_t seed = 100;
  const int64_t sizes[][2] = {{1, 1}, {1, 9}, {5, 3}, {9, 17}, {16, 16}, {13, 29}, {33, 7}};
  for (const auto& hw : sizes) for (int64_t cin : {1, 7, 16, 33}) for (int encoding : {0, 1, 4}) {
    Case c;
    c.height = hw[0];
    c.width = hw[1];
    c.o.in_channels = cin;
    c.o.out_channels = encoding == 4 ? 4 * (1 + seed % 5) : 1 + seed % 19;
    c.o.format = encoding == 0 ? SepFormat::kDense : SepFormat::kCsr;
    c.o.block = encoding == 4 ? 4 : 1;
    c.o.kernel_size = seed % 2 ? 3 : 5;
    c.o.stride = 1 + seed % 3 % 2;
    c.o.padding = c.height >= c.o.kernel_size && c.width >= c.o.kernel_size && seed % 3 == 0
                      ? SepPadding::kValid : SepPadding::kSame;
    c.o.input_layout = seed % 4 < 2 ? SepLayout::kNhwc : SepLayout::kChw;
    c.o.output_layout = seed % 2 ? SepLayout::kNhwc : SepLayout::kChw;
    c.o.precision = seed % 5 == 0 ? SepPrecision::kInt8 : SepPrecision::kFloat32;
    c.o.dw_activation = SepActivation::kRelu6;
    c.o.pw_activation = seed % 3 == 0 ? SepActivation::kNone : SepActivation::kRelu;
    c.sparsity = (seed % 4) * 0.3;
    c.seed = ++seed;
    c.Generate();
    cases.push_back(c);
  }
  return cases;
}

// Images wide enough (with channels enough) to be computed in several bands
// of output rows (the last one shorter), in both layouts and with both
// strides.
std::vector<Case> BandCases() {
  struct Shape { int64_t h, w, cin, k, s; SepPadding padding; };
  const Shape shapes[] = {{11, 100, 80, 3, 1, SepPadding::kSame},
                          {9, 240, 140, 5, 2, SepPadding::kSame},
                          {5, 1000, 33, 3, 1, SepPadding::kValid},
                          {13, 150, 96, 5, 1, SepPadding::kValid}};
  std::vector<Case> cases;
  uint32_t seed = 500;
  for (const Shape& shape : shapes) for (SepLayout layout : {SepLayout::kNhwc, SepLayout::kChw}) {
    Case c;
    c.height = shape.h;
    c.width = shape.w;
    c.batch = 2;
    c.o.in_channels = shape.cin;
    c.o.out_channels = 12;
    c.o.kernel_size = shape.k;
    c.o.stride = shape.s;
    c.o.padding = shape.padding;
    c.o.input_layout = layout;
    c.o.output_layout = seed % 2 ? layout : SepLayout::kChw;
    c.o.block = seed % 3 == 0 ? 4 : 1;
    c.o.dw_activation = SepActivation::kRelu;
    c.sparsity = 0.8;
    c.seed = ++seed;
    c.Generate();
    cases.push_back(c);
  }
  return cases;
}

// More input channels than one pass of the pointwise stage sums (256), so
// that tiles are summed in passes: partial last chunks, rows with no
// nonzero in some chunks, every encoding and output layout.
std::vector<Case> ManyChannelCases() {
  std::vector<Case> cases;
  uint32_t seed = 700;
  for (int64_t cin : {257, 600}) for (int encoding : {0, 1, 4}) for (SepLayout out : {SepLayout::kNhwc, SepLayout::kChw}) {
    Case c;
    c.height = 5 + seed % 3;
    c.width = 9 + seed % 4;
    c.o.in_channels = cin;
    c.o.out_channels = encoding == 4 ? 12 : 7;
    c.o.format = encoding == 0 ? SepFormat::kDense : SepFormat::kCsr;
    c.o.block = encoding == 4 ? 4 : 1;
    c.o.input_layout = seed % 2 ? SepLayout::kNhwc : SepLayout::kChw;
    c.o.output_layout = out;
    c.o.precision = seed % 3 == 0 ? SepPrecision::kInt8 : SepPrecision::kFloat32;
    c.o.pw_activation = SepActivation::kRelu6;
    c.sparsity = 0.95;
    c.seed = ++seed;
    c.Generate();
    cases.push_back(c);
  }
  return cases;
}

// NHWC input is read without padded planes: four pixels at a time where
// all their taps are inside the image, pixel by pixel near the sides, the
// channels past the last full vector apart, and rows near the top and
// bottom with fewer tap rows; sizes around each of those.
std::vector<Case> NhwcInputCases() {
  std::vector<Case> cases;
  uint32_t seed = 800;
  for (int64_t cin : {4, 8, 12, 16, 20, 31, 32, 48}) for (int64_t k : {3, 5}) for (int64_t s : {1, 2}) {
    Case c;
    c.height = 3 + seed % 5;
    c.width = 9 + seed % 11;
    c.o.in_channels = cin;
    c.o.out_channels = 4 + seed % 5;
    c.o.kernel_size = k;
    c.o.stride = s;
    c.o.padding = seed % 3 == 0 && c.height >= k ? SepPadding::kValid : SepPadding::kSame;
    c.o.input_layout = SepLayout::kNhwc;
    c.o.output_layout = seed % 2 ? SepLayout::kNhwc : SepLayout::kChw;
    c.o.dw_activation = SepActivation::kRelu6;
    c.seed = ++seed;
    c.Generate();
    cases.push_back(c);
  }
  return cases;
}

TEST(SparseSeparableComputeTest, NhwcInputMatchesTheReference) {
  for (const Case& c : NhwcInputCases()) {
    const std::vector<float> one = Compute(c, edgepipe::ops::ComputeSparseSeparable, 1);
    EXPECT_EQ(Mismatches(c, edgepipe::ops::ComputeSparseSeparable, 1), 0);
    for (int threads : {2, 3}) {
      EXPECT_EQ(Compute(c, edgepipe::ops::ComputeSparseSeparable, threads), one)
          << c.Name() << " threads " << threads;
    }
  }
}

TEST(SparseSeparableComputeTest, ManyInputChannelsMatchTheReference) {
  for (const Case& c : ManyChannelCases()) {
    const std::vector<float> one = Compute(c, edgepipe::ops::ComputeSparseSeparable, 1);
    for (int threads : {1, 2, 3}) {
      EXPECT_EQ(Mismatches(c, edgepipe::ops::ComputeSparseSeparable, threads), 0);
      EXPECT_EQ(Compute(c, edgepipe::ops::ComputeSparseSeparable, threads), one)
          << c.Name() << " threads " << threads;
    }
  }
}

TEST(SparseSeparableComputeTest, BandsOfRowsMatchTheReference) {
  for (const Case& c : BandCases()) {
    SepProblem problem;
    ASSERT_EQ(CheckSparseSeparable(c.o, c.Inputs(), 1, &problem), "");
    EXPECT_LT(edgepipe::ops::SparseSeparableScratch(problem, 1).band_rows, problem.out_height)
        << c.Name() << " is computed in one band";
    const std::vector<float> one = Compute(c, edgepipe::ops::ComputeSparseSeparable, 1);
    for (int threads : {1, 2, 3}) {
      EXPECT_EQ(Mismatches(c, edgepipe::ops::ComputeSparseSeparable, threads), 0);
      EXPECT_EQ(Compute(c, edgepipe::ops::ComputeSparseSeparable, threads), one)
          << c.Name() << " threads " << threads;
    }
  }
}

TEST(SparseSeparableComputeTest, EveryOptionCombinationMatchesTheReference) {
  const std::vector<Case> cases = EveryCombination();
  ASSERT_EQ(cases.size(), 1728u);
  int bad = 0;
  for (const Case& c : cases) bad += Mismatches(c, edgepipe::ops::ComputeSparseSeparable, 1);
  EXPECT_EQ(bad, 0);
}

TEST(SparseSeparableComputeTest, TailSizesMatchTheReference) {
  int bad = 0;
  for (const Case& c : TailSizes()) bad += Mismatches(c, edgepipe::ops::ComputeSparseSeparable, 1);
  EXPECT_EQ(bad, 0);
}

TEST(SparseSeparableComputeTest, EachVariantMatchesTheReference) {
  std::vector<ComputeFn> variants = {edgepipe::ops::baseline::ComputeSparseSeparable};
#if defined(EDGEPIPE_SEPARABLE_X86)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    variants.push_back(edgepipe::ops::avx2::ComputeSparseSeparable);
    if (__builtin_cpu_supports("avx512f")) {
      variants.push_back(edgepipe::ops::avx512::ComputeSparseSeparable);
    }
  }
#endif
  std::vector<Case> cases = TailSizes();
  for (const Case& c : BandCases()) cases.push_back(c);
  for (const Case& c : ManyChannelCases()) cases.push_back(c);
  for (const Case& c : NhwcInputCases()) cases.push_back(c);
  for (ComputeFn variant : variants) {
    int bad = 0;
    for (const Case& c : cases) bad += Mismatches(c, variant, 1);
    EXPECT_EQ(bad, 0);
  }
}

TEST(SparseSeparableComputeTest, ThreadCountsGiveTheSameOutput) {
  std::vector<Case> cases = TailSizes();
  Case wide;  // enough tiles of positions for each thread, and rows to split
  wide.height = 21;
  wide.width = 19;
  wide.o.in_channels = 24;
  wide.o.out_channels = 36;
  wide.o.block = 4;
  wide.Generate();
  cases.push_back(wide);
  for (const Case& c : cases) {
    const std::vector<float> one = Compute(c, edgepipe::ops::ComputeSparseSeparable, 1);
    for (int threads : {2, 3, 4}) {
      EXPECT_EQ(Compute(c, edgepipe::ops::ComputeSparseSeparable, threads), one)
          << c.Name() << " threads " << threads;
      EXPECT_EQ(Mismatches(c, edgepipe::ops::ComputeSparseSeparable, threads), 0);
    }
  }
}

// ---- the checks ----------------------------------------------------------

std::string CheckError(const Case& c, const std::vector<Tensor>& inputs, std::size_t outputs = 1) {
  SepProblem problem;
  return CheckSparseSeparable(c.o, inputs, outputs, &problem);
}

Case CsrInt8Case(int64_t block = 4) {
  Case c;
  c.o.precision = SepPrecision::kInt8;
  c.o.block = block;
  c.Generate();
  return c;
}

TEST(SparseSeparableCheckTest, AcceptsEveryInputSet) {
  for (int encoding : {0, 1, 4}) {
    for (SepPrecision precision : {SepPrecision::kFloat32, SepPrecision::kInt8}) {
      Case c;
      c.o.format = encoding == 0 ? SepFormat::kDense : SepFormat::kCsr;
      c.o.block = encoding == 4 ? 4 : 1;
      c.o.precision = precision;
      c.Generate();
      EXPECT_EQ(CheckError(c, c.Inputs()), "") << c.Name();
      EXPECT_EQ(c.Inputs().size(), edgepipe::ops::SparseSeparableInputCount(c.o.format, precision));
    }
  }
}

TEST(SparseSeparableCheckTest, RefusesWrongInputAndOutputCounts) {
  const Case c = CsrInt8Case();
  std::vector<Tensor> inputs = c.Inputs();
  inputs.pop_back();
  EXPECT_HAS(CheckError(c, inputs),
             "expects 8 inputs for format 'csr' and precision 'int8' (absent inputs left out), got 7");
  Case dense;
  dense.o.format = SepFormat::kDense;
  dense.Generate();
  inputs = dense.Inputs();
  inputs.push_back(inputs.back());
  EXPECT_HAS(CheckError(dense, inputs), "expects 5 inputs for format 'dense' and precision 'float32'");
  EXPECT_HAS(CheckError(c, c.Inputs(), 2), "expects 1 output, got 2");
}

TEST(SparseSeparableCheckTest, RefusesBadX) {
  Case c;
  c.Generate();
  std::vector<Tensor> inputs = c.Inputs();
  inputs[0].dims = {1, 6, 7, 4};  // nhwc: channels last
  EXPECT_HAS(CheckError(c, inputs), "input 0 (x) has shape [1, 6, 7, 4], expected [?, ?, ?, 5] (input_layout nhwc)");
  c.o.input_layout = SepLayout::kChw;
  inputs[0].dims = {1, 6, 7, 5};
  EXPECT_HAS(CheckError(c, inputs), "expected [?, 5, ?, ?] (input_layout chw)");
  inputs[0].dims = {1, 5, 6};
  EXPECT_HAS(CheckError(c, inputs), "input 0 (x) has shape [1, 5, 6]");
  inputs[0].dims = {0, 5, 6, 7};
  inputs[0].data = nullptr;
  inputs[0].size = 0;
  EXPECT_HAS(CheckError(c, inputs), "batch, height and width must be at least 1");
  inputs[0].dims = {1, 5, 6, 7};
  inputs[0].type = ElementType::kInt8;
  EXPECT_HAS(CheckError(c, inputs), "input 0 (x) must be float32, got int8");
}

TEST(SparseSeparableCheckTest, RefusesValidPaddingOnAnImageSmallerThanTheKernel) {
  Case c;
  c.o.padding = SepPadding::kValid;
  c.o.kernel_size = 5;
  c.height = 4;
  c.width = 9;
  c.Generate();
  EXPECT_HAS(CheckError(c, c.Inputs()), "the image is smaller than the 5x5 kernel under 'valid' padding");
  c.height = 5;
  c.Generate();
  EXPECT_EQ(CheckError(c, c.Inputs()), "");
}

TEST(SparseSeparableCheckTest, RefusesBadDepthwiseArrays) {
  Case c;
  c.Generate();
  std::vector<Tensor> inputs = c.Inputs();
  inputs[1].dims = {3, 3, 4};
  EXPECT_HAS(CheckError(c, inputs), "input 1 (dw_weights) has shape [3, 3, 4], expected [3, 3, 5]");
  inputs = c.Inputs();
  inputs[2].type = ElementType::kInt32;
  EXPECT_HAS(CheckError(c, inputs), "input 2 (dw_bias) must be float32, got int32");
  c.dw[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 1 (dw_weights): value 7 is not finite");
  c.Generate();
  c.dw_bias[1] = std::numeric_limits<float>::infinity();
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 2 (dw_bias): value 1 is not finite");
}

TEST(SparseSeparableCheckTest, RefusesBadRowPointers) {
  Case c = CsrInt8Case(1);
  ASSERT_GE(c.cols.size(), 2u);
  const std::vector<int32_t> good = c.row_ptr;
  c.row_ptr[0] = 1;
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 5 (pw_row_ptr): row_ptr[0] is 1, must be 0");
  c.row_ptr = good;
  c.row_ptr[1] = c.row_ptr[2] + 1;
  EXPECT_HAS(CheckError(c, c.Inputs()), "decreases or is past the");
  c.row_ptr = good;
  c.row_ptr.back() -= 1;
  EXPECT_HAS(CheckError(c, c.Inputs()), "must equal the number of blocks");
  c.row_ptr = good;
  c.row_ptr.push_back(good.back());
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 5 (pw_row_ptr) has shape");
}

TEST(SparseSeparableCheckTest, RefusesBadColumnIndices) {
  Case c = CsrInt8Case(4);
  int64_t row = 0;  // a block row with two or more blocks
  while (c.row_ptr[row + 1] - c.row_ptr[row] < 2) ++row;
  const int32_t first = c.row_ptr[row];
  const std::vector<uint16_t> good = c.cols;
  c.cols[first + 1] = 5;
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 4 (pw_col_indices): column 5 in row " + std::to_string(row) + " is out of range (< 5)");
  c.cols = good;
  c.cols[first + 1] = c.cols[first];
  EXPECT_HAS(CheckError(c, c.Inputs()), "columns of row " + std::to_string(row) + " are not strictly increasing");
  c.cols = good;
  c.cols.pop_back();
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 4 (pw_col_indices) has shape");
  c.cols = good;
  c.int8_values.pop_back();
  EXPECT_HAS(CheckError(c, c.Inputs()), "not a whole number of blocks of 4");
}

TEST(SparseSeparableCheckTest, RefusesNonFiniteWeightsAndBadScales) {
  Case c;
  c.Generate();
  ASSERT_FALSE(c.float_values.empty());
  c.float_values[0] = std::numeric_limits<float>::infinity();
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 3 (pw_values): value 0 is not finite");
  c.Generate();
  c.pw_bias[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_HAS(CheckError(c, c.Inputs()), "input 7 (pw_bias): value 2 is not finite");
  Case q = CsrInt8Case();
  q.scales[3] = 0.0f;
  EXPECT_HAS(CheckError(q, q.Inputs()), "input 6 (pw_scales): scale 3 is 0.000000, must be > 0");
  q.scales[3] = -0.5f;
  EXPECT_HAS(CheckError(q, q.Inputs()), "scale 3 is -0.500000, must be > 0");
  q.scales[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_HAS(CheckError(q, q.Inputs()), "input 6 (pw_scales): value 3 is not finite");
}

TEST(SparseSeparableCheckTest, RefusesWrongValueTypesAndShapes) {
  Case c = CsrInt8Case();
  std::vector<Tensor> inputs = c.Inputs();
  inputs[3].type = ElementType::kFloat32;
  EXPECT_HAS(CheckError(c, inputs), "input 3 (pw_values) must be int8, got float32");
  Case dense;
  dense.o.format = SepFormat::kDense;
  dense.Generate();
  inputs = dense.Inputs();
  inputs[3].dims = {5, 8};
  EXPECT_HAS(CheckError(dense, inputs), "input 3 (pw_values) has shape [5, 8], expected [8, 5]");
  inputs = c.Inputs();
  inputs[5].type = ElementType::kInt64;
  EXPECT_HAS(CheckError(c, inputs), "input 5 (pw_row_ptr) must be int32, got int64");
}

TEST(SparseSeparableCheckTest, RefusesNonConstantWeights) {
  const Case c = CsrInt8Case();
  for (std::size_t i = 1; i < 8; ++i) {
    std::vector<Tensor> inputs = c.Inputs();
    inputs[i].data = nullptr;
    inputs[i].size = 0;
    EXPECT_HAS(CheckError(c, inputs), "input " + std::to_string(i) + " (");
    EXPECT_HAS(CheckError(c, inputs), ") must be a constant tensor");
  }
}

// ---- the kernel object -----------------------------------------------------

struct Site {
  std::vector<uint8_t> options;
  OpSite site;
};

Site SiteOf(const Case& c, std::vector<int32_t> declared = {}) {
  Site s;
  s.options = Flex(EntriesOf(c.o));
  s.site.options = s.options.data();
  s.site.options_size = s.options.size();
  s.site.inputs = c.Inputs();
  s.site.inputs[0].data = nullptr;  // x is not a constant
  s.site.inputs[0].size = 0;
  if (declared.empty()) {
    SepProblem problem;
    EXPECT_EQ(CheckSparseSeparable(c.o, c.Inputs(), 1, &problem), "");
    declared = edgepipe::ops::SparseSeparableOutputDims(problem);
  }
  Tensor out;
  out.name = "y";
  out.type = ElementType::kFloat32;
  out.dims = declared;
  s.site.outputs = {out};
  return s;
}

std::vector<std::vector<int32_t>> DimsOf(const std::vector<Tensor>& inputs) {
  std::vector<std::vector<int32_t>> dims;
  for (const Tensor& t : inputs) dims.push_back(t.dims);
  return dims;
}

// Prepare and Run of a validated case; the output, or empty on a refusal.
std::vector<float> PrepareAndRun(SparseSeparableKernel* kernel, const Case& c) {
  std::vector<std::vector<int32_t>> output_dims;
  EXPECT_EQ(kernel->Prepare(DimsOf(c.Inputs()), &output_dims), "");
  if (output_dims.size() != 1) return {};
  std::size_t count = 1;
  for (int32_t d : output_dims[0]) count *= static_cast<std::size_t>(d);
  std::vector<float> out(count);
  OutputBuffer buffer;
  buffer.type = ElementType::kFloat32;
  buffer.dims = output_dims[0];
  buffer.data = out.data();
  buffer.size = count * sizeof(float);
  const std::string error = kernel->Run(c.Inputs(), {buffer});
  EXPECT_EQ(error, "");
  return error.empty() ? out : std::vector<float>();
}

TEST(SparseSeparableKernelTest, ValidatePrepareRunGiveTheComputation) {
  for (int threads : {1, 3}) {
    Case c = CsrInt8Case();
    c.o.input_layout = SepLayout::kChw;
    c.o.stride = 2;
    c.Generate();
    KernelConfig config;
    config.num_threads = threads;
    SparseSeparableKernel kernel(config);
    EXPECT_EQ(kernel.threads(), threads);
    Site s = SiteOf(c);
    ASSERT_EQ(kernel.Validate(s.site), "");
    std::vector<float> want, tol;
    c.Reference(&want, &tol);
    const std::vector<float> got = PrepareAndRun(&kernel, c);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol[i]) << i;
  }
}

TEST(SparseSeparableKernelTest, RefusesADeclaredOutputTheOptionsDoNotGive) {
  Case c;
  c.o.stride = 2;
  c.Generate();  // x [1, 6, 7, 5]: output [1, 3, 4, 8]
  SparseSeparableKernel kernel{KernelConfig()};
  EXPECT_HAS(kernel.Validate(SiteOf(c, {1, 6, 7, 8}).site),
             "output 0 ('y') is declared float32 [1, 6, 7, 8], but x [1, 6, 7, 5] and the options give float32 [1, 3, 4, 8]");
  EXPECT_HAS(kernel.Validate(SiteOf(c, {1, 8, 3, 4}).site), "give float32 [1, 3, 4, 8]");
  c.o.output_layout = SepLayout::kChw;
  EXPECT_HAS(kernel.Validate(SiteOf(c, {1, 3, 4, 8}).site), "give float32 [1, 8, 3, 4]");
  Site s = SiteOf(c);
  s.site.outputs[0].type = ElementType::kInt8;
  EXPECT_HAS(kernel.Validate(s.site), "is declared int8");
}

TEST(SparseSeparableKernelTest, RefusesBadOptionsAndInputsAtValidate) {
  Case c;
  c.Generate();
  SparseSeparableKernel kernel{KernelConfig()};
  Site s = SiteOf(c);
  std::vector<Entry> entries = EntriesOf(c.o);
  entries.pop_back();
  s.options = Flex(entries);
  s.site.options = s.options.data();
  s.site.options_size = s.options.size();
  EXPECT_EQ(kernel.Validate(s.site), "custom option 'output_layout' is missing");
  c.o.block = 4;
  c.o.out_channels = 6;
  s = SiteOf(Case(), {1, 6, 7, 6});
  s.options = Flex(EntriesOf(c.o));
  s.site.options = s.options.data();
  s.site.options_size = s.options.size();
  EXPECT_HAS(kernel.Validate(s.site), "is not a multiple of 4");
  Case bad;
  bad.Generate();
  bad.row_ptr[0] = 2;
  EXPECT_HAS(kernel.Validate(SiteOf(bad, {1, 6, 7, 8}).site), "row_ptr[0] is 2, must be 0");
}

TEST(SparseSeparableKernelTest, RunRefusesWhatWasNotChecked) {
  Case c;
  c.Generate();
  SparseSeparableKernel kernel{KernelConfig()};
  ASSERT_EQ(kernel.Validate(SiteOf(c).site), "");
  std::vector<float> out(1 * 6 * 7 * 8);
  OutputBuffer buffer;
  buffer.type = ElementType::kFloat32;
  buffer.dims = {1, 6, 7, 8};
  buffer.data = out.data();
  buffer.size = out.size() * sizeof(float);
  EXPECT_EQ(kernel.Run(c.Inputs(), {buffer}), "run before the op was prepared");
  ASSERT_EQ(PrepareAndRun(&kernel, c).size(), out.size());
  std::vector<Tensor> inputs = c.Inputs();
  inputs[0].size -= 4;
  EXPECT_HAS(kernel.Run(inputs, {buffer}), "input 0 (x) must be float32 [1, 6, 7, 5]");
  buffer.size -= 4;
  EXPECT_HAS(kernel.Run(c.Inputs(), {buffer}), "output 0 must be float32 [1, 6, 7, 8]");
  Case other;
  other.seed = 9;
  other.Generate();
  EXPECT_HAS(kernel.Run(other.Inputs(), {buffer}), "not those of any SparseSeparableConv op");
}

TEST(SparseSeparableKernelTest, OpsAreFoundByTheirConstantsAndShapes) {
  Case a, b;
  b.seed = 2;
  b.height = 9;
  a.Generate();
  b.Generate();
  KernelConfig config;
  config.num_threads = 2;
  SparseSeparableKernel kernel(config);
  ASSERT_EQ(kernel.Validate(SiteOf(a).site), "");
  ASSERT_EQ(kernel.Validate(SiteOf(b).site), "");
  for (const Case* c : {&a, &b}) {
    std::vector<float> want, tol;
    c->Reference(&want, &tol);
    const std::vector<float> got = PrepareAndRun(&kernel, *c);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol[i]);
  }
}

TEST(SparseSeparableKernelTest, KeepsScratchWithinItsLimit) {
  Case c;
  c.height = 3;
  c.width = 20000;
  c.o.in_channels = 64;
  c.Generate();  // a band of one row: D alone is 64 x 20008 floats
  KernelConfig config;
  config.max_scratch_bytes = std::size_t{4} << 20;
  SparseSeparableKernel kernel(config);
  EXPECT_HAS(kernel.Validate(SiteOf(c).site),
             "KiB of scratch and repacked weights for x [1, 3, 20000, 64], more than the kernel's limit of 4096 KiB");
  config.max_scratch_bytes = std::size_t{8} << 20;
  SparseSeparableKernel roomy(config);
  EXPECT_EQ(roomy.Validate(SiteOf(c).site), "");
}

TEST(SparseSeparableKernelTest, RegistrationCreatesTheKernel) {
  const edgepipe::kernels::KernelRegistration registration =
      edgepipe::ops::SparseSeparableRegistration();
  EXPECT_STREQ(registration.name, "SparseSeparableConv");
  EXPECT_EQ(registration.version, 1);
  EXPECT_NE(registration.create(KernelConfig()), nullptr);
}

}  // namespace
