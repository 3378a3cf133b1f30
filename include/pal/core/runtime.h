// LibTorch runtime settings and facts about the build and the machine.
//
// Debian's LibTorch starts with one intra-op thread, so every PAL tool sets the thread
// count explicitly through configure_threads().
#pragma once

#include <string>
#include <vector>

namespace pal {

struct ThreadOptions {
  int intra_op = 0;  // intra-op (parallel-for) threads; 0 = every core of the machine
  int inter_op = 0;  // inter-op threads; 0 = leave LibTorch's default
};

// Keeps memory freed by LibTorch's CPU tensors in the process (glibc malloc: mmap threshold
// 32 MiB, trim threshold 1 GiB) instead of returning it to the kernel after every step,
// which costs a page fault and a zeroed page per 4 KiB when the next step allocates again.
// Called by configure_threads(); once per process. Leaves malloc as it is when the
// environment sets PAL_MALLOC_DEFAULTS=1 or any glibc malloc setting of its own
// (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, GLIBC_TUNABLES with
// glibc.malloc.*). glibc's mallopt() caps the mmap threshold at 32 MiB; the environment
// can set it higher (MALLOC_MMAP_THRESHOLD_=1000000000), which keeps even the largest
// activations in the heap.
void configure_cpu_allocator();

// True when the environment asks configure_cpu_allocator() to leave malloc alone (above).
bool malloc_left_to_environment();

// Applies `options` to LibTorch (and calls configure_cpu_allocator()). The inter-op count
// can only be set once per process, before any parallel work; a second attempt is ignored
// with a warning. Throws pal::ConfigError on negative counts.
void configure_threads(const ThreadOptions& options);

// Number of cores this process may run on (sched affinity, at least 1).
int available_cores();

struct CudaDevice {
  int index = 0;
  std::string name;          // e.g. "NVIDIA H100 80GB HBM3"
  double memory_gib = 0;     // total device memory
  int major = 0, minor = 0;  // compute capability
};

struct RuntimeInfo {
  std::string pal_version;        // this library's version, "MAJOR.MINOR.PATCH"
  std::string torch_version;      // LibTorch the library was compiled against
  bool torch_cuda_build = false;  // LibTorch was built with CUDA support
  bool cuda_available = false;    // a CUDA device is usable now
  std::vector<CudaDevice> cuda_devices;
  int intra_op_threads = 0;
  int inter_op_threads = 0;
  std::string blas;  // CPU BLAS: LibTorch's BLAS_INFO and the libraries loaded for it
};

// Collects RuntimeInfo for the running process.
RuntimeInfo runtime_info();

// True when LibTorch's CPU BLAS runs its own thread pool beside LibTorch's OpenMP
// threads (Debian's LibTorch with OpenBLAS-pthread). Checked once per process.
bool blas_has_own_threads();

// For matmul-bound loops (decoding, training steps) in the calling thread: when
// blas_has_own_threads(), LibTorch's intra-op threads drop to 1 while the guard lives
// and OpenBLAS keeps every core. Otherwise OpenMP's workers spin-wait between parallel
// regions and starve the BLAS threads: batch-8 decoding of a 100M Llama on 2 cores ran
// at 52 tokens/s with 2 intra-op threads and 161 with this (pal-bench generate). A no-op
// with other BLAS builds (PyPI's LibTorch: MKL on the same OpenMP pool).
class BlasThreadingGuard {
 public:
  BlasThreadingGuard();
  ~BlasThreadingGuard();
  BlasThreadingGuard(const BlasThreadingGuard&) = delete;
  BlasThreadingGuard& operator=(const BlasThreadingGuard&) = delete;

 private:
  int saved_ = 0;  // intra-op threads to restore; 0: nothing changed
};

}  // namespace pal
