// User text in messages: UTF-8 validation (names and paths must be text a
// terminal and a log can show) and escaping of what a message echoes, so a
// control character in a name cannot rewrite the terminal or forge a log line.
#pragma once

#include <string>

namespace geopipe::common {

// "" when `s` is valid UTF-8 (no overlong forms, no surrogates, at most
// U+10FFFF); else where it breaks: "byte 0xff at offset 3 is not valid
// UTF-8" (offsets count bytes from 0).
std::string utf8Problem(const std::string& s);

// `s` for a message: control characters (below 0x20, 0x7f) written as \n,
// \t, \r or \xNN, C1 controls (U+0080..U+009F) as \u00NN, and bytes that are not valid UTF-8 as
// \xNN; a backslash stays as it is, so the result may be ambiguous but never prints as anything
// other than visible text. Valid multi-byte UTF-8 is kept.
std::string printable(const std::string& s);

}  // namespace geopipe::common
