// GPU compression kernels against a device-to-device copy of the same fp32
// bytes, measured in the same run with CUDA events: encode (scales +
// quantise + pack), decode (unpack + dequantise) for b = 2, 3, 4, 8 and each
// granularity, and the AC-SGD step for a GPT-like micro-batch
// (4 x 512 x 1024, 4-bit per-channel, fp16 buffers). Prints a table;
// GB/s counts the fp32 input (4 bytes per element), as the CPU benchmark does.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "compression/bit_pack.h"
#include "compression/cuda/gpu_quantizer.h"
#include "compression/half.h"

namespace gpu = geopipe::compression::gpu;
using geopipe::compression::Granularity;
using geopipe::compression::QuantizerOptions;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Median milliseconds of one call of fn over 15 timed batches of 10 calls.
double medianMs(const std::function<void()>& fn) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  for (int i = 0; i < 5; ++i) fn();
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> ms;
  for (int rep = 0; rep < 15; ++rep) {
    check(cudaEventRecord(a), "record");
    for (int i = 0; i < 10; ++i) fn();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float t = 0;
    check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t / 10.0);
  }
  check(cudaGetLastError(), "kernels");
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string why;
  if (!gpu::available(&why)) {
    std::fprintf(stderr, "gpu_compression_bench: %s\n", why.c_str());
    return 2;
  }
  const size_t channels = 4096;
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : (size_t{32} << 20);
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  std::printf("GPU compression kernels on %s, %zu fp32 elements (%.0f MB), channels %zu\n",
              prop.name, n, n * 4.0 / 1e6, channels);

  std::vector<float> host(n);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto& x : host) x = dist(rng);
  gpu::DeviceBuffer x(4 * n), copy(4 * n), out(4 * n), scales(4 * (n / 128 + channels)),
      packed(n + 16);
  gpu::copyToDevice(x.data(), host.data(), 4 * n);

  const double copy_ms = medianMs([&] { gpu::copyDeviceToDevice(copy.data(), x.data(), 4 * n); });
  const double gbs_copy = 4.0 * n / copy_ms / 1e6;
  std::printf("\n%-34s %10s %10s %12s\n", "kernel", "ms", "GB/s", "vs D2D copy");
  std::printf("%-34s %10.3f %10.1f %11.2fx\n", "device-to-device copy", copy_ms, gbs_copy, 1.0);

  struct G {
    const char* name;
    Granularity g;
  };
  for (const G& g : {G{"channel", Granularity::CHANNEL}, G{"tensor", Granularity::TENSOR},
                     G{"group128", Granularity::GROUP}}) {
    for (int bits : {2, 3, 4, 8}) {
      QuantizerOptions q;
      q.bits = bits;
      q.granularity = g.g;
      q.group_size = 128;
      const double enc = medianMs([&] {
        gpu::computeScales(q, x.as<float>(), n, channels, scales.as<float>());
        gpu::quantizePacked(q, x.as<float>(), n, channels, scales.as<float>(), 0,
                            packed.as<uint8_t>());
      });
      const double dec = medianMs([&] {
        gpu::dequantizePacked(q, packed.as<uint8_t>(), n, channels, scales.as<float>(),
                              out.as<float>());
      });
      char name[64];
      std::snprintf(name, sizeof(name), "encode b=%d %s", bits, g.name);
      std::printf("%-34s %10.3f %10.1f %11.2fx\n", name, enc, 4.0 * n / enc / 1e6,
                  copy_ms / enc);
      std::snprintf(name, sizeof(name), "decode b=%d %s", bits, g.name);
      std::printf("%-34s %10.3f %10.1f %11.2fx\n", name, dec, 4.0 * n / dec / 1e6,
                  copy_ms / dec);
    }
  }

  // AC-SGD step: 4 samples of 512 x 1024, fp16 buffers, 4-bit per channel.
  const size_t per = 512 * 1024, batch = 4, c2 = 1024;
  QuantizerOptions q;
  gpu::DeviceBuffer a(4 * per * batch), m(2 * per * batch), s2(4 * c2 * batch),
      p2(geopipe::compression::packedBytes(per, 4) * batch + 64), c(4 * per * batch);
  gpu::copyToDevice(a.data(), host.data(), 4 * per * batch);
  std::vector<geopipe::compression::Half> mh(per * batch);
  geopipe::compression::floatToHalf(host.data() + 7, mh.data(), per * batch);
  gpu::copyToDevice(m.data(), mh.data(), 2 * per * batch);
  const size_t pb = geopipe::compression::packedBytes(per, 4);
  const double step = medianMs([&] {
    for (size_t s = 0; s < batch; ++s) {
      gpu::acsgdStepFp16(q, a.as<float>() + s * per, m.as<uint16_t>() + s * per, per, c2, s,
                         s2.as<float>() + s * c2, p2.as<uint8_t>() + s * pb);
    }
  });
  const double step_copy =
      medianMs([&] { gpu::copyDeviceToDevice(c.data(), a.data(), 4 * per * batch); });
  std::printf("%-34s %10.3f %10.1f %11.2fx\n", "AC-SGD step 4x512x1024 b=4", step,
              4.0 * per * batch / step / 1e6, step_copy / step);
  std::printf("%-34s %10.3f %10.1f %11.2fx\n", "  (D2D copy of the same 8 MB)", step_copy,
              4.0 * per * batch / step_copy / 1e6, 1.0);
  std::printf("\n'vs D2D copy' = copy time / kernel time for the same fp32 input: above 1x the "
              "kernel moves the tensor faster than copying it (it writes b/32 of the bytes).\n");
  return 0;
}
