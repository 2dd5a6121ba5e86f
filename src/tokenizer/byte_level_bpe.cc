// GPT-2 byte-level BPE: file readers, merges by rank with a word cache, decode.
#include "src/tokenizer/byte_level_bpe.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <unordered_map>

#include "geopipe/error.h"
#include "src/common/hash.h"
#include "src/common/text.h"
#include "src/tokenizer/gpt2_pretokenizer.h"

namespace geopipe::tokenizer {
namespace {

using nlohmann::json;

constexpr const char* kEndOfText = "<|endoftext|>";

std::string readFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path),
                  "': ", std::strerror(errno));
  }
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

json parseJson(const std::string& path, const char* what) {
  const std::string text = readFile(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    GEOPIPE_THROW(IoError, what, " '", common::printable(path), "' is not valid JSON: ", e.what());
  }
}

void appendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The bytes a vocabulary token stands for: each character mapped back through
// byteToUnicode(). A token with a character outside that alphabet (a special
// token such as "<pad>" written with other characters) stands for its own
// UTF-8 text.
std::string tokenBytes(const std::string& token) {
  static const std::unordered_map<std::string, char> inverse = [] {
    std::unordered_map<std::string, char> m;
    for (int b = 0; b < 256; ++b) m.emplace(byteToUnicode()[b], static_cast<char>(b));
    return m;
  }();
  std::string out;
  size_t i = 0;
  while (i < token.size()) {
    const auto c = static_cast<unsigned char>(token[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : 4;
    auto it = inverse.find(token.substr(i, len));
    if (it == inverse.end()) return token;
    out += it->second;
    i += len;
  }
  return out;
}

std::string typeOf(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>()
                                                                      : std::string();
}

bool nullOrEmpty(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return true;
  return j[key].is_string() && j[key].get<std::string>().empty();
}

bool nullOrFalse(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return true;
  return j[key].is_boolean() && !j[key].get<bool>();
}

// Why a tokenizer.json is not a GPT-2-style byte-level BPE, or "" when it is.
// Every field that changes the ids is checked: one geopipe does not
// implement is refused, never ignored.
std::string unsupportedReason(const json& root) {
  const json& model = root["model"];
  const std::string model_type = typeOf(model);
  if (!model_type.empty() && model_type != "BPE") {
    return "its model is " + model_type + ", not BPE";
  }
  if (!nullOrFalse(model, "byte_fallback")) {
    return "its BPE uses byte_fallback (a SentencePiece-style BPE, as Llama's), not GPT-2's "
           "byte-level alphabet";
  }
  if (!nullOrEmpty(model, "continuing_subword_prefix") ||
      !nullOrEmpty(model, "end_of_word_suffix")) {
    return "its BPE uses a subword prefix or suffix, which GPT-2's byte-level BPE does not";
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0)) {
    return "its BPE has dropout, which geopipe does not apply";
  }
  if (!nullOrFalse(model, "ignore_merges")) {
    return "its BPE sets ignore_merges (Llama 3), which geopipe does not implement";
  }
  const json& normalizer = root.contains("normalizer") ? root["normalizer"] : json();
  if (!normalizer.is_null()) {
    return "it has a normalizer (" + typeOf(normalizer) + "); GPT-2's has none";
  }
  const json& pre = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : json();
  if (typeOf(pre) != "ByteLevel") {
    return "its pre_tokenizer is " + (pre.is_null() ? std::string("null") : typeOf(pre)) +
           ", not GPT-2's ByteLevel (a Llama-3 or other regex is not implemented)";
  }
  if (!nullOrFalse(pre, "add_prefix_space")) {
    return "its ByteLevel pre_tokenizer adds a prefix space, which GPT-2's does not";
  }
  if (pre.contains("use_regex") && pre["use_regex"].is_boolean() && !pre["use_regex"].get<bool>()) {
    return "its ByteLevel pre_tokenizer does not split with GPT-2's regex (use_regex false)";
  }
  const json& decoder = root.contains("decoder") ? root["decoder"] : json();
  if (!decoder.is_null() && typeOf(decoder) != "ByteLevel") {
    return "its decoder is " + typeOf(decoder) + ", not ByteLevel";
  }
  const json& post = root.contains("post_processor") ? root["post_processor"] : json();
  if (!post.is_null() && typeOf(post) != "ByteLevel") {
    return "its post_processor is " + typeOf(post) +
           " (it adds tokens around the text), not GPT-2's ByteLevel";
  }
  return "";
}

// A hash of a short byte string (a pre-tokenized piece): 8 bytes at a time
// through splitmix64's finaliser.
uint64_t hashBytes(std::string_view s) {
  uint64_t h = s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = common::mix64(h ^ w);
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  return common::mix64(h ^ w);
}

// One thread's word cache for one tokenizer: piece bytes -> ids. An
// open-addressing table over two arenas (key bytes, ids): a lookup touches
// one slot and the key bytes, and allocates nothing.
class WordCache {
 public:
  // Appends the cached ids of `piece` to out; false when it is not cached.
  bool find(std::string_view piece, uint64_t hash, std::vector<int32_t>& out) const {
    if (slots_.empty()) return false;
    for (size_t k = hash & mask_;; k = (k + 1) & mask_) {
      const Slot& s = slots_[k];
      if (s.key_len == 0) return false;
      if (s.hash == hash && s.key_len == piece.size() &&
          std::memcmp(keys_.data() + s.key_offset, piece.data(), piece.size()) == 0) {
        const int32_t* p = ids_.data() + s.ids_offset;
        out.insert(out.end(), p, p + s.count);
        return true;
      }
    }
  }

  void insert(std::string_view piece, uint64_t hash, const int32_t* ids, size_t count) {
    if (entries_ >= ByteLevelBpe::kMaxCacheEntries) {  // start over
      std::fill(slots_.begin(), slots_.end(), Slot{});
      keys_.clear();
      ids_.clear();
      entries_ = 0;
    }
    if (2 * (entries_ + 1) > slots_.size()) grow();
    Slot s;
    s.hash = hash;
    s.key_offset = static_cast<uint32_t>(keys_.size());
    s.key_len = static_cast<uint16_t>(piece.size());
    s.count = static_cast<uint16_t>(count);
    s.ids_offset = static_cast<uint32_t>(ids_.size());
    keys_.append(piece);
    ids_.insert(ids_.end(), ids, ids + count);
    place(s);
    ++entries_;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0;
    uint16_t key_len = 0;  // 0: empty (cached pieces have >= 2 bytes)
    uint16_t count = 0;    // ids (<= the piece's bytes)
    uint32_t ids_offset = 0;
  };
  void place(const Slot& s) {
    size_t k = s.hash & mask_;
    while (slots_[k].key_len != 0) k = (k + 1) & mask_;
    slots_[k] = s;
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(std::max<size_t>(4096, old.size() * 2), Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key_len != 0) place(s);
    }
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t entries_ = 0;
  std::string keys_;          // key bytes, back to back
  std::vector<int32_t> ids_;  // ids, back to back
};

// The calling thread's cache for the tokenizer with `serial`. A thread keeps
// the caches of the tokenizers it used last; older ones (and those of
// tokenizers destroyed meanwhile) are dropped.
WordCache& threadCache(uint64_t serial) {
  thread_local std::vector<std::pair<uint64_t, std::unique_ptr<WordCache>>> caches;
  auto it =
      std::find_if(caches.begin(), caches.end(), [&](const auto& c) { return c.first == serial; });
  if (it == caches.end()) {
    caches.emplace(caches.begin(), serial, std::make_unique<WordCache>());
    if (caches.size() > ByteLevelBpe::kCachesPerThread) caches.pop_back();
  } else if (it != caches.begin()) {
    std::rotate(caches.begin(), it, it + 1);
  }
  return *caches.front().second;
}

std::atomic<uint64_t> next_serial{1};

}  // namespace

