// The one place a coordinator RPC's grpc::Status becomes a typed geopipe
// error (IoError, TimeoutError, ProtocolError, ConfigError) naming the peer
// and the operation. Only src/distributed/*.cc include it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

namespace geopipe::distributed {

// Throws unless status is OK. `peer` names the other side ("coordinator at
// 10.0.0.1:7000"), `operation` the call ("Register").
//   UNAVAILABLE, CANCELLED, ABORTED, UNKNOWN, INTERNAL -> IoError
//   DEADLINE_EXCEEDED                                  -> TimeoutError
//   INVALID_ARGUMENT (a wrong device or token, ...)    -> ConfigError
//   everything else (version mismatch, ...)            -> ProtocolError
void throwIfFailed(const grpc::Status& status, const std::string& peer,
                   const std::string& operation);

}  // namespace geopipe::distributed
