// PeerStreamAssembler: the checks and reassembly of one incoming peer
// stream (moved out of the gRPC service so that it can be fuzzed).
#include "src/transport/grpc/peer_stream.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "geopipe/error.h"
#include "src/security/token.h"

namespace geopipe::transport {
namespace {

constexpr uint32_t kProtocolVersion = geopipe::v1::PEER_PROTOCOL_CURRENT;

bool validChannel(uint32_t channel) {
  return channel >= static_cast<uint32_t>(Channel::ACTIVATION) &&
         channel <= static_cast<uint32_t>(Channel::CONTROL);
}

Tag tagFromWire(const geopipe::v1::PeerTag& t) {
  Tag tag;
  tag.channel = static_cast<Channel>(t.channel());
  tag.step = t.step();
  tag.micro_batch = t.micro_batch();
  tag.index = t.index();
  return tag;
}

}  // namespace

// --- PeerSessions ------------------------------------------------------------

PeerSessions::PeerSessions(int world_size) : sessions_(static_cast<size_t>(world_size)) {}

bool PeerSessions::attach(int src, uint64_t incarnation, bool resume, uint64_t oldest,
                          Attached* out, std::string* why) {
  std::lock_guard<std::mutex> lock(mu_);
  Session& s = sessions_.at(static_cast<size_t>(src));
  if (resume && !s.open && incarnation != 0 && oldest == 0) {
    // The sender still holds every message from the first: its first stream
    // broke before this side saw a frame of it. A new session.
    s = Session{};
    s.open = true;
    s.incarnation = incarnation;
  } else if (resume) {
    if (incarnation == 0 || !s.open || s.incarnation != incarnation) {
      *why = s.open ? "it came back as another process (its incarnation changed)"
                    : "this rank holds no link state for it (this rank restarted, the link's "
                      "grace expired, or it closed the link)";
      return false;
    }
  } else {
    // A new sender (or the same one's first stream): a new session. One of
    // another incarnation is given up, not resumed: its stream, if still
    // open, ends as superseded.
    s = Session{};
    s.open = true;
    s.incarnation = incarnation;
  }
  s.epoch = ++last_epoch_;
  s.broken = false;
  out->epoch = s.epoch;
  out->next_seq = s.next_seq;
  return true;
}

bool PeerSessions::current(int src, uint64_t epoch) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Session& s = sessions_.at(static_cast<size_t>(src));
  return s.open && s.epoch == epoch;
}

bool PeerSessions::deliverIf(int src, uint64_t epoch, const std::function<void()>& deliver,
                             uint64_t* next_seq) {
  std::lock_guard<std::mutex> lock(mu_);
  Session& s = sessions_.at(static_cast<size_t>(src));
  if (!s.open || s.epoch != epoch) return false;
  deliver();
  *next_seq = ++s.next_seq;
  return true;
}

bool PeerSessions::detach(int src, uint64_t epoch, bool broken, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  Session& s = sessions_.at(static_cast<size_t>(src));
  if (!s.open || s.epoch != epoch) return false;
  if (broken) {
    s.broken = true;
    s.broken_at = now;
  } else {
    s = Session{};
  }
  return true;
}

std::vector<int> PeerSessions::expire(Clock::time_point now, Clock::duration grace) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int> gone;
  for (size_t src = 0; src < sessions_.size(); ++src) {
    Session& s = sessions_[src];
    if (s.open && s.broken && now - s.broken_at >= grace) {
      s = Session{};
      gone.push_back(static_cast<int>(src));
    }
  }
  return gone;
}

// --- PeerStreamAssembler -----------------------------------------------------

PeerStreamAssembler::PeerStreamAssembler(Config config, std::shared_ptr<Mailbox> mailbox,
                                         std::shared_ptr<PeerSessions> sessions,
                                         std::function<std::string(int)> describe_peer,
                                         std::function<bool()> cancelled,
                                         std::function<void(const geopipe::v1::PeerAck&)> ack)
    : config_(std::move(config)),
      mailbox_(std::move(mailbox)),
      sessions_(std::move(sessions)),
      describe_peer_(std::move(describe_peer)),
      cancelled_(std::move(cancelled)),
      ack_(std::move(ack)),
      // The job token is a secret: never part of a message.
      self_(detail::concat("rank ", config_.rank)) {}

PeerStreamAssembler::~PeerStreamAssembler() {
  // A stream abandoned mid-message (an exception in the handler) gives its
  // admitted bytes back.
  if (in_message_) mailbox_->release(total_);
}

// Ends the stream with `code`; when the sender's identity was already
// established, its receives fail with ProtocolError too.
grpc::Status PeerStreamAssembler::refuse(grpc::StatusCode code, const std::string& why) {
  if (in_message_) mailbox_->release(total_);
  in_message_ = false;
  finished_ = true;
  // A superseded stream's refusal is its own: the sender's newer stream
  // goes on.
  if (src_ >= 0 && sessions_->detach(src_, epoch_, false, PeerSessions::Clock::now())) {
    mailbox_->failSource(
        src_, ErrorKind::PROTOCOL,
        detail::concat(describe_peer_(src_), " sent a chunk that was refused: ", why));
  }
  return grpc::Status(code, detail::concat(self_, " refused the stream: ", why));
}

