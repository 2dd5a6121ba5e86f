// CUDA kernels of the compression library; see gpu_quantizer.h for the
// contract (same bits as the CPU path).
//
// Layout of the work: one thread per 8 consecutive elements, whose b-bit codes
// are exactly b bytes of the packed stream (element i at bits [i*b, (i+1)*b),
// little-endian). Loads are two float4 (and one 16-byte load of 8 halves for
// the AC-SGD buffer) when aligned. Scales are reduced as the bit patterns of
// |x| with atomicMax, which orders non-negative floats like their values and
// puts inf/NaN (>= 0x7F800000) above every finite value, as computeScales
// does on the CPU.
#include "compression/cuda/gpu_quantizer.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstring>
#include <mutex>

#include "geopipe/error.h"
#include "src/common/hash.h"

namespace geopipe::compression::gpu {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kNonFinite = 0x7F800000u;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    GEOPIPE_THROW(IoError, "CUDA error in ", what, ": ", cudaGetErrorName(e), " (",
                  cudaGetErrorString(e), ")");
  }
}

cudaStream_t asStream(void* s) { return static_cast<cudaStream_t>(s); }

// --- the CPU's counter-based uniform variate (quantizer.cc), bit for bit ---
using common::streamKey;

__device__ inline float uniformOf(uint32_t i, uint32_t key) {
  uint32_t h = (i * 0x9E3779B1u) ^ key;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return __fmul_rn(static_cast<float>(h >> 8), 1.0f / 16777216.0f);
}

__device__ inline unsigned absBits(float x) { return __float_as_uint(x) & 0x7FFFFFFFu; }

// t -> code: clamp to [0, L-1], then truncate (the CPU's toCode).
__device__ inline unsigned toCode(float t, float max_code) {
  t = t < 0.0f ? 0.0f : t;
  t = t > max_code ? max_code : t;
  return static_cast<unsigned>(static_cast<int>(t));
}

// What the kernels need of the options, by value.
struct Params {
  int bits = 4;
  int granularity = 1;  // Granularity
  uint32_t group = 1;
  uint32_t channels = 1;
  bool stochastic = false;
  uint64_t seed = 0, counter = 0;
  float h = 0, off = 0, max_code = 0;
  int lm1 = 0;
};

Params paramsOf(const QuantizerOptions& opt, size_t n, size_t channels, uint64_t counter) {
  GEOPIPE_CHECK(n < (size_t{1} << 31), ConfigError, "GPU quantiser: ", n,
                " elements in one call; at most 2^31 - 1 are supported");
  Params p;
  p.bits = opt.bits;
  p.granularity = static_cast<int>(opt.granularity);
  p.group = static_cast<uint32_t>(opt.granularity == Granularity::GROUP ? opt.group_size : 1);
  p.channels = static_cast<uint32_t>(channels ? channels : 1);
  p.stochastic = opt.rounding == Rounding::STOCHASTIC;
  p.seed = opt.seed;
  p.counter = counter;
  const int levels = 1 << opt.bits;
  p.lm1 = levels - 1;
  p.h = static_cast<float>(levels - 1) * 0.5f;
  p.off = p.h + 0.5f;
  p.max_code = static_cast<float>(levels - 1);
  return p;
}

__device__ inline uint32_t unitOf(const Params& p, uint32_t i) {
  if (p.granularity == static_cast<int>(Granularity::TENSOR)) return 0;
  if (p.granularity == static_cast<int>(Granularity::GROUP)) return i / p.group;
  return i % p.channels;
}

// Per-unit multipliers: inv = h/s for encoding (0 for a zero scale, capped
// at FLT_MAX), d = s/(L-1) for decoding -- the CPU's invOf and d[k].
__global__ void unitMultipliers(const float* scales, uint32_t ns, float h, int lm1, float* inv,
                                float* d) {
  const uint32_t k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= ns) return;
  const float s = scales[k];
  if (inv) {
    float v = 0.0f;
    if (s > 0.0f) {
      v = __fdiv_rn(h, s);
      if (!isfinite(v)) v = FLT_MAX;
    }
    inv[k] = v;
  }
  if (d) d[k] = __fdiv_rn(s, static_cast<float>(lm1));
}

