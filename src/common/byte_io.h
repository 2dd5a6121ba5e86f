// Bounds-checked little-endian reading and writing of byte formats: the one
// cursor every parser of untrusted bytes (pipeline frames, compressed-tensor
// headers, gradient bundles, NCCL announcements, state files) reads through.
// Header-only, no LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "geopipe/error.h"

namespace geopipe::common {

// A read cursor over bytes it does not own (they must outlive it). Every
// read checks the bytes are there first; a short read throws ProtocolError
// naming the message, the field, the offset and how many bytes the field
// needs, e.g. "pipeline frame truncated reading step at offset 8: needs 8
// bytes, 4 left of 12". Values are decoded as little-endian whatever the
// host. Not thread-safe: one parser owns one reader.
class ByteReader {
 public:
  // `message` names the whole format in errors ("pipeline frame").
  ByteReader(const uint8_t* data, size_t size, std::string message)
      : data_(data), size_(size), message_(std::move(message)) {}
  ByteReader(const std::vector<uint8_t>& bytes, std::string message)
      : ByteReader(bytes.data(), bytes.size(), std::move(message)) {}

  // One fixed-width integer or float (u8 .. u64, i8 .. i64, f32, f64).
  template <typename T>
  T read(const char* field) {
    static_assert(std::is_arithmetic_v<T>, "ByteReader reads integers and floats");
    T v;
    decode(take(sizeof(T), field), &v, 1);
    return v;
  }
  // `count` values of T into out, checked as one field.
  template <typename T>
  void readArray(T* out, size_t count, const char* field) {
    static_assert(std::is_arithmetic_v<T>, "ByteReader reads integers and floats");
    require(count, sizeof(T), field);
    decode(take(count * sizeof(T), field), out, count);
  }
  template <typename T>
  std::vector<T> readVector(size_t count, const char* field) {
    require(count, sizeof(T), field);  // before allocating what a peer claims
    std::vector<T> v(count);
    readArray(v.data(), count, field);
    return v;
  }
  // The next n bytes, in place (valid while the underlying bytes are). n is
  // 64-bit so that a peer's u64 size is checked before any narrowing.
  const uint8_t* bytes(uint64_t n, const char* field) { return take(n, field); }
  std::vector<uint8_t> copyBytes(uint64_t n, const char* field) {
    const uint8_t* p = take(n, field);
    return std::vector<uint8_t>(p, p + n);
  }
  void skip(uint64_t n, const char* field) { take(n, field); }
  // Everything not read yet (possibly nothing).
  std::vector<uint8_t> copyRest() { return copyBytes(remaining(), "rest"); }

  // Throws ProtocolError unless every byte has been read.
  void expectEnd() const {
    if (pos_ != size_) {
      GEOPIPE_THROW(ProtocolError, message_, " has ", size_ - pos_, " trailing bytes at offset ",
                    pos_, " (", size_, " in all)");
    }
  }

  size_t offset() const { return pos_; }
  size_t size() const { return size_; }
  size_t remaining() const { return size_ - pos_; }
  bool atEnd() const { return pos_ == size_; }
  const std::string& message() const { return message_; }

 private:
  const uint8_t* take(uint64_t n, const char* field) {
    if (n > uint64_t{size_ - pos_}) {
      GEOPIPE_THROW(ProtocolError, message_, " truncated reading ", field, " at offset ", pos_,
                    ": needs ", n, " bytes, ", size_ - pos_, " left of ", size_);
    }
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  // count * width without overflow, checked against what is left.
  void require(size_t count, size_t width, const char* field) const {
    if (count > (size_ - pos_) / width) {
      GEOPIPE_THROW(ProtocolError, message_, " truncated reading ", field, " at offset ", pos_,
                    ": needs ", count, " x ", width, " bytes, ", size_ - pos_, " left of ", size_);
    }
  }
  template <typename T>
  static void decode(const uint8_t* p, T* out, size_t count) {
    using U = std::conditional_t<
        sizeof(T) == 1, uint8_t,
        std::conditional_t<sizeof(T) == 2, uint16_t,
                           std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
    static_assert(sizeof(U) == sizeof(T), "unsupported width");
    for (size_t i = 0; i < count; ++i, p += sizeof(T)) {
      U u = 0;
      for (size_t b = 0; b < sizeof(T); ++b) u |= static_cast<U>(static_cast<U>(p[b]) << (8 * b));
      std::memcpy(out + i, &u, sizeof(T));
    }
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string message_;
};

// Appends little-endian fixed-width values and byte spans to a buffer it
// owns; the mirror of ByteReader.
class ByteWriter {
 public:
  ByteWriter() = default;
  explicit ByteWriter(size_t reserve) { out_.reserve(reserve); }

  template <typename T>
  void write(T v) {
    static_assert(std::is_arithmetic_v<T>, "ByteWriter writes integers and floats");
    writeArray(&v, 1);
  }
  template <typename T>
  void writeArray(const T* v, size_t count) {
    static_assert(std::is_arithmetic_v<T>, "ByteWriter writes integers and floats");
    using U = std::conditional_t<
        sizeof(T) == 1, uint8_t,
        std::conditional_t<sizeof(T) == 2, uint16_t,
                           std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
    static_assert(sizeof(U) == sizeof(T), "unsupported width");
    const size_t at = out_.size();
    out_.resize(at + count * sizeof(T));
    uint8_t* p = out_.data() + at;
    for (size_t i = 0; i < count; ++i) {
      U u;
      std::memcpy(&u, v + i, sizeof(T));
      for (size_t b = 0; b < sizeof(T); ++b) *p++ = static_cast<uint8_t>(u >> (8 * b));
    }
  }
  void writeBytes(const uint8_t* p, size_t n) {
    if (n) out_.insert(out_.end(), p, p + n);
  }
  void writeBytes(const std::vector<uint8_t>& b) { writeBytes(b.data(), b.size()); }
  void writeZeros(size_t n) { out_.resize(out_.size() + n, 0); }

  const std::vector<uint8_t>& bytes() const { return out_; }
  size_t size() const { return out_.size(); }
  std::vector<uint8_t> take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

}  // namespace geopipe::common
