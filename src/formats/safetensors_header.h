// The parsers of untrusted safetensors bytes: a file's JSON header and a
// folder's model.safetensors.index.json. Internal to src/formats (the
// reader, the folder and the fuzzer use them); both are streaming (SAX)
// parsers that refuse anything but the expected shape at the first wrong
// token, so a hostile header costs at most a few times its size in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "src/formats/safetensors.h"

namespace geopipe::formats::detail {

// A header after parsing and validation.
struct ParsedHeader {
  std::vector<TensorInfo> tensors;  // file order (ascending begin)
  std::map<std::string, std::string> metadata;
};

// Parses the n JSON bytes of a header and validates every entry against a
// data section of `data_size` bytes (see TensorInfo). ProtocolError naming
// `origin` and the tensor on any problem.
ParsedHeader parseHeader(const char* json, size_t n, uint64_t data_size, const std::string& origin);

// A model.safetensors.index.json: tensor -> shard file name, in the index's
// order. Shard names are plain file names (no '/', not "." or "..").
struct ParsedIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;
};

// Parses an index file's n bytes; ProtocolError naming `origin` when it is
// not JSON, has no "weight_map" object of strings, names a tensor twice or
// a shard by something other than a plain file name. Other top-level keys
// ("metadata") are skipped.
ParsedIndex parseIndex(const char* json, size_t n, const std::string& origin);

// `s` as a JSON string literal for messages: quoted, escaped (invalid UTF-8
// replaced) and cut to 120 bytes, so a hostile name cannot flood a message.
std::string jsonQuoted(const std::string& s);

// "[2, 3]".
std::string shapeString(const std::vector<int64_t>& shape);

}  // namespace geopipe::formats::detail
