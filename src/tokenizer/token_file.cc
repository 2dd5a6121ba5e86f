// Corpus -> token file: documents from text and JSON-lines files, encoded,
// written little-endian under a temporary name, split at whole documents.
#include "src/tokenizer/token_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "geopipe/error.h"
#include "src/common/text.h"

namespace geopipe::tokenizer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr size_t kFlushBytes = 1 << 20;
// A text file (one document) is read and encoded kTextPartBytes at a time,
// never whole (issue 18: a 40 GB file ended in exit 70): each part ends at
// the tokenizer's last cut point (Tokenizer::cutPoint) in what was read.
// Text with none there (SentencePiece, which has none; GPT-2 text without a
// space between printable characters) is cut at its end anyway, on a UTF-8
// character boundary. A part is what the tokenizer holds in memory at once
// (GPT-2's BPE of a 1 MiB piece takes about 12 bytes per byte).
constexpr size_t kTextPartBytes = 1 << 20;

// A file written under `path + ".tmp-PID"` and renamed to `path` by
// commit(); removed if never committed (an error on the way), so a failed
// run leaves no half file behind.
class PendingFile {
 public:
  explicit PendingFile(std::string path)
      : path_(std::move(path)), tmp_(path_ + ".tmp-" + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      GEOPIPE_THROW(IoError, "cannot write '", common::printable(path_),
                    "': ", std::strerror(errno),
                    " (does its folder exist, and may it be written?)");
    }
  }
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;
  ~PendingFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const char* data, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, data, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) fail("write");
      data += w;
      n -= static_cast<size_t>(w);
    }
  }

  // Reads n bytes at `offset` of what was written.
  void readAt(char* buf, size_t n, int64_t offset) {
    while (n > 0) {
      const ssize_t r = ::pread(fd_, buf, n, offset);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) fail("read back");
      buf += r;
      n -= static_cast<size_t>(r);
      offset += r;
    }
  }

  void truncate(int64_t bytes) {
    if (::ftruncate(fd_, bytes) != 0) fail("truncate");
  }

  void commit() {
    if (::fsync(fd_) != 0) fail("sync");
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail("close");
    }
    fd_ = -1;
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("rename the temporary file to");
    committed_ = true;
  }

 private:
  [[noreturn]] void fail(const char* what) {
    GEOPIPE_THROW(IoError, "cannot ", what, " '", common::printable(path_), "' (temporary '",
                  common::printable(tmp_), "'): ", std::strerror(errno), " (is the disk full?)");
  }

  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Appends ids as little-endian integers of `width` bytes.
void appendIds(const std::vector<int32_t>& ids, size_t width, std::string& buf) {
  const size_t start = buf.size();
  buf.resize(start + ids.size() * width);
  char* p = buf.data() + start;
  for (const int32_t id : ids) {
    const auto v = static_cast<uint32_t>(id);
    for (size_t k = 0; k < width; ++k) *p++ = static_cast<char>((v >> (8 * k)) & 0xFF);
  }
}

bool isJsonLines(const std::string& path) {
  return fs::path(path).extension() == ".jsonl";
}

// Where a text (not empty) with no cut point is cut: before the start of
// the character its last bytes belong to (a UTF-8 lead byte or ASCII), or
// its end when none of its last three bytes starts one (invalid UTF-8).
size_t forcedCut(std::string_view text) {
  for (size_t k = text.size() - 1; k > 0 && k + 4 > text.size(); --k) {
    if ((static_cast<unsigned char>(text[k]) & 0xC0) != 0x80) return k;
  }
  return text.size();
}

// A file read a block at a time.
class BlockReader {
 public:
  explicit BlockReader(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail();
  }
  BlockReader(const BlockReader&) = delete;
  BlockReader& operator=(const BlockReader&) = delete;
  ~BlockReader() { ::close(fd_); }

