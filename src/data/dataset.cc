// Token datasets: text, token files, fortunes, synthetic.
#include "src/data/dataset.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "geopipe/error.h"
#include "src/common/hash.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::data {
namespace {

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    GEOPIPE_THROW(IoError, "cannot read data file '", path, "': ", std::strerror(errno),
                  " (data.path in the job; relative paths start at the job file's directory)");
  }
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Samples synthetic data makes when data.num_samples is 0.
constexpr int64_t kSyntheticSamples = 4096;

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

TokenDataset::TokenDataset(std::vector<int32_t> tokens, int seq_len, int vocab,
                           std::string source)
    : tokens_(std::move(tokens)), seq_len_(seq_len), vocab_(vocab), source_(std::move(source)) {
  GEOPIPE_CHECK(seq_len_ >= 1, ConfigError, "model.seq_len must be >= 1");
  if (tokens_.size() < static_cast<size_t>(seq_len_) + 1) {
    GEOPIPE_THROW(ConfigError, "data '", source_, "' holds ", tokens_.size(),
                  " tokens, fewer than one sample needs (model.seq_len + 1 = ", seq_len_ + 1,
                  "): use more data or a shorter seq_len");
  }
  num_samples_ = samplesIn(static_cast<int64_t>(tokens_.size()), seq_len_);
}

void TokenDataset::sample(int64_t id, int32_t* inputs, int32_t* targets) const {
  GEOPIPE_CHECK(id >= 0 && id < num_samples_, ConfigError, "sample id ", id,
                " outside the dataset's ", num_samples_, " samples");
  const int32_t* base = tokens_.data() + id * seq_len_;
  std::memcpy(inputs, base, sizeof(int32_t) * seq_len_);
  std::memcpy(targets, base + 1, sizeof(int32_t) * seq_len_);
}

std::string readFortunes(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    GEOPIPE_THROW(IoError, "data.kind is 'fortunes' but '", dir,
                  "' cannot be read: install the Debian packages fortunes-min and "
                  "fortunes (scripts/install-deps does)");
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
  std::string text;
  for (const auto& name : names) {
    std::string body = readAll(dir + "/" + name);
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
  std::vector<int32_t> out(static_cast<size_t>(num_tokens));
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
    tokens = (data.num_samples > 0 ? data.num_samples : kSyntheticSamples) * t + 1;
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
  if (data.num_samples > 0 && data.num_samples < n) {
    n = data.num_samples;
    c.how = "data.num_samples";
  }
  c.samples = afterHoldOut(data, n);
  return c;
}

TokenDataset loadDataset(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  std::vector<int32_t> tokens;
  std::string source;
  auto bytesToTokens = [&](const std::string& bytes, const std::string& what) {
    if (model.vocab < 256) {
      GEOPIPE_THROW(ConfigError, what, " is read as bytes (256 symbols) but model.vocab is ",
                    model.vocab, ": set model.vocab to 256 or more");
    }
    tokens.assign(bytes.size(), 0);
    for (size_t i = 0; i < bytes.size(); ++i) {
      tokens[i] = static_cast<unsigned char>(bytes[i]);
    }
  };
  if (data.kind == "text") {
    source = data.path;
    std::string bytes = readAll(data.path);
    if (bytes.empty()) GEOPIPE_THROW(ConfigError, "data file '", data.path, "' is empty");
    if (data.tokenizer.empty()) {
      bytesToTokens(bytes, "text data '" + data.path + "'");
    } else {
      // One file, one document: as `geopipe tokenize` writes it.
      const auto tok = tokenizer::loadTokenizer(data.tokenizer);
      if (tok->vocabSize() > model.vocab) {
        GEOPIPE_THROW(ConfigError, "data.tokenizer '", data.tokenizer, "' has ", tok->vocabSize(),
                      " ids but model.vocab is ", model.vocab, ": set model.vocab to ",
                      tok->vocabSize(), " or more");
      }
      tokens = tok->encodeDocument(bytes);
      source = data.path + " (" + tok->kind() + ")";
    }
  } else if (data.kind == "fortunes") {
    source = "fortunes";
    bytesToTokens(readFortunes(), "fortunes data");
  } else if (data.kind == "tokens") {
    source = data.path;
    std::string bytes = readAll(data.path);
    const size_t width = data.token_dtype == "uint32" ? 4 : 2;
    if (bytes.empty()) GEOPIPE_THROW(ConfigError, "token file '", data.path, "' is empty");
    if (bytes.size() % width != 0) {
      GEOPIPE_THROW(ConfigError, "token file '", data.path, "' has ", bytes.size(),
                    " bytes, not a multiple of ", width, " (data.token_dtype ",
                    data.token_dtype, "): is token_dtype right?");
    }
    tokens.resize(bytes.size() / width);
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    for (size_t i = 0; i < tokens.size(); ++i) {
      uint64_t v = 0;
      for (size_t k = 0; k < width; ++k) v |= static_cast<uint64_t>(p[i * width + k]) << (8 * k);
      if (v >= static_cast<uint64_t>(model.vocab)) {
        GEOPIPE_THROW(ConfigError, "token file '", data.path, "': token ", v, " at index ", i,
                      " (byte offset ", i * width, ") is >= model.vocab (", model.vocab,
                      "): raise model.vocab or check data.token_dtype");
      }
      tokens[i] = static_cast<int32_t>(v);
    }
  } else if (data.kind == "synthetic") {
    source = "synthetic";
    int64_t samples = data.num_samples > 0 ? data.num_samples : kSyntheticSamples;
    tokens = syntheticTokens(samples * model.seq_len + 1, model.vocab, seed);
  } else {
    GEOPIPE_THROW(ConfigError, "unknown data.kind '", data.kind,
                  "': expected synthetic, text, tokens or fortunes");
  }
  if (data.num_samples > 0) {
    size_t keep = static_cast<size_t>(data.num_samples) * model.seq_len + 1;
    if (keep < tokens.size()) tokens.resize(keep);
  }
  return TokenDataset(std::move(tokens), model.seq_len, model.vocab, source);
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
  const int t = model.seq_len;
  const auto& tokens = all.tokens();
  const size_t cut = static_cast<size_t>(n - held) * static_cast<size_t>(t);
  std::vector<int32_t> train(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(cut) + 1);
  std::vector<int32_t> val(tokens.begin() + static_cast<std::ptrdiff_t>(cut), tokens.end());
  return {TokenDataset(std::move(train), t, model.vocab, all.source()),
          TokenDataset(std::move(val), t, model.vocab, all.source() + " (validation)")};
}

}  // namespace geopipe::data
