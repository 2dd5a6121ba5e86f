// A raw client of the peer service, for tests: sends hand-made chunks (or
// bytes that are not a protobuf at all) on one stream and reports how the
// server ended it. Lives here because only src/transport/grpc/ may include
// the generated gRPC headers.
#pragma once

#include <string>
#include <vector>

#include "proto/peer.pb.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// How the server ended a raw stream.
struct RawStreamResult {
  int code = 0;         // grpc::StatusCode as an int; 0 is OK
  std::string message;  // the status message
};

// Opens one PeerService.Stream to `address`, writes `chunks` in order
// (stopping at the first failed write), half-closes and returns the
// server's status. Waits at most `timeout` in all.
RawStreamResult sendRawChunks(const std::string& address,
                              const std::vector<geopipe::v1::PeerChunk>& chunks, Duration timeout);

// The same with each frame's bytes sent as they are (no serialization):
// garbage the server cannot even parse.
RawStreamResult sendRawFrames(const std::string& address, const std::vector<std::string>& frames,
                              Duration timeout);

}  // namespace geopipe::transport
