// Model plugins: dlopen, the ABI check, and the register call (plugin.h).
#include "src/model/model_plugin.h"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>

#include "geopipe/error.h"
#include "geopipe/plugin.h"

namespace geopipe::model {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSeeDocs = " (docs/cpp-api.md, \"Model plugins\")";

}  // namespace

std::vector<std::string> loadModelPlugin(const std::string& path) {
  // Held across the register call: two threads loading one plugin must not
  // both run it, and registerModel takes the registry's own lock.
  static std::mutex mutex;
  static std::map<std::string, std::vector<std::string>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = loaded.find(path); it != loaded.end()) return it->second;

  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path,
                  "' does not exist (a relative path is relative to the job file's directory; "
                  "on several hosts every worker needs the plugin at this path)");
  }
  if (!fs::is_regular_file(st)) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path,
                  "' is not a file: expected a shared library that registers models", kSeeDocs);
  }
  // RTLD_GLOBAL is not needed: the plugin resolves geopipe::registerModel
  // against the executable (which exports geopipe's symbols) and LibTorch
  // against the LibTorch already loaded. Never
  // closed: its models' code runs until the process ends.
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    GEOPIPE_THROW(ConfigError, "model.plugin '", path, "' cannot be loaded as a shared library: ",
                  why != nullptr ? why : "unknown error", kSeeDocs);
  }
  auto abi = reinterpret_cast<GeopipePluginAbiFn>(::dlsym(handle, "geopipe_plugin_abi_version"));
  auto reg = reinterpret_cast<GeopipePluginRegisterFn>(::dlsym(handle, "geopipe_plugin_register"));
  if (abi == nullptr || reg == nullptr) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path,
                  "' is not a geopipe model plugin: it does not export geopipe_plugin_register and "
                  "geopipe_plugin_abi_version (define them with GEOPIPE_MODEL_PLUGIN from "
                  "<geopipe/plugin.h>)",
                  kSeeDocs);
  }
  const int plugin_abi = abi();
  if (plugin_abi != GEOPIPE_PLUGIN_ABI_VERSION) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path, "' was built for geopipe plugin ABI ",
                  plugin_abi, " but this geopipe has ABI ", GEOPIPE_PLUGIN_ABI_VERSION,
                  ": rebuild the plugin against this geopipe's headers (and its LibTorch)");
  }

  const size_t first = registrationLog().size();
  char error[2048] = {0};
  const int rc = reg(GEOPIPE_PLUGIN_ABI_VERSION, error, sizeof(error));
  if (rc == GEOPIPE_PLUGIN_ABI_MISMATCH) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path, "' refused this geopipe's plugin ABI ",
                  GEOPIPE_PLUGIN_ABI_VERSION, ": ", error,
                  "; rebuild the plugin against this geopipe's headers");
  }
  if (rc != GEOPIPE_PLUGIN_OK) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path,
                  "': its register function failed: ", error[0] != '\0' ? error : "no message");
  }
  std::vector<std::string> added;
  const std::vector<std::string> log = registrationLog();
  for (size_t i = first; i < log.size(); ++i) {
    if (std::find(added.begin(), added.end(), log[i]) == added.end()) added.push_back(log[i]);
  }
  if (added.empty()) {
    GEOPIPE_THROW(ConfigError, "model.plugin '", path,
                  "' registered no model: its register function must call "
                  "geopipe::registerModel",
                  kSeeDocs);
  }
  loaded[path] = added;
  return added;
}

}  // namespace geopipe::model
