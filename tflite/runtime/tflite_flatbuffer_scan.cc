#include "android_bench/tflite_flatbuffer_scan.h"

#include <cstring>

namespace edgepipe {
namespace runtime {
namespace {

// Flatbuffers are little-endian; values are copied out as they are stored.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian hosts only");

// Flatbuffers address at most 2 GiB, so with this cap no sum of a position and
// a 32-bit offset or length below overflows 64 bits.
constexpr uint64_t kMaxBytes = uint64_t{1} << 31;

// Field slots (vtable order) in the TFLite schema, schema.fbs.
constexpr int kModelOperatorCodes = 1;
constexpr int kModelSubgraphs = 2;
constexpr int kCodeDeprecatedBuiltin = 0;
constexpr int kCodeCustomCode = 1;
constexpr int kCodeBuiltin = 3;
constexpr int kSubgraphTensors = 0;
constexpr int kSubgraphOperators = 3;
constexpr int kOpOpcodeIndex = 0;
constexpr int kOpInputs = 1;
constexpr int kOpOutputs = 2;
constexpr int32_t kBuiltinCustom = 32;  // BuiltinOperator.CUSTOM
constexpr int32_t kAbsentTensor = -1;   // an optional input left empty

struct Table {
  uint64_t pos = 0;
  uint64_t vtable = 0;
  uint16_t vtable_size = 0;
  uint16_t table_size = 0;
};

struct Vector {
  uint64_t start = 0;  // first element
  uint32_t length = 0;
};

class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  template <typename T>
  bool Load(uint64_t pos, T* out) const {
    if (pos > size_ || size_ - pos < sizeof(T)) return false;
    std::memcpy(out, data_ + pos, sizeof(T));
    return true;
  }

  // The position a uoffset stored at `pos` points to.
  bool Follow(uint64_t pos, uint64_t* target) const {
    uint32_t offset = 0;
    if (!Load(pos, &offset)) return false;
    *target = pos + offset;
    return *target < size_;
  }

  bool TableAt(uint64_t pos, Table* out) const {
    int32_t back = 0;
    if (!Load(pos, &back)) return false;
    const int64_t vtable = static_cast<int64_t>(pos) - back;
    if (vtable < 0) return false;
    out->pos = pos;
    out->vtable = static_cast<uint64_t>(vtable);
    return Load(out->vtable, &out->vtable_size) &&
           Load(out->vtable + 2, &out->table_size) && out->vtable_size >= 4 &&
           out->vtable_size % 2 == 0 && out->vtable_size <= size_ - out->vtable &&
           out->table_size >= 4 && out->table_size <= size_ - pos;
  }

  // Where field `slot` of `table` lies, 0 when it is absent (default value).
  bool Field(const Table& table, int slot, uint64_t width, uint64_t* pos) const {
    *pos = 0;
    const uint64_t entry = 4 + 2 * static_cast<uint64_t>(slot);
    if (entry + 2 > table.vtable_size) return true;
    uint16_t offset = 0;
    if (!Load(table.vtable + entry, &offset)) return false;
    if (offset == 0) return true;
    if (offset < 4 || offset + width > table.table_size) return false;
    *pos = table.pos + offset;
    return true;
  }

  template <typename T>
  bool Scalar(const Table& table, int slot, T fallback, T* out) const {
    uint64_t pos = 0;
    if (!Field(table, slot, sizeof(T), &pos)) return false;
    *out = fallback;
    return pos == 0 || Load(pos, out);
  }

  // Vector field `slot` of `table` with `width`-byte elements; empty when
  // absent. Strings are byte vectors followed by a NUL.
  bool VectorField(const Table& table, int slot, uint64_t width, Vector* out,
                   bool is_string = false) const {
    *out = Vector();
    uint64_t field = 0, pos = 0;
    if (!Field(table, slot, 4, &field)) return false;
    if (field == 0) return true;
    if (!Follow(field, &pos) || !Load(pos, &out->length)) return false;
    out->start = pos + 4;
    const uint64_t bytes = uint64_t{out->length} * width + (is_string ? 1 : 0);
    return bytes <= size_ - out->start &&
           (!is_string || data_[out->start + out->length] == 0);
  }

  bool TableIn(const Vector& vector, uint32_t index, Table* out) const {
    uint64_t pos = 0;
    return index < vector.length && Follow(vector.start + 4 * uint64_t{index}, &pos) &&
           TableAt(pos, out);
  }

