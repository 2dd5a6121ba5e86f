// Hugging Face safetensors files (https://github.com/huggingface/safetensors):
// a memory-mapped reader for one file or a model folder of shards, and an
// atomic writer. Torch-free; used by the model importer and `geopipe export`.
//
// File layout: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON (the
// header, possibly padded with trailing spaces), then the data section: the
// raw little-endian bytes of every tensor. The header maps each tensor name to
// {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, offsets
// relative to the first byte of the data section, plus an optional
// "__metadata__" object of string -> string.
//
// Errors: every failure is a geopipe::Error whose message names the file and,
// where one applies, the tensor. ProtocolError: the bytes of a file break the
// format (bad header, offsets, sizes, a truncated file, a malformed index).
// IoError: a file cannot be opened, read or written, a tensor or shard is
// missing, a dtype cannot be read as float32, or a caller's buffer does not
// fit. The header is untrusted: parsing it is bounded in time and memory
// (kMaxHeaderBytes, kMaxDims) and fuzzed (fuzz/safetensors_fuzzer.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace geopipe::formats {

// Largest header accepted, in bytes: the reference implementation's limit.
// A bigger N means a corrupt file or not a safetensors file at all.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Largest model.safetensors.index.json accepted, in bytes.
constexpr uint64_t kMaxIndexBytes = 100'000'000;
// Most dimensions a tensor's shape may have.
constexpr size_t kMaxDims = 64;

// The element types this library converts to and from float32. Every other
// safetensors dtype (F64, I64, U8, BOOL, F8_E4M3, ...) is OTHER: listed with
// its name, readable as raw bytes, refused by readFloat.
enum class DType { F32, F16, BF16, OTHER };

// "F32", "F16", "BF16" (the names in a header); "OTHER".
const char* toString(DType d);

// Size in bits of one element of the safetensors dtype `name` ("F32" -> 32,
// "F4" -> 4), or 0 for a name this library does not know.
uint32_t dtypeBits(const std::string& name);

// One tensor of a file's header, validated: its bytes lie inside the file,
// their count is numel x the element size (when the dtype is known), and no
// two tensors share a byte.
struct TensorInfo {
  std::string name;
  DType dtype = DType::OTHER;
  std::string dtype_name;      // as in the header: "BF16", "I64", ...
  std::vector<int64_t> shape;  // {} for a scalar
  uint64_t begin = 0;          // byte offsets in the data section
  uint64_t end = 0;

  // Product of the shape (1 for a scalar, 0 when a dimension is 0). The
  // reader's tables never overflow it (checked when parsed).
  int64_t numel() const;
  // end - begin.
  uint64_t byteSize() const { return end - begin; }
};

// A read-only view of bytes owned by the object that returned it.
struct ByteView {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

// One safetensors file, memory-mapped read-only. The constructor maps the
// file and parses and validates the whole header; tensor data is touched only
// when a tensor is read, and then only that tensor's pages. Movable, not
// copyable; a moved-from object may only be destroyed or assigned to. All
// const methods may be called from several threads at once.
//
// The mapping assumes the file does not shrink while it is open (as every
// mmap reader does: reading a page cut off by another process's truncation
// raises SIGBUS). Files written by writeSafetensors are replaced by rename,
// never truncated in place, so an open reader keeps the old contents.
class SafetensorsFile {
 public:
  // Opens and maps `path`. Throws IoError when it cannot be opened or is not
  // a regular file, ProtocolError when its header is malformed.
  explicit SafetensorsFile(const std::string& path);

  // The same parser and reader over bytes held in memory (copied in);
  // `origin` names them in messages. For the fuzzer and for tests.
  static SafetensorsFile fromBytes(std::string bytes, const std::string& origin);

  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The path given to the constructor (the origin for fromBytes).
  const std::string& path() const;
  // Size of the whole file in bytes.
  uint64_t fileSize() const;
  // File offset of the data section: 8 + the header length N.
  uint64_t dataOffset() const;

  // Every tensor, in file order (ascending data offset; the header's order
  // among tensors that start at the same byte).
  const std::vector<TensorInfo>& tensors() const;
  // The tensor called `name`, or nullptr when the file has none.
  const TensorInfo* find(const std::string& name) const;
  // The tensor called `name`; IoError naming the file and the tensor (and
  // the closest name, when one is close) when the file has none.
  const TensorInfo& at(const std::string& name) const;
  // The header's "__metadata__" (empty when absent).
  const std::map<std::string, std::string>& metadata() const;

