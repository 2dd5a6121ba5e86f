// Streaming parsers of a safetensors header and a model.safetensors.index.json,
// and the checks of every header entry against the file it describes.
#include "src/formats/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "geopipe/error.h"

namespace geopipe::formats {

namespace {

struct DtypeSpec {
  const char* name;
  DType dtype;
  uint32_t bits;
};

// Every dtype of the safetensors format (its Dtype enum, including the
// sub-byte float types of recent versions).
constexpr DtypeSpec kDtypes[] = {
    {"F32", DType::F32, 32},      {"F16", DType::F16, 16},      {"BF16", DType::BF16, 16},
    {"F64", DType::OTHER, 64},    {"I64", DType::OTHER, 64},    {"U64", DType::OTHER, 64},
    {"I32", DType::OTHER, 32},    {"U32", DType::OTHER, 32},    {"I16", DType::OTHER, 16},
    {"U16", DType::OTHER, 16},    {"I8", DType::OTHER, 8},      {"U8", DType::OTHER, 8},
    {"BOOL", DType::OTHER, 8},    {"F8_E4M3", DType::OTHER, 8}, {"F8_E5M2", DType::OTHER, 8},
    {"F8_E8M0", DType::OTHER, 8}, {"C64", DType::OTHER, 64},    {"F6_E2M3", DType::OTHER, 6},
    {"F6_E3M2", DType::OTHER, 6}, {"F4", DType::OTHER, 4},
};

const DtypeSpec* findDtype(const std::string& name) {
  for (const DtypeSpec& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

}  // namespace

const char* toString(DType d) {
  switch (d) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::OTHER:
      return "OTHER";
  }
  return "OTHER";
}

uint32_t dtypeBits(const std::string& name) {
  const DtypeSpec* d = findDtype(name);
  return d ? d->bits : 0;
}

int64_t TensorInfo::numel() const {
  uint64_t n = 1;  // unsigned: a hand-made shape that overflows wraps, no UB
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return static_cast<int64_t>(n);
}

namespace detail {

using json = nlohmann::json;

std::string jsonQuoted(const std::string& s) {
  constexpr size_t kMax = 120;
  const bool cut = s.size() > kMax;
  std::string out =
      json(cut ? s.substr(0, kMax) : s).dump(-1, ' ', false, json::error_handler_t::replace);
  if (cut) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string shapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

namespace {

// nlohmann's parse errors quote the last token, which an attacker controls:
// keep the message short.
std::string shortened(const std::string& s) {
  constexpr size_t kMax = 300;
  return s.size() <= kMax ? s : s.substr(0, kMax) + "...";
}

// The SAX handler of a header. The expected shape is
//   {"__metadata__": {str: str}, name: {"dtype": str, "shape": [u64...],
//    "data_offsets": [u64, u64]}, ...}
// and the handler throws at the first token that does not fit it, so no
// nesting, long array or repeated key ever reaches memory.
class HeaderHandler {
 public:
  explicit HeaderHandler(const std::string& origin) : origin_(origin) {}

  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;

  bool null() { return unexpected("null"); }
  bool boolean(bool b) { return unexpected(b ? "true" : "false"); }
  bool binary(json::binary_t&) { return unexpected("binary data"); }

  // nlohmann reports only negative integers here.
  bool number_integer(json::number_integer_t v) {
    if (phase_ == Phase::SHAPE)
      failTensor("shape ", partialShape(), " has a negative dimension ", v);
    if (phase_ == Phase::OFFSETS) failTensor("data_offsets has a negative value ", v);
    return unexpected(std::to_string(v));
  }

  bool number_unsigned(json::number_unsigned_t v) {
    if (phase_ == Phase::SHAPE) {
      if (tensor_.shape.size() == kMaxDims) {
        failTensor("shape has more than ", kMaxDims, " dimensions");
      }
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        failTensor("shape has a dimension ", v, " over 2^63 - 1");
      }
      tensor_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (phase_ == Phase::OFFSETS) {
      if (offset_count_ == 2)
        failTensor("data_offsets has more than two values (want [begin, end])");
      offsets_[offset_count_++] = v;
      return true;
    }
    return unexpected(std::to_string(v));
  }

  bool number_float(json::number_float_t, const std::string& text) {
    if (phase_ == Phase::SHAPE) {
      failTensor("shape has a dimension ", shortened(text), " that is not an integer in [0, 2^63)");
    }
    if (phase_ == Phase::OFFSETS) {
      failTensor("data_offsets has a value ", shortened(text),
                 " that is not an integer in [0, 2^64)");
    }
    return unexpected("the number " + shortened(text));
  }

  bool string(std::string& s) {
    if (phase_ == Phase::META_VALUE) {
      metadata.emplace(std::move(meta_key_), std::move(s));
      phase_ = Phase::META;
      return true;
    }
    if (phase_ == Phase::DTYPE) {
      const bool name_like =
          !s.empty() && s.size() <= 32 && std::all_of(s.begin(), s.end(), [](char c) {
            return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
          });
      if (!name_like) failTensor("dtype ", jsonQuoted(s), " is not a safetensors dtype name");
      const DtypeSpec* d = findDtype(s);
      tensor_.dtype = d ? d->dtype : DType::OTHER;
      tensor_.dtype_name = std::move(s);
      phase_ = Phase::ENTRY;
      return true;
    }
    return unexpected("the string " + jsonQuoted(s));
  }

  bool start_object(std::size_t) {
    switch (phase_) {
      case Phase::START:
        phase_ = Phase::TOP;
        return true;
      case Phase::META_START:
        phase_ = Phase::META;
        return true;
      case Phase::ENTRY_START:
        phase_ = Phase::ENTRY;
        return true;
      default:
        return unexpected("an object");
    }
  }

  bool key(std::string& k) {
    switch (phase_) {
      case Phase::TOP:
        if (k == "__metadata__") {
          if (seen_metadata_) fail("the header has two \"__metadata__\" entries");
          seen_metadata_ = true;
          phase_ = Phase::META_START;
          return true;
        }
        if (!names_.insert(k).second) fail("the header names tensor ", jsonQuoted(k), " twice");
        tensor_ = TensorInfo{};
        tensor_.name = std::move(k);
        fields_ = 0;
        offset_count_ = 0;
        phase_ = Phase::ENTRY_START;
        return true;
      case Phase::META:
        if (metadata.count(k)) fail("\"__metadata__\" has the key ", jsonQuoted(k), " twice");
        meta_key_ = std::move(k);
        phase_ = Phase::META_VALUE;
        return true;
      case Phase::ENTRY: {
        Phase next = Phase::DTYPE;
        unsigned bit = kDtype;
        if (k == "shape") {
          next = Phase::SHAPE_START;
          bit = kShape;
        } else if (k == "data_offsets") {
          next = Phase::OFFSETS_START;
          bit = kOffsets;
        } else if (k != "dtype") {
          failTensor("unknown field ", jsonQuoted(k),
                     " (an entry has exactly dtype, shape and data_offsets)");
        }
        if (fields_ & bit) failTensor("the entry has two ", jsonQuoted(k), " fields");
        fields_ |= bit;
        phase_ = next;
        return true;
      }
      default:
        return unexpected("a key");
    }
  }

  bool end_object() {
    switch (phase_) {
      case Phase::TOP:
        phase_ = Phase::DONE;
        return true;
      case Phase::META:
        phase_ = Phase::TOP;
        return true;
      case Phase::ENTRY:
        for (auto [bit, field] : {std::pair<unsigned, const char*>{kDtype, "dtype"},
                                  {kShape, "shape"},
                                  {kOffsets, "data_offsets"}}) {
          if (!(fields_ & bit)) {
            failTensor("the entry has no \"", field,
                       "\" (an entry has exactly dtype, shape and data_offsets)");
          }
        }
        tensor_.begin = offsets_[0];
        tensor_.end = offsets_[1];
        tensors.push_back(std::move(tensor_));
        phase_ = Phase::TOP;
        return true;
      default:
        return unexpected("the end of an object");
    }
  }

  bool start_array(std::size_t) {
    if (phase_ == Phase::SHAPE_START) {
      phase_ = Phase::SHAPE;
      return true;
    }
    if (phase_ == Phase::OFFSETS_START) {
      phase_ = Phase::OFFSETS;
      return true;
    }
    return unexpected("an array");
  }

  bool end_array() {
    if (phase_ == Phase::SHAPE) {
      phase_ = Phase::ENTRY;
      return true;
    }
    if (phase_ == Phase::OFFSETS) {
      if (offset_count_ != 2) {
        failTensor("data_offsets has ", offset_count_, " values (want [begin, end])");
      }
      phase_ = Phase::ENTRY;
      return true;
    }
    return unexpected("the end of an array");
  }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) {
    fail("the header is not valid JSON (at byte ", position,
         " of the header): ", shortened(e.what()));
  }

 private:
  // Where the handler is in the expected shape. *_START: the key was read,
  // its value has not begun.
  enum class Phase {
    START,          // nothing read
    TOP,            // in the top object, before a key
    META_START,     // after "__metadata__":
    META,           // in the metadata object, before a key
    META_VALUE,     // after a metadata key
    ENTRY_START,    // after a tensor name
    ENTRY,          // in a tensor entry, before a field
    DTYPE,          // after "dtype":
    SHAPE_START,    // after "shape":
    SHAPE,          // in the shape array
    OFFSETS_START,  // after "data_offsets":
    OFFSETS,        // in the data_offsets array
    DONE,           // the top object is closed
  };
  static constexpr unsigned kDtype = 1, kShape = 2, kOffsets = 4;

  template <typename... Args>
  [[noreturn]] void fail(const Args&... args) const {
    GEOPIPE_THROW(ProtocolError, origin_, ": ", args...);
  }
  template <typename... Args>
  [[noreturn]] void failTensor(const Args&... args) const {
    fail("tensor ", jsonQuoted(tensor_.name), ": ", args...);
  }

  std::string partialShape() const { return shapeString(tensor_.shape) + "..."; }

  // A token the expected shape has no place for: say what was expected.
  [[noreturn]] bool unexpected(const std::string& found) const {
    switch (phase_) {
      case Phase::START:
        fail("the header must be a JSON object {tensor name: entry}, found ", found);
      case Phase::META_START:
        fail("\"__metadata__\" must be an object of strings, found ", found);
      case Phase::META_VALUE:
        fail("\"__metadata__\" value of ", jsonQuoted(meta_key_), " must be a string, found ",
             found);
      case Phase::ENTRY_START:
        failTensor("the entry must be an object {dtype, shape, data_offsets}, found ", found);
      case Phase::DTYPE:
        failTensor("dtype must be a string, found ", found);
      case Phase::SHAPE_START:
      case Phase::SHAPE:
        failTensor("shape must be an array of non-negative integers, found ", found);
      case Phase::OFFSETS_START:
      case Phase::OFFSETS:
        failTensor("data_offsets must be [begin, end] of non-negative integers, found ", found);
      default:
        fail("unexpected ", found, " in the header");
    }
  }

  const std::string& origin_;
  Phase phase_ = Phase::START;
  bool seen_metadata_ = false;
  std::set<std::string> names_;
  std::string meta_key_;
  TensorInfo tensor_;
  unsigned fields_ = 0;
  uint64_t offsets_[2] = {0, 0};
  int offset_count_ = 0;
};

// Checks each entry's dtype, shape and offsets against a data section of
// data_size bytes, and that no two tensors share a byte; sorts by offset.
void validate(std::vector<TensorInfo>& tensors, uint64_t data_size, const std::string& origin) {
  for (const TensorInfo& t : tensors) {
    auto fail = [&](const auto&... args) {
      GEOPIPE_THROW(ProtocolError, origin, ": tensor ", jsonQuoted(t.name), ": ", args...);
    };
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail("shape ", shapeString(t.shape), " has more than 2^63 - 1 elements");
      }
    }
    const std::string offsets =
        "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.begin > t.end) fail(offsets, " are not [begin, end] with begin <= end");
    const uint32_t bits = dtypeBits(t.dtype_name);
    if (bits > 0) {  // an unknown dtype's size cannot be checked
      uint64_t total_bits = 0;
      if (__builtin_mul_overflow(numel, uint64_t{bits}, &total_bits)) {
        fail("shape ", shapeString(t.shape), " of ", t.dtype_name, " needs more than 2^64 bits");
      }
      if (total_bits % 8 != 0) {
        fail(numel, " elements of ", t.dtype_name, " (", bits,
             " bits each) do not fill whole bytes");
      }
      const uint64_t want = total_bits / 8;
      if (t.end - t.begin != want) {
        fail(offsets, " hold ", t.end - t.begin, " bytes but shape ", shapeString(t.shape), " of ",
             t.dtype_name, " needs ", want, " bytes (", numel, " elements x ", bits, " bits)");
      }
    }
    if (t.end > data_size) {
      fail("its data ends at byte ", t.end, " of the data section, which has only ", data_size,
           " bytes: the file is truncated (an interrupted download or copy?)");
    }
  }
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  const TensorInfo* last = nullptr;  // the non-empty tensor that ends last so far
  for (const TensorInfo& t : tensors) {
    if (t.begin == t.end) continue;  // an empty tensor shares no byte
    if (last && t.begin < last->end) {
      GEOPIPE_THROW(ProtocolError, origin, ": tensors ", jsonQuoted(last->name), " [", last->begin,
                    ", ", last->end, ") and ", jsonQuoted(t.name), " [", t.begin, ", ", t.end,
                    ") overlap in the data section");
    }
    if (!last || t.end > last->end) last = &t;
  }
}

// The SAX handler of an index: {"weight_map": {tensor: shard}, other: any}.
// Values of other keys are skipped (depth-limited).
class IndexHandler {
 public:
  explicit IndexHandler(const std::string& origin) : origin_(origin) {}

