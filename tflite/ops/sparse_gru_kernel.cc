#include "tflite/ops/sparse_gru_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

namespace edgepipe {
namespace ops {
namespace {

enum Input : std::size_t {
  kX = 0,
  kWValues, kWCols, kWRowPtr, kWScales,
  kRValues, kRCols, kRRowPtr, kRScales,
  kBias,
};

const char* const kInputNames[kGruNumSlots] = {
    "x", "w_values", "w_col_indices", "w_row_ptr", "w_scales",
    "r_values", "r_col_indices", "r_row_ptr", "r_scales", "bias"};

// Activations and scratch larger than this are not a GRU a device runs.
constexpr int64_t kMaxElements = int64_t{1} << 28;

std::string Label(std::size_t index) {
  return "input " + std::to_string(index) + " (" + kInputNames[index] + ")";
}

std::string DimsText(const std::vector<int32_t>& dims) {
  std::string text = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return text + "]";
}

// Own tables rather than the runtime's, so the kernel links without it.
std::size_t TypeSize(LiteRtElementType type) {
  switch (type) {
    case kLiteRtElementTypeFloat32:
    case kLiteRtElementTypeInt32: return 4;
    case kGruElementTypeUInt16: return 2;
    case kLiteRtElementTypeInt8: return 1;
    default: return 0;
  }
}

const char* TypeName(LiteRtElementType type) {
  switch (type) {
    case kLiteRtElementTypeFloat32: return "float32";
    case kLiteRtElementTypeInt32: return "int32";
    case kGruElementTypeUInt16: return "uint16";
    case kLiteRtElementTypeInt8: return "int8";
    default: return "another type";
  }
}

// Checks that input `index` exists with `type` and `dims` (-1: any size),
// holds exactly its bytes, and has data where `mode` needs it: the weights
// before running (constants), every input while running.
std::string CheckArray(const std::vector<GruTensor>& inputs, std::size_t index,
                       LiteRtElementType type, const std::vector<int64_t>& dims, GruCheck mode) {
  const GruTensor& tensor = inputs[index];
  if (mode != GruCheck::kShapes && tensor.type != type) {
    return Label(index) + " must be " + TypeName(type) + ", got " + TypeName(tensor.type);
  }
  bool shape_ok = tensor.dims.size() == dims.size();
  int64_t elements = 1;
  for (std::size_t d = 0; shape_ok && d < dims.size(); ++d) {
    if (tensor.dims[d] < 0 || (dims[d] >= 0 && tensor.dims[d] != dims[d])) shape_ok = false;
    elements *= tensor.dims[d];
    if (elements > kMaxElements) shape_ok = false;
  }
  if (!shape_ok) {
    std::string wanted = "[";
    for (std::size_t d = 0; d < dims.size(); ++d) {
      wanted += (d ? ", " : "") + (dims[d] >= 0 ? std::to_string(dims[d]) : std::string("?"));
    }
    return Label(index) + " has shape " + DimsText(tensor.dims) + ", expected rank " +
           std::to_string(dims.size()) + " " + wanted + "]";
  }
  const std::size_t bytes = static_cast<std::size_t>(elements) * TypeSize(type);
  if (bytes > 0 && !tensor.data) {
    if (mode == GruCheck::kRun) return Label(index) + " has no data";
    if (mode == GruCheck::kPreflight && index != kX) {
      return Label(index) + " must be a constant tensor";
    }
  }
  if (tensor.data && tensor.size != bytes) {
    return Label(index) + " holds " + std::to_string(tensor.size) + " bytes, its shape " +
           DimsText(tensor.dims) + " needs " + std::to_string(bytes);
  }
  return "";
}

// Checks one of W / R (inputs first..first+3) and fills `*matrix`.
std::string CheckMatrix(const SparseGruOptions& options, const std::vector<GruTensor>& inputs,
                        std::size_t first, int64_t rows, int64_t cols, GruCheck mode,
                        GruMatrix* matrix) {
  const bool int8 = options.precision == GruPrecision::kInt8;
  const LiteRtElementType value_type = int8 ? kLiteRtElementTypeInt8 : kLiteRtElementTypeFloat32;
  const std::size_t values = first, col_indices = first + 1, row_ptr = first + 2,
                    scales = first + 3;
  std::string problem;
  matrix->rows = rows;
  matrix->cols = cols;
  if (options.format == GruFormat::kDense) {
    if (!(problem = CheckArray(inputs, values, value_type, {rows, cols}, mode)).empty()) {
      return problem;
    }
  } else {
    if (!(problem = CheckArray(inputs, values, value_type, {-1}, mode)).empty()) {
      return problem;
    }
    const int64_t nnz = inputs[values].dims[0];
    if (!(problem = CheckArray(inputs, col_indices, kGruElementTypeUInt16, {nnz},
                               mode)).empty() ||
        !(problem = CheckArray(inputs, row_ptr, kLiteRtElementTypeInt32, {rows + 1},
                               mode)).empty()) {
      return problem;
    }
    const auto* ptr = static_cast<const int32_t*>(inputs[row_ptr].data);
    const auto* cols_of = static_cast<const uint16_t*>(inputs[col_indices].data);
    if (ptr) {
      if (ptr[0] != 0) {
        return Label(row_ptr) + ": row_ptr[0] is " + std::to_string(ptr[0]) + ", must be 0";
      }
      for (int64_t row = 0; row < rows; ++row) {
        if (ptr[row + 1] < ptr[row]) {
          return Label(row_ptr) + " decreases at row " + std::to_string(row) + " (" +
                 std::to_string(ptr[row]) + " then " + std::to_string(ptr[row + 1]) + ")";
        }
        if (ptr[row + 1] > nnz) {
          return Label(row_ptr) + ": row_ptr[" + std::to_string(row + 1) + "] = " +
                 std::to_string(ptr[row + 1]) + " is past nnz " + std::to_string(nnz);
        }
      }
      if (ptr[rows] != nnz) {
        return Label(row_ptr) + ": last entry is " + std::to_string(ptr[rows]) +
               ", must equal nnz " + std::to_string(nnz);
      }
      // A branch-free pass over every index first (it runs at every
      // inference); the loop that names the problem runs only on failure.
      bool ok = true;
      for (int64_t row = 0; cols_of && row < rows; ++row) {
        if (ptr[row] == ptr[row + 1]) continue;
        bool row_ok = cols_of[ptr[row + 1] - 1] < cols;
        for (int32_t k = ptr[row] + 1; k < ptr[row + 1]; ++k) row_ok &= cols_of[k] > cols_of[k - 1];
        ok &= row_ok;
      }
      for (int64_t row = 0; !ok && row < rows; ++row) {
        for (int32_t k = ptr[row]; k < ptr[row + 1]; ++k) {
          if (cols_of[k] >= cols) {
            return Label(col_indices) + ": column " + std::to_string(cols_of[k]) + " in row " +
                   std::to_string(row) + " is out of range (< " + std::to_string(cols) + ")";
          }
          if (k > ptr[row] && cols_of[k] <= cols_of[k - 1]) {
            return Label(col_indices) + ": columns of row " + std::to_string(row) +
                   " are not strictly increasing";
          }
        }
      }
    }
    matrix->col_indices = cols_of;
    matrix->row_ptr = ptr;
  }
  if (int8) {
    if (!(problem = CheckArray(inputs, scales, kLiteRtElementTypeFloat32, {rows},
                               mode)).empty()) {
      return problem;
    }
    const auto* scale = static_cast<const float*>(inputs[scales].data);
    for (int64_t row = 0; scale && row < rows; ++row) {
      if (!std::isfinite(scale[row])) {
        return Label(scales) + ": scale of row " + std::to_string(row) + " is not finite";
      }
    }
    matrix->scales = scale;
  }
  matrix->values = inputs[values].data;
  return "";
}

// The configuration the given (present) inputs imply: options do not travel
// with LiteRT's callbacks. Input count gives format and precision, x the
// input size, bias the units and reset_after, the output rank
// return_sequences. False when the count fits no configuration.
bool ImpliedOptions(const std::vector<GruTensor>& given, std::size_t output_rank,
                    SparseGruOptions* implied) {
  bool known = false;
  for (GruFormat format : {GruFormat::kCsr, GruFormat::kDense}) {
    for (GruPrecision precision : {GruPrecision::kFloat32, GruPrecision::kInt8}) {
      if (SparseGruInputCount(format, precision) == given.size()) {
        implied->format = format;
        implied->precision = precision;
        known = true;
      }
    }
  }
  if (!known) return false;
  const GruTensor& x = given.front();
  const GruTensor& bias = given.back();
  implied->input_size = x.dims.size() == 3 ? x.dims[2] : 0;
  implied->reset_after = bias.dims.size() == 2;
  implied->units = bias.dims.empty() ? 0 : bias.dims.back() / 3;
  implied->return_sequences = output_rank == 3;
  return true;
}

std::string CountError(std::size_t count) {
  return "expects 4, 6, 8 or 10 inputs (dense float32, dense int8, csr float32, csr int8), "
         "got " + std::to_string(count);
}

}  // namespace

std::size_t SparseGruInputCount(GruFormat format, GruPrecision precision) {
  return 4 + (format == GruFormat::kCsr ? 4 : 0) + (precision == GruPrecision::kInt8 ? 2 : 0);
}

std::string CheckSparseGru(const SparseGruOptions& options, const std::vector<GruTensor>& given,
                           std::size_t num_outputs, GruCheck mode, GruProblem* problem) {
  const std::size_t count = SparseGruInputCount(options.format, options.precision);
  if (given.size() != count) {
    return "expects " + std::to_string(count) + " inputs for format '" +
           (options.format == GruFormat::kCsr ? "csr" : "dense") + "' and precision '" +
           (options.precision == GruPrecision::kInt8 ? "int8" : "float32") +
           "' (absent inputs left out), got " + std::to_string(given.size());
  }
  // Into the contract's slots; the absent ones stay empty and unread.
  const bool csr = options.format == GruFormat::kCsr;
  const bool int8 = options.precision == GruPrecision::kInt8;
  std::vector<GruTensor> inputs(kGruNumSlots);
  std::size_t next = 0;
  for (std::size_t slot = 0; slot < kGruNumSlots; ++slot) {
    const bool is_csr_array = slot == kWCols || slot == kWRowPtr || slot == kRCols ||
                              slot == kRRowPtr;
    const bool is_scale = slot == kWScales || slot == kRScales;
    if ((is_csr_array && !csr) || (is_scale && !int8)) continue;
    inputs[slot] = given[next++];
  }
  if (num_outputs != 1) return "expects 1 output, got " + std::to_string(num_outputs);
  const int64_t units = options.units, features = options.input_size, gates = 3 * options.units;
  std::string error =
      CheckArray(inputs, kX, kLiteRtElementTypeFloat32, {-1, -1, features}, mode);
  if (!error.empty()) return error;
  if (inputs[kX].dims[0] < 1 || inputs[kX].dims[1] < 1) {
    return Label(kX) + " has shape " + DimsText(inputs[kX].dims) +
           "; batch and time steps must be at least 1";
  }
  GruProblem checked;
  checked.options = options;
  checked.batch = inputs[kX].dims[0];
  checked.steps = inputs[kX].dims[1];
  if (checked.batch * checked.steps * gates > kMaxElements) {
    return Label(kX) + " of shape " + DimsText(inputs[kX].dims) + " needs too much scratch memory";
  }
  if (!(error = CheckMatrix(options, inputs, kWValues, gates, features, mode,
                            &checked.w)).empty() ||
      !(error = CheckMatrix(options, inputs, kRValues, gates, units, mode,
                            &checked.r)).empty()) {
    return error;
  }
  const std::vector<int64_t> bias_dims =
      options.reset_after ? std::vector<int64_t>{2, gates} : std::vector<int64_t>{gates};
  if (!(error = CheckArray(inputs, kBias, kLiteRtElementTypeFloat32, bias_dims,
                           mode)).empty()) {
    return error + (options.reset_after ? " (reset_after = true)" : " (reset_after = false)");
  }
  checked.bias = static_cast<const float*>(inputs[kBias].data);
  if (problem) *problem = checked;
  return "";
}

std::vector<int32_t> SparseGruOutputDims(const GruProblem& problem) {
  const auto b = static_cast<int32_t>(problem.batch);
  const auto t = static_cast<int32_t>(problem.steps);
  const auto u = static_cast<int32_t>(problem.options.units);
  if (problem.options.return_sequences) return {b, t, u};
  return {b, u};
}

void ComputeSparseGru(const GruProblem& problem, const float* x, float* out,
                      GruScratch* scratch, WorkerTeam* team) {
#if defined(EDGEPIPE_GRU_AVX2)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return avx2::ComputeSparseGru(problem, x, out, scratch, team);
#endif
  baseline::ComputeSparseGru(problem, x, out, scratch, team);
}

SparseGruKernel::SparseGruKernel() : callbacks_{Init, OutputLayouts, Run, Destroy} {}

std::string SparseGruKernel::Validate(const runtime::CustomOpSite& site) const {
  SparseGruOptions options;
  std::string error = ParseSparseGruOptions(site.options, site.options_size, &options);
  if (!error.empty()) return error;
  std::vector<GruTensor> inputs;
  for (const runtime::OpInput& input : site.inputs) {
    GruTensor tensor;
    tensor.type = input.element_type;
    tensor.dims = input.dims;
    tensor.data = input.data;
    tensor.size = input.size;
    inputs.push_back(std::move(tensor));
  }
  return CheckSparseGru(options, inputs, site.num_outputs, GruCheck::kPreflight, nullptr);
}

void SparseGruKernel::SetNumThreads(int threads) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int have = team_ ? team_->size() : 1;
  if (threads == have) return;
  team_.reset(threads > 1 ? new WorkerTeam(threads) : nullptr);
}

std::string SparseGruKernel::TakeRunError() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string error;
  error.swap(error_);
  return error;
}

