// UTF-8 validation and escaping of user text in messages.
#include "src/common/text.h"

#include <cstdint>
#include <cstdio>

namespace geopipe::common {
namespace {

// The length of the valid UTF-8 sequence at s[i], or 0 when the bytes there
// are not one (RFC 3629: the shortest form, no surrogates, <= U+10FFFF).
size_t utf8SequenceAt(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;  // overlong
    if (c == 0xed) hi = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;  // overlong
    if (c == 0xf4) hi = 0x8f;  // beyond U+10FFFF
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xbf) return 0;
  }
  return n;
}

std::string hexByte(uint8_t c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%02x", c);
  return buf;
}

}  // namespace

std::string utf8Problem(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8SequenceAt(s, i);
    if (n == 0) {
      return "byte 0x" + hexByte(static_cast<uint8_t>(s[i])) + " at offset " + std::to_string(i) +
             " is not valid UTF-8";
    }
    i += n;
  }
  return "";
}

std::string printable(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = utf8SequenceAt(s, i);
    if (n == 0) {
      out += "\\x" + hexByte(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n", ++i;
    } else if (c == '\t') {
      out += "\\t", ++i;
    } else if (c == '\r') {
      out += "\\r", ++i;
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x" + hexByte(c);
      ++i;
    } else if (c == 0xc2 && static_cast<uint8_t>(s[i + 1]) < 0xa0) {
      // C1 controls (U+0080..U+009F): 0x9b is a terminal's CSI.
      out += "\\u00" + hexByte(static_cast<uint8_t>(s[i + 1]));
      i += 2;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}

}  // namespace geopipe::common
