// Reads topology YAML into a TopologySpec (format: docs/job-spec.md#topology).
#include "src/config/topology_parser.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

#include <yaml-cpp/eventhandler.h>

#include "src/common/file_kind.h"
#include "src/common/strings.h"
#include "src/common/text.h"

namespace geopipe::config {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Site pairs cost a link each (sites^2), so sites are capped well below
// devices; the DT-FM spot scenario has 40.
constexpr int kMaxSites = 1024;
constexpr uintmax_t kMaxTextFileBytes = uintmax_t{64} << 20;
constexpr size_t kMaxNameBytes = 255;
// YAML::Load keeps some 200 bytes per value (a 50 MB flow list `[1, 1, ...]`
// took 5.4 GB), so a file's values are counted before the tree is built. The
// largest topology (4096 devices of a dozen fields, 1024 sites) needs far
// fewer.
constexpr int64_t kMaxYamlValues = 1000000;
// A device's rates and memory: 1 MFLOP/s to 1 ZFLOP/s, 1 KB to 1 EB. Beyond
// them a number is a typo that would reach `plan` as a step time of 10^300 s.
constexpr double kMinTflops = 1e-6, kMaxTflops = 1e9;
constexpr double kMinMemoryGb = 1e-6, kMaxMemoryGb = 1e9;

// Reads {latency_ms, bandwidth_gbps, duplex_bandwidth_gbps} within their
// physical ranges. The first two are required when `required`.
bool readLinkFields(MapReader& r, LinkSpec& link, bool required) {
  if (required) {
    for (const char* key : {"latency_ms", "bandwidth_gbps"}) {
      if (!r.has(key)) {
        r.error(std::string("missing required key '") + key +
                "' (links need latency_ms in [0, 600000] and bandwidth_gbps in [1e-6, 1e6])");
      }
    }
  }
  size_t before = r.context().diagnostics->size();
  r.getDouble("latency_ms", link.latency_ms, 0.0, kMaxLatencyMs);
  r.getDouble("bandwidth_gbps", link.bandwidth_gbps, kMinBandwidthGbps, kMaxBandwidthGbps);
  r.getDouble("duplex_bandwidth_gbps", link.duplex_bandwidth_gbps, kMinBandwidthGbps,
              kMaxBandwidthGbps);
  if (r.context().diagnostics->size() == before &&
      link.duplex_bandwidth_gbps > link.bandwidth_gbps) {
    r.error("duplex_bandwidth_gbps", r.child("duplex_bandwidth_gbps"),
            "duplex_bandwidth_gbps " + formatNumber(link.duplex_bandwidth_gbps) +
                " is above this link's bandwidth_gbps " + formatNumber(link.bandwidth_gbps) +
                ": a direction cannot get more while the reverse one sends too; give at most " +
                formatNumber(link.bandwidth_gbps) + " or leave it out");
  }
  return r.context().diagnostics->size() == before;
}

void readLink(const YAML::Node& node, const std::string& path,
              const ReadContext& ctx, LinkSpec& link) {
  MapReader r(node, path, ctx);
  if (!r.ok()) return;
  readLinkFields(r, link, /*required=*/true);
  r.finish();
}

// `tflops`: one rate (the dtype the job computes in), or a rate per compute
// dtype ({fp32: 19.5, bf16: 312}); either replaces what an outer level gave.
void readTflops(MapReader& r, DeviceSpec& d) {
  const YAML::Node node = r.child("tflops");  // known even when absent ("did you mean")
  if (!node.IsDefined()) return;
  if (!node.IsMap()) {
    r.getDouble("tflops", d.tflops, kMinTflops, kMaxTflops);
    d.tflops_by_dtype.clear();
    return;
  }
  MapReader rates(node, r.fieldPath("tflops"), r.context());
  std::map<std::string, double> by_dtype;
  for (const char* dtype : {"fp32", "fp16", "bf16"}) {
    if (!rates.has(dtype)) continue;
    double v = 0;
    rates.getDouble(dtype, v, kMinTflops, kMaxTflops);
    by_dtype[dtype] = v;
  }
  rates.finish();
  if (by_dtype.empty()) {
    r.error("tflops", node,
            "a tflops mapping needs a rate for at least one of fp32, fp16, bf16 "
            "(e.g. tflops: {fp32: 19.5, bf16: 312}), or give one number");
    return;
  }
  d.tflops_by_dtype = std::move(by_dtype);
}

// A name (of the topology, a site, a device, a GPU kind) of at most
// kMaxNameBytes: each is copied to every device of a site and printed in
// plans, so a 30 KB gpu name under `repeat` once made validate take 4.4 GB.
// A longer one is refused and kept cut, so the copies stay small.
void getName(MapReader& r, const std::string& key, std::string& out) {
  r.getString(key, out);
  if (out.size() > kMaxNameBytes) {
    r.error(key, r.child(key),
            "is " + std::to_string(out.size()) + " bytes long; a name holds at most " +
                std::to_string(kMaxNameBytes) + " bytes");
    out.resize(kMaxNameBytes);
  }
}

void readDeviceFields(MapReader& r, DeviceSpec& d) {
  getName(r, "gpu", d.gpu);
  readTflops(r, d);
  r.getDouble("memory_gb", d.memory_gb, kMinMemoryGb, kMaxMemoryGb);
}

struct SiteDraft {
  SiteSpec site;
  std::vector<DeviceSpec> devices;
  std::vector<YAML::Node> device_nodes;  // each device's entry (the site's when counted)
  bool repeated = false;                 // one of the copies of a site with repeat
  bool has_intra = false;
  YAML::Node node;
};

}  // namespace

