// The safetensors reader (one mmap'd file; a folder of lazily opened shards)
// and the atomic writer. The header and index parsers live in
// safetensors_header.cc.
#include "src/formats/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "compression/half.h"
#include "geopipe/error.h"
#include "src/common/strings.h"
#include "src/formats/safetensors_header.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as host floats"
#endif

namespace geopipe::formats {

using detail::jsonQuoted;
using detail::shapeString;

namespace {

// Elements converted per step through an aligned stack buffer: the mapped
// bytes need not be aligned to 2 (the header length is arbitrary).
constexpr size_t kChunk = 4096;

std::string errnoText() {
  return std::strerror(errno);
}

// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd& operator=(Fd&&) = delete;
};

// Opens `path` for reading without blocking (a FIFO would otherwise wait for
// a writer) and checks it is a regular file; returns the fd and its size.
Fd openRegular(const std::string& path, const std::string& what, uint64_t* size) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (f.fd < 0) GEOPIPE_THROW(IoError, "cannot open ", what, " ", path, ": ", errnoText());
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) {
    GEOPIPE_THROW(IoError, "cannot stat ", what, " ", path, ": ", errnoText());
  }
  if (!S_ISREG(st.st_mode)) GEOPIPE_THROW(IoError, what, " ", path, " is not a regular file");
  *size = static_cast<uint64_t>(st.st_size);
  return f;
}

bool isRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool endsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "no tensor "x"", plus the closest name when one is close. The "did you
// mean" search is skipped for huge name lists (it is quadratic per name).
std::string missingTensor(const std::string& name, const std::vector<std::string>& names) {
  std::string msg = "no tensor " + jsonQuoted(name);
  if (names.size() <= 20000 && name.size() <= 200) {
    const std::string close = common::closestMatch(name, names);
    if (!close.empty()) msg += " (did you mean " + jsonQuoted(close) + "?)";
  }
  return msg;
}

}  // namespace

// ---------------------------------------------------------------- one file

struct SafetensorsFile::Impl {
  std::string path;
  // The file's bytes: a read-only mapping, or `owned` for fromBytes.
  const uint8_t* base = nullptr;
  uint64_t size = 0;
  void* mapping = nullptr;
  std::string owned;
  uint64_t data_offset = 0;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, size_t> by_name;
  std::map<std::string, std::string> metadata;
  mutable std::atomic<uint64_t> bytes_read{0};

  ~Impl() {
    if (mapping) ::munmap(mapping, size);
  }

  // Reads the header length and parses the header (shared by both
  // constructors).
  void parse() {
    if (size < 8) {
      GEOPIPE_THROW(ProtocolError, path, ": the file is ", size,
                    " bytes, shorter than the 8-byte header length a safetensors file starts with");
    }
    uint64_t n = 0;
    std::memcpy(&n, base, 8);
    if (n > kMaxHeaderBytes) {
      GEOPIPE_THROW(ProtocolError, path, ": header length ", n, " is over the limit of ",
                    kMaxHeaderBytes, " bytes: not a safetensors file, or a corrupt one");
    }
    if (n > size - 8) {
      GEOPIPE_THROW(ProtocolError, path, ": header length ", n, " runs past the end of the file (",
                    size, " bytes): the file is truncated or not a safetensors file");
    }
    data_offset = 8 + n;
    detail::ParsedHeader h =
        detail::parseHeader(reinterpret_cast<const char*>(base + 8), n, size - data_offset, path);
    tensors = std::move(h.tensors);
    metadata = std::move(h.metadata);
    by_name.reserve(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) by_name.emplace(tensors[i].name, i);
  }

