// GrpcTransport: the peer service (receiving side), one writer per peer
// (sending side), and the single conversion of grpc::Status to geopipe
// errors. The only translation unit of the transport that sees gRPC.
#include "src/transport/grpc/grpc_transport.h"
#include "src/transport/grpc/grpc_log.h"
#include "src/transport/grpc/grpc_status.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <unistd.h>

#include "geopipe/error.h"
#include "proto/peer.grpc.pb.h"
#include "src/security/token.h"
#include "src/transport/completion.h"
#include "src/transport/factory.h"
#include "src/transport/grpc/connection_gate.h"
#include "src/transport/grpc/peer_stream.h"
#include "src/transport/grpc/relay.h"
#include "src/transport/grpc/same_host.h"
#include "src/transport/mailbox.h"

namespace geopipe::transport {

namespace {

using geopipe::v1::PeerAck;
using geopipe::v1::PeerChunk;
using geopipe::v1::PeerService;

constexpr uint32_t kProtocolVersion = geopipe::v1::PEER_PROTOCOL_CURRENT;
constexpr size_t kMaxChunkBytes = size_t{16} << 20;
// Room for a chunk's header fields on top of its data.
constexpr int kMaxFrameBytes = static_cast<int>(kMaxChunkBytes + (64 << 10));
// Acknowledgements (PeerAck) are a few bytes; replies larger than this are
// refused.
constexpr int kMaxAckBytes = 64 << 10;
// The longest one connection attempt may take (gRPC's own default, from its
// connection-backoff spec): set-up over a slow or far link takes seconds.
constexpr int kConnectAttemptMs = 20000;

// The sending side writes PeerChunks as wire bytes it puts together itself
// (frameBytes, chunkBytes), so that a chunk's data goes to gRPC straight from
// the payload; the receiving side parses them as PeerChunks.
using PeerWriter = grpc::ClientReaderWriter<grpc::ByteBuffer, PeerAck>;

// Opens PeerService.Stream on `channel` as the generated stub does, with
// wire bytes as the request type.
std::unique_ptr<PeerWriter> openPeerStream(const std::shared_ptr<grpc::Channel>& channel,
                                           grpc::ClientContext* context) {
  static const std::string name = detail::concat("/", PeerService::service_full_name(), "/Stream");
  const grpc::internal::RpcMethod method(name.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING,
                                         channel);
  return std::unique_ptr<PeerWriter>(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, PeerAck>::Create(
          channel.get(), method, context));
}

// A frame without message data (a resume frame, the goodbye), a few bytes.
grpc::ByteBuffer frameBytes(const PeerChunk& frame) {
  grpc::Slice slice(frame.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

void appendVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void releasePayload(void* payload) {
  delete static_cast<std::shared_ptr<const Bytes>*>(payload);
}

// A chunk carrying bytes [offset, offset + n) of `payload`, without copying
// them: protobuf's wire format lets fields come in any order and writes a
// bytes field as its key, its length (a varint) and the bytes, so the chunk
// is its header fields serialized as usual, then `data`'s key and length,
// then a slice that points into the payload and keeps it alive until gRPC
// has written it (it may still hold it after Write() returned). The
// receiver parses the result as any PeerChunk. Copying each chunk into the
// PeerChunk and gRPC serializing that into buffers of its own took two
// copies and two fresh allocations of the chunk's size per chunk.
grpc::ByteBuffer chunkBytes(const PeerChunk& header, const std::shared_ptr<const Bytes>& payload,
                            uint64_t offset, uint64_t n) {
  std::string head = header.SerializeAsString();
  if (n == 0) {
    grpc::Slice slice(head);
    return grpc::ByteBuffer(&slice, 1);
  }
  // The key of field `data`: its number, then wire type 2 (length-delimited).
  appendVarint(head, (uint64_t{PeerChunk::kDataFieldNumber} << 3) | 2);
  appendVarint(head, n);
  grpc::Slice slices[2] = {grpc::Slice(head),
                           grpc::Slice(const_cast<uint8_t*>(payload->data()) + offset, n,
                                       releasePayload, new std::shared_ptr<const Bytes>(payload))};
  return grpc::ByteBuffer(slices, 2);
}

// A failure as a kind and a message, so that one link failure can be
// reported to every later send with that send's own context.
struct Failure {
  ErrorKind kind = ErrorKind::IO;
  std::string message;
};

std::exception_ptr toException(const Failure& f) {
  return makeError(f.kind, f.message, __FILE__ ":" GEOPIPE_STRINGIFY(__LINE__));
}

// The one place a grpc::Status becomes a geopipe error. `what` names the
// operation, both ranks, the peer's address and the tag. Refusals by the
// peer's service (and gRPC's own framing errors) are ProtocolError, an
// expired deadline TimeoutError, everything else (unreachable, reset,
// cancelled, shut down) IoError.
Failure failureFromStatus(const grpc::Status& status, const std::string& what) {
  Failure f;
  switch (status.error_code()) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      f.kind = ErrorKind::TIMEOUT;
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::DATA_LOSS:
      f.kind = ErrorKind::PROTOCOL;
      break;
    default:
      f.kind = ErrorKind::IO;
  }
  f.message = detail::concat(what, " failed: grpc status ", statusCodeName(status.error_code()),
                             " (", static_cast<int>(status.error_code()), ")",
                             status.error_message().empty() ? "" : ": ", status.error_message());
  return f;
}

void tagToWire(const Tag& tag, geopipe::v1::PeerTag* t) {
  t->set_channel(static_cast<uint32_t>(tag.channel));
  t->set_step(tag.step);
  t->set_micro_batch(tag.micro_batch);
  t->set_index(tag.index);
}

// "host" of "host:port" (IPv6 "[::1]:port" keeps its brackets).
std::string hostOf(const std::string& address) {
  const auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

// The plaintext policy for a peer address: the peer's, and the relay's when
// it goes through one (both carry the stream).
void checkRouteAllowed(const LinkSecurity& security, const std::string& address,
                       const std::string& what) {
  const PeerRoute route = parsePeerRoute(address);
  checkPlaintextAllowed(security, route.target, what);
  if (!route.relay.empty()) checkPlaintextAllowed(security, route.relay, what + " (its relay)");
}

}  // namespace

// ---------------------------------------------------------------------------
// The receiving side: one handler call per incoming stream, on a thread of
// the gRPC server. It validates every chunk, reassembles messages and hands
// them to the mailbox; admit() blocking here is the backpressure.

class PeerServiceImpl final : public PeerService::Service {
 public:
  PeerServiceImpl(PeerStreamAssembler::Config config, std::shared_ptr<Mailbox> mailbox,
                  std::shared_ptr<PeerSessions> sessions,
                  std::function<std::string(int)> describe_peer)
      : config_(std::move(config)),
        mailbox_(std::move(mailbox)),
        sessions_(std::move(sessions)),
        describe_peer_(std::move(describe_peer)) {}

  grpc::Status Stream(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<PeerAck, PeerChunk>* stream) override {
    try {
      return serve(context, stream);
    } catch (const std::exception& e) {
      // Nothing a peer sends may take the server down.
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          detail::concat("rank ", config_.rank, " failed on a stream: ", e.what()));
    }
  }

 private:
  // Reads the stream's chunks into a PeerStreamAssembler (peer_stream.h),
  // which checks them, reassembles messages and tells how the stream ends.
  grpc::Status serve(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<PeerAck, PeerChunk>* stream) {
    PeerStreamAssembler assembler(
        config_, mailbox_, sessions_, describe_peer_, [context] { return context->IsCancelled(); },
        // A sender that is gone cannot read it; its resume asks again.
        [stream](const PeerAck& ack) { stream->Write(ack); });
    PeerChunk chunk;
    while (stream->Read(&chunk)) {
      grpc::Status status = assembler.onChunk(chunk);
      if (!status.ok()) return status;
    }
    return assembler.onEnd();
  }

  const PeerStreamAssembler::Config config_;
  const std::shared_ptr<Mailbox> mailbox_;
  const std::shared_ptr<PeerSessions> sessions_;
  const std::function<std::string(int)> describe_peer_;
};

// ---------------------------------------------------------------------------
// The sending side towards one peer: a queue of messages and the thread
// that connects, opens the stream and writes them, in order, in chunks.
// With a link grace, a stream that breaks is replaced by one that resumes
// it: the messages the receiver has not acknowledged are written again.

class PeerLink {
 public:
  struct Config {
    int rank = 0;
    int peer = 0;
    std::string address;
    std::string job_token;
    size_t chunk_bytes = 0;
    Duration connect_timeout{0};
    Duration keepalive{0};
    Duration link_grace{0};
    uint64_t incarnation = 0;
    LinkSecurity security;
    // Told when the peer's process is known to be gone (its host refuses
    // the reconnect): the transport fails the receives from it too, which
    // would otherwise wait out the grace.
    std::function<void(const std::string&)> on_peer_gone;
  };
  explicit PeerLink(Config config) : config_(std::move(config)) {}
  ~PeerLink() {
    cancel();
    join();
  }

