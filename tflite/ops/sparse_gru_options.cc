#include "tflite/ops/sparse_gru_options.h"

#include <cstdint>
#include <cstring>
#include <vector>

// flexbuffers' string-to-number conversions would use a C-locale object that
// only libflatbuffers defines (on glibc; Android builds already go without).
// The parser converts no strings, so the plain C functions keep it
// header-only: nothing to link on host, arm64 or Android.
#define FLATBUFFERS_LOCALE_INDEPENDENT 0
#include "flatbuffers/flexbuffers.h"

namespace edgepipe {
namespace ops {
namespace {

const char* FlexTypeName(flexbuffers::Type type) {
  switch (type) {
    case flexbuffers::FBT_INT:
    case flexbuffers::FBT_INDIRECT_INT: return "int";
    case flexbuffers::FBT_UINT:
    case flexbuffers::FBT_INDIRECT_UINT: return "uint";
    case flexbuffers::FBT_FLOAT:
    case flexbuffers::FBT_INDIRECT_FLOAT: return "float";
    case flexbuffers::FBT_STRING: return "string";
    case flexbuffers::FBT_MAP: return "map";
    case flexbuffers::FBT_BOOL: return "bool";
    default: return "another flexbuffer type";
  }
}

std::string Damaged(const std::string& what) {
  return "custom options are not a valid flexbuffer map (" + what + ")";
}

std::string WrongType(const std::string& key, const flexbuffers::Reference& value,
                      const char* wanted) {
  return "custom option '" + key + "' must be " + wanted + ", got " +
         FlexTypeName(value.GetType());
}

// flexbuffers 2.0.8's verifier checks that a key starts inside the buffer but
// not that its NUL does (its VerifyKey stops at the first nonzero byte), so
// the terminator is looked for here before the key is read as a C string.
bool KeyEndsInBuffer(const char* key, const uint8_t* data, std::size_t size) {
  const auto* start = reinterpret_cast<const uint8_t*>(key);
  return start >= data && start < data + size &&
         std::memchr(start, 0, static_cast<std::size_t>(data + size - start)) != nullptr;
}

// An int option as int64: flexbuffers stores ints signed or unsigned, inline
// or indirect. A uint above INT64_MAX saturates; it is out of every range.
int64_t IntValue(const flexbuffers::Reference& value) {
  if (!value.IsUInt()) return value.AsInt64();
  const uint64_t number = value.AsUInt64();
  return number > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(number);
}

}  // namespace

bool operator==(const SparseGruOptions& a, const SparseGruOptions& b) {
  return a.units == b.units && a.input_size == b.input_size &&
         a.reset_after == b.reset_after && a.return_sequences == b.return_sequences &&
         a.precision == b.precision && a.format == b.format;
}

std::string ParseSparseGruOptions(const uint8_t* data, std::size_t size,
                                  SparseGruOptions* options) {
  if (!data || size == 0) return "custom options are missing (expected a flexbuffer map)";
  // flexbuffers' verifier asserts on buffers this large.
  if (size >= FLATBUFFERS_MAX_BUFFER_SIZE) return Damaged("2 GiB or more");
  // The tracker makes verification linear in the size even when values share
  // their storage.
  std::vector<uint8_t> verified;
  if (!flexbuffers::VerifyBuffer(data, size, &verified)) {
    return Damaged("the flexbuffers verifier rejected its " + std::to_string(size) + " bytes");
  }
  const flexbuffers::Reference root = flexbuffers::GetRoot(data, size);
  if (!root.IsMap()) {
    return "custom options must be a flexbuffer map, got a root of type " +
           std::string(FlexTypeName(root.GetType()));
  }
  const flexbuffers::Map map = root.AsMap();
  const flexbuffers::TypedVector keys = map.Keys();
  const flexbuffers::Vector values = map.Values();
  if (keys.size() != values.size()) {
    return Damaged("a map of " + std::to_string(values.size()) + " values and " +
                   std::to_string(keys.size()) + " keys");
  }

  // Entries are read in stored order, not looked up: the map's keys need not
  // be sorted, and a repeated key is refused instead of shadowed.
  static const char* const kKeys[] = {"version", "units", "input_size", "reset_after",
                                      "return_sequences", "precision", "format"};
  constexpr std::size_t kKeyCount = sizeof(kKeys) / sizeof(kKeys[0]);
  bool seen[kKeyCount] = {};
  SparseGruOptions parsed;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!KeyEndsInBuffer(keys[i].AsKey(), data, size)) {
      return Damaged("key " + std::to_string(i) + " runs past the end of the buffer");
    }
    const std::string key = keys[i].AsKey();
    const flexbuffers::Reference value = values[i];
    std::size_t index = 0;
    while (index < kKeyCount && key != kKeys[index]) ++index;
    if (index == kKeyCount) return "unknown custom option '" + key + "'";
    if (seen[index]) return "custom options repeat the key '" + key + "'";
    seen[index] = true;
    if (key == "version") {
      if (!value.IsIntOrUint()) return WrongType(key, value, "an int");
      if (IntValue(value) != 1) {
        return "custom option 'version' is " + value.ToString() +
               "; this kernel reads format version 1 only";
      }
    } else if (key == "units" || key == "input_size") {
      if (!value.IsIntOrUint()) return WrongType(key, value, "an int");
      const int64_t number = IntValue(value);
      if (number < 1 || number > kMaxGruDimension) {
        return "custom option '" + key + "' is " + value.ToString() + ", must be between 1 and " +
               std::to_string(kMaxGruDimension);
      }
      (key == "units" ? parsed.units : parsed.input_size) = number;
    } else if (key == "reset_after" || key == "return_sequences") {
      if (!value.IsBool()) return WrongType(key, value, "a bool");
      // AsBool() takes any nonzero as true; a stored bool is 0 or 1.
      const uint64_t stored = value.AsUInt64();
      if (stored > 1) return "custom option '" + key + "' is not a valid bool";
      (key == "reset_after" ? parsed.reset_after : parsed.return_sequences) = stored == 1;
    } else if (key == "precision") {
      if (!value.IsString()) return WrongType(key, value, "a string");
      const std::string text = value.AsString().str();
      if (text != "float32" && text != "int8") {
        return "custom option 'precision' is '" + text + "', must be 'float32' or 'int8'";
      }
      parsed.precision = text == "int8" ? GruPrecision::kInt8 : GruPrecision::kFloat32;
    } else {  // format
      if (!value.IsString()) return WrongType(key, value, "a string");
      const std::string text = value.AsString().str();
      if (text != "csr" && text != "dense") {
        return "custom option 'format' is '" + text + "', must be 'csr' or 'dense'";
      }
      parsed.format = text == "csr" ? GruFormat::kCsr : GruFormat::kDense;
    }
  }
  for (std::size_t index = 0; index < kKeyCount; ++index) {
    if (!seen[index]) return std::string("custom option '") + kKeys[index] + "' is missing";
  }
  *options = parsed;
  return "";
}

}  // namespace ops
}  // namespace edgepipe