  // Copies tensor `name` into out[0..count) as float32: F32 as stored, F16
  // and BF16 widened exactly. `count` must equal the tensor's numel. IoError
  // naming the file, the tensor and the dtype for any other dtype.
  void readFloat(const std::string& name, float* out, int64_t count) const;
  // Copies the tensor's bytes as stored (any dtype) into out[0..size);
  // `size` must equal its byteSize(). For bit-exact copies.
  void readRaw(const std::string& name, void* out, uint64_t size) const;
  // The tensor's bytes as stored, inside the mapping: valid while this
  // object lives, not aligned to anything, not counted by bytesRead() (they
  // are only read when the caller reads them). Can be passed straight to
  // writeSafetensors as TensorToWrite::raw.
  ByteView rawView(const std::string& name) const;

  // Bytes of tensor data copied out by readFloat and readRaw so far.
  uint64_t bytesRead() const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A Hugging Face model folder: either model.safetensors, or
// model.safetensors.index.json ({"weight_map": {tensor: shard file}}) and the
// shard files it names (when both exist, model.safetensors wins, as in
// transformers). A folder with only PyTorch pickle weights
// (pytorch_model.bin, *.bin shards) is refused with how to convert it.
//
// The constructor reads the index and checks that every shard it names
// exists, but opens a shard only when one of its tensors is looked up or read
// (info, readFloat, readRaw, rawView); has() and names() never open one. An
// unsharded folder's one file is opened by the constructor (its header is the
// list of names); its tensor data is still only touched when read.
// Movable, not copyable; const methods may be called from several threads.
class SafetensorsFolder {
 public:
  explicit SafetensorsFolder(const std::string& dir);
  ~SafetensorsFolder();
  SafetensorsFolder(SafetensorsFolder&&) noexcept;
  SafetensorsFolder& operator=(SafetensorsFolder&&) noexcept;
  SafetensorsFolder(const SafetensorsFolder&) = delete;
  SafetensorsFolder& operator=(const SafetensorsFolder&) = delete;

  const std::string& dir() const;
  // True when the folder has an index and shards.
  bool sharded() const;
  // Every shard file (one path for an unsharded folder), in index order.
  std::vector<std::string> files() const;

  // Whether the folder has tensor `name` (by the index, for a sharded one).
  bool has(const std::string& name) const;
  // Every tensor name: the index's order, or file order for one file.
  std::vector<std::string> names() const;
  // The tensor's header entry (opens its shard); IoError naming the folder
  // and the tensor when there is none, ProtocolError when the index names a
  // shard that lacks it.
  TensorInfo info(const std::string& name) const;

  // As SafetensorsFile::readFloat / readRaw / rawView, on the tensor's shard.
  void readFloat(const std::string& name, float* out, int64_t count) const;
  void readRaw(const std::string& name, void* out, uint64_t size) const;
  ByteView rawView(const std::string& name) const;

  // Sum of bytesRead() over the opened shards.
  uint64_t bytesRead() const;
  // Paths of the shard files opened so far, in the order they were opened.
  std::vector<std::string> openedFiles() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One tensor for writeSafetensors: either float32 `data` (stored in the
// file's dtype), or `raw` bytes stored as they are with dtype `raw_dtype`
// (a bit-exact copy of a tensor read with readRaw or rawView).
struct TensorToWrite {
  TensorToWrite() = default;
  // A float tensor: numel(shape) floats at `data` (nullptr when numel is 0).
  TensorToWrite(std::string name, std::vector<int64_t> shape, const float* data)
      : name(std::move(name)), shape(std::move(shape)), data(data) {}
  // Bytes stored as they are, `dtype` being any dtype dtypeBits() knows:
  // e.g. rawBytes(t.name, t.shape, t.dtype_name, file.rawView(t.name)).
  static TensorToWrite rawBytes(std::string name, std::vector<int64_t> shape, std::string dtype,
                                ByteView bytes) {
    TensorToWrite t(std::move(name), std::move(shape), nullptr);
    t.raw = bytes.data;
    t.raw_size = bytes.size;
    t.raw_dtype = std::move(dtype);
    return t;
  }

  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // numel floats; nullptr when raw is used
  const void* raw = nullptr;    // raw_size bytes, instead of data
  uint64_t raw_size = 0;        // numel x dtypeBits(raw_dtype) / 8
  std::string raw_dtype;        // any dtype dtypeBits() knows
};

// Writes `tensors` to `path` as a safetensors file: float tensors as `dtype`
// (F32 as is, F16/BF16 rounded to nearest even, overflow to +-inf, NaN kept
// NaN), raw tensors as given; data sections in the given order, no gaps
// (put wider dtypes first to keep every tensor aligned to its element size,
// as Hugging Face's writer does by sorting); the header padded with spaces to
// a multiple of 8 bytes; `metadata` as "__metadata__" (Hugging Face writes
// {"format": "pt"}), omitted when empty. Atomic: writes path + ".tmp",
// fsyncs it, renames it over `path` and fsyncs the folder; on failure the
// temporary is removed and `path` is untouched. IoError naming the file (and
// the tensor) on a bad argument or a failed write.
void writeSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      DType dtype, const std::map<std::string, std::string>& metadata = {});

}  // namespace geopipe::formats
