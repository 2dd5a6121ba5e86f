// Token datasets: text, token files, fortunes, synthetic.
#include "src/data/dataset.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <sstream>

#include "geopipe/error.h"
#include "src/common/hash.h"
#include "src/common/text.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::data {
namespace {

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    GEOPIPE_THROW(IoError, "cannot read data file '", common::printable(path),
                  "': ", std::strerror(errno),
                  " (data.path in the job; relative paths start at the job file's directory)");
  }
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Text data mapped as one id per byte: never read into memory. An empty
// file is a ConfigError (nothing to train on), an unreadable one an IoError
// naming data.path.
TokenFile mapText(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    GEOPIPE_THROW(IoError, "cannot read data file '", common::printable(path),
                  "': ", std::strerror(errno),
                  " (data.path in the job; relative paths start at the job file's directory)");
  }
  if (S_ISREG(st.st_mode) && st.st_size == 0) {
    GEOPIPE_THROW(ConfigError, "data file '", common::printable(path), "' is empty");
  }
  return TokenFile(path, "uint8");
}

// Samples synthetic data makes when data.num_samples is 0.
constexpr int64_t kSyntheticSamples = 4096;
// Synthetic ids are held in memory (4 bytes each): at most 2^30 (4 GiB).
constexpr int64_t kMaxSyntheticTokens = int64_t{1} << 30;

// The ids synthetic data makes, samples x seq_len + 1, checked for overflow
// and against kMaxSyntheticTokens: no data.num_samples may end in an
// overflow ("holds 1 tokens") or bad_alloc.
int64_t syntheticTokenCount(const DataSpec& data, const ModelSpec& model) {
  const int64_t samples = data.num_samples > 0 ? data.num_samples : kSyntheticSamples;
  int64_t tokens = 0;
  if (__builtin_mul_overflow(samples, int64_t{model.seq_len}, &tokens) ||
      tokens >= kMaxSyntheticTokens) {
    GEOPIPE_THROW(ConfigError, "synthetic data is generated in memory, at most 2^30 ids (4 GiB), ",
                  "but ", samples, " samples", data.num_samples > 0 ? "" : " (the default)",
                  " x model.seq_len ", model.seq_len, " is more: set data.num_samples to at most ",
                  (kMaxSyntheticTokens - 1) / std::max(1, model.seq_len),
                  ", or train on a token file (kind: tokens) for more data");
  }
  return tokens + 1;
}

// TokenDataset's cut: sample i is tokens [i*t, i*t + t + 1).
int64_t samplesIn(int64_t tokens, int seq_len) {
  return tokens < int64_t{seq_len} + 1 ? 0 : (tokens - 1) / seq_len;
}

// loadJobData's hold-out: the last max(1, floor(f x n)) samples.
int64_t afterHoldOut(const DataSpec& data, int64_t n) {
  if (!data.val_path.empty() || data.val_fraction <= 0) return n;
  const int64_t held = std::max<int64_t>(1, static_cast<int64_t>(data.val_fraction * n));
  return held >= n ? 0 : n - held;
}
}  // namespace

TokenStream::TokenStream(TokenFile file) : file_(std::move(file)) {}

TokenStream::TokenStream(std::vector<int32_t> ids) : ids_(std::move(ids)) {}