grpc::Status PeerStreamAssembler::onChunk(const geopipe::v1::PeerChunk& chunk) {
  GEOPIPE_CHECK(!finished_, Error, self_, ": a chunk after the stream was ended");
  // Identity: version, job, ranks. Nothing is attributed to a source rank
  // before these pass.
  if (chunk.protocol_version() != kProtocolVersion) {
    return refuse(grpc::StatusCode::FAILED_PRECONDITION,
                  detail::concat("peer speaks peer protocol version ", chunk.protocol_version(),
                                 ", this build speaks ", kProtocolVersion));
  }
  const int claimed = chunk.source_rank();
  if (!security::constantTimeEquals(chunk.job_token(), config_.job_token)) {
    return refuse(grpc::StatusCode::PERMISSION_DENIED,
                  detail::concat("peer claiming rank ", claimed,
                                 " presented a wrong job token: it is not a worker of this job "
                                 "run (another job on the same hosts, or a client that never "
                                 "joined the coordinator)"));
  }
  if (claimed < 0 || claimed >= config_.world_size) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  detail::concat("source rank ", claimed, " is outside the world [0, ",
                                 config_.world_size, ")"));
  }
  if (chunk.destination_rank() != config_.rank) {
    return refuse(
        grpc::StatusCode::FAILED_PRECONDITION,
        detail::concat("rank ", claimed, " addressed its chunks to rank ", chunk.destination_rank(),
                       " (do the ranks' address tables agree?)"));
  }
  if (src_ < 0) {
    src_ = claimed;
    if (grpc::Status st = attach(chunk); !st.ok()) return st;
    if (chunk.resume()) return grpc::Status::OK;
  } else if (claimed != src_) {
    return refuse(
        grpc::StatusCode::INVALID_ARGUMENT,
        detail::concat("source rank changed from ", src_, " to ", claimed, " within one stream"));
  } else if (chunk.incarnation() != incarnation_ || chunk.resume()) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  chunk.resume() ? std::string("a resume frame that is not the stream's first")
                                 : std::string("incarnation changed within one stream"));
  }
  if (!sessions_->current(src_, epoch_)) return superseded();
  if (said_goodbye_) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT, "frame after end_of_stream");
  }
  if (chunk.end_of_stream()) {
    if (in_message_) {
      return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    detail::concat("end_of_stream in the middle of message ", expected_seq_, " (",
                                   buffer_.size(), " of ", total_, " bytes)"));
    }
    said_goodbye_ = true;
    return grpc::Status::OK;
  }
  if (!validChannel(chunk.tag().channel())) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  detail::concat("unknown channel ", chunk.tag().channel(), " in message ",
                                 chunk.sequence()));
  }

  // Chunk sequence: contiguous, in order, within the announced size.
  if (!in_message_) {
    if (chunk.sequence() != expected_seq_) {
      return refuse(
          grpc::StatusCode::INVALID_ARGUMENT,
          detail::concat("message sequence ", chunk.sequence(), ", expected ", expected_seq_));
    }
    if (chunk.offset() != 0) {
      return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    detail::concat("first chunk of message ", chunk.sequence(), " has offset ",
                                   chunk.offset(), ", expected 0"));
    }
    if (chunk.total_size() > config_.max_message_bytes) {
      return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    detail::concat("message ", chunk.sequence(), " announces ", chunk.total_size(),
                                   " bytes, over this rank's limit of ", config_.max_message_bytes,
                                   " (max_message_bytes)"));
    }
    tag_ = tagFromWire(chunk.tag());
    total_ = chunk.total_size();
    if (!mailbox_->admit(src_, tag_, total_, [this] { return abandoned(); })) {
      if (!sessions_->current(src_, epoch_)) return superseded();
      const bool cancelled = cancelled_ && cancelled_();
      finished_ = true;
      mailbox_->failSource(
          src_, ErrorKind::IO,
          detail::concat(describe_peer_(src_), "'s stream ended while waiting for buffer space"));
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          detail::concat(self_, cancelled ? ": stream cancelled" : " is shutting down"));
    }
    in_message_ = true;
    buffer_ = Bytes();
    try {
      buffer_.reserve(std::min(total_, kMaxPreallocatedBytes));
    } catch (const std::bad_alloc&) {
      return refuse(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          detail::concat("cannot allocate ", total_, " bytes for message ", chunk.sequence()));
    }
  } else if (chunk.sequence() != expected_seq_ || chunk.total_size() != total_ ||
             tagFromWire(chunk.tag()) != tag_) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  detail::concat("chunk of message ", chunk.sequence(), " (tag ",
                                 tagFromWire(chunk.tag()).str(), ", total ", chunk.total_size(),
                                 ") interleaved with unfinished message ", expected_seq_, " (tag ",
                                 tag_.str(), ", total ", total_, ")"));
  }
  const uint64_t received = buffer_.size();
  const uint64_t size = chunk.data().size();
  if (chunk.offset() != received) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  detail::concat("chunk of message ", expected_seq_, " at offset ", chunk.offset(),
                                 ", expected ", received, " (of ", total_,
                                 " bytes; chunks must be contiguous and in order)"));
  }
  if (size > total_ - received) {
    return refuse(
        grpc::StatusCode::INVALID_ARGUMENT,
        detail::concat("chunk of message ", expected_seq_, " at offset ", chunk.offset(), " with ",
                       size, " bytes overruns the announced total of ", total_));
  }
  if (size > 0) {
    try {
      // Grow by at least kMaxPreallocatedBytes at a time past the reserve,
      // so that a large message is copied a few times at most.
      if (buffer_.capacity() < received + size) {
        buffer_.reserve(std::min(
            total_, std::max(received + size, buffer_.capacity() + kMaxPreallocatedBytes)));
      }
    } catch (const std::bad_alloc&) {
      return refuse(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          detail::concat("cannot allocate ", total_, " bytes for message ", expected_seq_));
    }
    const auto* data = reinterpret_cast<const uint8_t*>(chunk.data().data());
    buffer_.insert(buffer_.end(), data, data + size);
  }
  if (buffer_.size() == total_) {
    uint64_t next = 0;
    const bool delivered = sessions_->deliverIf(
        src_, epoch_, [&] { mailbox_->deliver(src_, tag_, std::move(buffer_), /*admitted=*/true); },
        &next);
    if (!delivered) return superseded();
    in_message_ = false;
    buffer_ = Bytes();
    expected_seq_ = next;
    sendAck();
  }
  return grpc::Status::OK;
}

