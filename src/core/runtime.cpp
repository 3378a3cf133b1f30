#include "pal/core/runtime.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <sched.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
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

#include "log.h"
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

bool malloc_left_to_environment() {
  const char* env = std::getenv("PAL_MALLOC_DEFAULTS");
  if (env != nullptr && std::string(env) == "1") return true;
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"})
    if (std::getenv(name) != nullptr) return true;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables != nullptr && std::string(tunables).find("glibc.malloc.") != std::string::npos;
}

void configure_cpu_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (malloc_left_to_environment()) return;  // the user's own malloc settings win
#if defined(__GLIBC__)
    // glibc returns every freed block above its (dynamic) mmap threshold, and the top of the
    // heap above 128 KiB, to the kernel; the next step's tensors of the same sizes then fault
    // in freshly zeroed pages again. A demo training step on 2 cores spent 40% of its time
    // in the kernel that way (4.1M minor page faults in 40 steps). Keeping freed memory in
    // the heap makes steps after the first reuse it. 32 MiB is the largest mmap threshold
    // glibc accepts on 64-bit machines.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
#endif
  });
}

void configure_threads(const ThreadOptions& options) {
  configure_cpu_allocator();
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
        detail::log_warn("inter-op thread count not changed: ", e.what());
      }
    });
    if (!applied) detail::log_debug("inter-op thread count can be set only once per process");
  }
  detail::log_debug("LibTorch threads: intra-op ", at::get_num_threads(), ", inter-op ",
                    at::get_num_interop_threads());
}

namespace {

// The CPU BLAS in use: the interface LibTorch was built for (its BLAS_INFO) and the
// libraries the dynamic loader actually mapped, resolved through symlinks (Debian picks
// libblas.so.3 through update-alternatives: the slow reference BLAS or OpenBLAS).
std::string cpu_blas() {
  std::string build = "unknown";
  const std::string config = at::show_config();
  size_t at_key = config.find("BLAS_INFO=");
  if (at_key != std::string::npos) {
    size_t begin = at_key + 10;
    build = config.substr(begin, config.find_first_of(", \n", begin) - begin);
  }
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> loaded;
  for (std::string line; std::getline(maps, line);) {
    size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    std::string file = path.substr(path.rfind('/') + 1);
    bool cpu_blas = file.rfind("libblas", 0) == 0 || file.rfind("libopenblas", 0) == 0 ||
                    file.rfind("libmkl_", 0) == 0 || file.rfind("libblis", 0) == 0 ||
                    file.rfind("libflexiblas", 0) == 0;
    if (!cpu_blas) continue;
    char resolved[PATH_MAX];
    loaded.insert(realpath(path.c_str(), resolved) ? std::string(resolved) : path);
  }
  std::string out = build;
  if (loaded.empty()) return out + " (linked into LibTorch)";
  out += "; loaded:";
  bool reference = false;
  for (const auto& f : loaded) {
    out += " " + f;
    reference = reference || f.find("/blas/libblas") != std::string::npos;
  }
  if (reference) out += " (reference BLAS, slow: install libopenblas0-pthread)";
  return out;
}

}  // namespace

bool blas_has_own_threads() {
  static const bool own = [] {
    const std::string blas = cpu_blas();
    return blas.find("openblas-pthread") != std::string::npos ||
           blas.find("libopenblasp") != std::string::npos;
  }();
  return own;
}

BlasThreadingGuard::BlasThreadingGuard() {
  if (!blas_has_own_threads()) return;
  const int threads = at::get_num_threads();
  if (threads <= 1) return;
  saved_ = threads;
  at::set_num_threads(1);
}

BlasThreadingGuard::~BlasThreadingGuard() {
  if (saved_ > 0) at::set_num_threads(saved_);
}

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
      info.cuda_devices.push_back(
          {i, p->name, static_cast<double>(p->totalGlobalMem) / (1ull << 30), p->major, p->minor});
    }
  }
#endif
  info.intra_op_threads = at::get_num_threads();
  info.inter_op_threads = at::get_num_interop_threads();
  info.blas = cpu_blas();
  return info;
}

}  // namespace pal
