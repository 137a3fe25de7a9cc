#include "tflite/runtime/model_checks.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "flatbuffers/flatbuffers.h"
#include "tflite/runtime/tflite_schema_generated.h"

namespace edgepipe {
namespace runtime {
namespace {

namespace schema = ::edgepipe::tflite_schema;

constexpr int32_t kBuiltinCustom = 32;  // BuiltinOperator.CUSTOM
constexpr int32_t kAbsentTensor = -1;   // an absent optional tensor

// LiteRT verifies models with flatbuffers' default limits; a model beyond
// them would not load anyway, and they bound the verifier's work.
constexpr flatbuffers::uoffset_t kMaxDepth = 64;
constexpr flatbuffers::uoffset_t kMaxTables = 1000000;

constexpr uint64_t Positions(std::initializer_list<int> positions) {
  uint64_t bits = 0;
  for (const int position : positions) bits |= uint64_t{1} << position;
  return bits;
}

// LSTM and UNIDIRECTIONAL_SEQUENCE_LSTM: input-gate, peephole and projection
// tensors and the layer-norm coefficients.
constexpr uint64_t kLstmOptional =
    Positions({1, 5, 9, 10, 11, 12, 16, 17, 20, 21, 22, 23});
// The same for each direction (forward 1-17, backward 18-34), then the
// auxiliary input and its weights (39-47).
constexpr uint64_t kBidirectionalLstmOptional =
    Positions({1,  5,  9,  10, 11, 12, 16, 17, 18, 22, 26, 27, 28, 29,
               33, 34, 39, 40, 41, 42, 43, 44, 45, 46, 47});

struct BuiltinOp {
  int32_t code;
  const char* name;
  uint64_t optional_inputs;  // bit i: input i may be -1
};

// Names for messages, and the inputs TFLite's kernels take as absent: those
// they read with GetOptionalInputTensor or check for null (tflite/kernels/*.cc
// in LiteRT). CONV_2D and DEPTHWISE_CONV_2D have none: their kernels require
// the bias. Ops missing here are named by code and take no -1 input.
constexpr BuiltinOp kBuiltinOps[] = {
    {0, "ADD", 0},
    {1, "AVERAGE_POOL_2D", 0},
    {2, "CONCATENATION", 0},
    {3, "CONV_2D", 0},
    {4, "DEPTHWISE_CONV_2D", 0},
    {6, "DEQUANTIZE", 0},
    {9, "FULLY_CONNECTED", Positions({2})},  // bias
    {14, "LOGISTIC", 0},
    {16, "LSTM", kLstmOptional},
    {17, "MAX_POOL_2D", 0},
    {18, "MUL", 0},
    {19, "RELU", 0},
    {21, "RELU6", 0},
    {22, "RESHAPE", 0},
    {25, "SOFTMAX", 0},
    {27, "SVDF", Positions({3})},  // bias
    {28, "TANH", 0},
    {34, "PAD", Positions({2})},  // constant_values
    {36, "GATHER", 0},
    {39, "TRANSPOSE", 0},
    {40, "MEAN", 0},
    {41, "SUB", 0},
    {44, "UNIDIRECTIONAL_SEQUENCE_LSTM", kLstmOptional},
    {45, "STRIDED_SLICE", 0},
    {46, "BIDIRECTIONAL_SEQUENCE_RNN", Positions({9, 10, 11})},  // auxiliary input
    {49, "SPLIT", 0},
    {52, "BIDIRECTIONAL_SEQUENCE_LSTM", kBidirectionalLstmOptional},
    {58, "LESS", 0},
    {60, "PADV2", Positions({2})},            // constant_values
    {65, "SLICE", 0},
    {67, "TRANSPOSE_CONV", Positions({3})},   // bias
    {86, "LOGICAL_AND", 0},
    {105, "REVERSE_V2", 0},
    {114, "QUANTIZE", 0},
    {119, "WHILE", 0},
    {126, "BATCH_MATMUL", 0},
    {132, "CONV_3D", Positions({2})},             // bias
    {141, "CONV_3D_TRANSPOSE", Positions({3})},   // bias
};

const BuiltinOp* FindBuiltin(int32_t code) {
  for (const BuiltinOp& op : kBuiltinOps) {
    if (op.code == code) return &op;
  }
  return nullptr;
}

// Bytes per element by TensorType (value = index). Sub-byte types count a
// byte: LiteRT may unpack them. STRING, RESOURCE and VARIANT count a byte:
// their size is known only at run time.
constexpr uint64_t kElementBytes[] = {
    4,   // FLOAT32
    2,   // FLOAT16
    4,   // INT32
    1,   // UINT8
    8,   // INT64
    1,   // STRING
    1,   // BOOL
    2,   // INT16
    8,   // COMPLEX64
    1,   // INT8
    8,   // FLOAT64
    16,  // COMPLEX128
    8,   // UINT64
    1,   // RESOURCE
    1,   // VARIANT
    4,   // UINT32
    2,   // UINT16
    1,   // INT4
    2,   // BFLOAT16
    1,   // INT2
    1,   // UINT4
    1,   // FLOAT8_E4M3FN
    1,   // FLOAT8_E5M2
};
constexpr int kTensorTypes = sizeof(kElementBytes) / sizeof(kElementBytes[0]);

uint64_t SaturatingMul(uint64_t a, uint64_t b) {
  return b != 0 && a > std::numeric_limits<uint64_t>::max() / b
             ? std::numeric_limits<uint64_t>::max()
             : a * b;
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max()
                                                      : a + b;
}

template <typename T>
uint32_t Count(const flatbuffers::Vector<T>* vector) {
  return vector ? vector->size() : 0;
}

std::string Text(const flatbuffers::String* text) {
  return text ? PrintableModelText(text->str()) : std::string();
}

std::string Invalid(const std::string& why) {
  return "not a valid TFLite flatbuffer (" + why + ")";
}

std::string Verify(const uint8_t* data, std::size_t size) {
  const std::string bytes = std::to_string(size) + " bytes";
  // The header: root offset, then the file identifier.
  if (!data || size < 8) return Invalid(bytes + ", shorter than a flatbuffer header");
  // flatbuffers address less than 2 GiB (its verifier asserts that).
  if (size >= FLATBUFFERS_MAX_BUFFER_SIZE) return Invalid(bytes + ", 2 GiB or more");
  if (!schema::ModelBufferHasIdentifier(data)) {
    return Invalid("no \"" + std::string(schema::ModelIdentifier()) +
                   "\" file identifier at bytes 4-7");
  }
  flatbuffers::Verifier::Options options;
  options.max_depth = kMaxDepth;
  options.max_tables = kMaxTables;
  flatbuffers::Verifier verifier(data, size, options);
  if (!schema::VerifyModelBuffer(verifier)) {
    return Invalid("the flatbuffers verifier rejected it: an offset, table, vector or string "
                   "lies outside the " + bytes + " or is misaligned, or there are over " +
                   std::to_string(kMaxTables) + " tables or they nest over " +
                   std::to_string(kMaxDepth) + " deep");
  }
  return "";
}

// "CONV_2D", "custom op 'X'" or "builtin op N" for an op whose code index is checked.
std::string OpName(const schema::Model& model, const schema::Operator& op) {
  const schema::OperatorCode* code = model.operator_codes()->Get(op.opcode_index());
  const int32_t builtin = std::max<int32_t>(code->builtin_code(), code->deprecated_builtin_code());
  if (builtin == kBuiltinCustom) return "custom op '" + Text(code->custom_code()) + "'";
  const BuiltinOp* known = FindBuiltin(builtin);
  return known ? std::string(known->name) : "builtin op " + std::to_string(builtin);
}

bool HasConstantData(const schema::Model& model, const schema::Tensor& tensor) {
  const schema::Buffer* buffer = model.buffers()->Get(tensor.buffer());
  return tensor.buffer() != 0 && (Count(buffer->data()) > 0 || buffer->offset() > 1);
}

// A shape with a 0 dimension: zero bytes, which LiteRT reads without data
// (RESHAPE's shape input for a scalar is such a constant).
bool HasNoElements(const schema::Tensor& tensor) {
  if (!tensor.shape()) return false;
  for (const int32_t dim : *tensor.shape()) {
    if (dim == 0) return true;
  }
  return false;
}

// Its buffer's index in range, a known type and, without constant data, its
// bytes added to `*activation_bytes`.
std::string CheckTensor(const schema::Model& model, uint32_t s, uint32_t t,
                        const schema::Tensor& tensor, uint64_t* activation_bytes) {
  // Built only for a message: most models have many tensors.
  const auto where = [&] {
    return "subgraph " + std::to_string(s) + ", tensor " + std::to_string(t) + " ('" +
           Text(tensor.name()) + "')";
  };
  const uint32_t buffers = Count(model.buffers());
  if (tensor.buffer() >= buffers) {
    return where() + ": buffer " + std::to_string(tensor.buffer()) + ", but the model has " +
           std::to_string(buffers) + " buffers";
  }
  if (tensor.type() < 0 || tensor.type() >= kTensorTypes) {
    return where() + ": type " + std::to_string(tensor.type()) + " is not a TFLite tensor type";
  }
  if (HasConstantData(model, tensor)) return "";
  uint64_t bytes = kElementBytes[tensor.type()];
  if (tensor.shape()) {
    for (const int32_t dim : *tensor.shape()) {
      bytes = SaturatingMul(bytes, dim < 0 ? 1 : static_cast<uint64_t>(dim));  // dynamic: 1
    }
  }
  *activation_bytes = SaturatingAdd(*activation_bytes, bytes);
  return "";
}

// The subgraph's own inputs and outputs: tensors of it. LiteRT binds every one
// of subgraph 0's; control-flow bodies may leave one absent (-1).
std::string CheckSubgraphIo(uint32_t s, uint32_t tensors, const schema::SubGraph& subgraph) {
  for (const bool inputs : {true, false}) {
    const flatbuffers::Vector<int32_t>* indices = inputs ? subgraph.inputs() : subgraph.outputs();
    for (uint32_t i = 0; i < Count(indices); ++i) {
      const int32_t tensor = indices->Get(i);
      const std::string where = "subgraph " + std::to_string(s) + ": " +
                                (inputs ? "input " : "output ") + std::to_string(i);
      if (tensor == kAbsentTensor && s == 0) {
        return where + " is -1 (absent), which the main subgraph does not allow; the model is "
                       "damaged or was edited by hand";
      }
      if (tensor != kAbsentTensor && (tensor < 0 || static_cast<uint32_t>(tensor) >= tensors)) {
        return where + " is tensor " + std::to_string(tensor) + ", but subgraph " +
               std::to_string(s) + " has " + std::to_string(tensors) + " tensors";
      }
    }
  }
  return "";
}

std::string CheckOperator(const schema::Model& model, uint32_t s, uint32_t o, uint32_t tensors,
                          const schema::Operator& op) {
  const std::string at = "subgraph " + std::to_string(s) + ", op " + std::to_string(o);
  const uint32_t codes = Count(model.operator_codes());
  if (op.opcode_index() >= codes) {
    return at + ": operator code " + std::to_string(op.opcode_index()) + ", but the model has " +
           std::to_string(codes) + " operator codes";
  }
  const schema::OperatorCode* code = model.operator_codes()->Get(op.opcode_index());
  // Old converters fill only the deprecated byte, newer ones both; TFLite
  // reads the larger.
  const int32_t builtin = std::max<int32_t>(code->builtin_code(), code->deprecated_builtin_code());
  const bool custom = builtin == kBuiltinCustom;
  const BuiltinOp* known = custom ? nullptr : FindBuiltin(builtin);
  const std::string name = OpName(model, op);
  const std::string where = at + " (" + name + ")";
  for (const bool inputs : {true, false}) {
    const flatbuffers::Vector<int32_t>* indices = inputs ? op.inputs() : op.outputs();
    for (uint32_t i = 0; i < Count(indices); ++i) {
      const int32_t tensor = indices->Get(i);
      const auto which = [&] { return (inputs ? "input " : "output ") + std::to_string(i); };
      // A -1 output is left to LiteRT, which refuses it where an op cannot
      // take one (control flow ops can).
      if (tensor == kAbsentTensor && !inputs) continue;
      if (tensor == kAbsentTensor && custom) {
        // LiteRT 2.3.0 crashes (SIGSEGV in LiteRtRunCompiledModel) running it.
        return where + ": " + which() +
               " is -1 (an absent optional input), which LiteRT crashes on in a custom op; "
               "leave absent inputs out of the op's input list instead";
      }
      if (tensor == kAbsentTensor) {
        const bool optional = known && i < 64 && ((known->optional_inputs >> i) & 1);
        if (optional) continue;
        return where + ": " + which() + " is -1 (absent), which " + name +
               " does not allow; the model is damaged or was edited by hand";
      }
      if (tensor < 0 || static_cast<uint32_t>(tensor) >= tensors) {
        return where + ": " + which() + " is tensor " + std::to_string(tensor) + ", but subgraph " +
               std::to_string(s) + " has " + std::to_string(tensors) + " tensors";
      }
    }
  }
  return "";
}

// Constant data kept behind the flatbuffer (offset above 1) lies inside the file.
std::string CheckBuffers(const schema::Model& model, std::size_t size) {
  for (uint32_t b = 0; b < Count(model.buffers()); ++b) {
    const schema::Buffer& buffer = *model.buffers()->Get(b);
    if (buffer.offset() <= 1) continue;
    if (buffer.offset() > size || buffer.size() > size - buffer.offset()) {
      return "buffer " + std::to_string(b) + " says its " + std::to_string(buffer.size()) +
             " bytes of data are at offset " + std::to_string(buffer.offset()) +
             ", past the end of the " + std::to_string(size) +
             "-byte file; the model is damaged or truncated";
    }
  }
  return "";
}

// Every tensor has at most one writer, and it is neither a subgraph input nor a
// constant: LiteRT 2.3.0 plans memory per producer and crashes at run on an op
// writing into another op's output. Every tensor an op reads is a subgraph
// input, a constant, a variable or an earlier op's output: LiteRT finds the
// others only at the first run ("lacks data"), after compiling.
std::string CheckProducers(const schema::Model& model, uint32_t s,
                           const schema::SubGraph& subgraph) {
  constexpr int64_t kNone = -1, kSubgraphInput = -2;
  std::vector<int64_t> producer(Count(subgraph.tensors()), kNone);
  for (uint32_t i = 0; i < Count(subgraph.inputs()); ++i) {
    const int32_t tensor = subgraph.inputs()->Get(i);
    if (tensor >= 0) producer[tensor] = kSubgraphInput;
  }
  const std::string damaged = "; the model is damaged or was edited by hand";
  for (uint32_t o = 0; o < Count(subgraph.operators()); ++o) {
    const schema::Operator& op = *subgraph.operators()->Get(o);
    const auto at = [&](const char* side, uint32_t i, int32_t tensor) {
      return "subgraph " + std::to_string(s) + ", op " + std::to_string(o) + " (" +
             OpName(model, op) + "): " + side + " " + std::to_string(i) + " is tensor " +
             std::to_string(tensor) + " ('" + Text(subgraph.tensors()->Get(tensor)->name()) + "')";
    };
    for (uint32_t i = 0; i < Count(op.inputs()); ++i) {
      const int32_t tensor = op.inputs()->Get(i);
      if (tensor < 0 || producer[tensor] != kNone) continue;  // -1: absent, checked above
      const schema::Tensor& read = *subgraph.tensors()->Get(tensor);
      if (HasConstantData(model, read) || read.is_variable() || HasNoElements(read)) continue;
      return at("input", i, tensor) +
             ", which is neither an input of the subgraph, a constant, a variable nor written "
             "by an earlier op" + damaged;
    }
    for (uint32_t i = 0; i < Count(op.outputs()); ++i) {
      const int32_t tensor = op.outputs()->Get(i);
      if (tensor < 0) continue;
      const schema::Tensor& written = *subgraph.tensors()->Get(tensor);
      const std::string where = at("output", i, tensor);
      if (producer[tensor] == kSubgraphInput) {
        return where + ", an input of the subgraph" + damaged;
      }
      if (producer[tensor] >= 0) {
        return where + ", which op " + std::to_string(producer[tensor]) +
               " writes too; a tensor has one producer" + damaged;
      }
      if (HasConstantData(model, written)) return where + ", a constant" + damaged;
      producer[tensor] = o;
    }
  }
  return "";
}

}  // namespace

std::string PrintableModelText(const std::string& text) {
  static const char kHex[] = "0123456789abcdef";
  std::string printable;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      printable += c;
    } else {
      printable += {'\\', 'x', kHex[byte >> 4], kHex[byte & 0xf]};
    }
  }
  return printable;
}