void TokenStream::copy(int64_t first, int64_t n, int32_t* out) const {
  if (!file_) {
    std::memcpy(out, ids_.data() + first, sizeof(int32_t) * static_cast<size_t>(n));
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(file_->at(first + i));
}

int64_t TokenStream::firstAtOrAbove(int64_t vocab) const {
  if (file_) return file_->firstAtOrAbove(vocab);
  for (size_t i = 0; i < ids_.size(); ++i)
    if (ids_[i] >= vocab) return static_cast<int64_t>(i);
  return -1;
}

namespace {

// Calls on_document(doc, p) for each document [doc, p] of ids [first, first
// + count): a document ends at one of `end_ids` or at the window's end.
template <typename F>
void forEachDocument(const TokenStream& stream, int64_t first, int64_t count,
                     const std::vector<int64_t>& end_ids, F&& on_document) {
  const int64_t end = first + count;
  int64_t doc = first;  // where the current document starts
  for (int64_t p = first; p < end; ++p) {
    bool ends = p + 1 == end;
    if (!ends) {
      const int64_t id = stream.at(p);
      for (int64_t e : end_ids) ends = ends || id == e;
    }
    if (!ends) continue;
    on_document(doc, p);
    doc = p + 1;
  }
}

}  // namespace

SampleIndex indexDocuments(const TokenStream& stream, int64_t first, int64_t count, int seq_len,
                           const std::vector<int64_t>& end_ids) {
  SampleIndex index;
  forEachDocument(stream, first, count, end_ids, [&](int64_t doc, int64_t p) {
    // A sample may start wherever one target (an id after it, up to p) is
    // left.
    for (int64_t s = doc; s < p; s += seq_len) {
      index.start.push_back(s);
      index.targets.push_back(static_cast<int32_t>(std::min<int64_t>(seq_len, p - s)));
    }
  });
  return index;
}

int64_t countDocumentSamples(const TokenStream& stream, int seq_len,
                             const std::vector<int64_t>& end_ids) {
  int64_t samples = 0;
  forEachDocument(stream, 0, stream.size(), end_ids, [&](int64_t doc, int64_t p) {
    samples += (p - doc + seq_len - 1) / seq_len;  // ceil((length - 1) / seq_len)
  });
  return samples;
}

TokenDataset::TokenDataset(std::shared_ptr<const TokenStream> stream, int64_t first,
                           int64_t samples, int seq_len, int vocab, std::string source)
    : stream_(std::move(stream)),
      first_(first),
      num_samples_(samples),
      seq_len_(seq_len),
      vocab_(vocab),
      source_(std::move(source)) {
  GEOPIPE_CHECK(seq_len_ >= 1, ConfigError, "model.seq_len must be >= 1");
  GEOPIPE_CHECK(samples >= 1 && first >= 0 && first + samples * seq_len + 1 <= stream_->size(),
                Error, "samples [", first, ", +", samples, " x ", seq_len, ") outside a stream of ",
                stream_->size(), " ids");
}

TokenDataset::TokenDataset(std::shared_ptr<const TokenStream> stream,
                           std::shared_ptr<const SampleIndex> index, int64_t first_sample,
                           int64_t samples, int seq_len, int vocab, std::string source)
    : stream_(std::move(stream)),
      index_(std::move(index)),
      first_(first_sample),
      num_samples_(samples),
      seq_len_(seq_len),
      vocab_(vocab),
      source_(std::move(source)) {
  GEOPIPE_CHECK(seq_len_ >= 1, ConfigError, "model.seq_len must be >= 1");
  GEOPIPE_CHECK(samples >= 1 && first_sample >= 0 &&
                    first_sample + samples <= static_cast<int64_t>(index_->start.size()),
                Error, "samples [", first_sample, ", +", samples, ") outside an index of ",
                index_->start.size());
  for (int64_t i = 0; i < samples && !padded_; ++i) {
    padded_ = index_->targets[static_cast<size_t>(first_ + i)] < seq_len_;
  }
}

void TokenDataset::checkId(int64_t id) const {
  GEOPIPE_CHECK(id >= 0 && id < num_samples_, ConfigError, "sample id ", id,
                " outside the dataset's ", num_samples_, " samples");
}

int TokenDataset::targetsOf(int64_t id) const {
  checkId(id);
  return index_ ? index_->targets[static_cast<size_t>(first_ + id)] : seq_len_;
}

int64_t TokenDataset::startOf(int64_t id) const {
  checkId(id);
  return index_ ? index_->start[static_cast<size_t>(first_ + id)] : first_ + id * seq_len_;
}

TokenDataset TokenDataset::slice(int64_t first, int64_t samples, std::string source) const {
  GEOPIPE_CHECK(first >= 0 && samples >= 1 && first + samples <= num_samples_, Error, "samples [",
                first, ", +", samples, ") of ", num_samples_);
  if (index_) {
    return TokenDataset(stream_, index_, first_ + first, samples, seq_len_, vocab_,
                        std::move(source));
  }
  return TokenDataset(stream_, first_ + first * seq_len_, samples, seq_len_, vocab_,
                      std::move(source));
}

void TokenDataset::sample(int64_t id, int32_t* inputs, int32_t* targets) const {
  const int64_t start = startOf(id);
  const int n = targetsOf(id);
  stream_->copy(start, n, inputs);
  stream_->copy(start + 1, n, targets);
  std::fill(inputs + n, inputs + seq_len_, 0);
  std::fill(targets + n, targets + seq_len_, kIgnoreTarget);
}

std::vector<std::string> fortuneFiles(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    GEOPIPE_THROW(IoError, "the fortunes folder '", dir,
                  "' cannot be read (data.kind: fortunes reads it): install the Debian "
                  "packages fortunes-min and fortunes (scripts/install-deps does)");
  }
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (name.size() > 4 && (name.substr(name.size() - 4) == ".dat" ||
                            name.substr(name.size() - 3) == ".u8")) {
      continue;
    }
    std::string path = dir + "/" + name;
    struct stat st;
    if (lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());  // directory order is not stable
  for (auto& name : names) name = dir + "/" + name;
  return names;
}

