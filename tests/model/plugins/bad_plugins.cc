// Broken model plugins for the loader's error paths (plugin_e2e_test.cc),
// one shared library per GEOPIPE_TEST_PLUGIN variant. Torch-free: none of
// them gets as far as registering a model.
#include <geopipe/plugin.h>

#include <stdexcept>

#if GEOPIPE_TEST_PLUGIN == 1
// Its register function throws.
namespace {
void registerNothing() {
  throw std::runtime_error("this plugin needs a GPU it cannot find");
}
}  // namespace
GEOPIPE_MODEL_PLUGIN(registerNothing)
#elif GEOPIPE_TEST_PLUGIN == 2
// Built for an older plugin ABI.
extern "C" __attribute__((visibility("default"))) int geopipe_plugin_abi_version(void) {
  return 0;
}
extern "C" __attribute__((visibility("default"))) int geopipe_plugin_register(int, char*, size_t) {
  return GEOPIPE_PLUGIN_OK;
}
#else
// A shared library, but no geopipe plugin.
extern "C" __attribute__((visibility("default"))) int some_other_library_function(void) {
  return 42;
}
#endif
