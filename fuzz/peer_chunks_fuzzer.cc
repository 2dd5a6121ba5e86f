// Fuzz target: the gRPC peer service's receiving side without a network:
// PeerStreamAssembler (chunk checks and reassembly) feeding the rank's Mailbox,
// with the application's receives in between. Input: a selector byte (the
// receiving rank's limits), then operations:
//   0: a frame (u16 length + bytes) parsed as a PeerChunk; bytes that do not
//      parse end the stream, as gRPC ends it on an unparsable frame
//   1: the stream ends; a new one opens
//   2: the application posts a receive (source, tag from the next bytes)
//   3: the oldest posted receive is polled (wait(0)) and its payload taken
// Each stream must end with a status and each receive complete or fail with
// a geopipe::Error, never a crash or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "fuzz/fuzz_input.h"
#include "geopipe/error.h"
#include "proto/peer.pb.h"
#include "src/transport/grpc/peer_stream.h"
#include "src/transport/mailbox.h"

namespace geopipe::transport {
namespace {

constexpr int kWorld = 3;
constexpr int kRank = 0;

std::string describe(int src) {
  return "rank " + std::to_string(src);
}

void run(fuzz::FuzzInput& in) {
  const uint8_t limits = in.byte();
  PeerStreamAssembler::Config config;
  config.rank = kRank;
  config.world_size = kWorld;
  config.job_token = "fuzz-job";
  config.max_message_bytes = uint64_t{1} << (4 + limits % 16);  // 16 B .. 512 KiB
  // A small budget makes admit() refuse (the call reads as cancelled, so it
  // never blocks); a large one lets messages queue.
  const uint64_t budget = (limits & 0x80) ? uint64_t{1} << 30 : 64;
  Mailbox::Options options;
  options.transport = "grpc";
  options.rank = kRank;
  options.world_size = kWorld;
  options.max_buffered_bytes = budget;
  options.describe_peer = describe;
  auto mailbox = std::make_shared<Mailbox>(std::move(options));
  // Resumable streams (a stream that breaks waits for its resume) when the
  // selector says so: resume frames and superseded streams are fuzzed too.
  config.resumable = (limits & 0x40) != 0;
  config.incarnation = 7;
  auto sessions = std::make_shared<PeerSessions>(kWorld);
  auto open_stream = [&] {
    return std::make_unique<PeerStreamAssembler>(
        config, mailbox, sessions, describe, [] { return true; },
        [](const geopipe::v1::PeerAck&) {});
  };
  auto assembler = open_stream();
  bool open = true;
  std::deque<std::shared_ptr<RecvWork>> posted;
  geopipe::v1::PeerChunk chunk;
  for (int op = 0; op < 256 && !in.empty(); ++op) {
    switch (in.byte() % 4) {
      case 0: {
        const std::string frame = in.part();
        if (!open) break;
        if (chunk.ParseFromString(frame)) {
          open = assembler->onChunk(chunk).ok();
        } else {
          assembler->onEnd();
          open = false;
        }
        break;
      }
      case 1:
        if (open) assembler->onEnd();
        assembler = open_stream();
        open = true;
        break;
      case 2: {
        Tag tag;
        tag.channel = static_cast<Channel>(1 + in.byte() % 4);
        tag.step = in.byte() % 4;
        tag.micro_batch = in.byte() % 4;
        posted.push_back(mailbox->post(in.byte() % kWorld, tag));
        break;
      }
      case 3:
        if (posted.empty()) break;
        try {
          posted.front()->wait(std::chrono::milliseconds(0));
          posted.front()->takePayload();
        } catch (const Error&) {
        }
        posted.pop_front();
        break;
    }
  }
  if (open) assembler->onEnd();
  assembler.reset();
  mailbox->close("fuzz input done");
}

}  // namespace
}  // namespace geopipe::transport

// Protobuf logs every string field that is not UTF-8 (the parse then
// fails, as it does in the server); at fuzzing rates that is noise.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  geopipe::fuzz::FuzzInput in(data, size);
  geopipe::transport::run(in);
  return 0;
}
