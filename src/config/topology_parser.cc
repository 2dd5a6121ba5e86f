// Reads topology YAML into a TopologySpec (format: docs/job-spec.md#topology).
#include "src/config/topology_parser.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "src/common/strings.h"

namespace geopipe::config {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kMaxDevices = 1 << 16;
// Site pairs cost a link each (sites^2), so sites are capped well below
// devices; the DT-FM spot scenario has 40.
constexpr int kMaxSites = 1024;
constexpr uintmax_t kMaxTextFileBytes = uintmax_t{64} << 20;

// Reads {latency_ms, bandwidth_gbps}: latency >= 0, bandwidth > 0. Both keys
// are required when `required`.
bool readLinkFields(MapReader& r, LinkSpec& link, bool required) {
  if (required) {
    for (const char* key : {"latency_ms", "bandwidth_gbps"}) {
      if (!r.has(key)) {
        r.error(std::string("missing required key '") + key +
                "' (links need latency_ms >= 0 and bandwidth_gbps > 0)");
      }
    }
  }
  size_t before = r.context().diagnostics->size();
  r.getDouble("latency_ms", link.latency_ms, 0.0, kInf);
  r.getDouble("bandwidth_gbps", link.bandwidth_gbps, 0.0, kInf,
              /*lo_exclusive=*/true);
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
    r.getDouble("tflops", d.tflops, 0.0, kInf, /*lo_exclusive=*/true);
    d.tflops_by_dtype.clear();
    return;
  }
  MapReader rates(node, r.fieldPath("tflops"), r.context());
  std::map<std::string, double> by_dtype;
  for (const char* dtype : {"fp32", "fp16", "bf16"}) {
    if (!rates.has(dtype)) continue;
    double v = 0;
    rates.getDouble(dtype, v, 0.0, kInf, /*lo_exclusive=*/true);
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

void readDeviceFields(MapReader& r, DeviceSpec& d) {
  r.getString("gpu", d.gpu);
  readTflops(r, d);
  r.getDouble("memory_gb", d.memory_gb, 0.0, kInf, /*lo_exclusive=*/true);
}

struct SiteDraft {
  SiteSpec site;
  std::vector<DeviceSpec> devices;
  bool has_intra = false;
  YAML::Node node;
};

}  // namespace

std::string readTextFile(const std::string& path, const std::string& what) {
  // A device or a FIFO (topology: /dev/zero) would be read forever.
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", path,
                  "': not a regular file (name a YAML file)");
  }
  if (!ec && std::filesystem::is_regular_file(status) &&
      std::filesystem::file_size(path, ec) > kMaxTextFileBytes) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", path, "': larger than ",
                  kMaxTextFileBytes >> 20, " MiB; a job or topology file is a few KiB");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", path,
                  "': ", std::strerror(errno));
  }
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

YAML::Node parseYamlDocument(const std::string& text, const ReadContext& ctx) {
  try {
    YAML::Node root = YAML::Load(text);
    if (!root.IsDefined() || root.IsNull()) {
      Diagnostic d;
      d.file = ctx.file;
      d.message = "the file is empty; expected a YAML mapping (see docs/job-spec.md)";
      ctx.diagnostics->add(d);
      return YAML::Node(YAML::NodeType::Undefined);
    }
    return root;
  } catch (const YAML::Exception& e) {
    Diagnostic d;
    d.file = ctx.file;
    d.line = e.mark.line >= 0 ? e.mark.line + 1 : 0;
    d.column = e.mark.column >= 0 ? e.mark.column + 1 : 0;
    d.message = "YAML syntax error: " + e.msg;
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
  root.getString("name", topo.name);
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
      r.getString("name", draft.site.name);
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
      if (!dev.IsDefined()) {
        r.error("missing required key 'devices' (a count, or a list of devices)");
      } else if (dev.IsScalar()) {
        int count = 0;
        r.getInt("devices", count, 1, kMaxDevices);
        for (int k = 0; k < count; ++k) draft.devices.push_back(site_defaults);
      } else if (dev.IsSequence() && dev.size() > 0) {
        for (size_t k = 0; k < dev.size(); ++k) {
          std::string dpath = spath + ".devices[" + std::to_string(k) + "]";
          MapReader dr(dev[k], dpath, ctx);
          if (!dr.ok()) continue;
          DeviceSpec d = site_defaults;
          dr.getString("name", d.name);
          readDeviceFields(dr, d);
          dr.finish();
          draft.devices.push_back(d);
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
      // Stop expanding at the limits: a few bytes of YAML (repeat: 4096,
      // devices: 65536) must not allocate billions of devices.
      draft_devices += static_cast<size_t>(repeat) * draft.devices.size();
      if (drafts.size() + static_cast<size_t>(repeat) > static_cast<size_t>(kMaxSites) ||
          draft_devices > static_cast<size_t>(kMaxDevices)) {
        r.error("this site takes the topology past " + std::to_string(kMaxSites) + " sites or " +
                std::to_string(kMaxDevices) + " devices (with its repeat), the most supported");
        break;
      }
      if (repeat == 1) {
        drafts.push_back(draft);
      } else {
        for (int k = 0; k < repeat; ++k) {
          SiteDraft copy = draft;
          copy.site.name = draft.site.name + "-" + std::to_string(k);
          drafts.push_back(copy);
        }
      }
    }
  }

  // Index sites and devices in listing order.
  std::map<std::string, int> site_index;
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
    for (int pass = 0; pass < 2; ++pass) {
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

}  // namespace geopipe::config