  const TensorInfo& at(const std::string& name) const {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      std::vector<std::string> names;
      if (tensors.size() <= 20000) {
        for (const auto& t : tensors) names.push_back(t.name);
      }
      GEOPIPE_THROW(IoError, path, ": ", missingTensor(name, names));
    }
    return tensors[it->second];
  }

  const uint8_t* bytesOf(const TensorInfo& t) const { return base + data_offset + t.begin; }
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SafetensorsFile::SafetensorsFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  uint64_t size = 0;
  Fd f = openRegular(path, "safetensors file", &size);
  impl_->size = size;
  if (size >= 8) {  // parse() reports shorter files; mmap cannot map 0 bytes
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (m == MAP_FAILED) GEOPIPE_THROW(IoError, "cannot map ", path, ": ", errnoText());
    impl_->mapping = m;
    impl_->base = static_cast<const uint8_t*>(m);
  }
  impl_->parse();
}

SafetensorsFile SafetensorsFile::fromBytes(std::string bytes, const std::string& origin) {
  auto impl = std::make_unique<Impl>();
  impl->path = origin;
  impl->owned = std::move(bytes);
  impl->base = reinterpret_cast<const uint8_t*>(impl->owned.data());
  impl->size = impl->owned.size();
  impl->parse();
  return SafetensorsFile(std::move(impl));
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const std::string& SafetensorsFile::path() const {
  return impl_->path;
}
uint64_t SafetensorsFile::fileSize() const {
  return impl_->size;
}
uint64_t SafetensorsFile::dataOffset() const {
  return impl_->data_offset;
}
const std::vector<TensorInfo>& SafetensorsFile::tensors() const {
  return impl_->tensors;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}
uint64_t SafetensorsFile::bytesRead() const {
  return impl_->bytes_read.load();
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  return impl_->at(name);
}

void SafetensorsFile::readFloat(const std::string& name, float* out, int64_t count) const {
  const TensorInfo& t = impl_->at(name);
  if (t.dtype == DType::OTHER) {
    GEOPIPE_THROW(IoError, impl_->path, ": tensor ", jsonQuoted(t.name), " has dtype ",
                  t.dtype_name, ", which cannot be read as float32 (F32, F16 and BF16 can)");
  }
  if (count != t.numel()) {
    GEOPIPE_THROW(IoError, impl_->path, ": tensor ", jsonQuoted(t.name), " has ", t.numel(),
                  " elements (shape ", shapeString(t.shape), ") but the buffer given holds ",
                  count);
  }
  const size_t n = static_cast<size_t>(count);
  if (n == 0) return;
  const uint8_t* src = impl_->bytesOf(t);
  if (t.dtype == DType::F32) {
    std::memcpy(out, src, n * sizeof(float));
  } else {
    alignas(32) uint16_t buf[kChunk];
    for (size_t i = 0; i < n; i += kChunk) {
      const size_t m = std::min(kChunk, n - i);
      std::memcpy(buf, src + 2 * i, 2 * m);
      if (t.dtype == DType::F16) {
        compression::halfToFloat(buf, out + i, m);
      } else {
        compression::bfloat16ToFloat(buf, out + i, m);
      }
    }
  }
  impl_->bytes_read += t.byteSize();
}

void SafetensorsFile::readRaw(const std::string& name, void* out, uint64_t size) const {
  const TensorInfo& t = impl_->at(name);
  if (size != t.byteSize()) {
    GEOPIPE_THROW(IoError, impl_->path, ": tensor ", jsonQuoted(t.name), " has ", t.byteSize(),
                  " bytes of ", t.dtype_name, " but the buffer given holds ", size);
  }
  if (size == 0) return;
  std::memcpy(out, impl_->bytesOf(t), size);
  impl_->bytes_read += size;
}

ByteView SafetensorsFile::rawView(const std::string& name) const {
  const TensorInfo& t = impl_->at(name);
  return ByteView{impl_->bytesOf(t), t.byteSize()};
}

// ---------------------------------------------------------------- a folder

namespace {

constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

// Why a folder without safetensors cannot be read, and what to do: pickle
// weights are refused, not parsed (unpickling runs arbitrary code).
[[noreturn]] void refuseFolder(const std::string& dir) {
  std::vector<std::string> pickles, others;
  if (DIR* d = ::opendir(dir.c_str())) {
    for (int seen = 0; dirent* e = ::readdir(d); ++seen) {
      if (seen > 100000) break;  // a bound on a hostile folder
      const std::string name = e->d_name;
      if (endsWith(name, ".bin") || endsWith(name, ".pt") || endsWith(name, ".pth")) {
        pickles.push_back(name);
      } else if (endsWith(name, ".safetensors")) {
        others.push_back(name);
      }
    }
    ::closedir(d);
  }
  std::sort(pickles.begin(), pickles.end());
  std::sort(others.begin(), others.end());
  auto some = [](std::vector<std::string> v) {
    if (v.size() > 4) {
      v.resize(4);
      v.push_back("...");
    }
    return common::join(v, ", ");
  };
  if (!pickles.empty() && others.empty()) {
    GEOPIPE_THROW(IoError, "model folder ", dir, " has PyTorch pickle weights (", some(pickles),
                  ") but no ", kSingleName, " or ", kIndexName,
                  ": geopipe reads only safetensors. Convert it once with transformers: "
                  "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, "
                  "safe_serialization=True)");
  }
  GEOPIPE_THROW(IoError, "model folder ", dir, " has no ", kSingleName, " and no ", kIndexName,
                others.empty() ? std::string() : " (it has " + some(others) + ")");
}

std::string readIndexFile(const std::string& path) {
  uint64_t size = 0;
  Fd f = openRegular(path, "index", &size);
  if (size > kMaxIndexBytes) {
    GEOPIPE_THROW(ProtocolError, path, ": the index is ", size, " bytes, over the limit of ",
                  kMaxIndexBytes);
  }
  std::string text(size, '\0');
  size_t got = 0;
  while (got < size) {
    const ssize_t r = ::read(f.fd, text.data() + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) GEOPIPE_THROW(IoError, "cannot read ", path, ": ", errnoText());
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  text.resize(got);
  return text;
}

}  // namespace

struct SafetensorsFolder::Impl {
  std::string dir;
  std::string index_path;  // empty for one model.safetensors
  std::vector<std::string> names;
  std::unordered_map<std::string, size_t> shard_of;  // tensor -> index in shards
  std::vector<std::string> shards;                   // full paths

  mutable std::mutex mu;
  mutable std::vector<std::unique_ptr<SafetensorsFile>> opened;  // by shard, null until opened
  mutable std::vector<size_t> open_order;

  // The shard holding `name`, opened on first use; IoError when the folder
  // has no such tensor.
  const SafetensorsFile& fileFor(const std::string& name) const {
    auto it = shard_of.find(name);
    if (it == shard_of.end()) {
      GEOPIPE_THROW(IoError, "model folder ", dir, ": ", missingTensor(name, names));
    }
    const size_t s = it->second;
    const SafetensorsFile* file = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!opened[s]) {
        opened[s] = std::make_unique<SafetensorsFile>(shards[s]);
        open_order.push_back(s);
      }
      file = opened[s].get();
    }
    if (!file->find(name)) {
      GEOPIPE_THROW(ProtocolError, index_path, ": \"weight_map\" maps ", jsonQuoted(name), " to ",
                    shards[s], ", which has no tensor ", jsonQuoted(name));
    }
    return *file;
  }
};

