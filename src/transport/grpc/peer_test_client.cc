// sendRawChunks / sendRawFrames: a hand-driven client of the peer service.
#include "src/transport/grpc/peer_test_client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "proto/peer.grpc.pb.h"

namespace geopipe::transport {

namespace {

std::chrono::system_clock::time_point systemDeadline(Duration timeout) {
  return std::chrono::system_clock::now() + timeout;
}

}  // namespace

RawStreamResult sendRawChunks(const std::string& address,
                              const std::vector<geopipe::v1::PeerChunk>& chunks, Duration timeout) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = geopipe::v1::PeerService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(systemDeadline(timeout));
  context.set_wait_for_ready(true);
  auto stream = stub->Stream(&context);
  for (const auto& chunk : chunks) {
    if (!stream->Write(chunk)) break;
  }
  stream->WritesDone();
  geopipe::v1::PeerAck ack;
  while (stream->Read(&ack)) {
  }
  const grpc::Status status = stream->Finish();
  return RawStreamResult{static_cast<int>(status.error_code()), status.error_message()};
}

RawStreamResult sendRawFrames(const std::string& address, const std::vector<std::string>& frames,
                              Duration timeout) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(systemDeadline(timeout));
  context.set_wait_for_ready(true);
  // Each async step is started, then awaited on the completion queue.
  auto step = [&cq]() {
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok)) return false;
    return ok;
  };
  auto call = stub.PrepareCall(&context, "/geopipe.v1.PeerService/Stream", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  bool ok = step();
  for (const auto& frame : frames) {
    if (!ok) break;
    grpc::Slice slice(frame.data(), frame.size());
    grpc::ByteBuffer buffer(&slice, 1);
    call->Write(buffer, reinterpret_cast<void*>(2));
    ok = step();
  }
  if (ok) {
    call->WritesDone(reinterpret_cast<void*>(3));
    step();
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  step();
  cq.Shutdown();
  void* tag = nullptr;
  bool drained_ok = false;
  while (cq.Next(&tag, &drained_ok)) {
  }
  return RawStreamResult{static_cast<int>(status.error_code()), status.error_message()};
}

}  // namespace geopipe::transport