  ParsedIndex index;
  bool seen_weight_map = false;

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(json::number_integer_t v) { return scalar(std::to_string(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return scalar(std::to_string(v)); }
  bool number_float(json::number_float_t, const std::string& text) {
    return scalar("the number " + shortened(text));
  }
  bool binary(json::binary_t&) { return scalar("binary data"); }

  bool string(std::string& s) {
    if (phase_ != Phase::MAP_VALUE) return scalar("the string " + jsonQuoted(s));
    const bool plain = !s.empty() && s.size() <= 255 && s != "." && s != ".." &&
                       s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
    if (!plain) {
      fail("\"weight_map\" maps ", jsonQuoted(tensor_), " to ", jsonQuoted(s),
           ", which is not a file name in the model folder");
    }
    index.weight_map.emplace_back(std::move(tensor_), std::move(s));
    phase_ = Phase::MAP;
    return true;
  }

  bool start_object(std::size_t) {
    if (phase_ == Phase::START) {
      phase_ = Phase::TOP;
      return true;
    }
    if (phase_ == Phase::MAP_START) {
      phase_ = Phase::MAP;
      return true;
    }
    return nest("an object");
  }
  bool start_array(std::size_t) { return nest("an array"); }

  bool key(std::string& k) {
    if (phase_ == Phase::TOP) {
      if (k == "weight_map") {
        if (seen_weight_map) fail("has two \"weight_map\" entries");
        seen_weight_map = true;
        phase_ = Phase::MAP_START;
      } else {
        phase_ = Phase::SKIP;
        skip_depth_ = 0;
      }
      return true;
    }
    if (phase_ == Phase::MAP) {
      if (!names_.insert(k).second) fail("\"weight_map\" names tensor ", jsonQuoted(k), " twice");
      tensor_ = std::move(k);
      phase_ = Phase::MAP_VALUE;
      return true;
    }
    return true;  // a key inside a skipped value
  }

  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) {
    fail("is not valid JSON (at byte ", position, "): ", shortened(e.what()));
  }

 private:
  enum class Phase {
    START,      // nothing read
    TOP,        // in the top object, before a key
    MAP_START,  // after "weight_map":
    MAP,        // in weight_map, before a tensor name
    MAP_VALUE,  // after a tensor name
    SKIP,       // inside the value of another top-level key
    DONE,       // the top object is closed
  };
  static constexpr int kMaxSkipDepth = 64;

  template <typename... Args>
  [[noreturn]] void fail(const Args&... args) const {
    GEOPIPE_THROW(ProtocolError, origin_, ": ", args...);
  }

  [[noreturn]] void expected(const std::string& found) const {
    switch (phase_) {
      case Phase::START:
        fail("must be a JSON object {\"weight_map\": {tensor: shard file}}, found ", found);
      case Phase::MAP_START:
        fail("\"weight_map\" must be an object {tensor: shard file}, found ", found);
      case Phase::MAP_VALUE:
        fail("\"weight_map\" must map ", jsonQuoted(tensor_), " to a shard file name, found ",
             found);
      default:
        fail("unexpected ", found);
    }
  }

  bool scalar(const std::string& found) {
    if (phase_ != Phase::SKIP) expected(found);
    if (skip_depth_ == 0) phase_ = Phase::TOP;
    return true;
  }
  bool nest(const std::string& found) {
    if (phase_ != Phase::SKIP) expected(found);
    if (++skip_depth_ > kMaxSkipDepth) fail("nests deeper than ", kMaxSkipDepth, " levels");
    return true;
  }
  bool close() {
    if (phase_ == Phase::SKIP) {
      if (--skip_depth_ == 0) phase_ = Phase::TOP;
    } else if (phase_ == Phase::MAP) {
      phase_ = Phase::TOP;
    } else {
      phase_ = Phase::DONE;  // the top object
    }
    return true;
  }

  const std::string& origin_;
  Phase phase_ = Phase::START;
  int skip_depth_ = 0;
  std::set<std::string> names_;
  std::string tensor_;
};

}  // namespace

ParsedHeader parseHeader(const char* json_bytes, size_t n, uint64_t data_size,
                         const std::string& origin) {
  // nlohmann's lexer takes a NUL byte for the end of the input, which would
  // let anything after one through; JSON never holds a raw NUL.
  if (const void* nul = std::memchr(json_bytes, 0, n)) {
    GEOPIPE_THROW(ProtocolError, origin, ": the header is not valid JSON: a NUL byte at byte ",
                  static_cast<const char*>(nul) - json_bytes,
                  " of the header (it may be padded with spaces only)");
  }
  HeaderHandler handler(origin);
  // The handler throws on every error, so a false return cannot happen; the
  // check keeps it so if nlohmann ever reports one another way.
  if (!json::sax_parse(json_bytes, json_bytes + n, &handler)) {
    GEOPIPE_THROW(ProtocolError, origin, ": the header is not valid JSON");
  }
  ParsedHeader out;
  out.tensors = std::move(handler.tensors);
  out.metadata = std::move(handler.metadata);
  validate(out.tensors, data_size, origin);
  return out;
}

ParsedIndex parseIndex(const char* json_bytes, size_t n, const std::string& origin) {
  if (const void* nul = std::memchr(json_bytes, 0, n)) {
    GEOPIPE_THROW(ProtocolError, origin, ": is not valid JSON: a NUL byte at byte ",
                  static_cast<const char*>(nul) - json_bytes);
  }
  IndexHandler handler(origin);
  if (!json::sax_parse(json_bytes, json_bytes + n, &handler)) {
    GEOPIPE_THROW(ProtocolError, origin, ": is not valid JSON");
  }
  if (!handler.seen_weight_map) {
    GEOPIPE_THROW(ProtocolError, origin,
                  ": has no \"weight_map\" (an index is {\"weight_map\": {tensor: shard file}})");
  }
  return std::move(handler.index);
}

}  // namespace detail
}  // namespace geopipe::formats