  // Appends up to `n` bytes to `into`; 0 at the end of the file.
  size_t readInto(std::string& into, size_t n) {
    const size_t start = into.size();
    into.resize(start + n);
    ssize_t r;
    do {
      r = ::read(fd_, into.data() + start, n);
    } while (r < 0 && errno == EINTR);
    if (r < 0) fail();
    into.resize(start + static_cast<size_t>(r));
    return static_cast<size_t>(r);
  }

 private:
  [[noreturn]] void fail() {
    GEOPIPE_THROW(IoError, "cannot read input '", common::printable(path_),
                  "': ", std::strerror(errno));
  }

  std::string path_;
  int fd_ = -1;
};

}  // namespace

TokenizeResult tokenizeFiles(const Tokenizer& tok, const std::vector<std::string>& inputs,
                             const std::string& out, const TokenizeOptions& options,
                             const std::function<void(const TokenizeProgress&)>& progress) {
  const auto start = Clock::now();
  // Everything that can be checked before work is checked first.
  if (options.dtype != "uint16" && options.dtype != "uint32") {
    GEOPIPE_THROW(ConfigError, "--dtype '", options.dtype,
                  "' is not a token type: use uint16 "
                  "(vocabularies up to 65536 ids) or uint32");
  }
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0)) {
    GEOPIPE_THROW(ConfigError, "--val-fraction ", options.val_fraction,
                  " is outside [0, 1): give the share of documents to hold out, e.g. 0.01");
  }
  const size_t width = options.dtype == "uint16" ? 2 : 4;
  if (width == 2 && tok.vocabSize() > 65536) {
    GEOPIPE_THROW(ConfigError, "--dtype uint16 holds ids below 65536, but this ", tok.kind(),
                  " tokenizer has ", tok.vocabSize(),
                  " ids: use --dtype uint32 (and "
                  "data.token_dtype: uint32 in the job)");
  }
  if (inputs.empty()) GEOPIPE_THROW(ConfigError, "no input files to tokenize");
  if (out.empty()) GEOPIPE_THROW(ConfigError, "no output file (--out FILE)");
  TokenizeProgress p;
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (!fs::exists(in, ec)) {
      GEOPIPE_THROW(IoError, "input '", common::printable(in), "' does not exist: check the path");
    }
    if (!fs::is_regular_file(in, ec)) {
      GEOPIPE_THROW(IoError, "input '", common::printable(in),
                    "' is not a regular file: give text or .jsonl "
                    "files (a folder's files: DIR/*)");
    }
    p.input_bytes_total += static_cast<int64_t>(fs::file_size(in, ec));
  }
  const auto report = [&] {
    if (!progress) return;
    p.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    progress(p);
  };

  TokenizeResult result;
  PendingFile train(out);
  std::string buf;
  buf.reserve(kFlushBytes + (1 << 16));
  std::vector<int64_t> doc_ends;  // ids written after each document
  int64_t written = 0;
  auto emit = [&](const std::vector<int32_t>& ids) {
    appendIds(ids, width, buf);
    if (buf.size() >= kFlushBytes) {
      train.write(buf.data(), buf.size());
      buf.clear();
    }
    written += static_cast<int64_t>(ids.size());
    p.tokens = written;
  };
  auto endDocument = [&](int64_t text_bytes) {
    doc_ends.push_back(written);
    result.text_bytes += text_bytes;
    ++p.documents;
  };
  auto addDocument = [&](std::string_view text) {
    emit(tok.encodeDocument(text));
    endDocument(static_cast<int64_t>(text.size()));
  };
  // A text file: encodeDocument's ids (begin token, the text's, end token),
  // the text encoded a part at a time.
  const std::optional<int32_t> bos = tok.bosId(), eos = tok.eosId();
  auto addTextFile = [&](const std::string& in) {
    if (!eos) tok.encodeDocument("");  // throws: the tokenizer cannot end documents
    BlockReader reader(in);
    if (bos) emit({*bos});
    std::string text;  // read, not yet encoded
    int64_t text_bytes = 0;
    for (;;) {
      const size_t got = reader.readInto(text, kTextPartBytes);
      const bool end = got == 0;
      text_bytes += static_cast<int64_t>(got);
      p.input_bytes_done = std::min(p.input_bytes_total, p.input_bytes_done + int64_t(got));
      // A file under a part is encoded whole, in one call.
      if (!end && text.size() < kTextPartBytes) continue;
      size_t cut = text.size();
      if (!end) {
        cut = tok.cutPoint(text);
        if (cut == 0) cut = forcedCut(text);
      }
      if (cut > 0) {
        emit(tok.encode(std::string_view(text).substr(0, cut)));
        text.erase(0, cut);
      }
      if (end) break;
      report();
    }
    emit({*eos});
    endDocument(text_bytes);
    report();
  };

  for (const std::string& in : inputs) {
    if (!isJsonLines(in)) {
      addTextFile(in);
      continue;
    }
    std::ifstream lines(in, std::ios::binary);
    if (!lines)
      GEOPIPE_THROW(IoError, "cannot read input '", common::printable(in),
                    "': ", std::strerror(errno));
    std::string line;
    int64_t line_no = 0;
    while (std::getline(lines, line)) {
      ++line_no;
      p.input_bytes_done =
          std::min(p.input_bytes_total, p.input_bytes_done + static_cast<int64_t>(line.size()) + 1);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json doc;
      try {
        doc = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        GEOPIPE_THROW(IoError, in, ":", line_no, ": not JSON (", e.what(),
                      "); a .jsonl file holds one JSON object per line, e.g. "
                      "{\"text\": \"...\"}");
      }
      if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string()) {
        GEOPIPE_THROW(IoError, in, ":", line_no, ": ",
                      doc.is_object() ? (doc.contains("text") ? "field \"text\" is not a string"
                                                              : "no field \"text\"")
                                      : "not a JSON object",
                      "; each line must be an object with the document in \"text\", e.g. "
                      "{\"text\": \"...\"}");
      }
      addDocument(doc["text"].get_ref<const std::string&>());
      report();
    }
    if (lines.bad())
      GEOPIPE_THROW(IoError, "cannot read input '", common::printable(in), "': read error");
  }
  train.write(buf.data(), buf.size());
  buf.clear();

  const int64_t n = static_cast<int64_t>(doc_ends.size());
  if (n == 0) {
    GEOPIPE_THROW(ConfigError,
                  "no documents in the inputs (only blank .jsonl lines?): nothing "
                  "to tokenize");
  }
  result.documents = n;
  result.tokens = written;
  result.input_bytes = p.input_bytes_total;
  if (options.val_fraction > 0) {
    // As Hugging Face's train_test_split (nanoGPT's prepare.py): the held-out
    // count is rounded up, so any fraction > 0 holds out a document.
    const auto k = static_cast<int64_t>(std::ceil(options.val_fraction * n - 1e-9));
    if (k >= n) {
      GEOPIPE_THROW(ConfigError, "--val-fraction ", options.val_fraction, " holds out ", k, " of ",
                    n,
                    " document(s), leaving none to train on: give more documents "
                    "(a .jsonl line or a file each) or a smaller fraction");
    }
    const int64_t split = doc_ends[static_cast<size_t>(n - k - 1)];
    result.val_documents = k;
    result.val_tokens = written - split;
    result.val_path = out + ".val";
    PendingFile val(result.val_path);
    std::string chunk;
    for (int64_t off = split * static_cast<int64_t>(width),
                 end = written * static_cast<int64_t>(width);
         off < end;) {
      const auto len = static_cast<size_t>(std::min<int64_t>(kFlushBytes, end - off));
      chunk.resize(len);
      train.readAt(chunk.data(), len, off);
      val.write(chunk.data(), len);
      off += static_cast<int64_t>(len);
    }
    train.truncate(split * static_cast<int64_t>(width));
    val.commit();
    train.commit();
  } else {
    train.commit();
    // out and out.val always come from the same run: a .val of an earlier
    // run would silently pair with this file.
    std::error_code ec;
    fs::remove(out + ".val", ec);
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace geopipe::tokenizer