  std::string describeSend(const Tag& tag) const {
    return detail::concat("grpc: send from rank ", config_.rank, " to rank ", config_.peer, " (",
                          config_.address, "), tag ", tag.str());
  }

  std::shared_ptr<Work> enqueue(const Tag& tag, Bytes payload) {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) {
      sends_failed_ += 1;
      return std::make_shared<FinishedWork>(toException(Failure{
          failure_->kind, detail::concat(describeSend(tag), " failed: the stream to rank ",
                                         config_.peer, " broke earlier: ", failure_->message)}));
    }
    if (closing_) {
      sends_failed_ += 1;
      return std::make_shared<FinishedWork>(
          GEOPIPE_ERROR_PTR(IoError, describeSend(tag), " failed: the transport is closing"));
    }
    auto work = std::make_shared<PendingWork>(describeSend(tag));
    queue_.push_back(Outgoing{tag, std::make_shared<const Bytes>(std::move(payload)), work, 0});
    if (!started_) {
      started_ = true;
      writer_ = std::thread([this] { run(); });
    }
    cv_.notify_all();
    return work;
  }

  // No more sends; the writer drains the queue, then closes the stream.
  void beginClose() {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    cv_.notify_all();
  }
  // Waits until the writer has finished, or `deadline`; true when finished.
  bool waitFinished(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_until(lock, deadline, [&] { return !started_ || finished_; });
  }
  // Cancels the stream: blocked writes and the final Finish return, queued
  // sends fail with IoError.
  void cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    cancelled_ = true;
    if (context_) context_->TryCancel();
    cv_.notify_all();
  }
  void join() {
    if (writer_.joinable()) writer_.join();
  }

 private:
  struct Outgoing {
    Tag tag;
    std::shared_ptr<const Bytes> payload;  // shared with gRPC while it writes it (chunkBytes)
    std::shared_ptr<PendingWork> work;     // null once completed
    uint64_t sequence = 0;              // set when first written
  };
  // How one stream ended: drained and closed cleanly, or broken.
  struct StreamEnd {
    bool drained = false;
    Failure failure;         // when broken
    bool resumable = false;  // a broken connection, not a refusal
    bool was_up = false;     // it carried messages (a resume was accepted)
  };

