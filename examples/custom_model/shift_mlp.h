// The custom-model example's model: a causal "shift-MLP" language model
// (each block mixes a token with the one before it), registered as
// "shift-mlp" by the example program and by the plugin
// libgeopipe_example_model.so built from shift_mlp.cc.
#pragma once

#include <geopipe/model.h>

namespace example {

// model.layers blocks between a token embedding and a readout. Options
// (model.options): `expansions`, the MLP width of each block as a multiple
// of hidden, "4,4,16,4" (one per block; default 4 each). The model gives
// the scheduler its own per-layer cost (ModelDef::cost), so a wide block
// gets a stage of its own sooner.
geopipe::ModelDef makeShiftMlp(const geopipe::ModelSpec& spec);

}  // namespace example
