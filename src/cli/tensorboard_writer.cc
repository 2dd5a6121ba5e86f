// TensorBoard event files written without TensorFlow: TFRecord framing
// around protobuf Events.
#include "src/cli/tensorboard_writer.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "compression/wire_format.h"
#include "geopipe/error.h"
#include "proto/tensorboard_event.pb.h"
#include "src/common/text.h"

namespace geopipe::cli {
namespace fs = std::filesystem;

namespace {

double unixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void putLittleEndian(uint8_t* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

uint32_t maskedCrc32c(const uint8_t* data, size_t n) {
  const uint32_t crc = compression::crc32c(data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    GEOPIPE_THROW(IoError, "cannot create '", common::printable(dir),
                  "' (logging.tensorboard_dir): ", ec.message(),
                  "; name a directory this user can write");
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "localhost");
  const double now = unixSeconds();
  path_ = (fs::path(dir) / ("events.out.tfevents." + std::to_string(int64_t(now)) + "." + host))
              .string();
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) {
    GEOPIPE_THROW(IoError, "cannot write '", common::printable(path_),
                  "' (logging.tensorboard_dir)");
  }
  tensorboard::Event version;
  version.set_wall_time(now);
  version.set_file_version("brain.Event:2");
  writeRecord(version.SerializeAsString());
}

void TensorBoardWriter::scalars(int64_t step,
                                const std::vector<std::pair<std::string, double>>& values) {
  tensorboard::Event e;
  e.set_wall_time(unixSeconds());
  e.set_step(step);
  for (const auto& [tag, value] : values) {
    tensorboard::SummaryValue* v = e.mutable_summary()->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  writeRecord(e.SerializeAsString());
}

void TensorBoardWriter::writeRecord(const std::string& data) {
  uint8_t header[12];
  putLittleEndian(header, data.size(), 8);
  putLittleEndian(header + 8, maskedCrc32c(header, 8), 4);
  uint8_t footer[4];
  putLittleEndian(footer, maskedCrc32c(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
                  4);
  out_.write(reinterpret_cast<const char*>(header), sizeof(header));
  out_.write(data.data(), static_cast<std::streamsize>(data.size()));
  out_.write(reinterpret_cast<const char*>(footer), sizeof(footer));
  out_.flush();
  if (!out_)
    GEOPIPE_THROW(IoError, "cannot write '", common::printable(path_),
                  "' (logging.tensorboard_dir)");
}

}  // namespace geopipe::cli