  std::shared_ptr<grpc::Channel> makeChannel() const {
    grpc::ChannelArguments args;
    // Own connection per link, so one stalled peer's stream never shares an
    // HTTP/2 connection (and its window) with another's.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxSendMessageSize(kMaxFrameBytes);
    args.SetMaxReceiveMessageSize(kMaxAckBytes);
    // Reconnect attempts at most 1 s apart (gRPC's default backoff grows to
    // 2 minutes), so a resumed link or a late peer is reached in seconds.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // gRPC takes its "minimum reconnect backoff" as the time one attempt may
    // take (TCP, TLS and HTTP/2 set-up, and the relay's dial-back), not as a
    // pause: at 100 ms a far or busy peer's set-up was abandoned again and
    // again. connect() bounds the whole wait.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, kConnectAttemptMs);
    if (config_.keepalive.count() > 0) {
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(config_.keepalive.count()));
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(config_.keepalive.count()));
      args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
      args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    }
    // A relayed peer (relay.h): an HTTP CONNECT through the relay, TLS end
    // to end with the peer's name. A direct peer never goes through a proxy,
    // not even one named by http_proxy/https_proxy in the environment,
    // which gRPC would otherwise use.
    const PeerRoute route = parsePeerRoute(config_.address);
    if (route.relay.empty()) {
      args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
    } else {
      args.SetString(GRPC_ARG_HTTP_PROXY, "http://" + route.relay);
    }
    return grpc::CreateCustomChannel(route.target, channelCredentials(config_.security), args);
  }

  // gRPC's reason why the channel cannot connect: a fail-fast call on a
  // channel in TRANSIENT_FAILURE ends at once with the last attempt's error.
  static std::string probeConnectError(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = PeerService::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    auto stream = stub->Stream(&context);
    // Should the channel have connected meanwhile, the stream ends without
    // a chunk, which the server treats as an unidentified peer leaving.
    stream->WritesDone();
    PeerAck ack;
    while (stream->Read(&ack)) {
    }
    return stream->Finish().error_message();
  }

  std::string linkName() const {
    return detail::concat("rank ", config_.rank, " to rank ", config_.peer, " (", config_.address,
                          ")");
  }

  // Cancelled (close() gave up waiting): a broken link is not resumed. A
  // link that breaks while close() drains it still is, within close_timeout.
  bool cancelledNow() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

  // Fails the messages not yet written (or written on a stream that broke)
  // and every queued one; later sends fail in enqueue().
  void failAll(const Failure& failure, std::deque<Outgoing>& unacked) {
    std::deque<Outgoing> queued;
    {
      std::lock_guard<std::mutex> lock(mu_);
      failure_ = failure;
      queued.swap(queue_);
    }
    bool first = true;
    for (auto* list : {&unacked, &queued}) {
      for (auto& m : *list) {
        if (!m.work) continue;
        sends_failed_ += 1;
        // The message being written gets the failure as is; the others
        // their own context.
        m.work->completion().fail(
            first && list == &unacked
                ? toException(failure)
                : toException(Failure{failure.kind, detail::concat(describeSend(m.tag),
                                                                   " failed: ", failure.message)}));
        first = false;
      }
    }
    unacked.clear();
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    cv_.notify_all();
  }

  PeerChunk header() const {
    PeerChunk chunk;
    chunk.set_protocol_version(kProtocolVersion);
    chunk.set_source_rank(config_.rank);
    chunk.set_destination_rank(config_.peer);
    chunk.set_job_token(config_.job_token);
    chunk.set_incarnation(config_.incarnation);
    return chunk;
  }

  bool writeMessage(PeerWriter* stream, const Outgoing& m) {
    PeerChunk chunk = header();
    tagToWire(m.tag, chunk.mutable_tag());
    chunk.set_sequence(m.sequence);
    const uint64_t total = m.payload->size();
    chunk.set_total_size(total);
    uint64_t offset = 0;
    do {
      const uint64_t n = std::min<uint64_t>(config_.chunk_bytes, total - offset);
      chunk.set_offset(offset);
      if (!stream->Write(chunkBytes(chunk, m.payload, offset, n))) return false;
      offset += n;
    } while (offset < total);
    return true;
  }

  enum class Connect { CONNECTED, TIMED_OUT, CANCELLED, FAILED, REFUSED };
  // Waits until the channel is connected, retrying until `deadline` (the
  // peer may not be up yet, or the network is down). TIMED_OUT: `why` holds
  // gRPC's last error (may be empty); FAILED: a set-up error no retry can
  // fix, the link has failed already. A link that worked before (`again`)
  // has no set-up error: whatever fails its reconnects is the network, or
  // (REFUSED, `why` says so) a peer host that refuses the connection: the
  // peer's process is gone, which no grace brings back.
  Connect connect(const std::shared_ptr<grpc::Channel>& channel, Clock::time_point deadline,
                  bool again, std::deque<Outgoing>& unacked, std::string* why) {
    const std::string peer_name =
        detail::concat("rank ", config_.peer, "'s peer service at ", config_.address);
    std::string last_error;  // gRPC's reason for the last failed attempt
    auto next_probe = Clock::now();
    while (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                      std::chrono::milliseconds(100))) {
      connect_retries_ += 1;
      bool cancelled;
      {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled = cancelled_;
      }
      // A peer that is not up yet is waited for; one that is up but fails
      // the TLS handshake never will be, so that ends the wait at once.
      if (!cancelled && channel->GetState(false) == GRPC_CHANNEL_TRANSIENT_FAILURE &&
          Clock::now() >= next_probe) {
        next_probe = Clock::now() + std::chrono::seconds(1);
        last_error = probeConnectError(channel);
        if (again && (last_error.find("Connection refused") != std::string::npos ||
                      last_error.find("connection refused") != std::string::npos)) {
          *why = last_error;
          return Connect::REFUSED;
        }
        const std::string advice =
            again ? std::string()
                  : explainHandshakeFailure(last_error, config_.security, peer_name);
        if (!advice.empty()) {
          // Set-up (certificates, TLS on one side only): no retry or
          // recovery can fix it, so it is a configuration error.
          failAll(Failure{ErrorKind::CONFIG,
                          detail::concat("grpc: connect from ", linkName(), " failed: ", advice,
                                         " [", last_error, "]")},
                  unacked);
          return Connect::FAILED;
        }
      }
      if (cancelled) return Connect::CANCELLED;
      if (Clock::now() >= deadline) {
        *why = last_error;
        return Connect::TIMED_OUT;
      }
    }
    return Connect::CONNECTED;
  }

  // One stream: resumes the broken one before it when `resume` (a resume
  // frame, the receiver's acknowledgement, the unacknowledged messages
  // again), then writes queued messages until the transport closes (a
  // goodbye, drained) or the stream breaks.
  StreamEnd runStream(const std::shared_ptr<grpc::Channel>& channel, bool resume,
                      std::deque<Outgoing>& unacked, uint64_t& next_seq) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      context_ = std::make_unique<grpc::ClientContext>();
      if (cancelled_) context_->TryCancel();
      server_ended_ = false;
      stream_acked_ = false;
    }
    std::unique_ptr<PeerWriter> stream = openPeerStream(channel, context_.get());
    // The server acknowledges delivered messages; Read() also returns when
    // the server ends the call (a refusal, its shutdown, a broken
    // connection), which wakes the writer even while it has nothing to write.
    std::thread reader([this, &stream] {
      PeerAck ack;
      while (stream->Read(&ack)) {
        std::lock_guard<std::mutex> lock(mu_);
        acked_ = std::max(acked_, ack.sequence());
        if (receiver_incarnation_ == 0) receiver_incarnation_ = ack.incarnation();
        if (!stream_acked_) {
          stream_acked_ = true;
          first_ack_ = ack;
        }
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lock(mu_);
      server_ended_ = true;
      cv_.notify_all();
    });
    // Finish() may run only after the reader has seen the end of the call.
    auto finishCall = [&]() {
      reader.join();
      return stream->Finish();
    };
    bool up = false;
    auto broken = [&](const std::string& what) {
      const grpc::Status status = finishCall();
      StreamEnd end;
      end.was_up = up;
      end.failure = failureFromStatus(
          status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "the peer ended the stream")
                      : status,
          what);
      end.resumable = end.failure.kind == ErrorKind::IO || end.failure.kind == ErrorKind::TIMEOUT;
      return end;
    };
    auto refused = [&](const std::string& why) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        context_->TryCancel();
      }
      finishCall();
      StreamEnd end;
      end.failure = Failure{ErrorKind::IO, detail::concat("grpc: resuming the link from ",
                                                          linkName(), " failed: ", why)};
      return end;
    };
    const std::string stream_name = detail::concat("grpc: stream from ", linkName());
    up = !resume;
    if (resume) {
      PeerChunk hello = header();
      hello.set_resume(true);
      // The oldest message this side still holds: 0 when the receiver has
      // acknowledged nothing (the first stream may have broken before the
      // receiver saw it; then it starts the session afresh).
      hello.set_sequence(unacked.empty() ? next_seq : unacked.front().sequence);
      if (!stream->Write(frameBytes(hello))) return broken(stream_name);
      PeerAck ack;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::seconds(10),
                     [&] { return stream_acked_ || server_ended_ || cancelled_; });
        if (!stream_acked_) {
          lock.unlock();
          if (server_ended_ || cancelled_) return broken(stream_name);
          return refused("no answer to the resume frame within 10 s");
        }
        ack = first_ack_;
      }
      if (ack.incarnation() != receiver_incarnation_) {
        // (the first acknowledgement of the link fixed receiver_incarnation_)
        return refused(detail::concat("rank ", config_.peer,
                                      " restarted (its transport is a new one); the messages "
                                      "in flight are lost"));
      }
      const uint64_t oldest = unacked.empty() ? next_seq : unacked.front().sequence;
      if (ack.sequence() < oldest || ack.sequence() > next_seq) {
        return refused(detail::concat("rank ", config_.peer, " expects message ", ack.sequence(),
                                      ", this rank holds messages ", oldest, " to ", next_seq));
      }
      while (!unacked.empty() && unacked.front().sequence < ack.sequence()) unacked.pop_front();
      for (Outgoing& m : unacked) {
        if (!writeMessage(stream.get(), m)) return broken(describeSend(m.tag));
        if (m.work) {
          m.work->completion().succeed();
          m.work.reset();
        }
      }
      messages_resent_ += unacked.size();
      resumes_ += 1;
      spdlog::info("grpc: the link from {} resumed after {:.1f} s; {} message(s) sent again",
                   linkName(), std::chrono::duration<double>(Clock::now() - broken_at_).count(),
                   unacked.size());
      up = true;
    }
    while (true) {
      bool ended = false;
      bool drained = false;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] {
          return !queue_.empty() || closing_ || server_ended_ ||
                 (!unacked.empty() && acked_ > unacked.front().sequence);
        });
        while (!unacked.empty() && unacked.front().sequence < acked_) unacked.pop_front();
        if (server_ended_) {
          ended = true;
        } else if (!queue_.empty()) {
          unacked.push_back(std::move(queue_.front()));
          queue_.pop_front();
          unacked.back().sequence = next_seq++;
        } else if (closing_) {
          drained = true;
        } else {
          continue;  // an acknowledgement freed retained messages
        }
      }
      if (ended) return broken(stream_name);
      if (drained) break;
      Outgoing& m = unacked.back();
      if (!writeMessage(stream.get(), m)) return broken(describeSend(m.tag));
      m.work->completion().succeed();
      m.work.reset();
      // A resumable link keeps the message until the receiver acknowledges it.
      if (!resumable()) unacked.pop_back();
    }
    // Drained: half-close and wait until the peer has read everything (or
    // close() cancels us after close_timeout).
    PeerChunk goodbye = header();
    goodbye.set_end_of_stream(true);
    if (stream->Write(frameBytes(goodbye))) stream->WritesDone();
    const grpc::Status status = finishCall();
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      failure_ = failureFromStatus(status, "grpc: closing the stream from " + linkName());
    }
    StreamEnd end;
    end.drained = true;
    return end;
  }

  // Whether a broken stream is resumed (the receiver acknowledges what it
  // delivered, so unacknowledged messages are kept for a resend).
  bool resumable() const { return config_.incarnation != 0 && config_.link_grace.count() > 0; }

  void run() {
    auto channel = makeChannel();
    std::deque<Outgoing> unacked;  // written (in whole or in part), not acknowledged
    uint64_t next_seq = 0;         // the next new message's sequence
    std::string why;
    // Connect, retrying until connect_timeout (the peer may not be up yet).
    const Connect first =
        connect(channel, deadlineAfter(config_.connect_timeout), false, unacked, &why);
    if (first != Connect::CONNECTED) {
      if (first != Connect::FAILED) {
        const std::string reason =
            first == Connect::CANCELLED
                ? std::string("the transport was closed before the peer accepted a connection")
                : detail::concat("no connection within ", config_.connect_timeout.count(),
                                 " ms (connect_timeout); is the peer running?",
                                 why.empty() ? "" : " Last error: " + why);
        failAll(failureFromStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, reason),
                                  "grpc: connect from " + linkName()),
                unacked);
      }
      finish();
      return;
    }
    bool resume = false;
    std::string first_break;  // what broke the link, while it is down
    while (true) {
      StreamEnd end = runStream(channel, resume, unacked, next_seq);
      if (end.drained) break;
      if (!end.resumable || !resumable() || cancelledNow()) {
        failAll(end.failure, unacked);
        break;
      }
      if (end.was_up || first_break.empty()) {
        broken_at_ = Clock::now();
        first_break = end.failure.message;
        spdlog::warn("{}; reconnecting for up to {} s (fault_tolerance.link_grace)",
                     end.failure.message, seconds(config_.link_grace));
      }
      const Connect again = connect(channel, broken_at_ + config_.link_grace, true, unacked, &why);
      if (again == Connect::REFUSED) {
        const std::string gone =
            detail::concat("rank ", config_.peer, " (", config_.address,
                           ") is gone: the link to it broke and its host now refuses connections");
        failAll(Failure{ErrorKind::IO,
                        detail::concat("grpc: the link from ", linkName(), " broke (", first_break,
                                       ") and rank ", config_.peer,
                                       "'s host now refuses connections: its process is gone [",
                                       why, "]")},
                unacked);
        if (config_.on_peer_gone) config_.on_peer_gone(gone);
      } else if (again == Connect::TIMED_OUT || again == Connect::CANCELLED) {
        failAll(
            Failure{ErrorKind::IO,
                    detail::concat("grpc: the link from ", linkName(), " broke (", first_break,
                                   ") and did not come back within ", seconds(config_.link_grace),
                                   " s (fault_tolerance.link_grace)",
                                   why.empty() ? "" : "; last error: " + why)},
            unacked);
      }
      if (again != Connect::CONNECTED) break;
      resume = true;
    }
    finish();
  }

  static int64_t seconds(Duration d) {
    return std::chrono::duration_cast<std::chrono::seconds>(d).count();
  }

  const Config config_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Outgoing> queue_;
  bool started_ = false;
  bool closing_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
  bool server_ended_ = false;          // the reader saw the current call end
  uint64_t acked_ = 0;                 // every message before it was delivered
  bool stream_acked_ = false;          // the current stream carried an acknowledgement
  PeerAck first_ack_;                  // its first
  uint64_t receiver_incarnation_ = 0;  // the receiver's, from the link's first ack
  Clock::time_point broken_at_;        // when the link last broke (writer thread)
  std::optional<Failure> failure_;
  std::unique_ptr<grpc::ClientContext> context_;  // set by the writer
  std::thread writer_;

 public:
  // For TransportStats.
  std::atomic<uint64_t> connect_retries_{0};
  std::atomic<uint64_t> sends_failed_{0};
  std::atomic<uint64_t> resumes_{0};
  std::atomic<uint64_t> messages_resent_{0};
};