std::string readFortunes(const std::string& dir) {
  const std::vector<std::string> names = fortuneFiles(dir);
  std::string text;
  for (const auto& name : names) {
    std::string body = readAll(name);
    // Fortunes are separated by lines holding a single '%'.
    std::string cleaned;
    std::istringstream lines(body);
    std::string line;
    while (std::getline(lines, line)) {
      cleaned += line == "%" ? std::string() : line;
      cleaned += '\n';
    }
    text += cleaned;
  }
  if (text.empty()) {
    GEOPIPE_THROW(IoError, "no fortune texts found in '", dir,
                  "': install the Debian packages fortunes-min and fortunes");
  }
  return text;
}

std::vector<int32_t> syntheticTokens(int64_t num_tokens, int vocab, uint64_t seed) {
  // First-order Markov chain: after token b comes one of 4 successors picked
  // by a hash of (b, k), with probabilities 1/2, 1/4, 1/8, 1/8. Entropy is
  // 1.75 bits per token, far below log2(vocab), and a model starts learning
  // it within a few steps (a bigram table), so short tests see progress.
  std::vector<int32_t> out;
  try {
    out.resize(static_cast<size_t>(num_tokens));
  } catch (const std::bad_alloc&) {
    GEOPIPE_THROW(InfeasibleError, "synthetic data of ", num_tokens, " ids (",
                  num_tokens / (1 << 18), " MiB) does not fit in memory: lower data.num_samples");
  }
  uint64_t state = common::mix64(seed ^ 0xD1B54A32D192ED03ull);
  int32_t b = 1 % vocab;
  for (int64_t i = 0; i < num_tokens; ++i) {
    state = common::mix64(state);
    int r = static_cast<int>(state & 7);
    int k = r < 4 ? 0 : r < 6 ? 1 : r < 7 ? 2 : 3;
    uint64_t h = common::mix64(static_cast<uint64_t>(b) ^ (static_cast<uint64_t>(k) << 58) ^ seed);
    int32_t next = static_cast<int32_t>(h % static_cast<uint64_t>(vocab));
    out[static_cast<size_t>(i)] = next;
    b = next;
  }
  return out;
}