const std::array<std::string, 256>& byteToUnicode() {
  // Printable bytes stand for themselves; the others (controls, space,
  // 0x7F-0xA0, 0xAD) get the code points 256, 257, ... in byte order.
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      appendUtf8(printable ? b : next++, t[b]);
    }
    return t;
  }();
  return table;
}

ByteLevelBpe::ByteLevelBpe(const BpeVocabulary& v) : source_(v.source), serial_(next_serial++) {
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(v.tokens.size() * 2);
  int64_t size = 0;
  auto addId = [&](const std::string& token, int32_t id, bool special) {
    if (id < 0) {
      GEOPIPE_THROW(IoError, "tokenizer '", common::printable(source_), "': token '",
                    common::printable(token), "' has negative id ", id);
    }
    if (static_cast<size_t>(id) >= id_bytes_.size()) {
      id_bytes_.resize(static_cast<size_t>(id) + 1);
      id_known_.resize(static_cast<size_t>(id) + 1, false);
    }
    const std::string bytes = special ? token : tokenBytes(token);
    if (id_known_[id]) {
      // tokenizer.json lists its special tokens both in the vocabulary and
      // in added_tokens: the same token twice is fine, two tokens are not.
      if (id_bytes_[id] == bytes) return;
      GEOPIPE_THROW(IoError, "tokenizer '", common::printable(source_), "': id ", id,
                    " is given to two tokens ('", common::printable(id_bytes_[id]), "' and '",
                    common::printable(bytes), "'): the files are inconsistent");
    }
    id_bytes_[id] = bytes;
    id_known_[id] = true;
    size = std::max<int64_t>(size, int64_t{id} + 1);
  };
  for (const auto& [token, id] : v.tokens) {
    addId(token, id, false);
    ids.emplace(token, id);
  }
  for (const auto& [text, id] : v.specials) addId(text, id, true);
  if (size == 0)
    GEOPIPE_THROW(IoError, "tokenizer '", common::printable(source_), "' has an empty vocabulary");

  for (int b = 0; b < 256; ++b) {
    auto it = ids.find(byteToUnicode()[b]);
    if (it == ids.end()) {
      GEOPIPE_THROW(IoError, "tokenizer '", common::printable(source_),
                    "' is not a byte-level BPE: byte 0x", "0123456789abcdef"[b >> 4],
                    "0123456789abcdef"[b & 15], " ('", byteToUnicode()[b], "') has no token");
    }
    byte_ids_[b] = it->second;
  }

  size_t slots = 16;
  while (slots < 2 * v.merges.size()) slots *= 2;
  merges_.assign(slots, Merge{0, -1, -1});
  for (size_t rank = 0; rank < v.merges.size(); ++rank) {
    const auto& [left, right] = v.merges[rank];
    auto l = ids.find(left), r = ids.find(right), m = ids.find(left + right);
    if (l == ids.end() || r == ids.end() || m == ids.end()) {
      const std::string& missing = l == ids.end() ? left : r == ids.end() ? right : left + right;
      GEOPIPE_THROW(IoError, "tokenizer '", common::printable(source_), "': merge ", rank + 1,
                    " ('", common::printable(left), " ", common::printable(right), "') uses '",
                    missing,
                    "', which is not in the vocabulary: the vocabulary and merges do not belong "
                    "together");
    }
    // A pair listed twice keeps its first (lowest) rank, as Hugging Face does.
    const uint64_t pair = pairKey(l->second, r->second);
    size_t k = common::mix64(pair) & (merges_.size() - 1);
    while (merges_[k].rank >= 0 && merges_[k].pair != pair) k = (k + 1) & (merges_.size() - 1);
    if (merges_[k].rank < 0) merges_[k] = Merge{pair, static_cast<int32_t>(rank), m->second};
  }

  for (const auto& [text, id] : v.specials) {
    if (text == kEndOfText) eos_ = id;
  }
  if (!eos_) {
    auto it = ids.find(kEndOfText);
    if (it != ids.end()) eos_ = it->second;
  }
}