// ---------------------------------------------------------------------------

class GrpcTransport::Impl {
 public:
  explicit Impl(GrpcTransportOptions options)
      : options_(std::move(options)),
        world_size_(static_cast<int>(options_.addresses.size())),
        addresses_(options_.addresses),
        links_(options_.addresses.size()) {
    GEOPIPE_CHECK(world_size_ >= 1, Error,
                  "GrpcTransport: GrpcTransportOptions::addresses is empty; give every rank's "
                  "host:port (its size is the world size)");
    GEOPIPE_CHECK(options_.rank >= 0 && options_.rank < world_size_, Error, "GrpcTransport: rank ",
                  options_.rank, " is outside the world [0, ", world_size_, ")");
    GEOPIPE_CHECK(options_.chunk_bytes > 0 && options_.chunk_bytes <= kMaxChunkBytes, Error,
                  "GrpcTransport: chunk_bytes ", options_.chunk_bytes, " must be in (0, ",
                  kMaxChunkBytes, "]");
    GEOPIPE_CHECK(options_.max_buffered_bytes > 0 && options_.max_message_bytes > 0, Error,
                  "GrpcTransport: max_buffered_bytes and max_message_bytes must be positive");
    std::string listen =
        options_.listen_address.empty() ? addresses_[options_.rank] : options_.listen_address;
    GEOPIPE_CHECK(!listen.empty(), Error, "GrpcTransport: rank ", options_.rank,
                  " has no listen address (set listen_address or addresses[rank])");
    checkPlaintextAllowed(options_.security, listen,
                          detail::concat("rank ", options_.rank, "'s peer service address"));
    for (int r = 0; r < world_size_; ++r) {
      if (!addresses_[r].empty() && r != options_.rank) {
        checkRouteAllowed(options_.security, addresses_[r],
                          detail::concat("rank ", r, "'s address"));
      }
    }

    Mailbox::Options mailbox;
    mailbox.transport = "grpc";
    mailbox.rank = options_.rank;
    mailbox.world_size = world_size_;
    mailbox.max_buffered_bytes = options_.max_buffered_bytes;
    mailbox.describe_peer = [this](int src) { return describePeer(src); };
    mailbox_ = std::make_shared<Mailbox>(std::move(mailbox));
    sessions_ = std::make_shared<PeerSessions>(world_size_);
    std::random_device entropy;
    while (incarnation_ == 0)
      incarnation_ = (uint64_t{entropy()} << 32) ^ entropy() ^
                     static_cast<uint64_t>(Clock::now().time_since_epoch().count());
    PeerStreamAssembler::Config config;
    config.rank = options_.rank;
    config.world_size = world_size_;
    config.job_token = options_.job_token;
    config.max_message_bytes = options_.max_message_bytes;
    config.incarnation = incarnation_;
    config.resumable = options_.link_grace.count() > 0;
    service_ = std::make_unique<PeerServiceImpl>(config, mailbox_, sessions_,
                                                 [this](int src) { return describePeer(src); });

    // Connections come through the gate, which bounds those still in their
    // set-up before gRPC sees them. Its socket never shares a port with
    // another process (no SO_REUSEPORT, which would split connections
    // between two jobs' ranks).
    gate_.emplace(listen, ConnectionLimits{},
                  detail::concat("rank ", options_.rank, "'s peer service (", listen, ")"));
    const int port = gate_->port();
    grpc::ServerBuilder builder;
    gate_->serve(builder, serverCredentials(options_.security));
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(kMaxFrameBytes);
    builder.SetMaxSendMessageSize(kMaxAckBytes);
    if (options_.keepalive.count() > 0) {
      builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                                 static_cast<int>(options_.keepalive.count() / 2));
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    }
    server_ = builder.BuildAndStart();
    if (!server_) {
      GEOPIPE_THROW(IoError, "grpc: rank ", options_.rank, "'s peer server did not start on ",
                    listen);
    }
    gate_->start();
    listening_address_ = detail::concat(hostOf(listen), ":", port);
    if (options_.same_host_sockets) {
      same_host_ = sameHostConfig();
      same_host_listener_ = std::make_unique<SameHostListener>(same_host_, port);
    }
    if (addresses_[options_.rank].empty()) addresses_[options_.rank] = listening_address_;
    if (options_.link_grace.count() > 0) grace_timer_ = std::thread([this] { expireLinks(); });
  }

  ~Impl() { close(); }

  std::string describePeer(int peer) const {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string& a = addresses_[peer];
    return detail::concat("rank ", peer, " (", a.empty() ? "address unknown" : a, ")");
  }

  std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) {
    GEOPIPE_CHECK(peer >= 0 && peer < world_size_, Error, "grpc: send from rank ", options_.rank,
                  " to rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                  world_size_, ")");
    GEOPIPE_CHECK(payload.size() <= options_.max_message_bytes, Error, "grpc: send from rank ",
                  options_.rank, " to rank ", peer, " (tag ", tag.str(), "): ", payload.size(),
                  " bytes is over max_message_bytes ", options_.max_message_bytes);
    if (closed_.load()) {
      return std::make_shared<FinishedWork>(GEOPIPE_ERROR_PTR(
          IoError, "grpc: send from rank ", options_.rank, " to ", describePeer(peer), ", tag ",
          tag.str(), " failed: the transport was closed"));
    }
    sent_.count(peer, payload.size());
    if (peer == options_.rank) {
      mailbox_->deliver(options_.rank, tag, std::move(payload));
      return std::make_shared<FinishedWork>();
    }
    if (SameHostLink* local = sameHostLink(peer)) return local->send(tag, std::move(payload));
    PeerLink* link = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!links_[peer]) {
        if (addresses_[peer].empty()) {
          return std::make_shared<FinishedWork>(
              GEOPIPE_ERROR_PTR(IoError, "grpc: send from rank ", options_.rank, " to rank ", peer,
                                ", tag ", tag.str(), " failed: no address is known for rank ", peer,
                                " (GrpcTransportOptions::addresses / setPeerAddress)"));
        }
        PeerLink::Config config;
        config.rank = options_.rank;
        config.peer = peer;
        config.address = addresses_[peer];
        config.job_token = options_.job_token;
        config.chunk_bytes = options_.chunk_bytes;
        config.connect_timeout = options_.connect_timeout;
        config.keepalive = options_.keepalive;
        config.link_grace = options_.link_grace;
        config.incarnation = options_.link_grace.count() > 0 ? incarnation_ : 0;
        config.on_peer_gone = [mailbox = mailbox_, peer](const std::string& why) {
          mailbox->failSource(peer, ErrorKind::IO, why);
        };
        config.security = options_.security;
        links_[peer] = std::make_unique<PeerLink>(std::move(config));
      }
      link = links_[peer].get();
    }
    return link->enqueue(tag, std::move(payload));
  }

  // The same-host link to `peer`, looked for on the first send to it; null:
  // gRPC (off, another host, a relayed peer, or nobody of this job answers).
  // The handshake (at most about 2 s) holds only this peer's sends.
  SameHostLink* sameHostLink(int peer) {
    if (!options_.same_host_sockets) return nullptr;
    const auto p = static_cast<size_t>(peer);
    // Decided (every send after the first): no lock. same_host_links_[p] is
    // written before the flag is released and never again.
    if (same_host_decided_[p].load(std::memory_order_acquire)) return same_host_links_[p].get();
    std::lock_guard<std::mutex> deciding(same_host_deciding_[p]);
    std::string address;
    {
      std::lock_guard<std::mutex> once(same_host_mu_);
      if (same_host_tried_[peer]) return same_host_links_[peer].get();
      std::lock_guard<std::mutex> lock(mu_);
      if (links_[peer]) return nullptr;  // gRPC already carries its messages
      address = addresses_[peer];
      if (address.empty()) return nullptr;  // send() reports it
      same_host_tried_[peer] = true;
    }
    SameHostLink* link = connectSameHost(peer, address);
    same_host_decided_[p].store(true, std::memory_order_release);
    return link;
  }

  // The handshake with `peer` at `address`; null: gRPC.
  SameHostLink* connectSameHost(int peer, const std::string& address) {
    const PeerRoute route = parsePeerRoute(address);
    if (!route.relay.empty()) return nullptr;
    const auto colon = route.target.rfind(':');
    int port = 0;
    try {
      port = colon == std::string::npos ? 0 : std::stoi(route.target.substr(colon + 1));
    } catch (const std::exception&) {
      return nullptr;
    }
    std::unique_ptr<SameHostLink> link = SameHostLink::connect(same_host_, peer, port);
    if (!link) return nullptr;
    spdlog::debug("grpc: rank {} reaches rank {} over the same-host path", options_.rank, peer);
    std::lock_guard<std::mutex> once(same_host_mu_);
    // close() went through the links meanwhile: this one closes now (its
    // sends fail as the transport's do).
    if (closed_.load()) link->close(Clock::now());
    same_host_links_[peer] = std::move(link);
    return same_host_links_[peer].get();
  }

  SameHostConfig sameHostConfig() {
    SameHostConfig c;
    c.rank = options_.rank;
    c.world_size = world_size_;
    c.job_token = options_.job_token;
    c.max_message_bytes = options_.max_message_bytes;
    c.mailbox = mailbox_;
    c.describe_peer = [this](int src) { return describePeer(src); };
    return c;
  }

  std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) {
    GEOPIPE_CHECK(peer >= 0 && peer < world_size_, Error, "grpc: recv on rank ", options_.rank,
                  " from rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                  world_size_, ")");
    return mailbox_->post(peer, tag);
  }

  TransportStats stats() const {
    TransportStats s;
    sent_.addTo(s);
    s.messages_received = mailbox_->messagesReceived();
    s.bytes_received = mailbox_->bytesReceived();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& link : links_) {
        if (!link) continue;
        s.connect_retries += link->connect_retries_.load();
        s.sends_failed += link->sends_failed_.load();
        s.links_resumed += link->resumes_.load();
        s.messages_resent += link->messages_resent_.load();
      }
    }
    std::lock_guard<std::mutex> once(same_host_mu_);  // never with mu_ held (lock order)
    for (const auto& link : same_host_links_) {
      if (!link) continue;
      s.same_host_messages += link->messagesSent();
      s.sends_failed += link->sendsFailed();
    }
    return s;
  }

  void setPeerAddress(int peer, const std::string& address) {
    GEOPIPE_CHECK(peer >= 0 && peer < world_size_, Error, "grpc: setPeerAddress: rank ", peer,
                  " is outside the world [0, ", world_size_, ")");
    checkRouteAllowed(options_.security, address, detail::concat("rank ", peer, "'s address"));
    std::lock_guard<std::mutex> once(same_host_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    GEOPIPE_CHECK(!links_[peer] && !same_host_tried_[peer], Error, "grpc: setPeerAddress(", peer,
                  ", ", address, ") after rank ", options_.rank, " already connected to it at ",
                  addresses_[peer]);
    addresses_[peer] = address;
  }

  void adoptConnection(int fd) {
    if (closed_.load()) {
      ::close(fd);
      return;
    }
    try {
      gate_->adopt(fd);
    } catch (...) {
      ::close(fd);  // the gate stopped meanwhile (close() is under way)
      throw;
    }
  }

  void close() {
    std::lock_guard<std::mutex> close_lock(close_mu_);
    if (closed_.exchange(true)) return;
    std::vector<PeerLink*> links;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& l : links_) {
        if (l) links.push_back(l.get());
      }
    }
    // 1. Drain our outgoing streams while our own service still reads, so
    //    ranks that close at the same time drain into each other.
    for (PeerLink* l : links) l->beginClose();
    const auto deadline = deadlineAfter(options_.close_timeout);
    std::vector<SameHostLink*> same_host;  // never removed before ~Impl
    {
      std::lock_guard<std::mutex> once(same_host_mu_);
      for (auto& l : same_host_links_) {
        if (l) same_host.push_back(l.get());
      }
    }
    for (SameHostLink* l : same_host) l->close(deadline);
    for (PeerLink* l : links) {
      if (!l->waitFinished(deadline)) l->cancel();
    }
    for (PeerLink* l : links) l->join();
    // 2. Stop receiving: release handlers blocked on the budget, fail the
    //    pending receives, cancel the incoming streams.
    mailbox_->close(
        detail::concat("the transport was closed (rank ", options_.rank, " closed its transport)"));
    {
      std::lock_guard<std::mutex> lock(grace_mu_);
      grace_cv_.notify_all();
    }
    if (grace_timer_.joinable()) grace_timer_.join();
    if (same_host_listener_) same_host_listener_->stop();
    if (gate_) gate_->stop();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server_->Wait();
  }

  std::string listeningAddress() const { return listening_address_; }
  uint64_t bufferedBytes() const { return mailbox_->bufferedBytes(); }

  // The receiving side's half of the link grace: a sender whose stream
  // broke and did not resume within link_grace is given up; its receives
  // fail.
  void expireLinks() {
    std::unique_lock<std::mutex> lock(grace_mu_);
    while (!closed_.load()) {
      grace_cv_.wait_for(lock, std::chrono::milliseconds(200));
      for (int src : sessions_->expire(Clock::now(), options_.link_grace)) {
        mailbox_->failSource(
            src, ErrorKind::IO,
            detail::concat(
                "the stream from ", describePeer(src), " broke and was not resumed within ",
                std::chrono::duration_cast<std::chrono::seconds>(options_.link_grace).count(),
                " s (fault_tolerance.link_grace): the peer died or its network is down"));
      }
    }
  }
  int rank() const { return options_.rank; }
  int worldSize() const { return world_size_; }

 private:
  const GrpcTransportOptions options_;
  const int world_size_;
  mutable std::mutex mu_;  // guards addresses_ and links_
  std::vector<std::string> addresses_;
  std::vector<std::unique_ptr<PeerLink>> links_;  // by peer rank; created on first send
  SendTally sent_{world_size_};
  std::mutex close_mu_;
  std::atomic<bool> closed_{false};
  std::string listening_address_;
  std::shared_ptr<Mailbox> mailbox_;
  std::shared_ptr<PeerSessions> sessions_;
  uint64_t incarnation_ = 0;  // this transport's random identity
  std::mutex grace_mu_;
  std::condition_variable grace_cv_;
  std::thread grace_timer_;  // expireLinks(), with a link grace only
  // The same-host path (same_host_sockets): decided per peer on its first
  // send (under that peer's same_host_deciding_). same_host_mu_ guards the
  // two vectors and is taken before mu_, never after it.
  SameHostConfig same_host_;
  std::unique_ptr<SameHostListener> same_host_listener_;
  std::unique_ptr<std::mutex[]> same_host_deciding_ =
      std::make_unique<std::mutex[]>(static_cast<size_t>(world_size_));
  // Set once per peer when decided, read without a lock by later sends.
  std::unique_ptr<std::atomic<bool>[]> same_host_decided_ =
      std::make_unique<std::atomic<bool>[]>(static_cast<size_t>(world_size_));
  mutable std::mutex same_host_mu_;
  std::vector<bool> same_host_tried_ = std::vector<bool>(static_cast<size_t>(world_size_));
  std::vector<std::unique_ptr<SameHostLink>> same_host_links_ =
      std::vector<std::unique_ptr<SameHostLink>>(static_cast<size_t>(world_size_));
  std::optional<ConnectionGate> gate_;  // accepts the server's connections
  std::unique_ptr<PeerServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;  // destroyed first: stops the handlers
};

