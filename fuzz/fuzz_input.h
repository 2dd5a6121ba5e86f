// A cursor over a fuzzer's input bytes: the targets read a selector, sizes
// and length-prefixed parts from it. Reading past the end yields zeros and
// empty parts, so every byte string is a valid input.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "geopipe/error.h"

namespace geopipe::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  size_t remaining() const { return size_ - pos_; }

  uint8_t byte() { return empty() ? 0 : data_[pos_++]; }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
  uint32_t u32() { return u16() | (static_cast<uint32_t>(u16()) << 16); }

  // Up to n bytes.
  std::string bytes(size_t n) {
    n = std::min(n, remaining());
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  // A part preceded by its u16 little-endian length.
  std::string part() { return bytes(u16()); }
  std::vector<uint8_t> partBytes() {
    const std::string s = part();
    return std::vector<uint8_t>(s.begin(), s.end());
  }
  std::string rest() { return bytes(remaining()); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// The body of a target's LLVMFuzzerTestOneInput: run(in) on the input,
// where a geopipe::Error is an accepted outcome (the parser refused the
// bytes) and anything else (a crash, another exception, std::abort from a
// broken invariant) reaches libFuzzer.
template <typename Run>
int runRefusingErrors(const uint8_t* data, size_t size, Run run) {
  FuzzInput in(data, size);
  try {
    run(in);
  } catch (const Error&) {
  }
  return 0;
}

// The encoding FuzzInput::part() reads, for the seed generator.
inline std::string lengthPrefixed(const std::string& s) {
  std::string out;
  out += static_cast<char>(s.size() & 0xff);
  out += static_cast<char>((s.size() >> 8) & 0xff);
  return out + s;
}

}  // namespace geopipe::fuzz
