// Model plugins: a shared library that registers models with
// geopipe::registerModel, loaded by `geopipe train`, `launch`, `coordinator`
// and `worker` when a job says `model.plugin: PATH` (docs/cpp-api.md).
// Torch-free: this header only declares the entry points.
#pragma once

#include <cstddef>
#include <cstdio>
#include <exception>

// The plugin ABI: what a plugin and the geopipe that loads it must agree on
// (the layout of ModelDef and ModelSpec, and the entry points below). Raised
// whenever one of them changes; a plugin built for another version is
// refused naming both. Plugins also need the LibTorch geopipe was built with.
#define GEOPIPE_PLUGIN_ABI_VERSION 1

// What geopipe_plugin_register returns.
#define GEOPIPE_PLUGIN_OK 0
#define GEOPIPE_PLUGIN_FAILED 1        // the plugin's register function threw
#define GEOPIPE_PLUGIN_ABI_MISMATCH 2  // abi_version is not the plugin's

extern "C" {
// The plugin's ABI version (GEOPIPE_PLUGIN_ABI_VERSION when it was built).
typedef int (*GeopipePluginAbiFn)(void);
// Registers the plugin's models. `abi_version` is the loader's; on failure
// a message (NUL-terminated, at most error_size bytes) goes to `error`.
typedef int (*GeopipePluginRegisterFn)(int abi_version, char* error, size_t error_size);
}

namespace geopipe::plugin_detail {

inline void writeError(char* error, size_t error_size, const char* message) {
  if (error != nullptr && error_size > 0) std::snprintf(error, error_size, "%s", message);
}

// The body of geopipe_plugin_register: checks the ABI, runs `fn`, and turns
// an exception into a message (none may cross the C boundary).
template <typename Fn>
int runRegister(int abi_version, char* error, size_t error_size, Fn fn) {
  if (abi_version != GEOPIPE_PLUGIN_ABI_VERSION) {
    char message[160];
    std::snprintf(message, sizeof(message),
                  "the plugin was built for geopipe plugin ABI %d, the loader has ABI %d",
                  GEOPIPE_PLUGIN_ABI_VERSION, abi_version);
    writeError(error, error_size, message);
    return GEOPIPE_PLUGIN_ABI_MISMATCH;
  }
  try {
    fn();
    return GEOPIPE_PLUGIN_OK;
  } catch (const std::exception& e) {
    writeError(error, error_size, e.what());
  } catch (...) {
    writeError(error, error_size, "an exception that is not a std::exception");
  }
  return GEOPIPE_PLUGIN_FAILED;
}

}  // namespace geopipe::plugin_detail

// Defines a plugin's two entry points around `register_fn`, a function of
// no arguments that calls geopipe::registerModel for each model:
//
//   void registerMyModels() { geopipe::registerModel("my-model", makeMyModel); }
//   GEOPIPE_MODEL_PLUGIN(registerMyModels)
#define GEOPIPE_MODEL_PLUGIN(register_fn)                                                      \
  extern "C" __attribute__((visibility("default"))) int geopipe_plugin_abi_version(void) {     \
    return GEOPIPE_PLUGIN_ABI_VERSION;                                                         \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) int geopipe_plugin_register(               \
      int abi_version, char* error, size_t error_size) {                                       \
    return ::geopipe::plugin_detail::runRegister(abi_version, error, error_size, register_fn); \
  }
