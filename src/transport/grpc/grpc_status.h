// Names of gRPC status codes for error messages, shared by the gRPC
// transport and the coordinator/worker services.
#pragma once

#include <grpcpp/grpcpp.h>

namespace geopipe::transport {

// "UNAVAILABLE", "DEADLINE_EXCEEDED", ... ("UNRECOGNIZED" for others).
const char* statusCodeName(grpc::StatusCode code);

}  // namespace geopipe::transport
