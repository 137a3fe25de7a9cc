#include "tflite/ops/sparse_separable_kernel.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace edgepipe {
namespace ops {
namespace {

using kernels::ElementType;
using kernels::Tensor;

enum Slot : std::size_t {
  kX, kDwWeights, kDwBias, kPwValues, kPwCols, kPwRowPtr, kPwScales, kPwBias
};

const char* const kSlotNames[kSepNumSlots] = {"x", "dw_weights", "dw_bias", "pw_values",
                                               "pw_col_indices", "pw_row_ptr", "pw_scales",
                                               "pw_bias"};

// No tensor of a block a device runs comes near this; it keeps every size
// product far from overflow.
constexpr int64_t kMaxElements = int64_t{1} << 28;

std::string Label(std::size_t slot) {
  return "input " + std::to_string(slot) + " (" + kSlotNames[slot] + ")";
}

template <typename Int>
std::string DimsText(const std::vector<Int>& dims) {
  std::string text;
  for (Int d : dims) text += (text.empty() ? "" : ", ") + (d < 0 ? "?" : std::to_string(d));
  return "[" + text + "]";
}

// Elements of a shape that matches `want` (-1: any size), or -1.
int64_t Elements(const std::vector<int32_t>& dims, const std::vector<int64_t>& want) {
  if (dims.size() != want.size()) return -1;
  int64_t elements = 1;
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 0 || (want[i] >= 0 && dims[i] != want[i])) return -1;
    elements *= dims[i];
    if (elements > kMaxElements) return -1;
  }
  return elements;
}

// Type, shape and byte count of an input; every input but x must be a
// constant (have data).
std::string CheckTensor(const Tensor& t, std::size_t slot, ElementType type,
                        const std::vector<int64_t>& want) {
  if (t.type != type) {
    return Label(slot) + " must be " + kernels::ElementTypeName(type) + ", got " +
           kernels::ElementTypeName(t.type);
  }
  const int64_t elements = Elements(t.dims, want);
  if (elements < 0) {
    return Label(slot) + " has shape " + DimsText(t.dims) + ", expected " + DimsText(want);
  }
  const std::size_t bytes = static_cast<std::size_t>(elements) * kernels::ElementSize(type);
  if (slot != kX && bytes > 0 && !t.data) return Label(slot) + " must be a constant tensor";
  if (t.data && t.size != bytes) {
    return Label(slot) + " holds " + std::to_string(t.size) + " bytes, its shape " +
           DimsText(t.dims) + " needs " + std::to_string(bytes);
  }
  return "";
}

const float* Floats(const Tensor& t) { return static_cast<const float*>(t.data); }
const int32_t* RowPtr(const std::vector<Tensor>& in) {
  return static_cast<const int32_t*>(in[kPwRowPtr].data);
}
const uint16_t* Cols(const std::vector<Tensor>& in) {
  return static_cast<const uint16_t*>(in[kPwCols].data);
}

// Every value finite (and, for scales, > 0).
std::string CheckValues(const Tensor& t, std::size_t slot, bool positive) {
  const float* v = Floats(t);
  const std::size_t n = t.size / sizeof(float);
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) {
      return Label(slot) + ": value " + std::to_string(i) + " is not finite";
    }
    if (positive && !(v[i] > 0.0f)) {
      return Label(slot) + ": scale " + std::to_string(i) + " is " + std::to_string(v[i]) +
             ", must be > 0";
    }
  }
  return "";
}

