// Registers the "nccl" transport kind with makeTransport at static
// initialization (an INTERFACE source of geopipe_transport_nccl, for the same
// reason as grpc/grpc_registration.cc).
#include "src/transport/nccl/nccl_transport.h"

namespace {

struct NcclRegistration {
  NcclRegistration() { geopipe::transport::registerNcclTransport(); }
};
const NcclRegistration kNcclRegistration;

}  // namespace
