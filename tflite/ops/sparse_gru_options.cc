#include "tflite/ops/sparse_gru_options.h"

#include <cstring>
#include <vector>

namespace edgepipe {
namespace ops {
namespace {

// Flexbuffer type codes (the format's own numbering) of what the map may hold.
enum FlexType : int {
  kFlexInt = 1,
  kFlexUInt = 2,
  kFlexString = 5,
  kFlexMap = 9,
  kFlexBool = 26,
};

const char* FlexTypeName(int type) {
  switch (type) {
    case kFlexInt: return "int";
    case kFlexUInt: return "uint";
    case 3: return "float";
    case kFlexString: return "string";
    case kFlexMap: return "map";
    case kFlexBool: return "bool";
    default: return "another flexbuffer type";
  }
}

// Far more than the op's 7 keys, small enough that no size sum can overflow.
constexpr uint64_t kMaxKeys = 64;
constexpr std::size_t kMaxKeyLength = 64;
constexpr uint64_t kMaxStringLength = 64;

// Every read is checked against the buffer; a failed read makes the whole
// parse fail, so callers never see a partial value.
class FlexReader {
 public:
  FlexReader(const uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  static bool ValidWidth(uint64_t width) {
    return width == 1 || width == 2 || width == 4 || width == 8;
  }

  bool Uint(uint64_t pos, uint64_t width, uint64_t* out) const {
    if (!ValidWidth(width) || pos > size_ || width > size_ - pos) return false;
    uint64_t value = 0;
    for (uint64_t i = 0; i < width; ++i) {  // little-endian, any host order
      value |= static_cast<uint64_t>(data_[pos + i]) << (8 * i);
    }
    *out = value;
    return true;
  }

  bool Int(uint64_t pos, uint64_t width, int64_t* out) const {
    uint64_t raw = 0;
    if (!Uint(pos, width, &raw)) return false;
    const unsigned bits = static_cast<unsigned>(8 * width);
    if (bits < 64 && (raw >> (bits - 1)) & 1) raw |= ~uint64_t{0} << bits;  // sign-extend
    std::memcpy(out, &raw, sizeof(raw));
    return true;
  }

  // Offsets point backwards: the target is `pos - offset`.
  bool Follow(uint64_t pos, uint64_t width, uint64_t* target) const {
    uint64_t offset = 0;
    if (!Uint(pos, width, &offset) || offset > pos) return false;
    *target = pos - offset;
    return true;
  }

  // A NUL-terminated key of at most kMaxKeyLength bytes.
  bool Key(uint64_t pos, std::string* out) const {
    for (uint64_t i = pos; i < size_ && i - pos <= kMaxKeyLength; ++i) {
      if (data_[i] == 0) {
        out->assign(reinterpret_cast<const char*>(data_ + pos), i - pos);
        return true;
      }
    }
    return false;
  }

  // A string: its length at `pos - width`, bytes at `pos`, then a NUL.
  bool String(uint64_t pos, uint64_t width, std::string* out) const {
    uint64_t length = 0;
    if (pos < width || !Uint(pos - width, width, &length) || length > kMaxStringLength ||
        pos > size_ || length >= size_ - pos || data_[pos + length] != 0) {
      return false;
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos), length);
    return true;
  }

  uint8_t Byte(uint64_t pos) const { return pos < size_ ? data_[pos] : 0; }
  std::size_t size() const { return size_; }