// Row pointers of csr weights with `rows` block rows and `blocks` blocks.
std::string CheckRowPtr(const int32_t* ptr, int64_t rows, int64_t blocks) {
  if (ptr[0] != 0) {
    return Label(kPwRowPtr) + ": row_ptr[0] is " + std::to_string(ptr[0]) + ", must be 0";
  }
  for (int64_t row = 0; row < rows; ++row) {
    if (ptr[row + 1] < ptr[row] || ptr[row + 1] > blocks) {
      return Label(kPwRowPtr) + ": row_ptr[" + std::to_string(row + 1) + "] = " +
             std::to_string(ptr[row + 1]) + " decreases or is past the " +
             std::to_string(blocks) + " blocks";
    }
  }
  if (ptr[rows] != blocks) {
    return Label(kPwRowPtr) + ": last entry is " + std::to_string(ptr[rows]) +
           ", must equal the number of blocks " + std::to_string(blocks);
  }
  return "";
}

// Column indices of checked row pointers: < Cin, strictly increasing per row.
std::string CheckColumns(const int32_t* ptr, const uint16_t* cols, int64_t rows, int64_t cin) {
  for (int64_t row = 0; row < rows; ++row) {
    for (int32_t k = ptr[row]; k < ptr[row + 1]; ++k) {
      if (cols[k] >= cin) {
        return Label(kPwCols) + ": column " + std::to_string(cols[k]) + " in row " +
               std::to_string(row) + " is out of range (< " + std::to_string(cin) + ")";
      }
      if (k > ptr[row] && cols[k] <= cols[k - 1]) {
        return Label(kPwCols) + ": columns of row " + std::to_string(row) +
               " are not strictly increasing";
      }
    }
  }
  return "";
}

// The given inputs in the contract's slots (absent ones stay empty), or the
// count problem.
std::string ToSlots(const SparseSeparableOptions& o, const std::vector<Tensor>& given,
                    std::vector<Tensor>* slots) {
  const bool csr = o.format == SepFormat::kCsr, int8 = o.precision == SepPrecision::kInt8;
  const std::size_t count = SparseSeparableInputCount(o.format, o.precision);
  if (given.size() != count) {
    return "expects " + std::to_string(count) + " inputs for format '" + (csr ? "csr" : "dense") +
           "' and precision '" + (int8 ? "int8" : "float32") +
           "' (absent inputs left out), got " + std::to_string(given.size());
  }
  slots->assign(kSepNumSlots, Tensor());
  std::size_t next = 0;
  for (std::size_t slot = 0; slot < kSepNumSlots; ++slot) {
    if ((slot == kPwCols || slot == kPwRowPtr) && !csr) continue;
    if (slot == kPwScales && !int8) continue;
    (*slots)[slot] = given[next++];
  }
  return "";
}

// Output size and leading padding of one spatial dimension (TensorFlow's
// rule), or out < 1 when a valid convolution does not fit.
void OutputExtent(int64_t in, const SparseSeparableOptions& o, int64_t* out, int64_t* pad) {
  const int64_t k = o.kernel_size, s = o.stride;
  if (o.padding == SepPadding::kValid) {
    *out = in < k ? 0 : (in - k) / s + 1;
    *pad = 0;
    return;
  }
  *out = (in + s - 1) / s;
  *pad = std::max<int64_t>((*out - 1) * s + k - in, 0) / 2;
}

std::string CheckX(const SparseSeparableOptions& o, const Tensor& x, SepProblem* p) {
  const bool chw = o.input_layout == SepLayout::kChw;
  const std::vector<int64_t> want = chw ? std::vector<int64_t>{-1, o.in_channels, -1, -1}
                                        : std::vector<int64_t>{-1, -1, -1, o.in_channels};
  std::string error = CheckTensor(x, kX, ElementType::kFloat32, want);
  if (!error.empty()) return error + (chw ? " (input_layout chw)" : " (input_layout nhwc)");
  p->batch = x.dims[0];
  p->height = x.dims[chw ? 2 : 1];
  p->width = x.dims[chw ? 3 : 2];
  if (p->batch < 1 || p->height < 1 || p->width < 1) {
    return Label(kX) + " has shape " + DimsText(x.dims) +
           "; batch, height and width must be at least 1";
  }
  OutputExtent(p->height, o, &p->out_height, &p->pad_top);
  OutputExtent(p->width, o, &p->out_width, &p->pad_left);
  if (p->out_height < 1 || p->out_width < 1) {
    return Label(kX) + " has shape " + DimsText(x.dims) + ": the image is smaller than the " +
           std::to_string(o.kernel_size) + "x" + std::to_string(o.kernel_size) +
           " kernel under 'valid' padding";
  }
  return "";
}

