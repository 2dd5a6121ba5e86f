// Detects the BLAS behind libblas.so.3 (see blas_check.h).
#include "src/common/blas_check.h"

#include <dlfcn.h>
#include <link.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <mutex>

namespace geopipe::common {

BlasInfo detectBlas() {
  BlasInfo info;
  void* handle = dlopen("libblas.so.3", RTLD_LAZY | RTLD_LOCAL);
  if (handle == nullptr) {
    info.detail = "libblas.so.3 not found (install libopenblas-dev)";
    return info;
  }
  struct link_map* map = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name) {
    info.library = map->l_name;
  }
  using ConfigFn = const char* (*)();
  auto config = reinterpret_cast<ConfigFn>(dlsym(handle, "openblas_get_config"));
  if (config != nullptr) {
    info.optimized = true;
    info.detail = std::string("OpenBLAS ") + config();
  } else if (dlsym(handle, "mkl_get_version") != nullptr ||
             dlsym(handle, "bli_info_get_version_str") != nullptr) {
    info.optimized = true;
    info.detail = "optimized BLAS (MKL or BLIS)";
  } else {
    info.detail = "reference BLAS: LibTorch matrix products run ~20x slower; "
                  "install libopenblas-dev (scripts/install-deps does) or "
                  "select it with update-alternatives --config libblas.so.3-x86_64-linux-gnu";
  }
  dlclose(handle);
  return info;
}

bool setBlasThreads(int threads) {
  using SetFn = void (*)(int);
  auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) {
    // Not in the global scope: ask the libblas.so.3 LibTorch loaded, if any.
    if (void* handle = dlopen("libblas.so.3", RTLD_LAZY | RTLD_NOLOAD)) {
      set = reinterpret_cast<SetFn>(dlsym(handle, "openblas_set_num_threads"));
      dlclose(handle);
    }
  }
  if (set == nullptr) return false;
  set(threads);
  return true;
}

BlasInfo warnIfSlowBlas() {
  static std::once_flag once;
  static BlasInfo info;
  std::call_once(once, [] {
    info = detectBlas();
    if (!info.optimized) {
      spdlog::warn("**************************************************************");
      spdlog::warn("SLOW BLAS: {} ({})", info.detail, info.library);
      spdlog::warn("**************************************************************");
    }
  });
  return info;
}

WorkerThreads workerThreads(int requested, int workers_on_host, int cores) {
  cores = std::max(1, cores);
  workers_on_host = std::max(1, workers_on_host);
  WorkerThreads out;
  out.threads = requested > 0 ? requested : std::max(1, cores / workers_on_host);
  // More workers than cores cannot be helped by fewer threads than one
  // each (`launch` passes --threads 1 then): only a count above the fair
  // share is worth a warning.
  if (requested > 1 && int64_t{requested} * workers_on_host > cores) {
    out.warning = std::to_string(workers_on_host) + " workers on this host with --threads " +
                  std::to_string(requested) + " each oversubscribe its " + std::to_string(cores) +
                  " cores (two workers on 2 cores ran 20x slower than with --threads 1); use "
                  "--threads 0 to share them";
  }
  return out;
}

}  // namespace geopipe::common