// Element loaders: plain x, or the AC-SGD delta a - h2f(m).
struct PlainLoad {
  const float* x;
  __device__ float operator()(uint32_t i) const { return x[i]; }
  // 8 values starting at i (a multiple of 8), vectorised when aligned.
  __device__ void load8(uint32_t i, bool aligned, float* v) const {
    if (aligned) {
      const float4 a = reinterpret_cast<const float4*>(x + i)[0];
      const float4 b = reinterpret_cast<const float4*>(x + i)[1];
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z,
      v[7] = b.w;
    } else {
      for (int k = 0; k < 8; ++k) v[k] = x[i + k];
    }
  }
};

struct DeltaLoad {
  const float* a;
  const __half* m;
  __device__ float operator()(uint32_t i) const { return __fsub_rn(a[i], __half2float(m[i])); }
  __device__ void load8(uint32_t i, bool aligned, float* v) const {
    if (aligned) {
      const float4 x0 = reinterpret_cast<const float4*>(a + i)[0];
      const float4 x1 = reinterpret_cast<const float4*>(a + i)[1];
      const uint4 mh = *reinterpret_cast<const uint4*>(m + i);
      const __half2* h2 = reinterpret_cast<const __half2*>(&mh);
      const float2 m0 = __half22float2(h2[0]), m1 = __half22float2(h2[1]);
      const float2 m2 = __half22float2(h2[2]), m3 = __half22float2(h2[3]);
      v[0] = __fsub_rn(x0.x, m0.x), v[1] = __fsub_rn(x0.y, m0.y);
      v[2] = __fsub_rn(x0.z, m1.x), v[3] = __fsub_rn(x0.w, m1.y);
      v[4] = __fsub_rn(x1.x, m2.x), v[5] = __fsub_rn(x1.y, m2.y);
      v[6] = __fsub_rn(x1.z, m3.x), v[7] = __fsub_rn(x1.w, m3.y);
    } else {
      for (int k = 0; k < 8; ++k) v[k] = (*this)(i + k);
    }
  }
};

// Per-channel scales: thread per channel, a slice of rows per blockIdx.y.
template <typename Load>
__global__ void channelScales(Load ld, uint32_t rows, uint32_t channels, uint32_t rows_per,
                              unsigned* bits) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const uint32_t r0 = blockIdx.y * rows_per;
  const uint32_t r1 = min(rows, r0 + rows_per);
  unsigned acc = 0;
  for (uint32_t r = r0; r < r1; ++r) acc = max(acc, absBits(ld(r * channels + c)));
  atomicMax(&bits[c], acc);
}