std::string CheckDepthwise(const SparseSeparableOptions& o, const std::vector<Tensor>& in,
                           SepProblem* p) {
  const int64_t k = o.kernel_size, cin = o.in_channels;
  std::string error;
  const ElementType f32 = ElementType::kFloat32;
  if (!(error = CheckTensor(in[kDwWeights], kDwWeights, f32, {k, k, cin})).empty() ||
      !(error = CheckValues(in[kDwWeights], kDwWeights, false)).empty() ||
      !(error = CheckTensor(in[kDwBias], kDwBias, f32, {cin})).empty() ||
      !(error = CheckValues(in[kDwBias], kDwBias, false)).empty()) {
    return error;
  }
  // [K, K, Cin] to [Cin][K * K]: a channel's taps together.
  const float* w = Floats(in[kDwWeights]);
  p->dw_weights.resize(static_cast<std::size_t>(k * k * cin));
  for (int64_t t = 0; t < k * k; ++t) {
    for (int64_t c = 0; c < cin; ++c) p->dw_weights[c * k * k + t] = w[t * cin + c];
  }
  p->dw_taps = w;
  p->dw_bias = Floats(in[kDwBias]);
  return "";
}

// The pointwise weights as SepPointwise (row_ptr null: dense [Cout, Cin]).
template <typename T>
SepPointwise Pack(const SparseSeparableOptions& o, const T* values, const uint16_t* cols,
                  const int32_t* row_ptr, const float* scales) {
  const int64_t cin = o.in_channels, cout = o.out_channels;
  SepPointwise pw;
  pw.block = row_ptr ? o.block : (cout % 4 == 0 ? 4 : 1);
  for (int64_t row = 0; row < cout / pw.block; ++row) {
    pw.row_ptr.push_back(static_cast<int32_t>(pw.cols.size()));
    const int64_t begin = row_ptr ? row_ptr[row] : 0, end = row_ptr ? row_ptr[row + 1] : cin;
    for (int64_t k = begin; k < end; ++k) {
      pw.cols.push_back(static_cast<uint16_t>(row_ptr ? cols[k] : k));
      for (int64_t j = 0; j < pw.block; ++j) {
        const int64_t co = row * pw.block + j;
        const T raw = row_ptr ? values[k * pw.block + j] : values[co * cin + k];
        pw.values.push_back(static_cast<float>(raw) * (scales ? scales[co] : 1.0f));
      }
    }
  }
  pw.row_ptr.push_back(static_cast<int32_t>(pw.cols.size()));
  pw.chunks = (cin + kSepChunk - 1) / kSepChunk;
  for (int64_t row = 0; row < cout / pw.block; ++row) {
    int32_t k = pw.row_ptr[row];
    for (int64_t chunk = 0; chunk <= pw.chunks; ++chunk) {
      while (k < pw.row_ptr[row + 1] && pw.cols[k] < chunk * kSepChunk) ++k;
      pw.chunk_ptr.push_back(chunk == pw.chunks ? pw.row_ptr[row + 1] : k);
    }
  }
  return pw;
}