std::string readTextFile(const std::string& path, const std::string& what) {
  // Say what the path is when it is no file to read (a directory, /dev/zero,
  // a FIFO): "no such file" would send the user looking for a typo.
  const std::string problem = common::regularFileProblem(path);
  if (!problem.empty()) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path), "': it ", problem,
                  " (name a YAML file)");
  }
  // O_NONBLOCK: a FIFO swapped in after the check above must not block the
  // open; fstat then checks what was really opened.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path),
                  "': ", std::strerror(errno));
  }
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  std::string text;
  bool too_large = regular && static_cast<uintmax_t>(st.st_size) > kMaxTextFileBytes;
  int read_errno = 0;
  if (regular && !too_large) {
    // Read at most one byte past the limit, whatever st_size said (a file
    // that grows while it is read).
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        read_errno = errno;
        break;
      }
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
      if (text.size() > kMaxTextFileBytes) {
        too_large = true;
        break;
      }
    }
  }
  ::close(fd);
  if (!regular) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path),
                  "': it is not a regular file (name a YAML file)");
  }
  if (too_large) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path), "': larger than ",
                  kMaxTextFileBytes >> 20, " MiB; a job or topology file is a few KiB");
  }
  if (read_errno != 0) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path),
                  "': ", std::strerror(read_errno));
  }
  return text;
}

namespace {

// yaml-cpp keeps both pairs of a repeated key but every lookup finds the
// first, so the second value would be dropped without a word: refuse it,
// in every mapping of the document, naming both lines.
void checkDuplicateKeys(const YAML::Node& node, const std::string& path, const ReadContext& ctx,
                        std::set<std::pair<int, int>>& walked) {
  if (!node.IsMap() && !node.IsSequence()) return;
  // An alias is its anchor's node again: walk each node once, or a document
  // of aliases of aliases ("billion laughs") would take exponential time.
  if (!walked.emplace(node.Mark().line, node.Mark().column).second) return;
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      checkDuplicateKeys(node[i], path + "[" + std::to_string(i) + "]", ctx, walked);
    }
    return;
  }
  std::map<std::string, int> first_line;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;  // a copy: it-> returns a temporary
    const YAML::Node value = it->second;
    if (!key.IsScalar()) continue;
    const std::string field = path.empty() ? key.Scalar() : path + "." + key.Scalar();
    const int line = key.Mark().line + 1;
    const auto [first, fresh] = first_line.emplace(key.Scalar(), line);
    if (!fresh) {
      const bool section = path.empty() && value.IsMap();
      ctx.diagnostics->add(diagnosticAt(
          ctx, key, field,
          std::string("duplicate ") + (section ? "section" : "key") + " '" + key.Scalar() +
              "' (first at line " + std::to_string(first->second) + ", again at line " +
              std::to_string(line) + "): YAML would silently keep only the first; " +
              (section ? "merge the two into one" : "remove one of them")));
      continue;
    }
    checkDuplicateKeys(value, field, ctx, walked);
  }
}

