// grpc::Status -> geopipe error, once.
#include "src/distributed/rpc_status.h"

#include "geopipe/error.h"
#include "src/transport/grpc/grpc_status.h"

namespace geopipe::distributed {

void throwIfFailed(const grpc::Status& status, const std::string& peer,
                   const std::string& operation) {
  if (status.ok()) return;
  const std::string msg =
      detail::concat(operation, " to ", peer, " failed (", transport::statusCodeName(status.error_code()),
                     "): ", status.error_message());
  switch (status.error_code()) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      throw TimeoutError(msg, __FILE__);
    case grpc::StatusCode::INVALID_ARGUMENT:
      throw ConfigError(msg, __FILE__);
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::INTERNAL:
      throw IoError(msg, __FILE__);
    default:
      throw ProtocolError(msg, __FILE__);
  }
}

}  // namespace geopipe::distributed
