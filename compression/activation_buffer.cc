// Memory and mmap implementations of ActivationBufferStore, and its file format.
#include "compression/activation_buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <unordered_map>

#include "compression/wire_format.h"
#include "geopipe/error.h"

namespace geopipe::compression {

namespace {

constexpr char kStoreMagic[4] = {'G', 'P', 'A', 'B'};
constexpr uint32_t kStoreVersion = 1;
constexpr uint64_t kMmapSlotAlign = 64;  // start of every mmap slot (a cache line)

uint64_t alignSlot(uint64_t offset) {
  return (offset + kMmapSlotAlign - 1) & ~(kMmapSlotAlign - 1);
}

class MemoryStore final : public ActivationBufferStore {
 public:
  explicit MemoryStore(uint64_t budget) : ActivationBufferStore(budget) {}
  Entry find(int64_t id) override {
    auto it = map_.find(id);
    if (it == map_.end()) return {};
    return {it->second.data(), it->second.size()};
  }
  uint8_t* allocate(int64_t id, size_t bytes) override {
    auto it = map_.find(id);
    const size_t old = it == map_.end() ? 0 : it->second.size();
    if (used_ - old + bytes > budget_) throwBudget(bytes);
    auto& v = map_[id];
    v.resize(bytes);
    used_ = used_ - old + bytes;
    return v.data();
  }
  void clear() override {
    map_.clear();
    used_ = 0;
  }
  size_t entryCount() const override { return map_.size(); }
  uint64_t bytesUsed() const override { return used_; }
  std::vector<int64_t> ids() const override {
    std::vector<int64_t> out;
    for (const auto& kv : map_) out.push_back(kv.first);
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::unordered_map<int64_t, std::vector<uint8_t>> map_;
  uint64_t used_ = 0;
};

// One sparse file of budget bytes mapped once; entries are bump-allocated at
// 64-byte alignment. An entry that grows moves to the end (its old space is
// reclaimed only by clear() or load()); same-size updates, the AC-SGD steady
// state, reuse their slot.
class MmapStore final : public ActivationBufferStore {
 public:
  MmapStore(const std::string& path, uint64_t budget) : ActivationBufferStore(budget), path_(path) {
    GEOPIPE_CHECK(!path.empty(), ConfigError,
                  "mmap activation buffer store needs a path (compression.activations.buffer_dir)");
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) GEOPIPE_THROW(IoError, "cannot create buffer file ", path, ": ", std::strerror(errno));
    if (budget_ > 0) {
      if (::ftruncate(fd_, static_cast<off_t>(budget_)) != 0) {
        const int e = errno;
        ::close(fd_);
        GEOPIPE_THROW(IoError, "cannot size buffer file ", path, " to ", budget_, " bytes: ",
                      std::strerror(e));
      }
      void* p = ::mmap(nullptr, budget_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd_);
        GEOPIPE_THROW(IoError, "cannot mmap buffer file ", path, ": ", std::strerror(e));
      }
      base_ = static_cast<uint8_t*>(p);
    }
  }
  ~MmapStore() override {
    if (base_) ::munmap(base_, budget_);
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());  // scratch space; persistent state goes through save()
  }
  Entry find(int64_t id) override {
    auto it = index_.find(id);
    if (it == index_.end()) return {};
    return {base_ + it->second.offset, it->second.size};
  }
  uint8_t* allocate(int64_t id, size_t bytes) override {
    auto it = index_.find(id);
    if (it != index_.end() && bytes <= it->second.capacity) {
      it->second.size = bytes;
      return base_ + it->second.offset;
    }
    const uint64_t offset = alignSlot(end_);
    if (offset + bytes > budget_) throwBudget(bytes);
    index_[id] = Slot{offset, bytes, bytes};
    end_ = offset + bytes;
    return base_ + offset;
  }
  void clear() override {
    index_.clear();
    end_ = 0;
    if (base_) ::madvise(base_, budget_, MADV_DONTNEED);  // drop pages; file stays sparse
  }
  size_t entryCount() const override { return index_.size(); }
  uint64_t bytesUsed() const override { return end_; }
  std::vector<int64_t> ids() const override {
    std::vector<int64_t> out;
    for (const auto& kv : index_) out.push_back(kv.first);
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  struct Slot {
    uint64_t offset, size, capacity;
  };
  std::string path_;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  uint64_t end_ = 0;
  std::unordered_map<int64_t, Slot> index_;
};

}  // namespace

void ActivationBufferStore::throwBudget(size_t need) const {
  GEOPIPE_THROW(InfeasibleError, "activation buffer store budget exceeded: entry of ", need,
                " bytes does not fit (", bytesUsed(), " of ", budget_, " bytes used by ",
                entryCount(), " samples); raise compression.activations.buffer_budget_gb, ",
                "store buffers quantised, or use buffer_store: mmap on a larger disk");
}