GrpcTransport::GrpcTransport(GrpcTransportOptions options)
    : impl_((installGrpcLogging(), std::make_unique<Impl>(std::move(options)))) {}
GrpcTransport::~GrpcTransport() = default;

int GrpcTransport::rank() const {
  return impl_->rank();
}
int GrpcTransport::worldSize() const {
  return impl_->worldSize();
}
std::shared_ptr<Work> GrpcTransport::send(int peer, const Tag& tag, Bytes payload) {
  return impl_->send(peer, tag, std::move(payload));
}
std::shared_ptr<RecvWork> GrpcTransport::recv(int peer, const Tag& tag) {
  return impl_->recv(peer, tag);
}
TransportStats GrpcTransport::stats() const {
  return impl_->stats();
}
std::string GrpcTransport::listeningAddress() const {
  return impl_->listeningAddress();
}
void GrpcTransport::adoptConnection(int fd) {
  impl_->adoptConnection(fd);
}

void GrpcTransport::setPeerAddress(int peer, const std::string& address) {
  impl_->setPeerAddress(peer, address);
}
uint64_t GrpcTransport::bufferedBytes() const {
  return impl_->bufferedBytes();
}
void GrpcTransport::close() {
  impl_->close();
}

void registerGrpcTransport() {
  registerTransportKind("grpc", [](const TransportOptions& options) {
    GrpcTransportOptions grpc_options;
    grpc_options.rank = options.rank;
    grpc_options.addresses = options.addresses;
    grpc_options.listen_address = options.listen_address;
    grpc_options.job_token = options.job_token;
    grpc_options.link_grace = options.link_grace;
    return std::make_shared<GrpcTransport>(std::move(grpc_options));
  });
}

const char* statusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return "UNRECOGNIZED";
  }
}

}  // namespace geopipe::transport