std::string CheckPointwise(const SparseSeparableOptions& o, const std::vector<Tensor>& in,
                           SepProblem* p) {
  const int64_t cin = o.in_channels, cout = o.out_channels, block = o.block;
  const bool csr = o.format == SepFormat::kCsr, int8 = o.precision == SepPrecision::kInt8;
  const ElementType value_type = int8 ? ElementType::kInt8 : ElementType::kFloat32;
  std::string error = CheckTensor(in[kPwValues], kPwValues, value_type,
                                  csr ? std::vector<int64_t>{-1} : std::vector<int64_t>{cout, cin});
  if (!error.empty()) return error;
  if (!int8 && !(error = CheckValues(in[kPwValues], kPwValues, false)).empty()) return error;
  const int64_t length = in[kPwValues].dims[0], blocks = length / block;
  if (csr) {
    if (length % block != 0) {
      return Label(kPwValues) + " holds " + std::to_string(length) +
             " values, not a whole number of blocks of " + std::to_string(block);
    }
    if (!(error = CheckTensor(in[kPwCols], kPwCols, ElementType::kUInt16, {blocks})).empty() ||
        !(error = CheckTensor(in[kPwRowPtr], kPwRowPtr, ElementType::kInt32,
                              {cout / block + 1})).empty() ||
        !(error = CheckRowPtr(RowPtr(in), cout / block, blocks)).empty() ||
        !(error = CheckColumns(RowPtr(in), Cols(in), cout / block, cin)).empty()) {
      return error;
    }
  }
  const ElementType f32 = ElementType::kFloat32;
  if (int8 && (!(error = CheckTensor(in[kPwScales], kPwScales, f32, {cout})).empty() ||
               !(error = CheckValues(in[kPwScales], kPwScales, true)).empty())) {
    return error;
  }
  if (!(error = CheckTensor(in[kPwBias], kPwBias, f32, {cout})).empty() ||
      !(error = CheckValues(in[kPwBias], kPwBias, false)).empty()) {
    return error;
  }
  const float* scales = Floats(in[kPwScales]);
  const void* values = in[kPwValues].data;
  p->pw = int8 ? Pack(o, static_cast<const int8_t*>(values), Cols(in), RowPtr(in), scales)
               : Pack(o, static_cast<const float*>(values), Cols(in), RowPtr(in), scales);
  p->pw_bias = Floats(in[kPwBias]);
  return "";
}

std::size_t KeptBytes(const SepProblem& p) {
  return 4 * (p.dw_weights.size() + p.pw.values.size() + p.pw.row_ptr.size() +
              p.pw.chunk_ptr.size()) +
         2 * p.pw.cols.size();
}

std::size_t DimsBytes(const std::vector<int32_t>& dims) {
  std::size_t bytes = sizeof(float);
  for (int32_t d : dims) bytes *= static_cast<std::size_t>(d);
  return bytes;
}

}  // namespace

std::size_t SparseSeparableInputCount(SepFormat format, SepPrecision precision) {
  return 5 + (format == SepFormat::kCsr ? 2 : 0) + (precision == SepPrecision::kInt8 ? 1 : 0);
}

std::string CheckSparseSeparable(const SparseSeparableOptions& options,
                                 const std::vector<Tensor>& given, std::size_t num_outputs,
                                 SepProblem* problem) {
  std::vector<Tensor> inputs;
  std::string error = ToSlots(options, given, &inputs);
  if (!error.empty()) return error;
  if (num_outputs != 1) return "expects 1 output, got " + std::to_string(num_outputs);
  SepProblem checked;
  checked.options = options;
  if (!(error = CheckX(options, inputs[kX], &checked)).empty() ||
      !(error = CheckDepthwise(options, inputs, &checked)).empty() ||
      !(error = CheckPointwise(options, inputs, &checked)).empty()) {
    return error;
  }
  const int64_t positions = checked.batch * checked.out_height * checked.out_width;
  if (positions * options.out_channels > kMaxElements) {
    return "output 0 of x " + DimsText(inputs[kX].dims) + " and " +
           std::to_string(options.out_channels) + " output channels is too large";
  }
  *problem = std::move(checked);
  return "";
}

std::vector<int32_t> SparseSeparableOutputDims(const SepProblem& p) {
  const auto b = static_cast<int32_t>(p.batch), h = static_cast<int32_t>(p.out_height);
  const auto w = static_cast<int32_t>(p.out_width), c = static_cast<int32_t>(p.options.out_channels);
  if (p.options.output_layout == SepLayout::kChw) return {b, c, h, w};
  return {b, h, w, c};
}

