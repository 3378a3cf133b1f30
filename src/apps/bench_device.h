// pal-bench on CPU or CUDA: the device and dtype flags, timing that waits for the device,
// peak memory, the measured matmul peak that MFU is taken against, and the model shapes
// the benchmarks name (bench_device.cpp).
//
// Memory: on CUDA the caching allocator's counters (bytes handed to tensors, not the
// driver's reservation); on the CPU the process's resident set.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <string>

#include "pal/models/llama.h"

namespace pal::bench {

// "cpu", "cuda" or "cuda:N". Throws pal::Error naming the flag when CUDA is asked for and
// none is usable (a CPU build of LibTorch, or no GPU).
c10::Device parse_device(const std::string& name, const std::string& flag = "--device");
// "float32" or "bfloat16". Throws pal::Error otherwise.
at::ScalarType parse_dtype(const std::string& name, const std::string& flag = "--dtype");

// Waits for the work queued on `device` (a no-op on the CPU).
void synchronize(c10::Device device);

// CUDA: starts a new peak of allocated bytes. CPU: nothing (the RSS peak only grows).
void reset_peak_memory(c10::Device device);
// CUDA: bytes held by tensors now, in MiB. CPU: resident memory of the process.
double memory_now_mib(c10::Device device);
// CUDA: the most bytes held by tensors since reset_peak_memory(). CPU: peak RSS so far.
double memory_peak_mib(c10::Device device);
// CUDA: hands the allocator's cached, unused blocks back to the driver (for the processes
// that run next on the card). CPU: nothing.
void release_cached_memory(c10::Device device);

// "NVIDIA H100 80GB HBM3" for CUDA devices, "cpu" otherwise.
std::string device_name(c10::Device device);

// Dense matmul throughput in FLOP/s: n x n by n x n products of `dtype` on `device`,
// back to back for at least `min_seconds` after a warm-up (2 n^3 FLOPs each). The
// denominator of MFU: what this card does on the simplest dense kernel, measured in the
// same run rather than read from a data sheet.
double matmul_flops_per_second(c10::Device device, at::ScalarType dtype, int64_t n, double min_seconds);

// LLM shapes by name: "llama-3.2-1b" (hidden 2048, 16 layers, 32 heads of 64, 8 KV heads,
// intermediate 8192, vocab 128256, tied, llama3 RoPE) and "tiny" (hidden 128, 2 layers,
// vocab 1000: dry runs). Throws pal::Error for other names.
models::LlamaConfig llm_preset(const std::string& name);

// Seconds since `start`, after waiting for `device`.
double seconds_since(std::chrono::steady_clock::time_point start, c10::Device device);

}  // namespace pal::bench