grpc::Status PeerStreamAssembler::attach(const geopipe::v1::PeerChunk& chunk) {
  incarnation_ = chunk.incarnation();
  PeerSessions::Attached at;
  std::string why;
  if (!sessions_->attach(src_, incarnation_, chunk.resume(), chunk.sequence(), &at, &why)) {
    const int src = src_;
    src_ = -1;  // nothing of this stream is the session's
    finished_ = true;
    if (chunk.resume()) {
      mailbox_->failSource(
          src, ErrorKind::IO,
          detail::concat(describe_peer_(src), "'s link broke and cannot be resumed: ", why));
    }
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        detail::concat(self_, " refused the stream: rank ", src, " ",
                                       chunk.resume() ? "asked to resume a link, but " : "", why));
  }
  epoch_ = at.epoch;
  expected_seq_ = at.next_seq;
  mailbox_->clearSource(src_);
  if (chunk.resume()) sendAck();
  return grpc::Status::OK;
}

grpc::Status PeerStreamAssembler::superseded() {
  if (in_message_) mailbox_->release(total_);
  in_message_ = false;
  finished_ = true;
  return grpc::Status(
      grpc::StatusCode::CANCELLED,
      detail::concat(self_, ": a newer stream from ", describe_peer_(src_), " took over this one"));
}

void PeerStreamAssembler::sendAck() {
  if (incarnation_ == 0 || !ack_) return;
  geopipe::v1::PeerAck ack;
  ack.set_sequence(expected_seq_);
  ack.set_incarnation(config_.incarnation);
  ack_(ack);
}

bool PeerStreamAssembler::abandoned() const {
  return (cancelled_ && cancelled_()) || !sessions_->current(src_, epoch_);
}

grpc::Status PeerStreamAssembler::onEnd() {
  GEOPIPE_CHECK(!finished_, Error, self_, ": onEnd() after the stream was ended");
  finished_ = true;
  // The stream ended: after the sender's goodbye (a clean close), or broken
  // (cancelled, connection lost), or on a frame gRPC could not parse — the
  // last two look the same here.
  if (in_message_) mailbox_->release(total_);
  in_message_ = false;
  const bool resumable = config_.resumable && incarnation_ != 0 && !said_goodbye_;
  if (src_ >= 0 && !sessions_->detach(src_, epoch_, resumable, PeerSessions::Clock::now())) {
    // A newer stream from the sender took over; this one's end is no news.
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        detail::concat(self_, ": a newer stream from ", describe_peer_(src_),
                                       " took over this one"));
  }
  if (said_goodbye_) {
    if (src_ >= 0) {
      mailbox_->failSource(
          src_, ErrorKind::IO,
          detail::concat(describe_peer_(src_), " closed its stream (it shut down)"));
    }
    return grpc::Status::OK;
  }
  const std::string where = src_ >= 0 ? describe_peer_(src_) : std::string("an unidentified peer");
  const bool cancelled = cancelled_ && cancelled_();
  const std::string why =
      cancelled ? detail::concat("the stream from ", where,
                                 " broke (the peer died, or this rank is shutting down)")
                : detail::concat("the stream from ", where,
                                 " ended without end_of_stream (an unparsable frame, or the "
                                 "connection was lost)");
  // A resumable sender's receives wait for its resume (the transport fails
  // them when its grace expires).
  if (src_ >= 0 && !resumable) mailbox_->failSource(src_, ErrorKind::IO, why);
  return grpc::Status(grpc::StatusCode::DATA_LOSS, detail::concat(self_, ": ", why));
}

}  // namespace geopipe::transport
