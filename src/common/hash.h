// Small deterministic mixing functions shared by the data generators, the
// samplers and the quantizer's random stream (CPU and CUDA): the same numbers
// on every platform and standard library. Header-only; callable from CUDA
// device code when nvcc compiles it.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define GEOPIPE_HOST_DEVICE __host__ __device__
#else
#define GEOPIPE_HOST_DEVICE
#endif

namespace geopipe::common {

// splitmix64's finaliser: a well-mixed 64-bit hash of x.
GEOPIPE_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The key of the stochastic-rounding stream (seed, counter) for elements
// [hi * 2^32, (hi + 1) * 2^32): the CPU quantizer and the CUDA kernels draw
// the same variates from it, bit for bit.
GEOPIPE_HOST_DEVICE inline uint32_t streamKey(uint64_t seed, uint64_t counter, uint64_t hi) {
  return static_cast<uint32_t>(mix64(seed ^ mix64(counter ^ mix64(hi + 0x632BE59BD9B4E019ull))));
}

}  // namespace geopipe::common
