// The compression kernels on a CUDA device: quantise + pack, unpack +
// dequantise, per-unit max-abs scales and the AC-SGD delta step with an fp16
// buffer. Same grid, same codes and the same bits as the CPU path in
// quantizer.h / delta_compressor.h for round-to-nearest and for stochastic
// rounding (the same counter-based uniform variates): every multiply and add
// is an IEEE round-to-nearest operation (__fmul_rn / __fadd_rn, never fused),
// divisions are IEEE, fp16 conversions round to nearest even, as on the CPU.
//
// Pointers named *_dev are device memory; `stream` is a cudaStream_t (nullptr:
// the legacy default stream, which also orders the work with LibTorch's
// default stream). Calls are asynchronous on the stream. This header pulls in
// no CUDA headers, so CPU-only code can include it; the functions exist only
// in builds with GEOPIPE_CUDA (the geopipe_compression_cuda target).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "compression/quantizer.h"

namespace geopipe::compression::gpu {

// True when a CUDA device can run kernels; otherwise false and, when given,
// *why says what is missing (no driver, no device, ...).
bool available(std::string* why = nullptr);

// Device memory owned by RAII (cudaMalloc / cudaFree). Throws IoError naming
// the CUDA error when an allocation or copy fails.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Synchronous copies and stream helpers (IoError on failure).
void copyToDevice(void* dst_dev, const void* src, size_t bytes);
void copyToHost(void* dst, const void* src_dev, size_t bytes);
void copyDeviceToDevice(void* dst_dev, const void* src_dev, size_t bytes, void* stream = nullptr);
void synchronize(void* stream = nullptr);
// Throws IoError if a kernel launched earlier on this thread failed.
void checkLastError(const char* what);

// Per-unit max |x| into scales_dev[scaleCount(opt, n, channels)], as
// computeScales does. Non-finite input leaves a scale >= inf (bits >=
// 0x7F800000): check with scalesFinite() after copying the scales back.
void computeScales(const QuantizerOptions& opt, const float* x_dev, size_t n, size_t channels,
                   float* scales_dev, void* stream = nullptr);

// Quantises and packs n elements (packedBytes(n, bits) bytes), as
// quantizePacked does, byte for byte.
void quantizePacked(const QuantizerOptions& opt, const float* x_dev, size_t n, size_t channels,
                    const float* scales_dev, uint64_t counter, uint8_t* packed_dev,
                    void* stream = nullptr);

// Unpacks and dequantises, as dequantizePacked does, bit for bit.
void dequantizePacked(const QuantizerOptions& opt, const uint8_t* packed_dev, size_t n,
                      size_t channels, const float* scales_dev, float* out_dev,
                      void* stream = nullptr);

// One sample's AC-SGD step against an fp16 buffer m (n binary16 values, the
// layout of an FP16 buffer entry): scales of delta = a - m, the packed codes
// of delta, and m <- f2h(h2f(m) + deq(codes)) in place -- what DeltaSender
// puts on the wire (scales, then codes) and what both sides' buffers hold
// afterwards. If delta has inf/NaN, m is left untouched and a scale is
// non-finite (scalesFinite() is false), as the CPU path refuses the message.
void acsgdStepFp16(const QuantizerOptions& opt, const float* a_dev, uint16_t* m_dev, size_t n,
                   size_t channels, uint64_t counter, float* scales_dev, uint8_t* packed_dev,
                   void* stream = nullptr);

// False if any of the (host) scales is inf or NaN.
bool scalesFinite(const float* scales, size_t count);

}  // namespace geopipe::compression::gpu