void ActivationBufferStore::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) GEOPIPE_THROW(IoError, "cannot write buffer store ", tmp, ": ", std::strerror(errno));
  uint32_t crc = 0;
  bool ok = true;
  auto write = [&](const void* p, size_t n) {
    crc = crc32c(static_cast<const uint8_t*>(p), n, crc);
    ok = ok && std::fwrite(p, 1, n, f) == n;
  };
  auto* self = const_cast<ActivationBufferStore*>(this);  // find() is non-const for the mmap pointer
  const auto all = ids();
  const uint64_t count = all.size();
  write(kStoreMagic, 4);
  write(&kStoreVersion, 4);
  write(&count, 8);
  for (int64_t id : all) {
    const Entry e = self->find(id);
    const uint64_t size = e.size;
    write(&id, 8);
    write(&size, 8);
    write(e.data, e.size);
  }
  ok = ok && std::fwrite(&crc, 1, 4, f) == 4;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    GEOPIPE_THROW(IoError, "failed writing buffer store ", path, " (disk full?)");
  }
}

namespace {

// Reads a saved store entry by entry (format: see save()). `sink(id, size)`
// returns where an entry's bytes go, or nullptr to pass over them. With
// `verify`, every byte is read and the CRC-32C and the end of the file are
// checked; without, skipped bytes are seeked over and nothing is checked
// beyond the framing (a scan of the ids).
void scanStore(const std::string& path, uint64_t max_entry_bytes,
               const ActivationBufferStore::EntrySink& sink, bool verify) {
  std::ifstream in(path, std::ios::binary);
  if (!in) GEOPIPE_THROW(IoError, "cannot open buffer store ", path);
  uint32_t crc = 0;
  auto read = [&](void* p, size_t n, const char* what) {
    in.read(static_cast<char*>(p), static_cast<std::streamsize>(n));
    if (static_cast<size_t>(in.gcount()) != n) {
      GEOPIPE_THROW(IoError, "buffer store ", path, " truncated while reading ", what);
    }
    if (verify) crc = crc32c(static_cast<const uint8_t*>(p), n, crc);
  };
  char magic[4];
  uint32_t version = 0;
  uint64_t count = 0;
  read(magic, 4, "magic");
  if (std::memcmp(magic, kStoreMagic, 4) != 0) {
    GEOPIPE_THROW(IoError, path, " is not a geopipe activation buffer store (bad magic)");
  }
  read(&version, 4, "version");
  if (version != kStoreVersion) {
    GEOPIPE_THROW(IoError, "buffer store ", path, " has version ", version, "; this build reads ",
                  kStoreVersion);
  }
  read(&count, 8, "entry count");
  std::vector<uint8_t> skipped;  // bytes of entries the sink does not keep (verify only)
  for (uint64_t k = 0; k < count; ++k) {
    int64_t id = 0;
    uint64_t size = 0;
    read(&id, 8, "entry id");
    read(&size, 8, "entry size");
    if (size > max_entry_bytes) {
      GEOPIPE_THROW(IoError, "buffer store ", path, " corrupt or over budget: entry ", k,
                    " claims ", size, " bytes (budget ", max_entry_bytes, ")");
    }
    uint8_t* dst = sink(id, size);
    if (!dst && !verify) {
      in.seekg(static_cast<std::streamoff>(size), std::ios::cur);
      continue;
    }
    if (!dst) {
      skipped.resize(static_cast<size_t>(size));
      dst = skipped.data();
    }
    read(dst, static_cast<size_t>(size), "entry bytes");
  }
  if (!verify) return;
  uint32_t want = 0;
  in.read(reinterpret_cast<char*>(&want), 4);
  if (in.gcount() != 4) {
    GEOPIPE_THROW(IoError, "buffer store ", path, " truncated while reading the checksum");
  }
  if (want != crc) GEOPIPE_THROW(IoError, "buffer store ", path, " corrupt (CRC-32C mismatch)");
  if (in.peek() != std::char_traits<char>::eof()) {
    GEOPIPE_THROW(IoError, "buffer store ", path, " has trailing bytes after the checksum");
  }
}

}  // namespace

void ActivationBufferStore::readSaved(const std::string& path, uint64_t max_entry_bytes,
                                      const EntrySink& sink) {
  scanStore(path, max_entry_bytes, sink, /*verify=*/true);
}

std::vector<int64_t> ActivationBufferStore::savedIds(const std::string& path) {
  std::vector<int64_t> ids;
  scanStore(path, uint64_t{1} << 40, [&](int64_t id, uint64_t) -> uint8_t* {
    ids.push_back(id);
    return nullptr;
  }, /*verify=*/false);
  std::sort(ids.begin(), ids.end());
  return ids;
}

void ActivationBufferStore::load(const std::string& path) {
  clear();
  try {
    readSaved(path, budget_, [&](int64_t id, uint64_t size) {
      if (find(id).data != nullptr) {
        GEOPIPE_THROW(IoError, "buffer store ", path, " corrupt: sample id ", id,
                      " appears twice");
      }
      return allocate(id, static_cast<size_t>(size));
    });
  } catch (...) {
    clear();
    throw;
  }
}

uint64_t storeChargedBytes(StoreKind kind, uint64_t entry_bytes, uint64_t entries) {
  if (entries == 0) return 0;
  if (kind == StoreKind::MEMORY) return entry_bytes * entries;
  return alignSlot(entry_bytes) * (entries - 1) + entry_bytes;
}

std::unique_ptr<ActivationBufferStore> makeBufferStore(const BufferStoreOptions& opt) {
  if (opt.kind == StoreKind::MMAP) return std::make_unique<MmapStore>(opt.path, opt.budget_bytes);
  return std::make_unique<MemoryStore>(opt.budget_bytes);
}

}  // namespace geopipe::compression
