// GPT-2's pre-tokenizer regex through PCRE2 (Debian's libpcre2-8).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "src/tokenizer/gpt2_pretokenizer.h"

#include <pcre2.h>

#include <string>

#include "geopipe/error.h"

namespace geopipe::tokenizer {
namespace {

// GPT-2's pattern (openai/gpt-2 encoder.py) in PCRE2 syntax (UTF mode:
// \p{L} and \p{N} are Unicode's letters and numbers). \s is written out as Unicode's
// White_Space property, which is what \s means in Rust's regex (tiktoken) and
// Python's `regex`: PCRE2's own \s also matches U+180E (kept in \h for Perl
// compatibility, though no longer White_Space since Unicode 6.3), and
// " \u180e" would then split differently. tests/tokenizer compares the result
// with tiktoken.
#define GEOPIPE_WS \
  R"(\t-\r\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})"
constexpr const char* kPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^)" GEOPIPE_WS R"(\p{L}\p{N}]+)"
    R"(|[)" GEOPIPE_WS R"(]+(?![^)" GEOPIPE_WS R"(])|[)" GEOPIPE_WS R"(]+)";
#undef GEOPIPE_WS

std::string pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// The compiled pattern, shared by every thread (pcre2_code is read-only once
// JIT-compiled).
class Pattern {
 public:
  Pattern() {
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &offset, nullptr);
    if (code_ == nullptr) {
      GEOPIPE_THROW(Error, "PCRE2 cannot compile GPT-2's pattern at offset ", offset, ": ",
                    pcre2Message(err));
    }
    // Without JIT (a PCRE2 built without it) matching is slower but the same.
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Pattern() { pcre2_code_free(code_); }
  const pcre2_code* code() const { return code_; }
  bool jit() const { return jit_; }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

const Pattern& pattern() {
  static const Pattern p;
  return p;
}

// Per-thread match state: match data (the offsets of one match) and a JIT
// stack larger than PCRE2's 32 KiB default, so that long runs cannot exhaust it.
class MatchState {
 public:
  MatchState() {
    data_ = pcre2_match_data_create(1, nullptr);
    context_ = pcre2_match_context_create(nullptr);
    stack_ = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (data_ == nullptr || context_ == nullptr || stack_ == nullptr) {
      GEOPIPE_THROW(Error, "PCRE2 cannot allocate match state (out of memory)");
    }
    pcre2_jit_stack_assign(context_, nullptr, stack_);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack_);
    pcre2_match_context_free(context_);
    pcre2_match_data_free(data_);
  }
  pcre2_match_data* data() { return data_; }
  pcre2_match_context* context() { return context_; }

 private:
  pcre2_match_data* data_ = nullptr;
  pcre2_match_context* context_ = nullptr;
  pcre2_jit_stack* stack_ = nullptr;
};

}  // namespace

size_t Gpt2PreTokenizer::pieceEnd(std::string_view text, size_t pos) {
  const Pattern& p = pattern();
  thread_local MatchState state;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  const int rc = p.jit()
                     ? pcre2_jit_match(p.code(), subject, n, pos, 0, state.data(), state.context())
                     : pcre2_match(p.code(), subject, n, pos, 0, state.data(), state.context());
  // Bytes the search skips are invalid UTF-8: the run of them up to the next
  // match (or the end) is one piece.
  if (rc == PCRE2_ERROR_NOMATCH) return n;
  if (rc < 0) {
    GEOPIPE_THROW(Error, "PCRE2 failed to pre-tokenize at byte ", pos, " of ", n, ": ",
                  pcre2Message(rc));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(state.data());
  if (ov[0] > pos) return ov[0];
  if (ov[1] <= pos) {  // cannot happen: no alternative matches the empty string
    GEOPIPE_THROW(Error, "GPT-2's pattern matched an empty string at byte ", pos);
  }
  return ov[1];
}

}  // namespace geopipe::tokenizer