// Tensor scale: grid-stride max, block reduction, one atomic per block.
template <typename Load>
__global__ void tensorScale(Load ld, uint32_t n, unsigned* bits) {
  __shared__ unsigned red[kThreads];
  unsigned acc = 0;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    acc = max(acc, absBits(ld(i)));
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = max(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicMax(bits, red[0]);
}

// Group scales: each thread folds its 8 elements, flushing at group edges.
template <typename Load>
__global__ void groupScales(Load ld, uint32_t n, uint32_t group, unsigned* bits) {
  const uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t i0 = t * 8;
  if (i0 >= n) return;
  const uint32_t i1 = min(n, i0 + 8);
  uint32_t unit = i0 / group;
  unsigned acc = 0;
  for (uint32_t i = i0; i < i1; ++i) {
    const uint32_t u = i / group;
    if (u != unit) {
      atomicMax(&bits[unit], acc);
      unit = u;
      acc = 0;
    }
    acc = max(acc, absBits(ld(i)));
  }
  atomicMax(&bits[unit], acc);
}

template <typename Load>
void launchScales(const Params& p, Load ld, uint32_t n, size_t ns, float* scales,
                  cudaStream_t s) {
  unsigned* bits = reinterpret_cast<unsigned*>(scales);
  check(cudaMemsetAsync(bits, 0, ns * sizeof(unsigned), s), "scales memset");
  if (n == 0) return;
  if (p.granularity == static_cast<int>(Granularity::CHANNEL)) {
    const uint32_t rows = n / p.channels;
    // About 4 waves of blocks: enough rows per thread to amortise the atomic.
    const uint32_t col_blocks = (p.channels + kThreads - 1) / kThreads;
    uint32_t slices = max(1u, min(rows, 2048u / col_blocks));
    const uint32_t rows_per = (rows + slices - 1) / slices;
    slices = (rows + rows_per - 1) / rows_per;
    channelScales<<<dim3(col_blocks, slices), kThreads, 0, s>>>(ld, rows, p.channels, rows_per,
                                                                 bits);
  } else if (p.granularity == static_cast<int>(Granularity::TENSOR)) {
    const uint32_t blocks = min(1024u, (n + kThreads - 1) / kThreads);
    tensorScale<<<blocks, kThreads, 0, s>>>(ld, n, bits);
  } else {
    const uint32_t threads = (n + 7) / 8;
    groupScales<<<(threads + kThreads - 1) / kThreads, kThreads, 0, s>>>(ld, n, p.group, bits);
  }
  check(cudaGetLastError(), "scales kernel launch");
}

// Writes the `bytes` low bytes of w at out (b = 1, 2, 4, 8 aligned stores).
__device__ inline void storeBytes(uint8_t* out, uint64_t w, uint32_t bytes, bool aligned) {
  if (aligned && bytes == 8) {
    *reinterpret_cast<uint64_t*>(out) = w;
  } else if (aligned && bytes == 4) {
    *reinterpret_cast<uint32_t*>(out) = static_cast<uint32_t>(w);
  } else if (aligned && bytes == 2) {
    *reinterpret_cast<uint16_t*>(out) = static_cast<uint16_t>(w);
  } else {
    for (uint32_t k = 0; k < bytes; ++k) out[k] = static_cast<uint8_t>(w >> (8 * k));
  }
}

// Quantise + pack (and, with kUpdate, the AC-SGD buffer update from the
// codes just made). A non-finite scale anywhere (flag set) stops the update.
template <typename Load, bool kUpdate>
__global__ void quantizeKernel(Params p, Load ld, uint32_t n, const float* inv, const float* d,
                               uint32_t key, uint8_t* packed, uint32_t packed_bytes,
                               bool vec_ok, bool store_ok, __half* m, const unsigned* bad) {
  const uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t i0 = t * 8;
  if (i0 >= n) return;
  const uint32_t cnt = min(8u, n - i0);
  float v[8];
  if (cnt == 8) {
    ld.load8(i0, vec_ok, v);
  } else {
    for (uint32_t k = 0; k < cnt; ++k) v[k] = ld(i0 + k);
  }
  uint32_t unit = unitOf(p, i0);
  const bool channel = p.granularity == static_cast<int>(Granularity::CHANNEL);
  uint64_t word = 0;
  unsigned codes[8];
  for (uint32_t k = 0; k < cnt; ++k) {
    if (k > 0) {
      if (channel) unit = unit + 1 == p.channels ? 0 : unit + 1;
      else unit = unitOf(p, i0 + k);
    }
    float tv;
    if (!p.stochastic) {
      tv = __fadd_rn(__fmul_rn(v[k], inv[unit]), p.off);
    } else {
      const float u = uniformOf(i0 + k, key);
      tv = __fadd_rn(__fadd_rn(__fmul_rn(v[k], inv[unit]), p.h), u);
    }
    const unsigned q = toCode(tv, p.max_code);
    codes[k] = q;
    word |= static_cast<uint64_t>(q) << (k * p.bits);
  }
  const uint32_t at = t * static_cast<uint32_t>(p.bits);
  const uint32_t bytes = min(static_cast<uint32_t>(p.bits), packed_bytes - at);
  storeBytes(packed + at, word, bytes, store_ok && bytes == static_cast<uint32_t>(p.bits));
  if constexpr (kUpdate) {
    if (*bad != 0) return;
    uint32_t u2 = unitOf(p, i0);
    for (uint32_t k = 0; k < cnt; ++k) {
      if (k > 0) {
        if (channel) u2 = u2 + 1 == p.channels ? 0 : u2 + 1;
        else u2 = unitOf(p, i0 + k);
      }
      const float deq =
          __fmul_rn(static_cast<float>(2 * static_cast<int>(codes[k]) - p.lm1), d[u2]);
      m[i0 + k] = __float2half_rn(__fadd_rn(__half2float(m[i0 + k]), deq));
    }
  }
}

__global__ void dequantizeKernel(Params p, const uint8_t* packed, uint32_t packed_bytes,
                                 uint32_t n, const float* d, float* out, bool vec_ok) {
  const uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t i0 = t * 8;
  if (i0 >= n) return;
  const uint32_t cnt = min(8u, n - i0);
  const uint32_t at = t * static_cast<uint32_t>(p.bits);
  const uint32_t bytes = min(static_cast<uint32_t>(p.bits), packed_bytes - at);
  uint64_t word = 0;
  for (uint32_t k = 0; k < bytes; ++k) word |= static_cast<uint64_t>(packed[at + k]) << (8 * k);
  const uint64_t mask = (uint64_t{1} << p.bits) - 1;
  const bool channel = p.granularity == static_cast<int>(Granularity::CHANNEL);
  uint32_t unit = unitOf(p, i0);
  float v[8];
  for (uint32_t k = 0; k < cnt; ++k) {
    if (k > 0) {
      if (channel) unit = unit + 1 == p.channels ? 0 : unit + 1;
      else unit = unitOf(p, i0 + k);
    }
    const int q = static_cast<int>((word >> (k * p.bits)) & mask);
    v[k] = __fmul_rn(static_cast<float>(2 * q - p.lm1), d[unit]);
  }
  if (cnt == 8 && vec_ok) {  // two 16-byte stores: the warp writes whole lines
    reinterpret_cast<float4*>(out + i0)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(out + i0)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    for (uint32_t k = 0; k < cnt; ++k) out[i0 + k] = v[k];
  }
}

// Flags any non-finite scale (bits >= 0x7F800000) into *bad.
__global__ void flagNonFinite(const float* scales, uint32_t ns, unsigned* bad) {
  const uint32_t k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k < ns && (__float_as_uint(scales[k]) & 0x7FFFFFFFu) >= kNonFinite) atomicOr(bad, 1u);
}

