// Loading model plugins (include/geopipe/plugin.h): a shared library whose
// geopipe_plugin_register calls geopipe::registerModel. Torch-free.
#pragma once

#include <string>
#include <vector>

namespace geopipe::model {

// Opens the plugin at `path` and runs its register function, once per path
// and process (a later call returns the names of the first). Returns the
// model names it registered. ConfigError, naming the path, when the file is
// missing, is no shared library (the loader's message), has no
// geopipe_plugin_register ("not a geopipe model plugin"), was built for
// another plugin ABI, its register function throws, or it registers nothing.
// Thread-safe.
std::vector<std::string> loadModelPlugin(const std::string& path);

// The names registered so far (by code or plugins), sorted (model.cc).
std::vector<std::string> registeredModelNames();

// Every registerModel call's name so far, in order, repeats included
// (model.cc): what a plugin registered is what its register call added.
std::vector<std::string> registrationLog();

}  // namespace geopipe::model