void SparseGruKernel::AddError(const std::string& error) {
  error_ += error_.empty() ? "" : "; ";
  error_ += error;
}

LiteRtStatus SparseGruKernel::Init(void* user_data, const void* init_data, std::size_t size) {
  auto* self = static_cast<SparseGruKernel*>(user_data);
  SparseGruOptions options;
  const std::string error =
      ParseSparseGruOptions(static_cast<const uint8_t*>(init_data), size, &options);
  std::lock_guard<std::mutex> lock(self->mutex_);
  ++self->live_ops_;
  if (!error.empty()) {
    self->AddError(error);
    return kLiteRtStatusErrorInvalidArgument;
  }
  self->ops_.push_back(options);
  return kLiteRtStatusOk;
}

LiteRtStatus SparseGruKernel::Destroy(void* user_data) {
  auto* self = static_cast<SparseGruKernel*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  // Packs go with any op: its model's constants may be freed next.
  self->scratch_.DropPacks();
  // Which op goes is unknown; the records go when the last op does.
  if (self->live_ops_ > 0 && --self->live_ops_ == 0) {
    self->ops_.clear();
    self->prepare_cursor_ = 0;
    self->scratch_ = GruScratch();
  }
  return kLiteRtStatusOk;
}

LiteRtStatus SparseGruKernel::OutputLayouts(void* user_data, std::size_t num_inputs,
                                            const LiteRtLayout* input_layouts,
                                            std::size_t num_outputs,
                                            LiteRtLayout* output_layouts) {
  auto* self = static_cast<SparseGruKernel*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  std::vector<GruTensor> inputs(input_layouts ? num_inputs : 0);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const unsigned rank = std::min<unsigned>(input_layouts[i].rank, LITERT_TENSOR_MAX_RANK);
    inputs[i].dims.assign(input_layouts[i].dimensions, input_layouts[i].dimensions + rank);
  }
  SparseGruOptions implied;
  if (num_outputs != 1 || !output_layouts || !ImpliedOptions(inputs, 0, &implied)) {
    self->AddError(CountError(num_inputs) + " and 1 output, got " + std::to_string(num_outputs));
    return kLiteRtStatusErrorInvalidArgument;
  }
  // Ops are prepared in the order they were initialized; the first op from
  // the cursor on whose options fit these shapes is this one.
  const std::size_t count = self->ops_.size();
  for (std::size_t n = 0; n < count; ++n) {
    const std::size_t index = (self->prepare_cursor_ + n) % count;
    const SparseGruOptions& candidate = self->ops_[index];
    SparseGruOptions shape_only = implied;  // shapes do not show return_sequences
    shape_only.return_sequences = candidate.return_sequences;
    if (!(candidate == shape_only)) continue;
    GruProblem problem;
    const std::string error = CheckSparseGru(candidate, inputs, 1, GruCheck::kShapes, &problem);
    if (!error.empty()) {
      self->AddError(error);
      return kLiteRtStatusErrorInvalidArgument;
    }
    self->prepare_cursor_ = index + 1;
    const std::vector<int32_t> dims = SparseGruOutputDims(problem);
    LiteRtLayout& out = output_layouts[0];
    std::memset(&out, 0, sizeof(out));
    out.rank = static_cast<unsigned>(dims.size());
    for (std::size_t d = 0; d < dims.size(); ++d) out.dimensions[d] = dims[d];
    return kLiteRtStatusOk;
  }
  self->AddError("no initialized SparseGRU op has options that fit input shapes x " +
                 DimsText(inputs.front().dims) + ", bias " + DimsText(inputs.back().dims));
  return kLiteRtStatusErrorInvalidArgument;
}

