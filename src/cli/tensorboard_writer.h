// TensorBoard event files: the scalars of each step as a TFRecord stream of
// Event messages (proto/tensorboard_event.proto) that TensorBoard reads.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace geopipe::cli {

// Writes `events.out.tfevents.<unix seconds>.<hostname>` in a directory
// (created if missing). Each record is TFRecord framing: uint64 length,
// masked CRC-32C of the length, the serialized Event, masked CRC-32C of it
// (little-endian). The first record is the file_version event. Not
// thread-safe; every record is flushed, so a crash loses at most the record
// being written. IoError naming logging.tensorboard_dir when the directory
// or file cannot be written.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& dir);
  // One Event at `step` holding a simple_value per (tag, value).
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  const std::string& path() const { return path_; }

 private:
  void writeRecord(const std::string& data);
  std::string path_;
  std::ofstream out_;
};

// CRC-32C of `data` masked as TFRecord stores it:
// ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t maskedCrc32c(const uint8_t* data, size_t n);

}  // namespace geopipe::cli
