// A memory-mapped token file.
#include "src/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "geopipe/error.h"
#include "src/common/text.h"

namespace geopipe::data {

TokenFile::TokenFile(const std::string& path, const std::string& dtype) : path_(path) {
  GEOPIPE_CHECK(dtype == "uint8" || dtype == "uint16" || dtype == "uint32", ConfigError,
                "token dtype '", dtype, "' is not uint16 or uint32");
  width_ = dtype == "uint8" ? 1 : dtype == "uint16" ? 2 : 4;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    GEOPIPE_THROW(IoError, "cannot open token file '", common::printable(path),
                  "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    GEOPIPE_THROW(IoError, "token file '", common::printable(path), "' is not a regular file");
  }
  const uint64_t bytes = static_cast<uint64_t>(st.st_size);
  if (bytes == 0 || bytes % width_ != 0) {
    ::close(fd);
    GEOPIPE_THROW(IoError, "token file '", common::printable(path), "' has ", bytes, " bytes, ",
                  bytes == 0 ? "none" : "not a multiple of " + std::to_string(width_),
                  bytes == 0 ? "" : " (" + dtype + "); is the dtype right?");
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    GEOPIPE_THROW(IoError, "cannot map token file '", common::printable(path),
                  "': ", std::strerror(errno));
  }
  data_ = static_cast<const uint8_t*>(p);
  mapped_ = bytes;
  size_ = static_cast<int64_t>(bytes / width_);
}

TokenFile::~TokenFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), mapped_);
}

TokenFile::TokenFile(TokenFile&& o) noexcept
    : path_(std::move(o.path_)),
      width_(o.width_),
      size_(o.size_),
      data_(o.data_),
      mapped_(o.mapped_) {
  o.data_ = nullptr;
  o.mapped_ = 0;
}

TokenFile& TokenFile::operator=(TokenFile&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), mapped_);
    path_ = std::move(o.path_);
    width_ = o.width_;
    size_ = o.size_;
    data_ = o.data_;
    mapped_ = o.mapped_;
    o.data_ = nullptr;
    o.mapped_ = 0;
  }
  return *this;
}

void TokenFile::copy(int64_t first, int64_t n, int64_t* out) const {
  for (int64_t i = 0; i < n; ++i) out[i] = at(first + i);
}

namespace {

// The first of n little-endian T at `data` that is >= limit, or -1: the max
// of each 4096-id block first (a loop the compiler vectorises), the block
// searched only when its max is too large.
template <typename T>
int64_t firstAtOrAboveIn(const uint8_t* data, int64_t n, uint64_t limit) {
  constexpr int64_t kBlock = 4096;
  auto load = [data](int64_t i) {
    T v;
    std::memcpy(&v, data + sizeof(T) * i, sizeof(T));
    return v;
  };
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    T most = 0;
    for (int64_t i = b; i < e; ++i) most = std::max(most, load(i));
    if (most < limit) continue;
    for (int64_t i = b; i < e; ++i)
      if (load(i) >= limit) return i;
  }
  return -1;
}

}  // namespace

int64_t TokenFile::firstAtOrAbove(int64_t vocab) const {
  const uint64_t limit = static_cast<uint64_t>(std::max<int64_t>(vocab, 0));
  if (width_ == 1) return firstAtOrAboveIn<uint8_t>(data_, size_, limit);
  return width_ == 2 ? firstAtOrAboveIn<uint16_t>(data_, size_, limit)
                     : firstAtOrAboveIn<uint32_t>(data_, size_, limit);
}

void TokenFile::checkBelow(int64_t vocab) const {
  const int64_t i = firstAtOrAbove(vocab);
  if (i >= 0) {
    GEOPIPE_THROW(IoError, "token file '", common::printable(path_), "': token ", at(i),
                  " at position ", i, " is not below the model's vocabulary of ", vocab,
                  "; was the file made with this model's tokenizer?");
  }
}

}  // namespace geopipe::data