SafetensorsFolder::SafetensorsFolder(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.dir = dir;
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    GEOPIPE_THROW(IoError, "model folder ", dir, ": ", errnoText());
  }
  if (!S_ISDIR(st.st_mode)) GEOPIPE_THROW(IoError, "model folder ", dir, " is not a folder");
  const std::string single = dir + "/" + kSingleName;
  const std::string index = dir + "/" + kIndexName;
  if (isRegularFile(single)) {
    m.shards = {single};
    m.opened.resize(1);
    m.opened[0] = std::make_unique<SafetensorsFile>(single);
    m.open_order = {0};
    for (const TensorInfo& t : m.opened[0]->tensors()) {
      m.names.push_back(t.name);
      m.shard_of.emplace(t.name, 0);
    }
    return;
  }
  if (!isRegularFile(index)) refuseFolder(dir);
  m.index_path = index;
  const std::string text = readIndexFile(index);
  detail::ParsedIndex parsed = detail::parseIndex(text.data(), text.size(), index);
  std::unordered_map<std::string, size_t> shard_index;
  for (auto& [tensor, shard] : parsed.weight_map) {
    auto [it, fresh] = shard_index.emplace(shard, m.shards.size());
    if (fresh) {
      const std::string path = dir + "/" + shard;
      if (!isRegularFile(path)) {
        GEOPIPE_THROW(IoError, index, ": \"weight_map\" maps ", jsonQuoted(tensor), " to shard ",
                      jsonQuoted(shard), ", which is not a file in ", dir,
                      " (an incomplete download?)");
      }
      m.shards.push_back(path);
    }
    m.shard_of.emplace(tensor, it->second);
    m.names.push_back(std::move(tensor));
  }
  m.opened.resize(m.shards.size());
}

