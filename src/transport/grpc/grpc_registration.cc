// Registers the "grpc" transport kind with makeTransport at static
// initialization. CMake compiles this file into every binary that links
// geopipe_transport_grpc (an INTERFACE source), because an object file in a
// static library that nothing references would be dropped by the linker.
#include "src/transport/grpc/grpc_transport.h"

namespace {

struct GrpcRegistration {
  GrpcRegistration() { geopipe::transport::registerGrpcTransport(); }
};
const GrpcRegistration kGrpcRegistration;

}  // namespace
