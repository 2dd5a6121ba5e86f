// Fuzz target: every decoder of compressed tensors (compression/
// wire_format.h, gradient_compressor.h, delta_compressor.h) and the AC-SGD
// buffer file loader. Input: a selector byte, then length-prefixed parts
// (FuzzInput). A decoder may only return or throw a geopipe::Error; the
// AC-SGD receiver must leave its store consistent whatever it is sent.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compression/activation_buffer.h"
#include "compression/delta_compressor.h"
#include "compression/gradient_compressor.h"
#include "compression/wire_format.h"
#include "fuzz/fuzz_input.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

using fuzz::FuzzInput;

// Dense decodes allocate numel floats (TOPK describes them in a few bytes);
// the runtime checks shapes against its own tensor first (combineMean), so
// this target does too, with a small bound.
constexpr uint64_t kMaxDenseNumel = uint64_t{1} << 20;

CompressedMessage messageFrom(FuzzInput& in) {
  CompressedMessage m;
  m.header = in.partBytes();
  m.payload = in.partBytes();
  return m;
}

bool smallEnough(const CompressedMessage& m) {
  try {
    return decodeHeader(m.header.data(), m.header.size()).numel() <= kMaxDenseNumel;
  } catch (const Error&) {
    return true;  // decodeDense throws the same error
  }
}

void decodeAcsgd(FuzzInput& in) {
  // Receiver options from the input: delta bits, granularity, buffer format.
  DeltaCompressorOptions opt;
  const uint8_t o = in.byte();
  opt.quantizer.bits = 1 + o % 8;
  opt.quantizer.granularity = (o >> 3) % 2 ? Granularity::TENSOR : Granularity::CHANNEL;
  opt.buffer_format = (o >> 4) % 2 ? BufferFormat::QUANTIZED : BufferFormat::FP16;
  opt.buffer_bits = 1 + (o >> 5) % 8;
  BufferStoreOptions so;
  so.budget_bytes = 1 << 20;
  DeltaSender tx(opt, makeBufferStore(so));
  DeltaReceiver rx(opt, makeBufferStore(so));
  // A few samples seen before, so that deltas find buffers of some shape.
  const int64_t ids[4] = {0, 1, 2, 3};
  std::vector<float> x(4 * 2 * 8);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  std::vector<float> out;
  rx.decode(ids, 4, tx.encode(ids, x.data(), {4, 2, 8}), out);
  // Then the fuzzed message, for fuzzed sample ids.
  std::vector<int64_t> msg_ids(in.byte() % 9);
  for (auto& id : msg_ids) id = static_cast<int8_t>(in.byte());
  const CompressedMessage msg = messageFrom(in);
  try {
    rx.decode(msg_ids.data(), msg_ids.size(), msg, out);
  } catch (const Error&) {
  }
  // The receiver still works after whatever it was sent.
  rx.decode(ids, 4, tx.encode(ids, x.data(), {4, 2, 8}), out);
}

void powerSgd(FuzzInput& in) {
  GradientCompressorOptions opt;
  opt.method = GradientMethod::POWERSGD;
  opt.rank = 1 + in.byte() % 3;
  PowerSgdCompressor c(opt);
  std::vector<float> g(6 * 4, 0.5f);
  const CompressedMessage p = c.computeP(g.data(), {6, 4});
  // This rank's own factor first, as in the runtime's all-gather.
  std::vector<CompressedMessage> ps = {p, messageFrom(in)};
  const CompressedMessage q = c.computeQ(ps);
  std::vector<CompressedMessage> qs = {q, messageFrom(in)};
  c.finish(qs);
}

// The buffer store's checkpoint file, through a memfd so nothing touches disk.
void loadStore(FuzzInput& in) {
  const std::string bytes = in.rest();
  const int fd = memfd_create("geopipe-fuzz", 0);
  if (fd < 0) return;
  if (write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size())) {
    BufferStoreOptions so;
    so.budget_bytes = 1 << 20;
    auto store = makeBufferStore(so);
    try {
      store->load("/proc/self/fd/" + std::to_string(fd));
    } catch (const Error&) {
    }
  }
  close(fd);
}

void run(FuzzInput& in) {
  switch (in.byte() % 8) {
    case 0: {
      const std::string h = in.rest();
      decodeHeader(reinterpret_cast<const uint8_t*>(h.data()), h.size());
      break;
    }
    case 1: {
      const CompressedMessage m = messageFrom(in);
      const WireHeader h = decodeHeader(m.header.data(), m.header.size());
      checkPayload(h, m.payload.data(), m.payload.size());
      break;
    }
    case 2:
      decodeTensor(messageFrom(in));
      break;
    case 3: {
      const CompressedMessage m = messageFrom(in);
      if (smallEnough(m)) decodeDense(m);
      break;
    }
    case 4: {
      std::vector<CompressedMessage> ms(1 + in.byte() % 3);
      for (auto& m : ms) m = messageFrom(in);
      // Rank 0's message is this rank's own, well-formed in the runtime.
      if (smallEnough(ms[0])) combineMean(ms);
      break;
    }
    case 5:
      decodeAcsgd(in);
      break;
    case 6:
      powerSgd(in);
      break;
    case 7:
      loadStore(in);
      break;
  }
}

}  // namespace
}  // namespace geopipe::compression

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return geopipe::fuzz::runRefusingErrors(data, size, geopipe::compression::run);
}