const ByteLevelBpe::Merge* ByteLevelBpe::findMerge(int32_t left, int32_t right) const {
  const uint64_t pair = pairKey(left, right);
  const size_t mask = merges_.size() - 1;
  for (size_t k = common::mix64(pair) & mask;; k = (k + 1) & mask) {
    const Merge& m = merges_[k];
    if (m.rank < 0) return nullptr;
    if (m.pair == pair) return &m;
  }
}

void ByteLevelBpe::mergePiece(std::string_view piece, std::vector<int32_t>& out) const {
  // The symbols form a linked list over their start positions; a heap holds
  // candidate merges ordered by (rank, position), checked when popped since a
  // neighbour may have merged meanwhile. O(n log n), so a megabyte-long word
  // costs no more than its share. Scratch space is per thread and reused.
  struct Candidate {
    int32_t rank, pos, left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<int32_t> id, next, prev;
  thread_local std::vector<Candidate> heap;
  if (piece.size() > static_cast<size_t>(INT32_MAX)) {
    GEOPIPE_THROW(ConfigError, "a word of ", piece.size(),
                  " bytes without a space or punctuation is longer than byte-level BPE "
                  "handles (2 GiB)");
  }
  const int32_t n = static_cast<int32_t>(piece.size());
  id.resize(n);
  next.resize(n);
  prev.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    id[i] = byte_ids_[static_cast<unsigned char>(piece[i])];
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  const auto later = std::greater<Candidate>();
  auto consider = [&](int32_t i) {
    if (i < 0 || next[i] >= n) return;
    const Merge* m = findMerge(id[i], id[next[i]]);
    if (m == nullptr) return;
    heap.push_back({m->rank, i, id[i], id[next[i]]});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate c = heap.back();
    heap.pop_back();
    const int32_t i = c.pos;
    if (id[i] != c.left) continue;  // merged away or into something else
    const int32_t j = next[i];
    if (j >= n || id[j] != c.right) continue;
    id[i] = findMerge(c.left, c.right)->id;
    id[j] = -1;
    next[i] = next[j];
    if (next[j] < n) prev[next[j]] = i;
    consider(prev[i]);
    consider(i);
  }
  for (int32_t i = 0; i < n; i = next[i]) out.push_back(id[i]);
}

std::vector<int32_t> ByteLevelBpe::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 1);
  WordCache& cache = threadCache(serial_);
  Gpt2PreTokenizer::forEachPiece(text, [&](std::string_view piece) {
    if (piece.size() == 1) {
      ids.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    } else if (piece.size() > kMaxCachedPiece) {
      mergePiece(piece, ids);
    } else {
      const uint64_t hash = hashBytes(piece);
      if (cache.find(piece, hash, ids)) return;
      const size_t start = ids.size();
      mergePiece(piece, ids);
      cache.insert(piece, hash, ids.data() + start, ids.size() - start);
    }
  });
  return ids;
}

