#include "bench_device.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>

#include "bench_fusion.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"

#ifdef PAL_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace pal::bench {

c10::Device parse_device(const std::string& name, const std::string& flag) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw Error(flag + ": '" + name + "' is not a device (cpu, cuda, cuda:N)");
  }
  if (!device.is_cpu() && !device.is_cuda())
    throw Error(flag + ": '" + name + "' is not cpu, cuda or cuda:N");
  if (device.is_cuda()) {
    if (!torch::cuda::is_available())
      throw Error(flag + ": '" + name + "', but no CUDA device is usable" +
                  (runtime_info().torch_cuda_build ? "" : " (this LibTorch is a CPU build)"));
    if (!device.has_index()) device = c10::Device(c10::kCUDA, 0);
    if (device.index() >= static_cast<int>(torch::cuda::device_count()))
      throw Error(flag + ": '" + name + "', but there are " + std::to_string(torch::cuda::device_count()) +
                  " CUDA devices");
  }
  return device;
}

at::ScalarType parse_dtype(const std::string& name, const std::string& flag) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  throw Error(flag + ": '" + name + "' is not float32 or bfloat16");
}

void synchronize(c10::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

void reset_peak_memory(c10::Device device) {
#ifdef PAL_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#else
  (void)device;
#endif
}

namespace {

// Index 0 of the allocator's stat arrays is the aggregate over its pools (StatType::AGGREGATE,
// whose namespace moved between LibTorch 2.x releases).
constexpr size_t kAggregate = 0;

}  // namespace

double memory_now_mib(c10::Device device) {
#ifdef PAL_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[kAggregate].current) / (1024.0 * 1024.0);
  }
#endif
  (void)kAggregate;
  return resident_mib();
}

double memory_peak_mib(c10::Device device) {
#ifdef PAL_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[kAggregate].peak) / (1024.0 * 1024.0);
  }
#endif
  return peak_resident_mib();
}

void release_cached_memory(c10::Device device) {
#ifdef PAL_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#else
  (void)device;
#endif
}

std::string device_name(c10::Device device) {
  if (!device.is_cuda()) return "cpu";
  for (const auto& d : runtime_info().cuda_devices)
    if (d.index == device.index()) return d.name;
  return device.str();
}

double seconds_since(std::chrono::steady_clock::time_point start, c10::Device device) {
  synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double matmul_flops_per_second(c10::Device device, at::ScalarType dtype, int64_t n, double min_seconds) {
  torch::NoGradGuard no_grad;
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  const torch::Tensor a = torch::randn({n, n}, options), b = torch::randn({n, n}, options);
  torch::Tensor c = torch::empty({n, n}, options);
  for (int i = 0; i < 3; ++i) at::mm_out(c, a, b);  // warm-up: kernel choice, clocks
  synchronize(device);
  int64_t products = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 10; ++i) at::mm_out(c, a, b);
    products += 10;
    elapsed = seconds_since(start, device);
  } while (elapsed < min_seconds);
  const double nd = static_cast<double>(n);
  return 2.0 * nd * nd * nd * static_cast<double>(products) / elapsed;
}

models::LlamaConfig llm_preset(const std::string& name) {
  models::LlamaConfig c;
  if (name == "llama-3.2-1b") {
    // ref: meta-llama/Llama-3.2-1B config.json
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.intermediate_size = 8192;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.max_position_embeddings = 131072;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 500000.0;
    c.rope_type = "llama3";
    c.rope_factor = 32.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_positions = 8192;
    c.tie_word_embeddings = true;
  } else if (name == "tiny") {
    c.vocab_size = 1000;
    c.hidden_size = 128;
    c.intermediate_size = 256;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.max_position_embeddings = 4096;
    c.rope_theta = 500000.0;
    c.tie_word_embeddings = true;
  } else {
    throw Error("--llm-preset: '" + name + "' is not llama-3.2-1b or tiny");
  }
  c.validate();
  return c;
}

}  // namespace pal::bench
