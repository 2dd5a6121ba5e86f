// Fuzz target: the pipeline frame decoder (src/runtime/boundary_codec.h)
// and the receiving boundary codecs behind it. Input: a selector byte, then
// the frame's bytes.
//   0: decodeFrame; a frame it accepts must encode back to the same bytes
//   1..3: a receiver (activations none / fp16, gradients quantize 8) that
//         expects step 2, micro-batch 1, samples {7, 9}, shape [2, 4]
// Every frame must decode or throw a geopipe::Error, never a crash or a
// sanitizer report.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "fuzz/fuzz_input.h"
#include "geopipe/error.h"
#include "src/runtime/boundary_codec.h"

namespace geopipe::runtime {
namespace {

std::unique_ptr<BoundaryDecoder> receiver(int kind) {
  ActivationCompressionSpec none, fp16;
  fp16.method = "fp16";
  BackwardCompressionSpec quantize;
  quantize.method = "quantize";
  quantize.bits = 8;
  switch (kind) {
    case 1:
      return BoundaryDecoder::forActivations(none, 1, "fuzz");
    case 2:
      return BoundaryDecoder::forActivations(fp16, 1, "fuzz");
    default:
      return BoundaryDecoder::forGradients(quantize, 1);
  }
}

void run(fuzz::FuzzInput& in) {
  const int kind = in.byte() % 4;
  const std::string rest = in.rest();
  const transport::Bytes bytes(rest.begin(), rest.end());
  if (kind == 0) {
    const Frame f = decodeFrame(bytes);
    if (encodeFrame(f) != bytes) std::abort();  // the format has one encoding per frame
    return;
  }
  std::vector<float> out;
  receiver(kind)->decode(bytes, 2, 1, {7, 9}, {2, 4}, out);
  if (out.size() != 8) std::abort();
}

}  // namespace
}  // namespace geopipe::runtime

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return geopipe::fuzz::runRefusingErrors(data, size, geopipe::runtime::run);
}