// Per-thread scratch on the device: unit multipliers and the flag, grown as
// needed and reused across calls (one allocation in the steady state).
struct Workspace {
  DeviceBuffer inv, d, flag;
  void reserve(size_t ns) {
    const size_t need = (ns ? ns : 1) * sizeof(float);
    if (inv.size() < need) {
      inv = DeviceBuffer(need);
      d = DeviceBuffer(need);
    }
    if (flag.size() < sizeof(unsigned)) flag = DeviceBuffer(sizeof(unsigned));
  }
};

Workspace& workspace() {
  thread_local Workspace w;
  return w;
}

uint32_t blocksFor(size_t threads) {
  return static_cast<uint32_t>((threads + kThreads - 1) / kThreads);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename Load, bool kUpdate>
void launchQuantize(const Params& p, Load ld, size_t n, size_t ns, const float* scales,
                    uint8_t* packed, bool vec_ok, __half* m, cudaStream_t s) {
  if (n == 0) return;
  Workspace& w = workspace();
  w.reserve(ns);
  unitMultipliers<<<blocksFor(ns), kThreads, 0, s>>>(scales, static_cast<uint32_t>(ns), p.h,
                                                     p.lm1, w.inv.as<float>(),
                                                     kUpdate ? w.d.as<float>() : nullptr);
  if (kUpdate) {
    check(cudaMemsetAsync(w.flag.data(), 0, sizeof(unsigned), s), "flag memset");
    flagNonFinite<<<blocksFor(ns), kThreads, 0, s>>>(scales, static_cast<uint32_t>(ns),
                                                     w.flag.as<unsigned>());
  }
  // Stochastic rounding: one key covers every index below 2^32 (n < 2^31).
  const uint32_t key = p.stochastic ? streamKey(p.seed, p.counter, 0) : 0;
  const size_t pb = (n * static_cast<size_t>(p.bits) + 7) / 8;
  const bool store_ok = (reinterpret_cast<uintptr_t>(packed) % static_cast<uintptr_t>(p.bits)) == 0;
  quantizeKernel<Load, kUpdate><<<blocksFor((n + 7) / 8), kThreads, 0, s>>>(
      p, ld, static_cast<uint32_t>(n), w.inv.as<float>(), w.d.as<float>(), key, packed,
      static_cast<uint32_t>(pb), vec_ok, store_ok, m, w.flag.as<unsigned>());
  check(cudaGetLastError(), "quantise kernel launch");
}

}  // namespace