size_t ByteLevelBpe::cutPoint(std::string_view text) const {
  const auto printable = [](char c) { return c > ' ' && c < 0x7F; };
  for (size_t i = text.size() >= 2 ? text.size() - 2 : 0; i >= 1; --i) {
    if (text[i] == ' ' && printable(text[i - 1]) && printable(text[i + 1])) return i;
  }
  return 0;
}

std::string ByteLevelBpe::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    const int32_t id = ids[k];
    if (id < 0 || static_cast<size_t>(id) >= id_bytes_.size() || !id_known_[id]) {
      GEOPIPE_THROW(ConfigError, "cannot decode id ", id, " (position ", k, "): tokenizer '",
                    common::printable(source_), "' has no token with that id (vocabulary size ",
                    vocabSize(), ")");
    }
    out += id_bytes_[id];
  }
  return out;
}

BpeVocabulary readVocabAndMerges(const std::string& vocab_json, const std::string& merges_txt) {
  BpeVocabulary v;
  v.source = vocab_json + " + " + merges_txt;
  const json vocab = parseJson(vocab_json, "vocabulary");
  if (!vocab.is_object()) {
    GEOPIPE_THROW(IoError, "vocabulary '", common::printable(vocab_json),
                  "' is not a JSON object of token -> id (GPT-2's vocab.json / encoder.json)");
  }
  v.tokens.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) {
      GEOPIPE_THROW(IoError, "vocabulary '", common::printable(vocab_json), "': token '",
                    common::printable(it.key()), "' has a value that is not an integer id");
    }
    v.tokens.emplace_back(it.key(), it.value().get<int32_t>());
  }

  const std::string text = readFile(merges_txt, "merges file");
  std::istringstream lines(text);
  std::string line;
  int line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      GEOPIPE_THROW(IoError, common::printable(merges_txt), ":", line_no,
                    ": expected two tokens separated by one "
                    "space, found '",
                    line, "' (is this GPT-2's merges.txt / vocab.bpe?)");
    }
    v.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return v;
}