SafetensorsFolder::~SafetensorsFolder() = default;
SafetensorsFolder::SafetensorsFolder(SafetensorsFolder&&) noexcept = default;
SafetensorsFolder& SafetensorsFolder::operator=(SafetensorsFolder&&) noexcept = default;

const std::string& SafetensorsFolder::dir() const {
  return impl_->dir;
}
bool SafetensorsFolder::sharded() const {
  return !impl_->index_path.empty();
}
std::vector<std::string> SafetensorsFolder::files() const {
  return impl_->shards;
}
bool SafetensorsFolder::has(const std::string& name) const {
  return impl_->shard_of.count(name) > 0;
}
std::vector<std::string> SafetensorsFolder::names() const {
  return impl_->names;
}

TensorInfo SafetensorsFolder::info(const std::string& name) const {
  return *impl_->fileFor(name).find(name);
}

void SafetensorsFolder::readFloat(const std::string& name, float* out, int64_t count) const {
  impl_->fileFor(name).readFloat(name, out, count);
}

void SafetensorsFolder::readRaw(const std::string& name, void* out, uint64_t size) const {
  impl_->fileFor(name).readRaw(name, out, size);
}

ByteView SafetensorsFolder::rawView(const std::string& name) const {
  return impl_->fileFor(name).rawView(name);
}

uint64_t SafetensorsFolder::bytesRead() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  uint64_t total = 0;
  for (const auto& f : impl_->opened) {
    if (f) total += f->bytesRead();
  }
  return total;
}

std::vector<std::string> SafetensorsFolder::openedFiles() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<std::string> out;
  for (size_t s : impl_->open_order) out.push_back(impl_->shards[s]);
  return out;
}

// ---------------------------------------------------------------- writing