// The first line, up to `last_line` (1-based; 0: any), whose indentation
// holds a tab, and the tab's column: {0, 0} when there is none. Only called
// once yaml-cpp failed: a tab inside a flow collection or a block scalar
// parses, so a tab alone is no error.
std::pair<int, int> firstTabIndentation(const std::string& text, int last_line) {
  int line = 1;
  for (size_t start = 0; start < text.size(); ++line) {
    if (last_line > 0 && line > last_line) break;
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    for (size_t i = start; i < end && (text[i] == ' ' || text[i] == '\t'); ++i) {
      if (text[i] == '\t') return {line, static_cast<int>(i - start) + 1};
    }
    start = end + 1;
  }
  return {0, 0};
}

// The first line of a second document: content after a document marker
// ('---' or '...' at column 0) that follows the first document's content
// (0: none). A marker before any content, or one with only
// blank lines and comments after it, is fine. Inside the first document no
// line can start with such a marker (block scalars are indented; YAML ends
// quoted scalars at a marker).
int secondDocumentLine(const std::string& text) {
  const auto isMarker = [](const std::string& l) {
    return (l.rfind("---", 0) == 0 || l.rfind("...", 0) == 0) &&
           (l.size() == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '\r');
  };
  const auto hasContent = [](const std::string& l, size_t from) {
    const size_t first = l.find_first_not_of(" \t\r", from);
    return first != std::string::npos && l[first] != '#';
  };
  bool content = false;
  int marker_line = 0;
  int line = 1;
  for (size_t start = 0; start <= text.size(); ++line) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string l = text.substr(start, end - start);
    start = end + 1;
    if (isMarker(l)) {
      if (content && marker_line == 0) marker_line = line;
      if (marker_line > 0 && hasContent(l, 3)) return line;
      continue;
    }
    if (!hasContent(l, 0)) continue;
    if (marker_line > 0) return line;
    content = true;
  }
  return 0;
}

// Counts a document's values (scalars, nulls, aliases, lists and mappings,
// keys included) with yaml-cpp's event parser, which builds no tree and
// holds only the nesting, and stops at the first value past kMaxYamlValues
// by throwing TooManyValues: where it is and the longest list or mapping
// open there (the one to shorten).
class ValueCounter : public YAML::EventHandler {
 public:
  struct TooManyValues {
    YAML::Mark mark;
    std::string field;  // the longest open list or mapping ("" at the top)
    int64_t entries;    // its entries so far
  };

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { value(mark, "~"); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { value(mark, "*"); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string& scalar) override {
    value(mark, scalar);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    start(mark, false);
  }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    start(mark, true);
  }
  void OnSequenceEnd() override { end(); }
  void OnMapEnd() override { end(); }

 private:
  // An open list or mapping: the key or index of the entry being filled.
  struct Frame {
    bool map = false;
    bool at_key = true;  // a mapping's next value is a key
    std::string key;     // a mapping's current key
    int64_t entries = 0;
  };

  void count(const YAML::Mark& mark) {
    if (++values_ <= kMaxYamlValues) return;
    // Name the open list or mapping with the most entries: the long one.
    size_t longest = 0;
    for (size_t i = 0; i < frames_.size(); ++i) {
      if (frames_[i].entries >= frames_[longest].entries) longest = i;
    }
    const int64_t entries = frames_.empty() ? 0 : frames_[longest].entries;
    std::string field;
    for (size_t i = 0; i < longest; ++i) {
      const Frame& f = frames_[i];
      field += f.map ? (field.empty() ? "" : ".") + f.key : "[" + std::to_string(f.entries) + "]";
    }
    throw TooManyValues{mark, field, entries};
  }
  // A scalar's text becomes the current key when it is one.
  void value(const YAML::Mark& mark, const std::string& text) {
    count(mark);
    if (frames_.empty()) return;
    Frame& f = frames_.back();
    if (f.map && f.at_key) {
      f.key = common::printable(text);
      f.at_key = false;
      return;
    }
    filled(f);
  }
  void start(const YAML::Mark& mark, bool map) {
    count(mark);
    if (!frames_.empty() && frames_.back().map && frames_.back().at_key) {
      frames_.back().key = "?";  // a complex key
    }
    frames_.push_back(Frame{map});
  }
  void end() {
    frames_.pop_back();
    if (frames_.empty()) return;
    Frame& f = frames_.back();
    if (f.map && f.at_key) {
      f.at_key = false;  // the collection was a key
      return;
    }
    filled(f);
  }
  static void filled(Frame& f) {
    ++f.entries;
    f.at_key = true;
  }

