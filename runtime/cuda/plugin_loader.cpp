//===- plugin_loader.cpp - dlopen the CUDA backend module ----------------------===//
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "runtime/cuda/plugin.h"

namespace parallora::rt::cuda {

const BackendApi *load_cuda_backend(std::string *why) {
  static std::once_flag once;
  static const BackendApi *api = nullptr;
  static std::string error;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char *env = std::getenv("PARALLORA_CUDA_BACKEND"); env && *env) candidates.push_back(env);
#ifdef PARALLORA_CUDA_MODULE_PATH
    candidates.push_back(PARALLORA_CUDA_MODULE_PATH);
#endif
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
      std::string dir(exe, size_t(n));
      dir = dir.substr(0, dir.rfind('/') + 1);
      candidates.push_back(dir + "libparallora_cuda_backend.so");
    }
    std::string tried;
    for (const std::string &path : candidates) {
      void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        const char *e = dlerror();
        tried += "\n  " + path + ": " + (e ? e : "cannot load");
        continue;
      }
      auto entry = reinterpret_cast<const BackendApi *(*)()>(dlsym(h, "parallora_cuda_backend_api"));
      if (!entry) {
        tried += "\n  " + path + ": no parallora_cuda_backend_api";
        continue;
      }
      const BackendApi *a = entry();
      if (!a || a->version != kBackendApiVersion) {
        tried += "\n  " + path + ": backend API version " + std::to_string(a ? a->version : -1) + ", this lora-run needs " +
                 std::to_string(kBackendApiVersion) + " (rebuild both)";
        continue;
      }
      api = a;
      return;
    }
    error = "the CUDA backend module libparallora_cuda_backend.so could not be loaded (this build has no CUDA "
            "backend, or set PARALLORA_CUDA_BACKEND to its path); tried:" + tried;
  });
  if (!api && why) *why = error;
  return api;
}

} // namespace parallora::rt::cuda
