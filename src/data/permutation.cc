// Feistel permutation with cycle walking.
#include "src/data/permutation.h"

#include "geopipe/error.h"
#include "src/common/hash.h"

namespace geopipe::data {

Permutation::Permutation(uint64_t n, uint64_t key) : n_(n) {
  GEOPIPE_CHECK(n >= 1 && n <= (uint64_t{1} << 62), ConfigError, "a permutation of ", n,
                " elements (1 to 2^62)");
  while (half_bits_ < 31 && (uint64_t{1} << (2 * half_bits_)) < n) ++half_bits_;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  uint64_t k = common::mix64(key ^ 0x243F6A8885A308D3ull);
  for (int r = 0; r < kRounds; ++r) {
    keys_[r] = k;
    k = common::mix64(k);
  }
}

uint64_t Permutation::round(uint64_t half, int r) const {
  return common::mix64(half ^ keys_[r]) & half_mask_;
}

// (L, R) -> (R, L ^ F(R)) per round; L is the high half.
uint64_t Permutation::forward(uint64_t x) const {
  uint64_t l = x >> half_bits_, r = x & half_mask_;
  for (int i = 0; i < kRounds; ++i) {
    const uint64_t next = l ^ round(r, i);
    l = r;
    r = next;
  }
  return (l << half_bits_) | r;
}

uint64_t Permutation::backward(uint64_t x) const {
  uint64_t l = x >> half_bits_, r = x & half_mask_;
  for (int i = kRounds - 1; i >= 0; --i) {
    const uint64_t prev = r ^ round(l, i);
    r = l;
    l = prev;
  }
  return (l << half_bits_) | r;
}

// Cycle walking: the walk from a point of [0, n) stays on its cycle of the
// domain's permutation, which returns to [0, n), so it ends.
uint64_t Permutation::at(uint64_t i) const {
  GEOPIPE_CHECK(i < n_, ConfigError, "permutation position ", i, " of ", n_);
  uint64_t x = forward(i);
  while (x >= n_) x = forward(x);
  return x;
}

uint64_t Permutation::indexOf(uint64_t v) const {
  GEOPIPE_CHECK(v < n_, ConfigError, "permutation element ", v, " of ", n_);
  uint64_t x = backward(v);
  while (x >= n_) x = backward(x);
  return x;
}

}  // namespace geopipe::data