  int64_t values_ = 0;
  std::vector<Frame> frames_;
};

// False, with a diagnostic naming the longest list open at the limit, when `text` holds
// more than kMaxYamlValues values; true otherwise, also when it is no valid
// YAML (YAML::Load then reports that, having built fewer values).
bool valuesWithinLimit(const std::string& text, const ReadContext& ctx) {
  std::istringstream in(text);
  ValueCounter counter;
  try {
    YAML::Parser parser(in);
    parser.HandleNextDocument(counter);
  } catch (const ValueCounter::TooManyValues& over) {
    Diagnostic d;
    d.file = ctx.file;
    d.line = over.mark.line + 1;
    d.column = over.mark.column + 1;
    d.field = over.field;
    d.message = "the file holds more than " + std::to_string(kMaxYamlValues) +
                " YAML values (this " + (over.field.empty() ? "document" : "list or mapping") +
                " has " + std::to_string(over.entries) +
                " entries so far), the most a job or topology file may hold: each takes some "
                "200 bytes in memory once read. Shorten it: give a site `devices: N` and "
                "`repeat: N` instead of listing devices, and put token ids in a token file "
                "(data.kind: tokens)";
    ctx.diagnostics->add(d);
    return false;
  } catch (const YAML::Exception&) {
  }
  return true;
}

}  // namespace

YAML::Node parseYamlDocument(const std::string& text, const ReadContext& ctx) {
  try {
    // Load reads the first document and ignores the rest, so a second one
    // is found in the text (yaml-cpp's LoadAll never returns on some
    // malformed inputs: the config fuzzer found two).
    if (const int line = secondDocumentLine(text); line > 0) {
      Diagnostic d;
      d.file = ctx.file;
      d.line = line;
      d.column = 1;
      d.message =
          "a second YAML document (after a '---' line) starts here, but a job or topology file "
          "holds one document: remove the '---' line and merge what follows into the first "
          "document, or move it to a file of its own";
      ctx.diagnostics->add(d);
    }
    if (!valuesWithinLimit(text, ctx)) return YAML::Node(YAML::NodeType::Undefined);
    const std::vector<YAML::Node> documents = {YAML::Load(text)};
    if (documents.empty() || !documents[0].IsDefined() || documents[0].IsNull()) {
      Diagnostic d;
      d.file = ctx.file;
      d.message = "the file is empty; expected a YAML mapping (see docs/job-spec.md)";
      ctx.diagnostics->add(d);
      return YAML::Node(YAML::NodeType::Undefined);
    }
    std::set<std::pair<int, int>> walked;
    checkDuplicateKeys(documents[0], "", ctx, walked);
    return documents[0];
  } catch (const YAML::Exception& e) {
    Diagnostic d;
    d.file = ctx.file;
    d.line = e.mark.line >= 0 ? e.mark.line + 1 : 0;
    d.column = e.mark.column >= 0 ? e.mark.column + 1 : 0;
    d.message = "YAML syntax error: " + e.msg;
    // yaml-cpp says "illegal map value" for a tab in the indentation, which
    // names neither the tab nor its line: name both.
    if (const auto [line, column] = firstTabIndentation(text, d.line); line > 0) {
      d.line = line;
      d.column = column;
      d.message =
          "a tab in the indentation: YAML does not allow tabs for indentation; use spaces "
          "(yaml-cpp: " +
          e.msg + ")";
    }
    ctx.diagnostics->add(d);
    return YAML::Node(YAML::NodeType::Undefined);
  }
}

