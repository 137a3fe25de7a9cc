#include "tflite/ops/sparse_gru_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
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

// Checks that input `index` exists with `type` and `dims` (-1: any size),
// holds exactly its bytes, and has data where `mode` needs it: the weights
// before running (constants), every input while running.
std::string CheckArray(const std::vector<GruTensor>& inputs, std::size_t index,
                       kernels::ElementType type, const std::vector<int64_t>& dims, GruCheck mode) {
  const GruTensor& tensor = inputs[index];
  if (tensor.type != type) {
    return Label(index) + " must be " + kernels::ElementTypeName(type) + ", got " + kernels::ElementTypeName(tensor.type);
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
  const std::size_t bytes = static_cast<std::size_t>(elements) * kernels::ElementSize(type);
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
  const kernels::ElementType value_type = int8 ? kernels::ElementType::kInt8 : kernels::ElementType::kFloat32;
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
    if (!(problem = CheckArray(inputs, col_indices, kernels::ElementType::kUInt16, {nnz},
                               mode)).empty() ||
        !(problem = CheckArray(inputs, row_ptr, kernels::ElementType::kInt32, {rows + 1},
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
    if (!(problem = CheckArray(inputs, scales, kernels::ElementType::kFloat32, {rows},
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
      CheckArray(inputs, kX, kernels::ElementType::kFloat32, {-1, -1, features}, mode);
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
  if (!(error = CheckArray(inputs, kBias, kernels::ElementType::kFloat32, bias_dims,
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

std::size_t SparseGruScratchBytes(const GruProblem& problem) {
  const int64_t units = problem.options.units, features = problem.options.input_size;
  const int64_t gates = 3 * units, sequences = problem.batch * problem.steps;
  const int64_t stride = (sequences + kStepBlock - 1) / kStepBlock * kStepBlock;
  int64_t bytes = 4 * (features * stride + gates * stride + sequences * gates + gates + 2 * units);
  const GruMatrix& r = problem.r;
  if (r.row_ptr) {
    // The sliced copy: per gate, rows sorted by length in slices of
    // kSliceRows lanes, each as long as its longest row (value + column).
    const int64_t per_gate = r.rows / 3;
    std::vector<int32_t> lengths(static_cast<std::size_t>(per_gate));
    for (int64_t gate = 0; gate < 3; ++gate) {
      for (int64_t j = 0; j < per_gate; ++j) {
        const int64_t row = gate * per_gate + j;
        lengths[j] = r.row_ptr[row + 1] - r.row_ptr[row];
      }
      std::sort(lengths.begin(), lengths.end(), std::greater<int32_t>());
      for (int64_t start = 0; start < per_gate; start += kSliceRows) {
        bytes += lengths[start] * kSliceRows * (4 + 2) + kSliceRows * 4 + 4;
      }
    }
    bytes += 4 * (r.rows + 1);
  } else if (r.scales && r.rows * r.cols <= kMaxFloatRowsWeights) {
    bytes += 4 * r.rows * r.cols;
  }
  return static_cast<std::size_t>(bytes);
}

SparseGruKernel::SparseGruKernel(const kernels::KernelConfig& config)
    : config_(config),
      team_(config.num_threads > 1 ? new WorkerTeam(config.num_threads) : nullptr) {}

std::string SparseGruKernel::Validate(const kernels::OpSite& site) {
  SparseGruOptions options;
  std::string error = ParseSparseGruOptions(site.options, site.options_size, &options);
  if (!error.empty()) return error;
  CheckedOp op;
  error = CheckSparseGru(options, site.inputs, site.outputs.size(), GruCheck::kPreflight,
                         &op.problem);
  if (!error.empty()) return error;
  op.output_dims = SparseGruOutputDims(op.problem);
  const kernels::Tensor& declared = site.outputs[0];
  if (declared.type != kernels::ElementType::kFloat32 || declared.dims != op.output_dims) {
    return "output 0 ('" + declared.name + "') is declared " +
           kernels::ElementTypeName(declared.type) + " " + DimsText(declared.dims) +
           ", but x " + DimsText(site.inputs[0].dims) + " with units " +
           std::to_string(options.units) + " and return_sequences " +
           (options.return_sequences ? "true" : "false") + " give float32 " +
           DimsText(op.output_dims);
  }
  for (const kernels::Tensor& input : site.inputs) op.input_dims.push_back(input.dims);
  op.scratch_bytes = SparseGruScratchBytes(op.problem);
  // Activations are reused op after op; each op keeps its own copy of R.
  std::size_t largest = op.scratch_bytes, kept = 0;
  for (const CheckedOp& other : ops_) largest = std::max(largest, other.scratch_bytes);
  for (const CheckedOp& other : ops_) kept += other.scratch_bytes;
  if (largest + kept > config_.max_scratch_bytes) {
    return "needs " + std::to_string((largest + kept) >> 20) + " MiB of scratch memory for x " +
           DimsText(site.inputs[0].dims) + " and units " + std::to_string(options.units) +
           ", more than the kernel's limit of " + std::to_string(config_.max_scratch_bytes >> 20) +
           " MiB; run shorter sequences or a smaller batch";
  }
  ops_.push_back(std::move(op));
  return "";
}

std::string SparseGruKernel::Prepare(const std::vector<std::vector<int32_t>>& input_dims,
                                     std::vector<std::vector<int32_t>>* output_dims) {
  // LiteRT prepares ops in model order, as they were validated: the first op
  // from the cursor on with these input shapes is this one.
  for (std::size_t n = 0; n < ops_.size(); ++n) {
    const std::size_t index = (prepare_cursor_ + n) % ops_.size();
    if (ops_[index].input_dims != input_dims) continue;
    prepare_cursor_ = index + 1;
    *output_dims = {ops_[index].output_dims};
    return "";
  }
  std::string shapes;
  for (const auto& dims : input_dims) shapes += (shapes.empty() ? "" : ", ") + DimsText(dims);
  return "no SparseGRU op validated at load has inputs of shapes " + shapes;
}

const SparseGruKernel::CheckedOp* SparseGruKernel::FindOp(
    const std::vector<kernels::Tensor>& inputs) const {
  // Ops whose constants are shared (the converter deduplicates buffers) are
  // told apart by x's shape; a wrong x still finds its op, for the message.
  const CheckedOp* found = nullptr;
  for (const CheckedOp& op : ops_) {
    if (inputs.size() != op.input_dims.size() || inputs.size() < 2 ||
        inputs[1].data != op.problem.w.values || inputs.back().data != op.problem.bias) {
      continue;
    }
    if (inputs[0].dims == op.input_dims[0]) return &op;
    if (!found) found = &op;
  }
  return found;
}

std::string SparseGruKernel::Run(const std::vector<kernels::Tensor>& inputs,
                                 const std::vector<kernels::OutputBuffer>& outputs) {
  const CheckedOp* op = FindOp(inputs);
  if (!op) return "the weights handed to the kernel are not those of any SparseGRU op checked at load";
  const GruProblem& problem = op->problem;
  const kernels::Tensor& x = inputs[0];
  const std::size_t x_bytes =
      4 * static_cast<std::size_t>(problem.batch * problem.steps * problem.options.input_size);
  if (x.type != kernels::ElementType::kFloat32 || x.dims != op->input_dims[0] ||
      x.size != x_bytes || !x.data) {
    return Label(kX) + " must be float32 " + DimsText(op->input_dims[0]) + " (" +
           std::to_string(x_bytes) + " bytes), got " + kernels::ElementTypeName(x.type) + " " +
           DimsText(x.dims) + " (" + std::to_string(x.size) + " bytes)";
  }
  std::size_t out_bytes = sizeof(float);
  for (int32_t d : op->output_dims) out_bytes *= static_cast<std::size_t>(d);
  if (outputs.size() != 1 || outputs[0].type != kernels::ElementType::kFloat32 ||
      outputs[0].dims != op->output_dims || outputs[0].size < out_bytes || !outputs[0].data) {
    return "output 0 must be float32 " + DimsText(op->output_dims) + " (" +
           std::to_string(out_bytes) + " bytes)";
  }
  ComputeSparseGru(problem, static_cast<const float*>(x.data),
                   static_cast<float*>(outputs[0].data), &scratch_, team_.get());
  return "";
}

kernels::KernelRegistration SparseGruRegistration() {
  return {"SparseGRU", 1, [](const kernels::KernelConfig& config) {
            return std::unique_ptr<kernels::OpKernel>(new SparseGruKernel(config));
          }};
}

}  // namespace ops
}  // namespace edgepipe