SepScratchLayout SparseSeparableScratch(const SepProblem& p, int parts) {
  const int64_t k = p.options.kernel_size, s = p.options.stride, cin = p.options.in_channels;
  SepScratchLayout l;
  l.band_rows = std::min(p.out_height, std::max<int64_t>(1, kSepBandFloats / (cin * p.out_width)));
  l.plane_rows = (l.band_rows - 1) * s + k;
  l.plane_cols = (p.out_width + kSepMaxLanes - 1) / kSepMaxLanes * kSepMaxLanes + (k - 1) / s;
  l.plane_floats = s * l.plane_rows * l.plane_cols;
  // Room past the last position for a depthwise row's full-vector store.
  const int64_t positions = l.band_rows * p.out_width;
  l.d_stride = (positions + kSepMaxLanes - 1) / kSepMaxLanes * kSepMaxLanes + kSepMaxLanes;
  l.tile_floats = p.options.out_channels * kSepMaxTile;
  const int64_t planes_end =
      cin * l.d_stride + std::max(kSepPlaneGroup * l.plane_floats, kSepNhwcPixels * cin);
  l.tile_offset = (planes_end + kSepAlignFloats - 1) / kSepAlignFloats * kSepAlignFloats;
  l.part_floats = l.tile_offset + l.tile_floats;  // a multiple of kSepAlignFloats
  l.total_floats = parts * l.part_floats + kSepAlignFloats;
  return l;
}

void ComputeSparseSeparable(const SepProblem& problem, const float* x, float* out,
                            float* scratch, WorkerTeam* team) {
#if defined(EDGEPIPE_SEPARABLE_X86)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (avx512) return avx512::ComputeSparseSeparable(problem, x, out, scratch, team);
  if (avx2) return avx2::ComputeSparseSeparable(problem, x, out, scratch, team);
#endif
  baseline::ComputeSparseSeparable(problem, x, out, scratch, team);
}

SparseSeparableKernel::SparseSeparableKernel(const kernels::KernelConfig& config)
    : config_(config),
      team_(config.num_threads > 1 ? new WorkerTeam(config.num_threads) : nullptr) {}

std::string SparseSeparableKernel::Validate(const kernels::OpSite& site) {
  SparseSeparableOptions options;
  std::string error = ParseSparseSeparableOptions(site.options, site.options_size, &options);
  if (!error.empty()) return error;
  CheckedOp op;
  error = CheckSparseSeparable(options, site.inputs, site.outputs.size(), &op.problem);
  if (!error.empty()) return error;
  op.output_dims = SparseSeparableOutputDims(op.problem);
  const Tensor& declared = site.outputs[0];
  if (declared.type != ElementType::kFloat32 || declared.dims != op.output_dims) {
    return "output 0 ('" + declared.name + "') is declared " +
           kernels::ElementTypeName(declared.type) + " " + DimsText(declared.dims) + ", but x " +
           DimsText(site.inputs[0].dims) + " and the options give float32 " +
           DimsText(op.output_dims);
  }
  for (const Tensor& input : site.inputs) op.input_dims.push_back(input.dims);
  op.scratch_floats =
      static_cast<std::size_t>(SparseSeparableScratch(op.problem, threads()).total_floats);
  op.kept_bytes = KeptBytes(op.problem);
  // The scratch is shared op after op; each op keeps its repacked weights.
  // Summed in 64 bits: size_t may be 32.
  uint64_t largest = uint64_t{op.scratch_floats} * sizeof(float), kept = op.kept_bytes;
  for (const CheckedOp& other : ops_) {
    largest = std::max<uint64_t>(largest, uint64_t{other.scratch_floats} * sizeof(float));
    kept += other.kept_bytes;
  }
  if (largest + kept > config_.max_scratch_bytes) {
    return "needs " + std::to_string((largest + kept + 1023) >> 10) + " KiB of scratch and "
           "repacked weights for x " + DimsText(site.inputs[0].dims) +
           ", more than the kernel's limit of " + std::to_string(config_.max_scratch_bytes >> 10) +
           " KiB";
  }
  ops_.push_back(std::move(op));
  return "";
}

