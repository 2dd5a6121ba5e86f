// Which BLAS the dynamic loader gives LibTorch. Debian's LibTorch calls the
// system libblas.so.3; unless OpenBLAS provides it, training runs ~20x slower.
#pragma once

#include <string>

namespace geopipe::common {

struct BlasInfo {
  bool optimized = false;  // OpenBLAS (or another tuned BLAS) is what loads
  std::string library;     // the file libblas.so.3 resolves to
  std::string detail;      // OpenBLAS config string, or why it is slow
};

// Resolves libblas.so.3 as the loader would and checks for OpenBLAS.
BlasInfo detectBlas();

// Sets the BLAS library's own thread pool size (OpenBLAS keeps one apart
// from LibTorch's intra-op threads). Several tasklet threads that each call
// a multi-threaded OpenBLAS on the same cores oversubscribe them and run
// several times slower, so the Trainer sets this to its threads per
// tasklet. Returns false when the BLAS has no such control.
bool setBlasThreads(int threads);

// The LibTorch and BLAS threads of one worker process: `requested` (a
// worker's --threads; 0: this host's `cores` shared by the
// `workers_on_host` tasklets placed on it), and a warning ("" when none)
// when requested threads x workers on the host exceed its cores: two
// workers on 2 cores with 2 threads each ran 20x slower than with 1.
struct WorkerThreads {
  int threads = 1;
  std::string warning;
};
WorkerThreads workerThreads(int requested, int workers_on_host, int cores);

// Logs a loud warning (once per process) when the BLAS is the reference one.
// Returns the detected info.
BlasInfo warnIfSlowBlas();

}  // namespace geopipe::common