namespace {

// The temporary file of an atomic write: removed unless committed.
class TempFile {
 public:
  TempFile(const std::string& path, const std::string& target) : path_(path), target_(target) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) GEOPIPE_THROW(IoError, "cannot write ", target, ": ", path, ": ", errnoText());
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) GEOPIPE_THROW(IoError, "cannot write ", target_, ": ", errnoText());
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  // fsync, close, rename over the target, fsync the folder (so the rename
  // itself survives a crash).
  void commit() {
    if (::fsync(fd_) != 0) GEOPIPE_THROW(IoError, "cannot fsync ", path_, ": ", errnoText());
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) GEOPIPE_THROW(IoError, "cannot write ", target_, ": ", errnoText());
    if (::rename(path_.c_str(), target_.c_str()) != 0) {
      GEOPIPE_THROW(IoError, "cannot rename ", path_, " to ", target_, ": ", errnoText());
    }
    committed_ = true;
    const size_t slash = target_.rfind('/');
    const std::string folder = slash == std::string::npos ? "." : target_.substr(0, slash + 1);
    Fd d(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (d.fd >= 0) ::fsync(d.fd);  // best effort: some filesystems refuse
  }

 private:
  std::string path_;
  std::string target_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void writeSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      DType dtype, const std::map<std::string, std::string>& metadata) {
  using json = nlohmann::json;
  const uint32_t float_bits = dtype == DType::OTHER ? 0 : dtypeBits(toString(dtype));
  // The header is assembled as text (each string escaped by nlohmann) so that
  // its entries keep the given order at any tensor count.
  std::string text = "{";
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  try {
    if (!metadata.empty()) text += "\"__metadata__\":" + json(metadata).dump();
    for (const TensorToWrite& t : tensors) {
      auto fail = [&](const auto&... args) {
        GEOPIPE_THROW(IoError, "cannot write ", path, ": tensor ", jsonQuoted(t.name), ": ",
                      args...);
      };
      if (t.name == "__metadata__") fail("the name is reserved for the metadata");
      if (!names.insert(t.name).second) fail("the name is given twice");
      if (t.shape.size() > kMaxDims) fail("more than ", kMaxDims, " dimensions");
      uint64_t numel = 1;
      for (int64_t d : t.shape) {
        if (d < 0) fail("shape ", shapeString(t.shape), " has a negative dimension");
        if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
            numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          fail("shape ", shapeString(t.shape), " has more than 2^63 - 1 elements");
        }
      }
      const bool raw = t.raw || !t.raw_dtype.empty();
      if (raw && t.data) fail("give either data or raw bytes, not both");
      const std::string dtype_name = raw ? t.raw_dtype : toString(dtype);
      const uint32_t bits = raw ? dtypeBits(t.raw_dtype) : float_bits;
      if (bits == 0) {
        if (raw) fail("raw dtype ", jsonQuoted(t.raw_dtype), " is not a safetensors dtype");
        fail("float tensors are written as F32, F16 or BF16, not OTHER");
      }
      uint64_t total_bits = 0;
      if (__builtin_mul_overflow(numel, uint64_t{bits}, &total_bits) || total_bits % 8 != 0) {
        fail(numel, " elements of ", dtype_name, " do not fill a whole number of bytes");
      }
      const uint64_t bytes = total_bits / 8;
      if (raw && t.raw_size != bytes) {
        fail("shape ", shapeString(t.shape), " of ", dtype_name, " needs ", bytes, " bytes but ",
             t.raw_size, " raw bytes were given");
      }
      if (bytes > 0 && !(raw ? t.raw : t.data)) fail(raw ? "raw" : "data", " is null");
      text += text.size() > 1 ? "," : "";
      text += json(t.name).dump() + ":{\"dtype\":\"" + dtype_name +
              "\",\"shape\":" + json(t.shape).dump() + ",\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
      offset += bytes;
      sizes.push_back(bytes);
    }
  } catch (const json::exception& e) {
    GEOPIPE_THROW(IoError, "cannot write ", path,
                  ": a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
  }
  text += "}";
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes) {
    GEOPIPE_THROW(IoError, "cannot write ", path, ": the header would be ", text.size(),
                  " bytes, over the limit of ", kMaxHeaderBytes, " readers accept");
  }

  TempFile out(path + ".tmp", path);
  const uint64_t n = text.size();
  out.write(&n, 8);
  out.write(text.data(), text.size());
  std::vector<uint16_t> buf;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorToWrite& t = tensors[i];
    if (sizes[i] == 0) continue;
    if (t.raw) {
      out.write(t.raw, sizes[i]);
    } else if (dtype == DType::F32) {
      out.write(t.data, sizes[i]);
    } else {
      buf.resize(std::min<uint64_t>(sizes[i] / 2, 1 << 16));
      for (uint64_t j = 0; j < sizes[i] / 2; j += buf.size()) {
        const size_t m = std::min<uint64_t>(buf.size(), sizes[i] / 2 - j);
        if (dtype == DType::F16) {
          compression::floatToHalf(t.data + j, buf.data(), m);
        } else {
          compression::floatToBFloat16(t.data + j, buf.data(), m);
        }
        out.write(buf.data(), 2 * m);
      }
    }
  }
  out.commit();
}

}  // namespace geopipe::formats