std::string SparseSeparableKernel::Prepare(const std::vector<std::vector<int32_t>>& input_dims,
                                           std::vector<std::vector<int32_t>>* output_dims) {
  // LiteRT prepares ops in model order, as they were validated: the first op
  // from the cursor on with these input shapes is this one.
  for (std::size_t n = 0; n < ops_.size(); ++n) {
    const std::size_t index = (prepare_cursor_ + n) % ops_.size();
    if (ops_[index].input_dims != input_dims) continue;
    prepare_cursor_ = index + 1;
    *output_dims = {ops_[index].output_dims};
    if (scratch_.size() < ops_[index].scratch_floats) scratch_.resize(ops_[index].scratch_floats);
    return "";
  }
  std::string shapes;
  for (const auto& dims : input_dims) shapes += (shapes.empty() ? "" : ", ") + DimsText(dims);
  return "no SparseSeparableConv op validated at load has inputs of shapes " + shapes;
}

const SparseSeparableKernel::CheckedOp* SparseSeparableKernel::FindOp(
    const std::vector<Tensor>& inputs) const {
  // Ops sharing constants (deduplicated buffers) are told apart by x's
  // shape; a wrong x still finds its op, for the message.
  const CheckedOp* found = nullptr;
  for (const CheckedOp& op : ops_) {
    if (inputs.size() != op.input_dims.size() || inputs[kDwBias].data != op.problem.dw_bias ||
        inputs.back().data != op.problem.pw_bias) {
      continue;
    }
    if (inputs[kX].dims == op.input_dims[kX]) return &op;
    if (!found) found = &op;
  }
  return found;
}

std::string SparseSeparableKernel::Run(const std::vector<Tensor>& inputs,
                                       const std::vector<kernels::OutputBuffer>& outputs) {
  const CheckedOp* op = FindOp(inputs);
  if (!op) {
    return "the weights handed to the kernel are not those of any SparseSeparableConv op "
           "checked at load";
  }
  const Tensor& x = inputs[kX];
  const std::size_t x_bytes = DimsBytes(op->input_dims[kX]);
  if (x.type != ElementType::kFloat32 || x.dims != op->input_dims[kX] || x.size != x_bytes ||
      !x.data) {
    return Label(kX) + " must be float32 " + DimsText(op->input_dims[kX]) + " (" +
           std::to_string(x_bytes) + " bytes), got " + kernels::ElementTypeName(x.type) + " " +
           DimsText(x.dims) + " (" + std::to_string(x.size) + " bytes)";
  }
  const std::size_t out_bytes = DimsBytes(op->output_dims);
  if (outputs.size() != 1 || outputs[0].type != ElementType::kFloat32 ||
      outputs[0].dims != op->output_dims || outputs[0].size < out_bytes || !outputs[0].data) {
    return "output 0 must be float32 " + DimsText(op->output_dims) + " (" +
           std::to_string(out_bytes) + " bytes)";
  }
  if (scratch_.size() < op->scratch_floats) return "run before the op was prepared";
  ComputeSparseSeparable(op->problem, static_cast<const float*>(x.data),
                         static_cast<float*>(outputs[0].data), scratch_.data(), team_.get());
  return "";
}

kernels::KernelRegistration SparseSeparableRegistration() {
  return {"SparseSeparableConv", 1, [](const kernels::KernelConfig& config) {
            return std::unique_ptr<kernels::OpKernel>(new SparseSeparableKernel(config));
          }};
}

}  // namespace ops
}  // namespace edgepipe
