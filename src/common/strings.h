// Small string utilities for user-facing messages: edit distance for "did
// you mean" suggestions, joining, number formatting.
#pragma once

#include <string>
#include <vector>

namespace geopipe::common {

// Edit distance between a and b: insert, delete, substitute and adjacent
// transposition each cost 1 (optimal string alignment).
int editDistance(const std::string& a, const std::string& b);

// The candidate closest to `word` if it is close enough to be a plausible
// typo (distance <= max(1, |word|/3)), else the empty string.
std::string closestMatch(const std::string& word,
                         const std::vector<std::string>& candidates);

// "a, b or c" for listing the allowed values of a field.
std::string joinOr(const std::vector<std::string>& items);

// "a, b, c".
std::string join(const std::vector<std::string>& items, const std::string& sep);

}  // namespace geopipe::common
