#include "tflite/ops/sparse_separable_options.h"

#include <cstdint>
#include <cstring>
#include <vector>

// No string-to-number conversion is used, so flexbuffers stays header-only
// (its locale-independent variant needs a symbol only libflatbuffers has).
#define FLATBUFFERS_LOCALE_INDEPENDENT 0
#include "flatbuffers/flexbuffers.h"

namespace edgepipe {
namespace ops {
namespace {

// One key of the map: a string from `words` (read as its index), an int from
// `numbers`, or an int in [min, max] when both lists are empty.
struct KeyRule {
  const char* key;
  std::vector<const char*> words;
  std::vector<int64_t> numbers;
  int64_t min;
  int64_t max;
};

enum Key : std::size_t {
  kVersion, kKernelSize, kStride, kPadding, kInChannels, kOutChannels, kDwActivation,
  kPwActivation, kPrecision, kFormat, kBlock, kInputLayout, kOutputLayout, kKeyCount
};

const KeyRule& Rule(std::size_t key) {
  static const KeyRule kRules[kKeyCount] = {
      {"version", {}, {1}, 0, 0},
      {"kernel_size", {}, {3, 5}, 0, 0},
      {"stride", {}, {1, 2}, 0, 0},
      {"padding", {"same", "valid"}, {}, 0, 0},
      {"in_channels", {}, {}, 1, kMaxSepInChannels},
      {"out_channels", {}, {}, 1, kMaxSepOutChannels},
      {"dw_activation", {"none", "relu", "relu6"}, {}, 0, 0},
      {"pw_activation", {"none", "relu", "relu6"}, {}, 0, 0},
      {"precision", {"float32", "int8"}, {}, 0, 0},
      {"format", {"csr", "dense"}, {}, 0, 0},
      {"block", {}, {1, 4}, 0, 0},
      {"input_layout", {"nhwc", "chw"}, {}, 0, 0},
      {"output_layout", {"nhwc", "chw"}, {}, 0, 0},
  };
  return kRules[key];
}

const char* FlexKind(flexbuffers::Type type) {
  switch (type) {
    case flexbuffers::FBT_INT:
    case flexbuffers::FBT_INDIRECT_INT:
    case flexbuffers::FBT_UINT:
    case flexbuffers::FBT_INDIRECT_UINT: return "an int";
    case flexbuffers::FBT_FLOAT:
    case flexbuffers::FBT_INDIRECT_FLOAT: return "a float";
    case flexbuffers::FBT_STRING: return "a string";
    case flexbuffers::FBT_MAP: return "a map";
    case flexbuffers::FBT_BOOL: return "a bool";
    default: return "another flexbuffer type";
  }
}

std::string NotAMap(const std::string& why) {
  return "custom options are not a valid flexbuffer map (" + why + ")";
}

// A uint above INT64_MAX saturates: it is out of every range anyway.
int64_t AsInt(const flexbuffers::Reference& value) {
  if (!value.IsUInt()) return value.AsInt64();
  const uint64_t number = value.AsUInt64();
  return number > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(number);
}

std::string Allowed(const KeyRule& rule) {
  std::string text;
  for (std::size_t i = 0; i < rule.words.size(); ++i) {
    text += std::string(i ? ", '" : "'") + rule.words[i] + "'";
  }
  for (std::size_t i = 0; i < rule.numbers.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(rule.numbers[i]);
  }
  if (text.empty()) text = std::to_string(rule.min) + " to " + std::to_string(rule.max);
  return text;
}

// The value of one entry under its rule (a word's index, or the int), or
// the problem.
std::string ReadValue(const KeyRule& rule, const flexbuffers::Reference& value, int64_t* out) {
  const std::string name = std::string("custom option '") + rule.key + "'";
  const bool wants_string = !rule.words.empty();
  if (wants_string ? !value.IsString() : !value.IsIntOrUint()) {
    return name + " must be " + (wants_string ? "a string" : "an int") + ", got " +
           FlexKind(value.GetType());
  }
  if (wants_string) {
    const std::string text = value.AsString().str();
    for (std::size_t i = 0; i < rule.words.size(); ++i) {
      if (text == rule.words[i]) *out = static_cast<int64_t>(i);
    }
    if (*out >= 0) return "";
    return name + " is '" + text + "', must be one of " + Allowed(rule);
  }
  const int64_t number = AsInt(value);
  bool ok = rule.numbers.empty() && number >= rule.min && number <= rule.max;
  for (int64_t allowed : rule.numbers) ok |= number == allowed;
  if (ok) *out = number;
  return ok ? "" : name + " is " + value.ToString() + ", must be " + Allowed(rule);
}

// flexbuffers 2.0.8's verifier checks where a key starts but not that its
// NUL is inside the buffer.
bool KeyInBuffer(const char* key, const uint8_t* data, std::size_t size) {
  const auto* start = reinterpret_cast<const uint8_t*>(key);
  return start >= data && start < data + size &&
         std::memchr(start, 0, static_cast<std::size_t>(data + size - start)) != nullptr;
}

// The verified root map, or the problem.
std::string RootMap(const uint8_t* data, std::size_t size, flexbuffers::Map* map) {
  if (!data || size == 0) return "custom options are missing (expected a flexbuffer map)";
  if (size >= FLATBUFFERS_MAX_BUFFER_SIZE) return NotAMap("2 GiB or more");
  std::vector<uint8_t> tracker;  // keeps verification linear in the size
  if (!flexbuffers::VerifyBuffer(data, size, &tracker)) {
    return NotAMap("the flexbuffers verifier rejected its " + std::to_string(size) + " bytes");
  }
  const flexbuffers::Reference root = flexbuffers::GetRoot(data, size);
  if (!root.IsMap()) {
    return std::string("custom options must be a flexbuffer map, got ") + FlexKind(root.GetType());
  }
  *map = root.AsMap();
  if (map->Keys().size() != map->Values().size()) return NotAMap("keys and values differ in count");
  return "";
}

SepActivation ActivationOf(int64_t index) { return static_cast<SepActivation>(index); }

SparseSeparableOptions FromValues(const int64_t (&v)[kKeyCount]) {
  SparseSeparableOptions o;
  o.kernel_size = v[kKernelSize];
  o.stride = v[kStride];
  o.padding = v[kPadding] == 0 ? SepPadding::kSame : SepPadding::kValid;
  o.in_channels = v[kInChannels];
  o.out_channels = v[kOutChannels];
  o.dw_activation = ActivationOf(v[kDwActivation]);
  o.pw_activation = ActivationOf(v[kPwActivation]);
  o.precision = v[kPrecision] == 0 ? SepPrecision::kFloat32 : SepPrecision::kInt8;
  o.format = v[kFormat] == 0 ? SepFormat::kCsr : SepFormat::kDense;
  o.block = v[kBlock];
  o.input_layout = v[kInputLayout] == 0 ? SepLayout::kNhwc : SepLayout::kChw;
  o.output_layout = v[kOutputLayout] == 0 ? SepLayout::kNhwc : SepLayout::kChw;
  return o;
}

std::string CheckBlock(const SparseSeparableOptions& o) {
  if (o.block != 4) return "";
  if (o.format == SepFormat::kDense) return "custom option 'block' is 4, but 'format' dense takes 1";
  if (o.out_channels % 4 != 0) {
    return "custom option 'block' is 4, but 'out_channels' " + std::to_string(o.out_channels) +
           " is not a multiple of 4";
  }
  return "";
}

}  // namespace

std::string ParseSparseSeparableOptions(const uint8_t* data, std::size_t size,
                                        SparseSeparableOptions* options) {
  flexbuffers::Map map = flexbuffers::Map::EmptyMap();
  std::string error = RootMap(data, size, &map);
  if (!error.empty()) return error;
  const flexbuffers::TypedVector keys = map.Keys();
  const flexbuffers::Vector values = map.Values();
  // Entries in stored order, not looked up: a repeated key is refused
  // instead of shadowed.
  int64_t read[kKeyCount];
  bool seen[kKeyCount] = {};
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!KeyInBuffer(keys[i].AsKey(), data, size)) {
      return NotAMap("key " + std::to_string(i) + " runs past the end of the buffer");
    }
    const std::string key = keys[i].AsKey();
    std::size_t index = 0;
    while (index < kKeyCount && key != Rule(index).key) ++index;
    if (index == kKeyCount) return "unknown custom option '" + key + "'";
    if (seen[index]) return "custom options repeat the key '" + key + "'";
    seen[index] = true;
    read[index] = -1;
    if (!(error = ReadValue(Rule(index), values[i], &read[index])).empty()) return error;
  }
  for (std::size_t index = 0; index < kKeyCount; ++index) {
    if (!seen[index]) return std::string("custom option '") + Rule(index).key + "' is missing";
  }
  const SparseSeparableOptions parsed = FromValues(read);
  if (!(error = CheckBlock(parsed)).empty()) return error;
  *options = parsed;
  return "";
}

}  // namespace ops
}  // namespace edgepipe
