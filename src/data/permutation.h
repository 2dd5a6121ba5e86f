// A keyed pseudo-random permutation of [0, n) that needs no table: the
// sampler's shuffles, looked up in constant time whatever the dataset size.
#pragma once

#include <cstdint>

namespace geopipe::data {

// A balanced Feistel network over the smallest domain of 2h bits holding n
// (so 4^h < 4n), walked in cycles until it lands in [0, n) (Black and
// Rogaway's cycle walking). Six rounds whose round function is splitmix64's
// finaliser of (half, round key): a permutation for every key (each round is
// invertible), and a well-shuffled one (Luby-Rackoff: four rounds of a
// pseudo-random function already give a pseudo-random permutation).
//
// at(i) and indexOf(v) cost a few rounds per walk and fewer than 4 walks on
// average (the domain is under 4n); O(1) memory. Integer arithmetic only, so
// every platform computes the same permutation. Immutable, thread-safe.
class Permutation {
 public:
  Permutation(uint64_t n, uint64_t key);

  uint64_t size() const { return n_; }
  // The element at position i (i < size()).
  uint64_t at(uint64_t i) const;
  // The position of element v (v < size()): at(indexOf(v)) == v.
  uint64_t indexOf(uint64_t v) const;

 private:
  static constexpr int kRounds = 6;
  uint64_t forward(uint64_t x) const;
  uint64_t backward(uint64_t x) const;
  uint64_t round(uint64_t half, int r) const;

  uint64_t n_;
  int half_bits_ = 0;  // h: the domain is [0, 4^h)
  uint64_t half_mask_ = 0;
  uint64_t keys_[kRounds] = {};
};

}  // namespace geopipe::data
