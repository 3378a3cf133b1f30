#include "pal/core/runtime.h"

#include <ATen/Parallel.h>
#include <sched.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#ifdef PAL_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include "logger.h"
#include "pal/core/error.h"
#include "pal/version.h"

namespace pal {

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

void configure_threads(const ThreadOptions& options) {
  if (options.intra_op < 0 || options.inter_op < 0)
    throw ConfigError("thread counts must be >= 0 (0 = all cores), got intra_op " +
                      std::to_string(options.intra_op) + ", inter_op " + std::to_string(options.inter_op));
  int intra = options.intra_op > 0 ? options.intra_op : available_cores();
  at::set_num_threads(intra);
  if (options.inter_op > 0) {
    static std::once_flag once;
    bool applied = false;
    std::call_once(once, [&] {
      try {
        at::set_num_interop_threads(options.inter_op);
        applied = true;
      } catch (const std::exception& e) {
        logger().warn("inter-op thread count not changed: {}", e.what());
      }
    });
    if (!applied) logger().debug("inter-op thread count can be set only once per process");
  }
  logger().debug("LibTorch threads: intra-op {}, inter-op {}", at::get_num_threads(),
                 at::get_num_interop_threads());
}

namespace {

// The BLAS that the dynamic loader actually mapped, resolved through symlinks (Debian
// selects libblas.so.3 through update-alternatives: reference BLAS or OpenBLAS).
std::string loaded_blas() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> found;
  for (std::string line; std::getline(maps, line);) {
    size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    std::string file = path.substr(path.rfind('/') + 1);
    if (file.find("blas") == std::string::npos && file.find("mkl_core") == std::string::npos &&
        file.find("mkl_rt") == std::string::npos)
      continue;
    char resolved[PATH_MAX];
    found.insert(realpath(path.c_str(), resolved) ? std::string(resolved) : path);
  }
  std::string out;
  for (const auto& f : found) out += (out.empty() ? "" : ", ") + f;
  return out.empty() ? "none loaded (LibTorch uses its own kernels)" : out;
}

}  // namespace

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  info.pal_version = PAL_VERSION_STRING;
  info.torch_version = TORCH_VERSION;
#ifdef PAL_WITH_CUDA
  info.torch_cuda_build = true;
#endif
  info.cuda_available = torch::cuda::is_available();
#ifdef PAL_WITH_CUDA
  if (info.cuda_available) {
    for (int i = 0; i < static_cast<int>(torch::cuda::device_count()); ++i) {
      const cudaDeviceProp* p = at::cuda::getDeviceProperties(i);
      info.cuda_devices.push_back({i, p->name, static_cast<double>(p->totalGlobalMem) / (1ull << 30),
                                   p->major, p->minor});
    }
  }
#endif
  info.intra_op_threads = at::get_num_threads();
  info.inter_op_threads = at::get_num_interop_threads();
  info.blas = loaded_blas();
  return info;
}

}  // namespace pal
