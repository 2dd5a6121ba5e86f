// Bit packing kernels. Eight b-bit codes form exactly b bytes, so the stream is
// handled in groups of 8 codes: gather the 8 code bytes into one 64-bit word,
// compress the low b bits of each byte together (PEXT), store b bytes.
#include "compression/bit_pack.h"

#include <cstring>

#if defined(__BMI2__)
#include <immintrin.h>
#endif

namespace geopipe::compression {

namespace {

// 0x0101..01 * ((1<<b)-1): the low b bits of every byte.
inline uint64_t byteMask(int bits) {
  return 0x0101010101010101ull * ((1ull << bits) - 1ull);
}

inline uint64_t compress8(uint64_t w, int bits, uint64_t mask) {
#if defined(__BMI2__)
  (void)bits;
  return _pext_u64(w, mask);
#else
  w &= mask;
  uint64_t r = 0;
  for (int j = 0; j < 8; ++j) r |= ((w >> (8 * j)) & 0xFFu) << (j * bits);
  return r;
#endif
}

inline uint64_t expand8(uint64_t v, int bits, uint64_t mask) {
#if defined(__BMI2__)
  (void)bits;
  return _pdep_u64(v, mask);
#else
  const uint64_t m = (1ull << bits) - 1ull;
  uint64_t r = 0;
  for (int j = 0; j < 8; ++j) r |= ((v >> (j * bits)) & m) << (8 * j);
  (void)mask;
  return r;
#endif
}

inline uint64_t load64(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);  // little-endian host assumed (x86-64, aarch64)
  return w;
}

}  // namespace

void packBitsAt(const uint8_t* codes, size_t first, size_t n, int bits,
                uint8_t* out, size_t out_bytes) {
  const uint64_t mask = byteMask(bits);
  const size_t b = static_cast<size_t>(bits);
  size_t pos = first / 8 * b;  // byte offset of this chunk in the stream
  size_t i = 0;
  // Full groups whose 8-byte store stays inside the stream: store 8 bytes, the
  // next group overwrites the (zero) upper 8-b bytes.
  for (; i + 8 <= n && pos + 8 <= out_bytes; i += 8, pos += b) {
    const uint64_t v = compress8(load64(codes + i), bits, mask);
    std::memcpy(out + pos, &v, 8);
  }
  // Remaining groups (the last one may be partial): byte by byte.
  for (; i < n; i += 8, pos += b) {
    uint8_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t m = n - i < 8 ? n - i : 8;
    std::memcpy(tmp, codes + i, m);
    const uint64_t v = compress8(load64(tmp), bits, mask);
    const size_t nbytes = (m * b + 7) / 8;
    for (size_t k = 0; k < nbytes && pos + k < out_bytes; ++k) {
      out[pos + k] = static_cast<uint8_t>(v >> (8 * k));
    }
  }
}

void unpackBitsAt(const uint8_t* in, size_t in_bytes, size_t first, size_t n,
                  int bits, uint8_t* codes) {
  const uint64_t mask = byteMask(bits);
  const size_t b = static_cast<size_t>(bits);
  size_t pos = first / 8 * b;
  size_t i = 0;
  for (; i + 8 <= n && pos + 8 <= in_bytes; i += 8, pos += b) {
    const uint64_t v = expand8(load64(in + pos), bits, mask);
    std::memcpy(codes + i, &v, 8);
  }
  for (; i < n; i += 8, pos += b) {
    const size_t m = n - i < 8 ? n - i : 8;
    const size_t nbytes = (m * b + 7) / 8;
    uint64_t w = 0;
    for (size_t k = 0; k < nbytes && pos + k < in_bytes; ++k) {
      w |= static_cast<uint64_t>(in[pos + k]) << (8 * k);
    }
    if (m < 8) w &= (m * b >= 64) ? ~0ull : ((1ull << (m * b)) - 1ull);
    uint8_t tmp[8];
    const uint64_t v = expand8(w, bits, mask);
    std::memcpy(tmp, &v, 8);
    std::memcpy(codes + i, tmp, m);
  }
}

void packBits(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  packBitsAt(codes, 0, n, bits, out, packedBytes(n, bits));
}

void unpackBits(const uint8_t* in, size_t n, int bits, uint8_t* codes) {
  unpackBitsAt(in, packedBytes(n, bits), 0, n, bits, codes);
}

}  // namespace geopipe::compression