 private:
  const uint8_t* data_;
  std::size_t size_;
};

struct FlexValue {
  int type = 0;
  int64_t number = 0;
  std::string text;
};

struct FlexEntry {
  std::string key;
  FlexValue value;
};

std::string Damaged(const std::string& what) {
  return "custom options are not a valid flexbuffer map (" + what + ")";
}

// Reads the root map's keys and scalar/string values.
std::string ReadRootMap(const FlexReader& in, std::vector<FlexEntry>* entries) {
  const std::size_t size = in.size();
  if (size < 3) return Damaged("only " + std::to_string(size) + " bytes");
  const uint64_t root_width = in.Byte(size - 1);
  const uint8_t root_packed = in.Byte(size - 2);
  if (!FlexReader::ValidWidth(root_width) || root_width + 2 > size) {
    return Damaged("bad root width");
  }
  if (root_packed >> 2 != kFlexMap) {
    return "custom options must be a flexbuffer map, got a root of type " +
           std::string(FlexTypeName(root_packed >> 2));
  }
  const uint64_t width = uint64_t{1} << (root_packed & 3);
  uint64_t map = 0, count = 0, keys_ref = 0, keys = 0, keys_width = 0, keys_count = 0;
  if (!in.Follow(size - 2 - root_width, root_width, &map) || map < 3 * width ||
      !in.Uint(map - width, width, &count)) {
    return Damaged("map header out of bounds");
  }
  if (count > kMaxKeys) return Damaged("a map of " + std::to_string(count) + " entries");
  // Values (count × width) and then one type byte per value must fit.
  if (map > size || count * width + count > size - map) return Damaged("map values out of bounds");
  keys_ref = map - 3 * width;
  if (!in.Follow(keys_ref, width, &keys) || !in.Uint(map - 2 * width, width, &keys_width) ||
      !FlexReader::ValidWidth(keys_width) || keys < keys_width ||
      !in.Uint(keys - keys_width, keys_width, &keys_count) || keys_count != count ||
      keys > size || count * keys_width > size - keys) {
    return Damaged("map keys out of bounds");
  }
  for (uint64_t i = 0; i < count; ++i) {
    FlexEntry entry;
    uint64_t key = 0;
    if (!in.Follow(keys + i * keys_width, keys_width, &key) || !in.Key(key, &entry.key)) {
      return Damaged("key " + std::to_string(i) + " out of bounds or too long");
    }
    const uint8_t packed = in.Byte(map + count * width + i);
    const uint64_t pos = map + i * width;
    entry.value.type = packed >> 2;
    bool ok = true;
    if (entry.value.type == kFlexInt) {
      ok = in.Int(pos, width, &entry.value.number);
    } else if (entry.value.type == kFlexUInt || entry.value.type == kFlexBool) {
      uint64_t raw = 0;
      ok = in.Uint(pos, width, &raw) && raw <= static_cast<uint64_t>(INT64_MAX);
      entry.value.number = static_cast<int64_t>(raw);
    } else if (entry.value.type == kFlexString) {
      uint64_t text = 0;
      ok = in.Follow(pos, width, &text) &&
           in.String(text, uint64_t{1} << (packed & 3), &entry.value.text);
    }
    if (!ok) return Damaged("value of '" + entry.key + "' out of bounds");
    for (const FlexEntry& seen : *entries) {
      if (seen.key == entry.key) return "custom options repeat the key '" + entry.key + "'";
    }
    entries->push_back(std::move(entry));
  }
  return "";
}

std::string WrongType(const FlexEntry& entry, const char* wanted) {
  return "custom option '" + entry.key + "' must be " + wanted + ", got " +
         FlexTypeName(entry.value.type);
}

bool IsInt(const FlexValue& value) {
  return value.type == kFlexInt || value.type == kFlexUInt;
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
  std::vector<FlexEntry> entries;
  const std::string problem = ReadRootMap(FlexReader(data, size), &entries);
  if (!problem.empty()) return problem;

  static const char* const kKeys[] = {"version", "units", "input_size", "reset_after",
                                      "return_sequences", "precision", "format"};
  SparseGruOptions parsed;
  for (const FlexEntry& entry : entries) {
    const std::string& key = entry.key;
    const FlexValue& value = entry.value;
    if (key == "version") {
      if (!IsInt(value)) return WrongType(entry, "an int");
      if (value.number != 1) {
        return "custom option 'version' is " + std::to_string(value.number) +
               "; this kernel reads format version 1 only";
      }
    } else if (key == "units" || key == "input_size") {
      if (!IsInt(value)) return WrongType(entry, "an int");
      if (value.number < 1 || value.number > kMaxGruDimension) {
        return "custom option '" + key + "' is " + std::to_string(value.number) +
               ", must be between 1 and " + std::to_string(kMaxGruDimension);
      }
      (key == "units" ? parsed.units : parsed.input_size) = value.number;
    } else if (key == "reset_after" || key == "return_sequences") {
      if (value.type != kFlexBool) return WrongType(entry, "a bool");
      if (value.number > 1) return "custom option '" + key + "' is not a valid bool";
      (key == "reset_after" ? parsed.reset_after : parsed.return_sequences) = value.number == 1;
    } else if (key == "precision") {
      if (value.type != kFlexString) return WrongType(entry, "a string");
      if (value.text != "float32" && value.text != "int8") {
        return "custom option 'precision' is '" + value.text + "', must be 'float32' or 'int8'";
      }
      parsed.precision = value.text == "int8" ? GruPrecision::kInt8 : GruPrecision::kFloat32;
    } else if (key == "format") {
      if (value.type != kFlexString) return WrongType(entry, "a string");
      if (value.text != "csr" && value.text != "dense") {
        return "custom option 'format' is '" + value.text + "', must be 'csr' or 'dense'";
      }
      parsed.format = value.text == "csr" ? GruFormat::kCsr : GruFormat::kDense;
    } else {
      return "unknown custom option '" + key + "'";
    }
  }
  for (const char* key : kKeys) {
    bool found = false;
    for (const FlexEntry& entry : entries) found = found || entry.key == key;
    if (!found) return std::string("custom option '") + key + "' is missing";
  }
  *options = parsed;
  return "";
}

}  // namespace ops
}  // namespace edgepipe
