// Pricing workers that are reached through a relay: a device whose worker
// accepts no connections (src/transport/grpc/relay.h) gets every incoming
// link through the relay's site. Torch-free.
#pragma once

#include "geopipe/topology.h"

namespace geopipe::scheduler {

// Moves `device` into a site of its own (named "<site> (relayed)", with the
// old site's intra link) whose links are those of a worker that dials out
// but is dialled only through the relay in site `relay_site`:
//   out of it (it dials its peers itself):   X -> Y = S -> Y
//   into it (every peer goes via the relay): Y -> X = (Y -> R) then (R -> S)
// where S is the device's old site, R the relay's, and a path of two links
// has the sum of their latencies and the smaller bandwidth. Devices keep
// their indices, so plans on the result are plans on `t`. Applying it to
// several devices one after another prices a link between two relayed
// devices as sender -> relay -> receiver. ConfigError for an index out of
// range; a device already alone in a relayed site is left as it is. True
// when `t` changed (the device was not relayed yet).
bool relayIncomingLinks(TopologySpec& t, int device, int relay_site);

}  // namespace geopipe::scheduler
