// `geopipe probe --rank R --peers H0:P,H1:P,...`: run on every host of a job
// at about the same time; the hosts measure the latency and bandwidth
// between each pair over the job's own gRPC/TLS links, and rank 0 writes a
// topology with what they found (src/transport/probe.h).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "geopipe/error.h"
#include "src/cli/distributed_commands.h"
#include "src/common/strings.h"
#include "src/distributed/security.h"
#include "src/transport/grpc/grpc_transport.h"
#include "src/transport/probe.h"

namespace geopipe::cli {

void addProbeOptions(CLI::App& app, ProbeArgs& args) {
  app.add_option("--rank", args.rank, "this host's index in --peers")->required();
  app.add_option("--peers", args.peers,
                 "every host's HOST:PORT, in the same order on every host (comma-separated)")
      ->required()
      ->delimiter(',');
  app.add_option("--names", args.names,
                 "site names for the topology, one per peer (default host-0, host-1, ...)")
      ->delimiter(',');
  app.add_option("--listen", args.listen,
                 "HOST:PORT this host's probe listens on (default: its entry in --peers; "
                 "0.0.0.0:PORT for every interface)");
  app.add_option("--out", args.out, "rank 0: the topology YAML to write (-: standard output)")
      ->capture_default_str();
  app.add_option("--megabytes", args.megabytes,
                 "MiB sent each way per pair, twice alone and twice with the reverse direction "
                 "sending too, to time the bandwidth and the duplex bandwidth")
      ->check(CLI::Range(0.001, 1024.0))
      ->capture_default_str();
  app.add_option("--pings", args.pings, "round trips each way per pair to time the latency")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--timeout", args.timeout,
                 "seconds any wait may take (the hosts may start at different times)")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  addHostSecurityOptions(app, args.security);
}

int runProbeCommand(const ProbeArgs& args, std::ostream& out) {
  const int n = static_cast<int>(args.peers.size());
  GEOPIPE_CHECK(n >= 2, ConfigError, "--peers names ", n,
                " host(s); give at least two HOST:PORT, the same list on every host");
  GEOPIPE_CHECK(args.rank >= 0 && args.rank < n, ConfigError, "--rank ", args.rank,
                " is not an index into --peers (0 to ", n - 1, ")");
  GEOPIPE_CHECK(args.names.empty() || static_cast<int>(args.names.size()) == n, ConfigError,
                "--names gives ", args.names.size(), " names for ", n, " peers; give one per peer");
  for (const auto& p : args.peers) {
    GEOPIPE_CHECK(p.rfind(':') != std::string::npos && p.rfind(':') + 1 < p.size(), ConfigError,
                  "--peers entry '", p, "' is not HOST:PORT");
  }
  const distributed::JobSecurity security = distributed::workerSecurity(args.security);

  transport::GrpcTransportOptions to;
  to.rank = args.rank;
  to.addresses = args.peers;
  const std::string& own = args.peers[static_cast<size_t>(args.rank)];
  to.listen_address = args.listen.empty() ? own : args.listen;
  to.job_token = security.token.secret;
  to.security = security.link;
  to.connect_timeout = std::chrono::seconds(args.timeout);
  transport::GrpcTransport net(to);

  transport::ProbeOptions po;
  po.pings = args.pings;
  po.bulk_bytes = static_cast<uint64_t>(std::llround(args.megabytes * 1024 * 1024));
  po.timeout = std::chrono::seconds(args.timeout);
  out << "probe: rank " << args.rank << " of " << n << ", listening on " << net.listeningAddress()
      << "; " << n * (n - 1) << " directed links, " << args.pings << " pings and 2 x "
      << args.megabytes << " MiB each, one way and both ways at once\n";
  const auto links = transport::probeLinks(net, po);
  net.close();
  if (args.rank != 0) {
    out << "probe: done; rank 0 writes the topology\n";
    return 0;
  }
  std::vector<std::string> names = args.names;
  if (names.empty())
    for (int r = 0; r < n; ++r) names.push_back(detail::concat("host-", r));
  std::string comment = "Measured by geopipe probe between";
  for (int r = 0; r < n; ++r)
    comment +=
        detail::concat(" ", names[static_cast<size_t>(r)], "=", args.peers[static_cast<size_t>(r)]);
  comment += detail::concat(
      "\nlatency: half the median round trip of ", args.pings,
      " pings; bandwidth: the better of two ", args.megabytes,
      " MiB transfers over the hosts' gRPC links (with their TLS, if any, and HTTP/2 framing), "
      "one pair at a time; duplex_bandwidth_gbps: both ends then send as much at once, twice, "
      "both rounds' bytes over their time (how a data-parallel exchange uses the link).\n"
      "Devices get the defaults (no tflops or memory_gb): add device_defaults for your GPUs.");
  const std::string yaml = transport::topologyYamlFromProbe("probed", names, links, comment);
  char line[160];
  out << "from -> to                      latency ms   bandwidth Mbit/s   both ways Mbit/s\n";
  for (const auto& l : links) {
    std::snprintf(line, sizeof line, "%-14s -> %-14s %10.2f %18.1f %18.1f\n",
                  names[static_cast<size_t>(l.from)].c_str(),
                  names[static_cast<size_t>(l.to)].c_str(), l.latency_ms, l.bandwidth_gbps * 1000,
                  l.duplex_bandwidth_gbps * 1000);
    out << line;
  }
  if (args.out == "-") {
    out << yaml;
  } else {
    std::ofstream f(args.out);
    f << yaml;
    GEOPIPE_CHECK(f.good(), IoError, "cannot write the topology to '", args.out, "'");
    out << "topology written to " << args.out << "\n";
  }
  return 0;
}

}  // namespace geopipe::cli
