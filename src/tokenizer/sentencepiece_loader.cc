// Loads the SentencePiece plugin (libgeopipe_sentencepiece.so) in a scope of
// its own. Debian's libsentencepiece.so.0 carries its own copy of
// protobuf-lite 3.14 and exports those symbols; linked into a process that
// also has libprotobuf.so.32 (gRPC, LibTorch), one library's protobuf calls
// bind to the other's copy and the process crashes before main (a known
// SentencePiece packaging problem: google/sentencepiece#723, #927). Opened
// with RTLD_LOCAL its symbols stay out of the global scope, and RTLD_DEEPBIND
// makes it and its plugin use their own protobuf first.
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "geopipe/error.h"
#include "src/common/text.h"
#include "src/tokenizer/sentencepiece_tokenizer.h"

namespace geopipe::tokenizer {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPluginName = "libgeopipe_sentencepiece.so";

using LoadFn = Tokenizer* (*)(const char*, char*, size_t);

// Where the plugin may be: next to the running executable, where the build
// put it, then where `cmake --install` to the configured prefix put it (a
// program built against an installed geopipe; docs/cpp-api.md).
std::vector<std::string> pluginCandidates() {
  std::vector<std::string> out;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) out.push_back((exe.parent_path() / kPluginName).string());
  out.push_back(GEOPIPE_SENTENCEPIECE_PLUGIN);
  out.push_back(GEOPIPE_SENTENCEPIECE_PLUGIN_INSTALLED);
  return out;
}

int openFlags() {
  int flags = RTLD_NOW | RTLD_LOCAL;
  // AddressSanitizer refuses RTLD_DEEPBIND; its builds (fuzz, sanitize) do
  // not link libprotobuf into the processes that load SentencePiece.
#if defined(__SANITIZE_ADDRESS__)
  return flags;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return flags;
#endif
#endif
  return flags | RTLD_DEEPBIND;
}

LoadFn plugin() {
  static std::mutex mutex;
  static LoadFn load = nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (load != nullptr) return load;
  std::string tried;
  for (const std::string& path : pluginCandidates()) {
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      tried += (tried.empty() ? "" : ", ") + path;
      continue;
    }
    // Never closed: tokenizers made by it may live until the process ends.
    void* handle = ::dlopen(path.c_str(), openFlags());
    if (handle == nullptr) {
      GEOPIPE_THROW(IoError, "cannot load the SentencePiece plugin '", common::printable(path),
                    "': ", ::dlerror(),
                    " (it needs Debian's libsentencepiece0: scripts/install-deps installs it)");
    }
    load = reinterpret_cast<LoadFn>(::dlsym(handle, "geopipe_sentencepiece_load"));
    if (load == nullptr) {
      GEOPIPE_THROW(IoError, "'", common::printable(path),
                    "' is not geopipe's SentencePiece plugin: ", ::dlerror());
    }
    return load;
  }
  GEOPIPE_THROW(IoError, "SentencePiece models need the plugin ", kPluginName, ", which is not at ",
                tried,
                ": build the target geopipe_sentencepiece (it is "
                "built with geopipe) and keep it next to the geopipe executable");
}

}  // namespace

std::unique_ptr<Tokenizer> loadSentencePiece(const std::string& model_path) {
  char error[1024] = {0};
  Tokenizer* t = plugin()(model_path.c_str(), error, sizeof(error));
  if (t == nullptr) GEOPIPE_THROW(IoError, error);
  return std::unique_ptr<Tokenizer>(t);
}

}  // namespace geopipe::tokenizer
