// Per-sample byte store for AC-SGD's activation buffers m(xi), keyed by sample
// id: in memory, or in a memory-mapped file for datasets larger than RAM,
// within a byte budget; save/load so a resumed job keeps its AC-SGD state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace geopipe::compression {

enum class StoreKind : uint8_t {
  MEMORY = 0,  // heap, one allocation per sample
  MMAP = 1,    // one sparse file mapped MAP_SHARED; the kernel pages it to disk
};

struct BufferStoreOptions {
  StoreKind kind = StoreKind::MEMORY;      // where buffers live
  std::string path;                        // MMAP: backing file (created, truncated)
  uint64_t budget_bytes = uint64_t{4} << 30;  // most bytes of entries (MMAP: file size)
};

// Holds one opaque byte entry per sample id. Not thread-safe: one pipeline
// boundary's sender (or receiver) owns it and calls it from its own thread.
// Pointers returned by find()/allocate() stay valid until the next
// allocate(), clear() or load().
class ActivationBufferStore {
 public:
  explicit ActivationBufferStore(uint64_t budget_bytes) : budget_(budget_bytes) {}
  virtual ~ActivationBufferStore() = default;
  ActivationBufferStore(const ActivationBufferStore&) = delete;
  ActivationBufferStore& operator=(const ActivationBufferStore&) = delete;

  struct Entry {
    uint8_t* data = nullptr;  // nullptr when absent
    size_t size = 0;
  };
  // The entry of sample `id`, or {nullptr, 0}.
  virtual Entry find(int64_t id) = 0;
  // Creates or resizes the entry of `id` to `bytes` bytes and returns it. The
  // old content is kept when the size is unchanged, unspecified otherwise.
  // Throws InfeasibleError when the budget would be exceeded.
  virtual uint8_t* allocate(int64_t id, size_t bytes) = 0;
  virtual void clear() = 0;
  virtual size_t entryCount() const = 0;
  // Bytes charged against the budget (MMAP: the file's high-water mark).
  virtual uint64_t bytesUsed() const = 0;
  virtual std::vector<int64_t> ids() const = 0;  // ascending
  uint64_t budgetBytes() const { return budget_; }

  // Writes every entry to `path` (via path + ".tmp" and rename, so a crash
  // never leaves a half-written file). Format: "GPAB", u32 version, u64 count,
  // count x {i64 id, u64 size, bytes}, u32 CRC-32C of everything before.
  // Throws IoError.
  void save(const std::string& path) const;
  // Replaces the contents with the file's; IoError if it is missing,
  // truncated, corrupt or of another version (the store is then empty);
  // InfeasibleError if it does not fit the budget.
  void load(const std::string& path);

  // Reading a saved store without holding all of it (merging the stores of
  // several replicas into one, runtime/reshard.h). savedIds: the ids in the
  // file, ascending (header and ids only: no checksum; IoError if it is not
  // a store or is cut short). readSaved: every entry in file order;
  // `sink(id, size)` returns where its bytes go, or nullptr to skip them.
  // The checksum is checked at the end: IoError names the file if it is
  // corrupt, truncated or has an entry over max_entry_bytes (then what the
  // sink received is not to be used).
  using EntrySink = std::function<uint8_t*(int64_t id, uint64_t size)>;
  static std::vector<int64_t> savedIds(const std::string& path);
  static void readSaved(const std::string& path, uint64_t max_entry_bytes, const EntrySink& sink);

 protected:
  [[noreturn]] void throwBudget(size_t need) const;
  uint64_t budget_;
};

std::unique_ptr<ActivationBufferStore> makeBufferStore(const BufferStoreOptions& opt);

// Bytes a store of `kind` charges against its budget (its bytesUsed()) once
// it holds `entries` entries of `entry_bytes` each: MEMORY the sum of the
// entries; MMAP the end of its last slot (slots start 64-byte aligned, so
// every entry but the last is padded to a multiple of 64). Checks made
// before a run use this, so they and the store agree by construction.
uint64_t storeChargedBytes(StoreKind kind, uint64_t entry_bytes, uint64_t entries);

}  // namespace geopipe::compression