LiteRtStatus SparseGruKernel::Run(void* user_data, std::size_t num_inputs,
                                  const LiteRtTensorBuffer* inputs, std::size_t num_outputs,
                                  LiteRtTensorBuffer* outputs) {
  auto* self = static_cast<SparseGruKernel*>(user_data);
  std::lock_guard<std::mutex> lock(self->mutex_);
  const std::string error = self->RunLocked(num_inputs, inputs, num_outputs, outputs);
  if (error.empty()) return kLiteRtStatusOk;
  self->AddError(error);
  return kLiteRtStatusErrorRuntimeFailure;
}

std::string SparseGruKernel::RunLocked(std::size_t num_inputs, const LiteRtTensorBuffer* inputs,
                                       std::size_t num_outputs, LiteRtTensorBuffer* outputs) {
  if (num_inputs > kGruNumSlots || num_outputs != 1 || !inputs || !outputs || !outputs[0]) {
    return CountError(num_inputs) + " and 1 output, got " + std::to_string(num_outputs);
  }
  // Lock every buffer for the whole run; unlock whatever was locked on exit.
  std::vector<LiteRtTensorBuffer> locked;
  struct Unlocker {
    std::vector<LiteRtTensorBuffer>* buffers;
    ~Unlocker() {
      for (LiteRtTensorBuffer buffer : *buffers) LiteRtUnlockTensorBuffer(buffer);
    }
  } unlocker{&locked};
  auto map = [&locked](LiteRtTensorBuffer buffer, LiteRtTensorBufferLockMode mode,
                       GruTensor* tensor) -> bool {
    LiteRtRankedTensorType type;
    void* host = nullptr;
    if (LiteRtGetTensorBufferTensorType(buffer, &type) != kLiteRtStatusOk ||
        LiteRtGetTensorBufferSize(buffer, &tensor->size) != kLiteRtStatusOk ||
        type.layout.rank > LITERT_TENSOR_MAX_RANK ||
        LiteRtLockTensorBuffer(buffer, &host, mode) != kLiteRtStatusOk) {
      return false;
    }
    locked.push_back(buffer);
    tensor->type = type.element_type;
    tensor->dims.assign(type.layout.dimensions, type.layout.dimensions + type.layout.rank);
    tensor->data = host;
    return host != nullptr || tensor->size == 0;
  };
  std::vector<GruTensor> tensors(num_inputs);
  for (std::size_t i = 0; i < num_inputs; ++i) {
    if (!inputs[i] || !map(inputs[i], kLiteRtTensorBufferLockModeRead, &tensors[i])) {
      return "cannot map input " + std::to_string(i);
    }
  }
  GruTensor output;
  if (!map(outputs[0], kLiteRtTensorBufferLockModeWrite, &output)) return "cannot map the output";

  SparseGruOptions implied;
  if (!ImpliedOptions(tensors, output.dims.size(), &implied)) return CountError(num_inputs);
  bool initialized = false;
  for (const SparseGruOptions& options : ops_) initialized = initialized || options == implied;
  if (!initialized) {
    return "the tensors handed to the kernel fit no initialized SparseGRU op's options";
  }
  GruProblem problem;
  std::string error = CheckSparseGru(implied, tensors, num_outputs, GruCheck::kRun, &problem);
  if (!error.empty()) return error;
  const std::vector<int32_t> want = SparseGruOutputDims(problem);
  std::size_t want_bytes = sizeof(float);
  for (int32_t d : want) want_bytes *= static_cast<std::size_t>(d);
  if (output.type != kLiteRtElementTypeFloat32 || output.dims != want ||
      output.size < want_bytes || !output.data) {
    return "output must be float32 " + DimsText(want) + ", got " + TypeName(output.type) + " " +
           DimsText(output.dims);
  }
  ComputeSparseGru(problem, static_cast<const float*>(tensors[kX].data),
                   static_cast<float*>(const_cast<void*>(output.data)), &scratch_, team_.get());
  return "";
}

SparseGruKernel* SparseGruKernelInstance() {
  static SparseGruKernel* kernel = new SparseGruKernel();  // lives as long as the process
  return kernel;
}

}  // namespace ops
}  // namespace edgepipe