TokenizerJson readTokenizerJson(const std::string& path) {
  const json root = parseJson(path, "tokenizer.json");
  TokenizerJson out;
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    GEOPIPE_THROW(IoError, "tokenizer.json '", common::printable(path),
                  "' has no 'model' object: is it a Hugging Face tokenizer.json?");
  }
  out.unsupported = unsupportedReason(root);
  if (!out.unsupported.empty()) return out;

  const json& model = root["model"];
  BpeVocabulary& v = out.vocabulary;
  v.source = path;
  if (!model.contains("vocab") || !model["vocab"].is_object() || !model.contains("merges") ||
      !model["merges"].is_array()) {
    GEOPIPE_THROW(IoError, "tokenizer.json '", common::printable(path),
                  "': model needs a 'vocab' object and a 'merges' array");
  }
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer()) {
      GEOPIPE_THROW(IoError, "tokenizer.json '", common::printable(path), "': model.vocab['",
                    common::printable(it.key()), "'] is not an integer id");
    }
    v.tokens.emplace_back(it.key(), it.value().get<int32_t>());
  }
  // Merges come as "left right" strings, or (tokenizers >= 0.20) as
  // ["left", "right"] pairs.
  const json& merges = model["merges"];
  for (size_t k = 0; k < merges.size(); ++k) {
    const json& m = merges[k];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == s.size() ||
          s.find(' ', space + 1) != std::string::npos) {
        GEOPIPE_THROW(IoError, "tokenizer.json '", common::printable(path), "': model.merges[", k,
                      "] is '", common::printable(s), "', not two tokens separated by one space");
      }
      v.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      GEOPIPE_THROW(IoError, "tokenizer.json '", common::printable(path), "': model.merges[", k,
                    "] is neither \"left right\" nor [\"left\", \"right\"]");
    }
  }
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& t : root["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string()) {
        GEOPIPE_THROW(IoError, "tokenizer.json '", common::printable(path),
                      "': an added_tokens entry lacks an integer 'id' or a string 'content'");
      }
      const std::string content = t["content"].get<std::string>();
      if (!(t.contains("special") && t["special"].is_boolean() && t["special"].get<bool>())) {
        // Hugging Face finds a non-special added token in the text before
        // BPE; geopipe encodes text only with the merges, so the ids would
        // differ: refuse rather than encode differently.
        out.unsupported = "its added token '" + content +
                          "' is not special (Hugging Face matches it inside text; geopipe "
                          "does not)";
        out.vocabulary = BpeVocabulary{};
        return out;
      }
      v.specials.emplace_back(content, t["id"].get<int32_t>());
    }
  }
  return out;
}

}  // namespace geopipe::tokenizer
