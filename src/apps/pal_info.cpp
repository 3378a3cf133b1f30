// pal-info: what this build of PAL runs on, and what a weights file holds.
//
//   pal-info                      LibTorch version, CUDA devices, threads, BLAS
//   pal-info model.safetensors    tensors (name, dtype, shape), parameter and byte totals
//   pal-info CHECKPOINT_FOLDER    same over model.safetensors or an index and its shards
//   --json                        the same facts as one JSON object on stdout
//
// Exit codes: 0 success, 1 bad input (unreadable or malformed file), 2 bad usage.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/core/runtime.h"
#include "pal/io/safetensors.h"

namespace {

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double x = static_cast<double>(bytes);
  int u = 0;
  while (x >= 1024 && u < 4) x /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", x, units[u]);
  return buf;
}

std::string human_count(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ull)
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1000000ull)
    std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else if (n >= 1000ull)
    std::snprintf(buf, sizeof buf, "%.2f K", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  return buf;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void print_runtime(bool json) {
  pal::RuntimeInfo info = pal::runtime_info();
  if (json) {
    nlohmann::json devices = nlohmann::json::array();
    for (const auto& d : info.cuda_devices)
      devices.push_back({{"index", d.index},
                         {"name", d.name},
                         {"memory_gib", d.memory_gib},
                         {"compute_capability", std::to_string(d.major) + "." + std::to_string(d.minor)}});
    nlohmann::json j = {{"pal_version", info.pal_version},
                        {"torch_version", info.torch_version},
                        {"torch_cuda_build", info.torch_cuda_build},
                        {"cuda_available", info.cuda_available},
                        {"cuda_devices", devices},
                        {"intra_op_threads", info.intra_op_threads},
                        {"inter_op_threads", info.inter_op_threads},
                        {"blas", info.blas}};
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("PAL        %s\n", info.pal_version.c_str());
  std::printf("LibTorch   %s (%s build)\n", info.torch_version.c_str(),
              info.torch_cuda_build ? "CUDA" : "CPU-only");
  if (!info.cuda_available) {
    std::printf("CUDA       not available\n");
  } else {
    std::printf("CUDA       %zu device(s)\n", info.cuda_devices.size());
    for (const auto& d : info.cuda_devices)
      std::printf("  [%d]     %s, %.1f GiB, compute capability %d.%d\n", d.index, d.name.c_str(),
                  d.memory_gib, d.major, d.minor);
  }
  std::printf("threads    intra-op %d, inter-op %d\n", info.intra_op_threads, info.inter_op_threads);
  std::printf("BLAS       %s\n", info.blas.c_str());
}

void print_weights(const std::filesystem::path& path, bool json) {
  auto checkpoint = pal::io::SafetensorsCheckpoint::open(path);
  uint64_t params = 0, bytes = 0;
  std::map<std::string, uint64_t> per_dtype;  // parameters per dtype
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& name : checkpoint.names()) {
    const auto& t = checkpoint.info(name);
    params += static_cast<uint64_t>(t.numel());
    bytes += t.nbytes();
    per_dtype[std::string(pal::io::dtype_name(t.dtype))] += static_cast<uint64_t>(t.numel());
    tensors.push_back({{"name", name}, {"dtype", pal::io::dtype_name(t.dtype)}, {"shape", t.shape}});
  }
  std::string model_type;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec) && std::filesystem::exists(path / "config.json", ec)) {
    try {
      auto config = nlohmann::json::parse(pal::read_file(path / "config.json"));
      if (config.is_object() && config.contains("model_type") && config["model_type"].is_string())
        model_type = config["model_type"].get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw pal::WeightsError((path / "config.json").string() + ": not valid JSON: " + e.what());
    }
  }
  if (json) {
    nlohmann::json j = {{"path", path.string()},
                        {"files", checkpoint.files().size()},
                        {"tensors", tensors},
                        {"parameters", params},
                        {"bytes", bytes},
                        {"parameters_per_dtype", per_dtype},
                        {"metadata", checkpoint.metadata()}};
    if (!model_type.empty()) j["model_type"] = model_type;
    std::cout << j.dump(2) << "\n";
    return;
  }
  size_t width = 4;
  for (const auto& t : tensors) width = std::max(width, t["name"].get<std::string>().size());
  std::printf("%-*s  %-7s  %s\n", static_cast<int>(width), "name", "dtype", "shape");
  for (const auto& t : tensors)
    std::printf("%-*s  %-7s  %s\n", static_cast<int>(width), t["name"].get<std::string>().c_str(),
                t["dtype"].get<std::string>().c_str(),
                shape_text(t["shape"].get<std::vector<int64_t>>()).c_str());
  std::printf("\n%s: %zu tensors in %zu file(s)\n", path.string().c_str(), tensors.size(),
              checkpoint.files().size());
  if (!model_type.empty()) std::printf("model_type  %s\n", model_type.c_str());
  std::printf("parameters  %llu (%s)\n", static_cast<unsigned long long>(params),
              human_count(params).c_str());
  std::printf("bytes       %llu (%s)\n", static_cast<unsigned long long>(bytes), human_bytes(bytes).c_str());
  for (const auto& [dtype, n] : per_dtype)
    std::printf("  %-8s  %llu parameters\n", dtype.c_str(), static_cast<unsigned long long>(n));
  for (const auto& [k, v] : checkpoint.metadata()) std::printf("metadata    %s = %s\n", k.c_str(), v.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "pal-info: the LibTorch build, devices and threads PAL runs on; the tensors a weights file holds"};
  std::string path;
  bool json = false;
  int threads = 0;
  std::string log_level = "warn";
  app.add_option("path", path,
                 "a .safetensors file or a checkpoint folder (model.safetensors or sharded index)");
  app.add_flag("--json", json, "print one JSON object instead of text");
  app.add_option("--threads", threads, "LibTorch intra-op threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off");
  app.footer("Exit codes: 0 success, 1 bad input (unreadable or malformed file), 2 bad usage.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    pal::set_log_level(pal::parse_log_level(log_level));
    pal::configure_threads({threads, 0});
    if (path.empty())
      print_runtime(json);
    else
      print_weights(path, json);
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-info: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