bool available(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    if (why) {
      *why = e != cudaSuccess ? std::string("CUDA: ") + cudaGetErrorString(e)
                              : std::string("CUDA: no device");
    }
    cudaGetLastError();  // clear the sticky-free error state for later calls
    return false;
  }
  return true;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes) check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void copyToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device");
}

void copyToHost(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

void copyDeviceToDevice(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, asStream(stream)),
          "device-to-device copy");
  }
}

void synchronize(void* stream) { check(cudaStreamSynchronize(asStream(stream)), "synchronize"); }

void checkLastError(const char* what) { check(cudaGetLastError(), what); }

void computeScales(const QuantizerOptions& opt, const float* x, size_t n, size_t channels,
                   float* scales, void* stream) {
  opt.validate();
  const Params p = paramsOf(opt, n, channels, 0);
  GEOPIPE_CHECK(opt.granularity != Granularity::CHANNEL || n % p.channels == 0, ConfigError,
                "per-channel quantisation needs numel (", n,
                ") to be a multiple of the channel count (", channels, ")");
  launchScales(p, PlainLoad{x}, static_cast<uint32_t>(n), scaleCount(opt, n, channels), scales,
               asStream(stream));
}

void quantizePacked(const QuantizerOptions& opt, const float* x, size_t n, size_t channels,
                    const float* scales, uint64_t counter, uint8_t* packed, void* stream) {
  opt.validate();
  const Params p = paramsOf(opt, n, channels, counter);
  launchQuantize<PlainLoad, false>(p, PlainLoad{x}, n, scaleCount(opt, n, channels), scales,
                                   packed, aligned16(x), nullptr, asStream(stream));
}

void dequantizePacked(const QuantizerOptions& opt, const uint8_t* packed, size_t n,
                      size_t channels, const float* scales, float* out, void* stream) {
  opt.validate();
  if (n == 0) return;
  const Params p = paramsOf(opt, n, channels, 0);
  const size_t ns = scaleCount(opt, n, channels);
  Workspace& w = workspace();
  w.reserve(ns);
  cudaStream_t s = asStream(stream);
  unitMultipliers<<<blocksFor(ns), kThreads, 0, s>>>(scales, static_cast<uint32_t>(ns), p.h,
                                                     p.lm1, nullptr, w.d.as<float>());
  const size_t pb = (n * static_cast<size_t>(p.bits) + 7) / 8;
  dequantizeKernel<<<blocksFor((n + 7) / 8), kThreads, 0, s>>>(
      p, packed, static_cast<uint32_t>(pb), static_cast<uint32_t>(n), w.d.as<float>(), out,
      aligned16(out));
  check(cudaGetLastError(), "dequantise kernel launch");
}

void acsgdStepFp16(const QuantizerOptions& opt, const float* a, uint16_t* m, size_t n,
                   size_t channels, uint64_t counter, float* scales, uint8_t* packed,
                   void* stream) {
  opt.validate();
  const Params p = paramsOf(opt, n, channels, counter);
  GEOPIPE_CHECK(opt.granularity != Granularity::CHANNEL || n % p.channels == 0, ConfigError,
                "per-channel quantisation needs numel (", n,
                ") to be a multiple of the channel count (", channels, ")");
  __half* mh = reinterpret_cast<__half*>(m);
  const DeltaLoad ld{a, mh};
  const size_t ns = scaleCount(opt, n, channels);
  cudaStream_t s = asStream(stream);
  launchScales(p, ld, static_cast<uint32_t>(n), ns, scales, s);
  launchQuantize<DeltaLoad, true>(p, ld, n, ns, scales, packed, aligned16(a) && aligned16(m), mh,
                                  s);
}

bool scalesFinite(const float* scales, size_t count) {
  for (size_t k = 0; k < count; ++k) {
    uint32_t u;
    std::memcpy(&u, &scales[k], 4);
    if ((u & 0x7FFFFFFFu) >= kNonFinite) return false;
  }
  return true;
}

}  // namespace geopipe::compression::gpu
