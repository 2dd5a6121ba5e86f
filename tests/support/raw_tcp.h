// Raw TCP clients for the hostile-input tests: bytes written straight to a
// gRPC server's port (random payloads, a truncated HTTP/2 preface, frames
// that lie about their length), below anything gRPC's client would send.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>

namespace geopipe::testing {

// The HTTP/2 connection preface every gRPC client opens with (RFC 7540 3.5).
inline const std::string kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Connects to "127.0.0.1:PORT" (or "host:port" with a numeric IPv4 host),
// writes `bytes`, then reads until the server closes or `linger` passes
// without a byte, and closes. Returns what the server sent back.
inline std::string exchangeRawTcp(
    const std::string& address, const std::string& bytes,
    std::chrono::milliseconds linger = std::chrono::milliseconds(200)) {
  const auto colon = address.rfind(':');
  const std::string host = address.substr(0, colon);
  const int port = std::stoi(address.substr(colon + 1));
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("connect to " + address + " failed");
  }
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server closed on us: fine
    off += static_cast<size_t>(n);
  }
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(linger.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(linger.count() % 1000 * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
    got.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return got;
}

// exchangeRawTcp's reply, counted.
inline size_t sendRawTcp(const std::string& address, const std::string& bytes,
                         std::chrono::milliseconds linger = std::chrono::milliseconds(200)) {
  return exchangeRawTcp(address, bytes, linger).size();
}

// Opens a TCP connection from `source` (a loopback address such as
// "127.0.0.2": another "host" to a per-address limit) to
// 127.0.0.1:`port` and sends nothing; -1 when it cannot connect.
inline int idleConnectionFrom(const char* source, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &local.sin_addr);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  remote.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof remote) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True once the other side closed `fd` (a read returns 0 or an error),
// waiting up to `wait`.
inline bool closedByServer(int fd, std::chrono::milliseconds wait) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return false;
  char c;
  return ::recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

inline std::string randomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// An HTTP/2 frame header (RFC 7540 4.1): 24-bit length, type, flags, stream.
inline std::string http2FrameHeader(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream) {
  std::string h;
  h += static_cast<char>((length >> 16) & 0xff);
  h += static_cast<char>((length >> 8) & 0xff);
  h += static_cast<char>(length & 0xff);
  h += static_cast<char>(type);
  h += static_cast<char>(flags);
  for (int shift = 24; shift >= 0; shift -= 8) h += static_cast<char>((stream >> shift) & 0xff);
  return h;
}

// Every kind of garbage the live-port tests send, each on its own
// connection: random payloads, a truncated preface, a preface followed by
// random bytes, frames that claim 16 MB and stop, a HEADERS frame with
// garbage HPACK.
inline void sendEveryKindOfGarbage(const std::string& address) {
  for (uint32_t seed = 1; seed <= 4; ++seed) sendRawTcp(address, randomBytes(64u << seed, seed));
  sendRawTcp(address, kHttp2Preface.substr(0, 10));
  sendRawTcp(address, kHttp2Preface.substr(0, kHttp2Preface.size() - 1));
  sendRawTcp(address, kHttp2Preface + randomBytes(4096, 9));
  sendRawTcp(address, kHttp2Preface + http2FrameHeader(0, 4, 0, 0) +  // empty SETTINGS
                          http2FrameHeader(0xffffff, 0, 0, 1) + randomBytes(1000, 3));
  sendRawTcp(address, kHttp2Preface + http2FrameHeader(0, 4, 0, 0) +
                          http2FrameHeader(64, 1, 0x4, 1) + randomBytes(64, 5));
  // Half a frame header, then silence until the linger passes.
  sendRawTcp(address, kHttp2Preface + std::string("\x00\x00", 2), std::chrono::milliseconds(300));
}

}  // namespace geopipe::testing