SampleCount countTrainSamples(const DataSpec& data, const ModelSpec& model) {
  SampleCount c;
  const int t = model.seq_len;
  int64_t tokens = 0;
  std::error_code ec;
  if (data.kind == "synthetic") {
    tokens = syntheticTokenCount(data, model);
    c.how = "synthetic data";
  } else if (data.kind == "fortunes") {
    try {
      tokens = static_cast<int64_t>(readFortunes().size());
      c.how = "the fortunes texts (" + std::to_string(tokens) + " bytes)";
    } catch (const Error& e) {
      c.known = false;
      c.how = e.what();
      return c;
    }
  } else if (data.kind == "text" && !data.tokenizer.empty()) {
    if (data.num_samples <= 0) {
      c.known = false;
      c.how = "data.tokenizer: the sample count is known only once '" + data.path +
              "' is tokenized (set data.num_samples to bound it)";
      return c;
    }
    c.exact = false;
    c.samples = afterHoldOut(data, data.num_samples);
    c.how = "at most data.num_samples (" + std::to_string(data.num_samples) +
            "; the tokenized text may hold fewer)";
    return c;
  } else if (data.kind == "text" || data.kind == "tokens") {
    const auto bytes = std::filesystem::file_size(data.path, ec);
    if (ec) {
      c.known = false;
      c.how = "cannot read the size of '" + data.path + "'";
      return c;
    }
    const int64_t width = data.kind == "text" ? 1 : (data.token_dtype == "uint32" ? 4 : 2);
    tokens = static_cast<int64_t>(bytes) / width;
    c.how = "'" + data.path + "' (" + std::to_string(tokens) + " tokens)";
  } else {
    c.known = false;
    c.how = "unknown data.kind '" + data.kind + "'";
    return c;
  }
  int64_t n = samplesIn(tokens, t);
  if (!data.pack && unpackedDataProblem(data, model).empty()) {
    // Cut at document ends: byte-level text is one document; a token file's
    // documents are found in one pass over the mapping (what loadDataset
    // does, without keeping the index).
    if (data.kind == "text") {
      n = tokens < 2 ? 0 : (tokens - 1 + t - 1) / t;
    } else {
      try {
        n = countDocumentSamples(TokenStream(TokenFile(data.path, data.token_dtype)), t,
                                 model.eos_token_ids);
      } catch (const Error& e) {
        c.known = false;
        c.how = e.what();
        return c;
      }
    }
    c.how += ", cut at document ends (data.pack: false)";
  }
  if (data.num_samples > 0 && data.num_samples < n) {
    n = data.num_samples;
    c.how = "data.num_samples";
  }
  c.samples = afterHoldOut(data, n);
  return c;
}

std::string tokenizedTextProblem(const DataSpec& data) {
  if (data.kind != "text" || data.tokenizer.empty()) return "";
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(data.path, ec);
  if (ec || static_cast<int64_t>(bytes) <= kMaxTokenizedTextBytes) return "";
  return "'" + common::printable(data.path) + "' has " + std::to_string(bytes) +
         " bytes, but text read through data.tokenizer is tokenized in memory at every start, "
         "at most " +
         std::to_string(kMaxTokenizedTextBytes >> 20) +
         " MiB: tokenize it once with `geopipe tokenize --tokenizer DIR FILE --out FILE.bin` "
         "and train on data.kind: tokens, path: FILE.bin (docs/data.md)";
}

std::string unpackedDataProblem(const DataSpec& data, const ModelSpec& model) {
  if (data.kind == "fortunes") {
    return "kind fortunes is read as one byte stream that keeps no fortune boundaries; "
           "tokenize the fortune files (geopipe tokenize: one document per file or per "
           ".jsonl line) and train on kind: tokens";
  }
  if (data.kind == "synthetic") return "synthetic data has no documents";
  if (data.kind == "tokens" && model.kind == "gpt") {
    return "the documents of a token file end at the model's end-of-text id "
           "(model.eos_token_id), which kind gpt does not have: use kind gpt2, llama or "
           "custom with model.eos_token_id";
  }
  if (data.kind == "tokens" && model.eos_token_ids.empty()) {
    return "the documents of a token file end at the end-of-text id, and the job names "
           "none: set model.eos_token_id (GPT-2: 50256, Llama 2: 2)";
  }
  return "";
}