std::string CheckModel(const uint8_t* data, std::size_t size, ModelSummary* summary) {
  const std::string invalid = Verify(data, size);
  if (!invalid.empty()) return invalid;
  const schema::Model& model = *schema::GetModel(data);
  const std::string outside = CheckBuffers(model, size);
  if (!outside.empty()) return outside;
  uint64_t activation_bytes = 0;
  for (uint32_t s = 0; s < Count(model.subgraphs()); ++s) {
    const schema::SubGraph& subgraph = *model.subgraphs()->Get(s);
    const uint32_t tensors = Count(subgraph.tensors());
    for (uint32_t t = 0; t < tensors; ++t) {
      const std::string problem =
          CheckTensor(model, s, t, *subgraph.tensors()->Get(t), &activation_bytes);
      if (!problem.empty()) return problem;
    }
    std::string problem = CheckSubgraphIo(s, tensors, subgraph);
    if (!problem.empty()) return problem;
    for (uint32_t o = 0; o < Count(subgraph.operators()); ++o) {
      problem = CheckOperator(model, s, o, tensors, *subgraph.operators()->Get(o));
      if (!problem.empty()) return problem;
    }
    problem = CheckProducers(model, s, subgraph);
    if (!problem.empty()) return problem;
  }
  constexpr uint64_t kMaxSize = std::numeric_limits<std::size_t>::max();
  if (summary) {
    summary->activation_bytes =
        static_cast<std::size_t>(activation_bytes < kMaxSize ? activation_bytes : kMaxSize);
  }
  return "";
}

}  // namespace runtime
}  // namespace edgepipe