  int32_t Int32In(const Vector& vector, uint32_t index) const {
    int32_t value = 0;
    Load(vector.start + 4 * uint64_t{index}, &value);  // in range: VectorField checked
    return value;
  }

  std::string Text(const Vector& string) const {
    return std::string(reinterpret_cast<const char*>(data_ + string.start), string.length);
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
};

std::string Where(uint32_t subgraph, uint32_t op) {
  return "subgraph " + std::to_string(subgraph) + ", op " + std::to_string(op);
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

std::string ScanTfliteOperators(const uint8_t* data, std::size_t size) {
  const std::string damaged = "the model's flatbuffer is damaged: ";
  if (!data || size > kMaxBytes) return damaged + "no buffer, or one over 2 GiB";
  const Reader in(data, size);
  uint64_t root = 0;
  Table model;
  Vector codes, subgraphs;
  if (!in.Follow(0, &root) || !in.TableAt(root, &model) ||
      !in.VectorField(model, kModelOperatorCodes, 4, &codes) ||
      !in.VectorField(model, kModelSubgraphs, 4, &subgraphs)) {
    return damaged + "cannot read the model's operator codes and subgraphs";
  }
  for (uint32_t s = 0; s < subgraphs.length; ++s) {
    Table subgraph;
    Vector tensors, ops;
    if (!in.TableIn(subgraphs, s, &subgraph) ||
        !in.VectorField(subgraph, kSubgraphTensors, 4, &tensors) ||
        !in.VectorField(subgraph, kSubgraphOperators, 4, &ops)) {
      return damaged + "cannot read subgraph " + std::to_string(s);
    }
    for (uint32_t o = 0; o < ops.length; ++o) {
      Table op, code;
      uint32_t code_index = 0;
      Vector inputs, outputs;
      if (!in.TableIn(ops, o, &op) || !in.Scalar(op, kOpOpcodeIndex, 0u, &code_index) ||
          !in.VectorField(op, kOpInputs, 4, &inputs) ||
          !in.VectorField(op, kOpOutputs, 4, &outputs)) {
        return damaged + "cannot read " + Where(s, o);
      }
      if (!in.TableIn(codes, code_index, &code)) {
        return damaged + Where(s, o) + " has operator code " + std::to_string(code_index) +
               ", which cannot be read (the model has " + std::to_string(codes.length) + ")";
      }
      int8_t deprecated_builtin = 0;
      int32_t builtin = 0;
      Vector custom_code;
      if (!in.Scalar(code, kCodeDeprecatedBuiltin, int8_t{0}, &deprecated_builtin) ||
          !in.Scalar(code, kCodeBuiltin, int32_t{0}, &builtin) ||
          !in.VectorField(code, kCodeCustomCode, 1, &custom_code, true)) {
        return damaged + "cannot read operator code " + std::to_string(code_index);
      }
      // Old converters fill only the deprecated byte, new ones both (schema.fbs).
      const int32_t effective = builtin > deprecated_builtin ? builtin : deprecated_builtin;
      const bool custom = effective == kBuiltinCustom;
      const std::string name =
          custom ? "custom op '" + PrintableModelText(in.Text(custom_code)) + "'"
                 : "builtin op " + std::to_string(effective);
      const std::string where = Where(s, o) + " (" + name + ")";
      for (int side = 0; side < 2; ++side) {
        const Vector& indices = side == 0 ? inputs : outputs;
        const char* kind = side == 0 ? "input" : "output";
        for (uint32_t i = 0; i < indices.length; ++i) {
          const int32_t tensor = in.Int32In(indices, i);
          if (tensor == kAbsentTensor && custom && side == 0) {
            return where + ": input " + std::to_string(i) +
                   " is -1 (an absent optional input), which LiteRT crashes on in a custom "
                   "op; leave absent inputs out of the op's input list instead";
          }
          if (tensor < kAbsentTensor || (tensor >= 0 && static_cast<uint32_t>(tensor) >=
                                                            tensors.length)) {
            return where + ": " + kind + " " + std::to_string(i) + " is tensor " +
                   std::to_string(tensor) + ", but subgraph " + std::to_string(s) + " has " +
                   std::to_string(tensors.length) + " tensors";
          }
        }
      }
    }
  }
  return std::string();
}

}  // namespace runtime
}  // namespace edgepipe