TokenDataset loadDataset(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  std::shared_ptr<const TokenStream> stream;
  std::string source;
  const std::string path = common::printable(data.path);
  auto checkByteVocab = [&](const std::string& what) {
    if (model.vocab < 256) {
      GEOPIPE_THROW(ConfigError, what, " is read as bytes (256 symbols) but model.vocab is ",
                    model.vocab, ": set model.vocab to 256 or more");
    }
  };
  if (!data.pack) {
    const std::string problem = unpackedDataProblem(data, model);
    if (!problem.empty()) GEOPIPE_THROW(ConfigError, "data.pack: false: ", problem);
  }
  if (data.kind == "text") {
    source = path;
    const std::string problem = tokenizedTextProblem(data);
    if (!problem.empty()) GEOPIPE_THROW(ConfigError, "data.path ", problem);
    TokenFile text = mapText(data.path);
    if (data.tokenizer.empty()) {
      // Each byte is an id below 256 <= model.vocab: nothing else to check.
      checkByteVocab("text data '" + path + "'");
      stream = std::make_shared<TokenStream>(std::move(text));
    } else {
      // One file, one document: as `geopipe tokenize` writes it.
      const auto tok = tokenizer::loadTokenizer(data.tokenizer);
      if (tok->vocabSize() > model.vocab) {
        GEOPIPE_THROW(ConfigError, "data.tokenizer '", common::printable(data.tokenizer), "' has ",
                      tok->vocabSize(), " ids but model.vocab is ", model.vocab,
                      ": set model.vocab to ", tok->vocabSize(), " or more");
      }
      stream = std::make_shared<TokenStream>(tok->encodeDocument(text.bytes()));
      source = path + " (" + tok->kind() + ")";
    }
  } else if (data.kind == "fortunes") {
    source = "fortunes";
    checkByteVocab("fortunes data");
    const std::string text = readFortunes();
    stream = std::make_shared<TokenStream>(
        std::vector<int32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                             reinterpret_cast<const unsigned char*>(text.data()) + text.size()));
  } else if (data.kind == "tokens") {
    // Mapped, never read into memory: IoError when the file is missing,
    // empty or not a whole number of ids of data.token_dtype.
    source = path;
    auto file = std::make_shared<TokenStream>(TokenFile(data.path, data.token_dtype));
    const int64_t bad = file->firstAtOrAbove(model.vocab);
    if (bad >= 0) {
      const int width = data.token_dtype == "uint32" ? 4 : 2;
      GEOPIPE_THROW(ConfigError, "token file '", path, "': token ", file->at(bad), " at index ",
                    bad, " (byte offset ", bad * width, ") is >= model.vocab (", model.vocab,
                    "): raise model.vocab or check data.token_dtype");
    }
    stream = std::move(file);
  } else if (data.kind == "synthetic") {
    source = "synthetic";
    stream = std::make_shared<TokenStream>(
        syntheticTokens(syntheticTokenCount(data, model), model.vocab, seed));
  } else {
    GEOPIPE_THROW(ConfigError, "unknown data.kind '", data.kind,
                  "': expected synthetic, text, tokens or fortunes");
  }
  const int t = model.seq_len;
  GEOPIPE_CHECK(t >= 1, ConfigError, "model.seq_len must be >= 1");
  if (stream->size() < int64_t{t} + 1) {
    GEOPIPE_THROW(ConfigError, "data '", source, "' holds ", stream->size(),
                  " tokens, fewer than one sample needs (model.seq_len + 1 = ", t + 1,
                  "): use more data or a shorter seq_len");
  }
  if (data.pack) {
    int64_t samples = (stream->size() - 1) / t;
    if (data.num_samples > 0) samples = std::min(samples, data.num_samples);
    return TokenDataset(std::move(stream), 0, samples, t, model.vocab, source);
  }
  // Text is one document (end_ids empty: it ends with the stream).
  auto index = std::make_shared<SampleIndex>(
      indexDocuments(*stream, 0, stream->size(), t,
                     data.kind == "tokens" ? model.eos_token_ids : std::vector<int64_t>{}));
  int64_t samples = static_cast<int64_t>(index->start.size());
  if (samples == 0) {
    GEOPIPE_THROW(ConfigError, "data '", source,
                  "' has no document of two tokens or more: nothing to predict");
  }
  if (data.num_samples > 0 && data.num_samples < samples) {
    samples = data.num_samples;
    index->start.resize(static_cast<size_t>(samples));
    index->targets.resize(static_cast<size_t>(samples));
    index->start.shrink_to_fit();
    index->targets.shrink_to_fit();
  }
  return TokenDataset(std::move(stream), std::move(index), 0, samples, t, model.vocab, source);
}

JobData loadJobData(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  TokenDataset all = loadDataset(data, model, seed);
  if (!data.val_path.empty()) {
    DataSpec v = data;
    v.path = data.val_path;
    v.num_samples = 0;
    return {std::move(all), loadDataset(v, model, seed)};
  }
  if (data.val_fraction <= 0) return {std::move(all), std::nullopt};
  const int64_t n = all.numSamples();
  const int64_t held = n - afterHoldOut(data, n);
  if (held >= n) {
    GEOPIPE_THROW(ConfigError, "data.val_fraction ", data.val_fraction, " of ", n,
                  " samples leaves none to train on: lower val_fraction or add data");
  }
  TokenDataset train = all.slice(0, n - held, all.source());
  TokenDataset val = all.slice(n - held, held, all.source() + " (validation)");
  return {std::move(train), std::move(val)};
}

}  // namespace geopipe::data
