// Fuzz target: the safetensors reader and writer (src/formats/). Input: a
// selector byte, then
//   0  a whole file, parsed in memory (SafetensorsFile::fromBytes)
//   1  a model.safetensors.index.json (the index parser alone)
//   2  a model folder: a length-prefixed index, then the bytes of its first
//      shard (the second shard an index may name is absent)
//   3  tensors for the writer (dtype, names, shapes, float bytes), written
//      and read back
//   4  a whole file through the mmap path (a memfd)
// Every tensor a parse accepts is read (as float where it can be, else as raw
// bytes). A parser may only return or throw a geopipe::Error, and what it
// accepts must hold the invariants the readers rely on (checked below).
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "compression/half.h"
#include "fuzz/fuzz_input.h"
#include "geopipe/error.h"
#include "src/formats/safetensors.h"
#include "src/formats/safetensors_header.h"

namespace geopipe::formats {
namespace {

namespace fs = std::filesystem;
using fuzz::FuzzInput;

void require(bool ok) {
  if (!ok) std::abort();  // the reader accepted what its callers cannot take
}

// A folder of this process's own for the folder and writer selectors,
// removed when the fuzzer exits. On tmpfs where there is one: the writer
// fsyncs every file, which on a disk makes the target ten times slower.
struct Scratch {
  fs::path dir;
  Scratch() {
    std::error_code ec;
    const fs::path base = fs::is_directory("/dev/shm", ec) ? "/dev/shm" : fs::temp_directory_path();
    std::string tmpl = (base / "geopipe-fuzz-safetensors-XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    if (!made) std::abort();
    dir = made;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

const fs::path& scratch() {
  static const Scratch s;
  return s.dir;
}

// Reads every tensor of an accepted source and checks its table.
template <typename Source>
void readAll(const Source& src, const std::vector<TensorInfo>& tensors, uint64_t data_size) {
  uint64_t last_end = 0;
  uint64_t copied = 0;
  for (const TensorInfo& t : tensors) {
    require(t.begin <= t.end && t.end <= data_size);
    require(t.shape.size() <= kMaxDims && t.numel() >= 0);
    if (t.begin != t.end) {
      require(t.begin >= last_end);  // sorted, no overlap
      last_end = t.end;
    }
    const uint32_t bits = dtypeBits(t.dtype_name);
    if (bits) require(static_cast<uint64_t>(t.numel()) * bits == 8 * t.byteSize());
    if (t.dtype != DType::OTHER) {
      std::vector<float> out(t.numel());
      src.readFloat(t.name, out.data(), t.numel());
      copied += t.byteSize();
    } else {
      float x;
      try {
        src.readFloat(t.name, &x, 1);
        std::abort();  // an OTHER dtype must never read as float
      } catch (const IoError&) {
      }
      std::vector<uint8_t> raw(t.byteSize());
      src.readRaw(t.name, raw.data(), raw.size());
      copied += raw.size();
    }
  }
  require(src.bytesRead() == copied);
}

void readFile(const SafetensorsFile& f) {
  readAll(f, f.tensors(), f.fileSize() - f.dataOffset());
}

void readFolder(FuzzInput& in) {
  const std::string index = in.part();
  const std::string shard = in.rest();
  const fs::path dir = scratch() / "folder";
  fs::create_directories(dir);
  std::ofstream(dir / "model.safetensors.index.json", std::ios::binary | std::ios::trunc) << index;
  std::ofstream(dir / "model-00001-of-00002.safetensors", std::ios::binary | std::ios::trunc)
      << shard;
  SafetensorsFolder folder(dir.string());
  require(folder.openedFiles().empty());
  std::vector<TensorInfo> found;
  for (const std::string& name : folder.names()) {
    require(folder.has(name));
    try {
      found.push_back(folder.info(name));
    } catch (const Error&) {  // a missing tensor, or a shard that is malformed
      continue;
    }
  }
  require(folder.openedFiles().size() <= 1);
  if (found.empty()) return;
  uint64_t copied = 0;
  for (const TensorInfo& t : found) {
    if (t.dtype == DType::OTHER) continue;
    std::vector<float> out(t.numel());
    folder.readFloat(t.name, out.data(), t.numel());
    copied += t.byteSize();
  }
  require(folder.bytesRead() == copied);
}

void writeAndReadBack(FuzzInput& in) {
  const DType dtype = static_cast<DType>(in.byte() % 3);
  std::vector<std::string> names(1 + in.byte() % 4);
  std::vector<std::vector<int64_t>> shapes(names.size());
  size_t total = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    names[i] = in.part();
    shapes[i].resize(in.byte() % 4);
    size_t numel = 1;
    for (auto& d : shapes[i]) numel *= (d = in.byte() % 8);
    total += numel;
  }
  std::vector<float> values(total);
  const std::string bytes = in.rest();
  for (size_t i = 0; i < values.size() && !bytes.empty(); ++i) {
    uint32_t u = 0;
    for (size_t k = 0; k < 4; ++k)
      u |= uint32_t(uint8_t(bytes[(4 * i + k) % bytes.size()])) << 8 * k;
    std::memcpy(&values[i], &u, 4);
  }
  std::vector<TensorToWrite> tensors;
  size_t at = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    tensors.emplace_back(names[i], shapes[i], values.data() + at);
    int64_t n = 1;
    for (int64_t d : shapes[i]) n *= d;
    at += n;
  }
  const std::string path = (scratch() / "written.safetensors").string();
  writeSafetensors(path, tensors, dtype, {{"format", "pt"}});  // may refuse names: an IoError
  SafetensorsFile f(path);
  require(f.tensors().size() == tensors.size() && f.dataOffset() % 8 == 0);
  at = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = f.tensors()[i];
    require(t.name == names[i] && t.shape == shapes[i] && t.dtype == dtype);
    std::vector<float> back(t.numel());
    f.readFloat(t.name, back.data(), t.numel());
    for (size_t k = 0; k < back.size(); ++k) {
      const float x = values[at + k];
      float want = x;
      if (dtype == DType::F16) want = compression::halfToFloat(compression::floatToHalf(x));
      if (dtype == DType::BF16) {
        want = compression::bfloat16ToFloat(compression::floatToBFloat16(x));
      }
      if (std::isnan(x)) {
        require(std::isnan(back[k]));
      } else {
        require(std::memcmp(&back[k], &want, 4) == 0);
      }
    }
    at += back.size();
  }
}

// The mmap path, through a memfd so nothing touches the disk.
void readMapped(FuzzInput& in) {
  const std::string bytes = in.rest();
  const int fd = memfd_create("geopipe-fuzz-safetensors", 0);
  if (fd < 0) return;
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  if (write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) return;
  SafetensorsFile f("/proc/self/fd/" + std::to_string(fd));
  readFile(f);
}

void run(FuzzInput& in) {
  switch (in.byte() % 5) {
    case 0:
      readFile(SafetensorsFile::fromBytes(in.rest(), "fuzz input"));
      break;
    case 1: {
      const std::string text = in.rest();
      const detail::ParsedIndex index = detail::parseIndex(text.data(), text.size(), "fuzz index");
      for (const auto& [tensor, shard] : index.weight_map) {
        require(!shard.empty() && shard.find('/') == std::string::npos && shard != "..");
      }
      break;
    }
    case 2:
      readFolder(in);
      break;
    case 3:
      writeAndReadBack(in);
      break;
    case 4:
      readMapped(in);
      break;
  }
}

}  // namespace
}  // namespace geopipe::formats

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return geopipe::fuzz::runRefusingErrors(data, size, geopipe::formats::run);
}