TopologySpec readTopology(const YAML::Node& node, const std::string& path,
                          const ReadContext& ctx) {
  TopologySpec topo;
  topo.source = ctx.file;
  MapReader root(node, path, ctx);
  if (!root.ok()) return topo;
  getName(root, "name", topo.name);
  root.getString("description", topo.description);

  DeviceSpec defaults;
  if (YAML::Node dn = root.child("device_defaults"); dn.IsDefined()) {
    MapReader r(dn, root.fieldPath("device_defaults"), ctx);
    if (r.ok()) {
      readDeviceFields(r, defaults);
      r.finish();
    }
  }

  // Sites, expanded by `repeat`.
  std::vector<SiteDraft> drafts;
  size_t draft_devices = 0;
  YAML::Node sites = root.child("sites");
  if (!sites.IsDefined()) {
    root.error("missing required key 'sites' (a list of sites, each with a "
               "name and devices)");
  } else if (!sites.IsSequence() || sites.size() == 0) {
    root.error("sites", sites,
               "expected a non-empty list of sites, found " + describeNode(sites));
  } else {
    for (size_t i = 0; i < sites.size(); ++i) {
      std::string spath = root.fieldPath("sites") + "[" + std::to_string(i) + "]";
      MapReader r(sites[i], spath, ctx);
      if (!r.ok()) continue;
      SiteDraft draft;
      draft.node = sites[i];
      getName(r, "name", draft.site.name);
      if (draft.site.name.empty()) {
        r.error("missing required key 'name' (a unique site name)");
      }
      int repeat = 1;
      r.getInt("repeat", repeat, 1, 4096);
      DeviceSpec site_defaults = defaults;
      readDeviceFields(r, site_defaults);
      if (YAML::Node in = r.child("intra"); in.IsDefined()) {
        readLink(in, spath + ".intra", ctx, draft.site.intra);
        draft.has_intra = true;
      }
      YAML::Node dev = r.child("devices");
      // Count before expanding: a few bytes of YAML (repeat: 4096, devices:
      // 65536) must not allocate billions of devices, nor a name copied to
      // each of them gigabytes.
      int count = 0;
      if (dev.IsDefined() && dev.IsScalar()) r.getInt("devices", count, 1, kMaxDevices);
      if (dev.IsDefined() && dev.IsSequence()) {
        count = static_cast<int>(std::min<size_t>(dev.size(), kMaxDevices + size_t{1}));
      }
      const size_t total = draft_devices + static_cast<size_t>(repeat) * count;
      if (drafts.size() + static_cast<size_t>(repeat) > static_cast<size_t>(kMaxSites) ||
          total > static_cast<size_t>(kMaxDevices)) {
        const bool sites_over = drafts.size() + static_cast<size_t>(repeat) > kMaxSites;
        r.error(repeat > 1 ? "repeat" : "devices", r.child(repeat > 1 ? "repeat" : "devices"),
                sites_over
                    ? "this site takes the topology to " + std::to_string(drafts.size() + repeat) +
                          " sites (with its repeat), " + "over the " + std::to_string(kMaxSites) +
                          " supported"
                    : "this site takes the topology to " + std::to_string(total) + " devices (" +
                          std::to_string(draft_devices) + " before it + " + std::to_string(repeat) +
                          " x " + std::to_string(count) + "), over the " +
                          std::to_string(kMaxDevices) + " supported: lower repeat or devices");
        break;
      }
      if (!dev.IsDefined()) {
        r.error("missing required key 'devices' (a count, or a list of devices)");
      } else if (dev.IsScalar()) {
        for (int k = 0; k < count; ++k) {
          draft.devices.push_back(site_defaults);
          draft.device_nodes.push_back(dev);
        }
      } else if (dev.IsSequence() && dev.size() > 0) {
        for (size_t k = 0; k < dev.size(); ++k) {
          std::string dpath = spath + ".devices[" + std::to_string(k) + "]";
          MapReader dr(dev[k], dpath, ctx);
          if (!dr.ok()) continue;
          DeviceSpec d = site_defaults;
          getName(dr, "name", d.name);
          readDeviceFields(dr, d);
          dr.finish();
          draft.devices.push_back(d);
          draft.device_nodes.push_back(dev[k]);
        }
      } else {
        r.error("devices", dev,
                "expected a device count >= 1 or a non-empty list of devices, "
                "found " + describeNode(dev));
      }
      r.finish();
      if (draft.devices.size() > 1 && !draft.has_intra) {
        r.error("missing required key 'intra' ({latency_ms, bandwidth_gbps} "
                "between two devices of this site, which has " +
                std::to_string(draft.devices.size()) + " devices)");
      }
      draft_devices += static_cast<size_t>(repeat) * draft.devices.size();
      if (repeat == 1) {
        drafts.push_back(draft);
      } else {
        for (int k = 0; k < repeat; ++k) {
          SiteDraft copy = draft;
          copy.site.name = draft.site.name + "-" + std::to_string(k);
          copy.repeated = true;
          drafts.push_back(copy);
        }
      }
    }
  }

  // Index sites and devices in listing order. Device names are how workers
  // and plans name a device, so two devices may not share one.
  std::map<std::string, int> site_index;
  std::map<std::string, int> device_index;
  std::set<std::string> reported_names;
  for (auto& draft : drafts) {
    if (draft.site.name.empty()) continue;
    if (site_index.count(draft.site.name)) {
      ctx.diagnostics->add(diagnosticAt(
          ctx, draft.node, root.fieldPath("sites"),
          "duplicate site name '" + draft.site.name + "'; site names must be unique"));
      continue;
    }
    int s = static_cast<int>(topo.sites.size());
    site_index[draft.site.name] = s;
    SiteSpec site = draft.site;
    for (size_t k = 0; k < draft.devices.size(); ++k) {
      DeviceSpec d = draft.devices[k];
      d.site = s;
      if (d.name.empty()) d.name = site.name + "/" + std::to_string(k);
      const auto [it, fresh] = device_index.emplace(d.name, topo.numDevices());
      // Once per name: a repeated site of 64 copies is one mistake.
      if (!fresh && reported_names.insert(d.name).second) {
        const YAML::Node& dn = draft.device_nodes[k];
        ctx.diagnostics->add(diagnosticAt(
            ctx, dn, root.fieldPath("sites"),
            "duplicate device name '" + d.name + "' (devices " + std::to_string(it->second) +
                " and " + std::to_string(topo.numDevices()) +
                "); device names must be unique: rename one" +
                (draft.repeated
                     ? " (a site with repeat gives every copy the same names: omit 'name' and "
                       "the devices are called <site>-<copy>/<index>)"
                     : "")));
      }
      site.devices.push_back(topo.numDevices());
      topo.devices.push_back(d);
    }
    topo.sites.push_back(site);
  }
  if (topo.numDevices() > kMaxDevices) {
    root.error("the topology lists " + std::to_string(topo.numDevices()) +
               " devices; at most " + std::to_string(kMaxDevices) + " are supported");
  }

  const int n = topo.numSites();
  std::vector<std::vector<bool>> have(n, std::vector<bool>(n, false));
  topo.site_links.assign(n, std::vector<LinkSpec>(n));
  for (int s = 0; s < n; ++s) {
    topo.site_links[s][s] = topo.sites[s].intra;
    have[s][s] = true;
  }
  if (YAML::Node dn = root.child("inter_site_default"); dn.IsDefined()) {
    LinkSpec def;
    size_t before = ctx.diagnostics->size();
    readLink(dn, root.fieldPath("inter_site_default"), ctx, def);
    if (ctx.diagnostics->size() == before) {
      for (int a = 0; a < n; ++a)
        for (int b = 0; b < n; ++b)
          if (a != b) {
            topo.site_links[a][b] = def;
            have[a][b] = true;
          }
    }
  }

  std::vector<std::string> names;
  for (const auto& s : topo.sites) names.push_back(s.name);
  auto lookup = [&](MapReader& r, const std::string& key,
                    const YAML::Node& value) -> int {
    if (!value.IsDefined() || !value.IsScalar()) {
      r.error(key, value, "expected a site name, found " + describeNode(value));
      return -1;
    }
    auto it = site_index.find(value.Scalar());
    if (it == site_index.end()) {
      std::string msg = "unknown site '" + value.Scalar() + "'";
      std::string guess = common::closestMatch(value.Scalar(), names);
      if (!guess.empty()) msg += " (did you mean '" + guess + "'?)";
      else msg += "; sites are: " + common::join(names, ", ");
      r.error(key, value, msg);
      return -1;
    }
    return it->second;
  };

  // Symmetric links first, then directed ones, so that `from/to` entries
  // override one direction of a `sites: [a, b]` entry whatever their order.
  YAML::Node links = root.child("links");
  if (links.IsDefined() && !links.IsSequence()) {
    root.error("links", links, "expected a list of links, found " + describeNode(links));
  } else if (links.IsDefined()) {
    // The entry that set each direction in this pass: a second one would
    // silently replace the first's numbers (one value per link).
    std::vector<std::vector<int>> set_by;
    for (int pass = 0; pass < 2; ++pass) {
      set_by.assign(n, std::vector<int>(n, -1));
      for (size_t i = 0; i < links.size(); ++i) {
        std::string lpath = root.fieldPath("links") + "[" + std::to_string(i) + "]";
        const YAML::Node& ln = links[i];
        bool directed = ln.IsMap() && (ln["from"].IsDefined() || ln["to"].IsDefined());
        if (ln.IsMap() && directed != (pass == 1)) continue;
        if (!ln.IsMap() && pass == 1) continue;
        MapReader r(ln, lpath, ctx);
        if (!r.ok()) continue;
        LinkSpec link;
        bool link_ok = readLinkFields(r, link, /*required=*/true);
        int a = -1, b = -1;
        if (directed) {
          YAML::Node from = r.child("from"), to = r.child("to");
          if (!from.IsDefined() || !to.IsDefined()) {
            r.error("a directed link needs both 'from' and 'to'");
          } else {
            a = lookup(r, "from", from);
            b = lookup(r, "to", to);
          }
        } else {
          YAML::Node pair = r.child("sites");
          if (!pair.IsDefined()) {
            r.error("missing 'sites: [A, B]' (symmetric) or 'from'/'to' (one direction)");
          } else if (!pair.IsSequence() || pair.size() != 2) {
            r.error("sites", pair,
                    "expected a pair of site names [A, B], found " + describeNode(pair));
          } else {
            a = lookup(r, "sites", pair[0]);
            b = lookup(r, "sites", pair[1]);
          }
        }
        r.finish();
        if (a < 0 || b < 0) continue;
        if (a == b) {
          r.error("a link joins two different sites; set a site's own link with its 'intra' key");
          continue;
        }
        if (const int j = set_by[a][b]; j >= 0) {
          const std::string what = directed ? "the link " + names[a] + " -> " + names[b]
                                            : "the link between " + names[a] + " and " + names[b];
          r.error(what + " is already given by links[" + std::to_string(j) + "] (line " +
                  std::to_string(links[j].Mark().line + 1) +
                  "): give each pair of sites one entry (a from/to entry may override one "
                  "direction of a sites: [A, B] entry); remove or merge one of them");
          continue;
        }
        set_by[a][b] = static_cast<int>(i);
        if (!directed) set_by[b][a] = static_cast<int>(i);
        // A link with a bad value still counts as present, so that its
        // error is not repeated as a "no link" error.
        have[a][b] = true;
        if (!directed) have[b][a] = true;
        if (!link_ok) continue;
        topo.site_links[a][b] = link;
        if (!directed) topo.site_links[b][a] = link;
      }
    }
  }
  root.finish();

  // Every ordered pair of sites must be connected.
  std::vector<std::string> missing;
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b)
      if (!have[a][b]) missing.push_back(names[a] + " -> " + names[b]);
  if (!missing.empty()) {
    size_t shown = std::min<size_t>(missing.size(), 6);
    std::vector<std::string> head(missing.begin(), missing.begin() + shown);
    std::string msg = std::to_string(missing.size()) +
                      " site pair(s) have no link: " + common::join(head, ", ");
    if (shown < missing.size()) msg += ", ...";
    msg += ". Add entries under 'links' (sites: [A, B] or from/to) or set "
           "'inter_site_default'";
    root.error(msg);
  }
  return topo;
}

