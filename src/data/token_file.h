// A token file (the `tokens` format: raw little-endian uint16 or uint32 ids,
// no header, nanoGPT's train.bin layout) mapped read-only into memory: never
// copied, never widened. Byte-level text is mapped the same way, as "uint8"
// ids. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace geopipe::data {

// Movable, not copyable. Reads are const and thread-safe.
class TokenFile {
 public:
  // Maps `path`; `dtype` is "uint16" or "uint32" (or "uint8": text, one id
  // per byte). IoError naming the file
  // when it cannot be opened, is not a regular file, is empty, or its size is
  // not a multiple of the token width (naming the dtype, the likely mistake).
  TokenFile(const std::string& path, const std::string& dtype);
  ~TokenFile();
  TokenFile(TokenFile&& other) noexcept;
  TokenFile& operator=(TokenFile&& other) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  int width() const { return width_; }    // bytes per token
  int64_t size() const { return size_; }  // tokens

  // Token i (0 <= i < size()), no bounds check.
  int64_t at(int64_t i) const {
    if (width_ == 1) return data_[i];
    if (width_ == 2) {
      uint16_t v;
      __builtin_memcpy(&v, data_ + 2 * i, 2);
      return v;
    }
    uint32_t v;
    __builtin_memcpy(&v, data_ + 4 * i, 4);
    return v;
  }
  // The mapped bytes (for text read through a tokenizer).
  std::string_view bytes() const { return {reinterpret_cast<const char*>(data_), mapped_}; }
  // Copies tokens [first, first + n) into out as int64.
  void copy(int64_t first, int64_t n, int64_t* out) const;

  // Streams the whole file once: the first position whose token is >=
  // vocab, or -1.
  int64_t firstAtOrAbove(int64_t vocab) const;
  // firstAtOrAbove, as an IoError naming the file, the offset and the fix.
  void checkBelow(int64_t vocab) const;

 private:
  std::string path_;
  int width_ = 2;
  int64_t size_ = 0;
  const uint8_t* data_ = nullptr;
  size_t mapped_ = 0;
};

}  // namespace geopipe::data