TopologySpec parseTopologyString(const std::string& yaml,
                                 const std::string& source) {
  Diagnostics diags;
  ReadContext ctx{source, &diags};
  YAML::Node root = parseYamlDocument(yaml, ctx);
  TopologySpec topo;
  if (root.IsDefined()) topo = readTopology(root, "", ctx);
  diags.throwIfAny();
  topo.source = source;
  return topo;
}

TopologySpec loadTopologyFile(const std::string& path) {
  return parseTopologyString(readTextFile(path, "topology file"), path);
}

TopologySpec assumedLocalTopology(int devices) {
  TopologySpec t;
  t.name = "local";
  t.description = "assumed: the job gives no topology (one machine, one device per tasklet)";
  t.source = kAssumedTopologySource;
  SiteSpec site;
  site.name = "local";
  site.intra = kSameMachineLink;
  for (int k = 0; k < devices; ++k) {
    DeviceSpec d;
    d.name = site.name + "/" + std::to_string(k);
    d.gpu = "cpu";
    d.tflops = kAssumedDeviceTflops;
    d.memory_gb = kAssumedDeviceMemoryGb;
    site.devices.push_back(k);
    t.devices.push_back(d);
  }
  t.sites.push_back(site);
  t.site_links.assign(1, std::vector<LinkSpec>(1, site.intra));
  return t;
}

bool isAssumedTopology(const TopologySpec& t) {
  return t.source == kAssumedTopologySource;
}

}  // namespace geopipe::config
