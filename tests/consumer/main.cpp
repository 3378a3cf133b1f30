// Writes a checkpoint with the installed library, reads it back, loads a config.
#include <pal/core/config.h>
#include <pal/core/error.h>
#include <pal/core/runtime.h>
#include <pal/io/safetensors.h>
#include <pal/version.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

struct AppConfig {
  int threads = 1;
  template <class V>
  void visit(V& v) {
    v("threads", threads, pal::config::Rule().at_least(1));
  }
};

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::filesystem::path dir = argv[1];
  auto config = pal::config::parse<AppConfig>("threads: 2\n", "app.yaml");
  pal::configure_threads({config.threads, 0});
  auto weights = torch::arange(6, torch::kFloat).reshape({2, 3});
  pal::io::save_safetensors(dir / "w.safetensors", {{"w", weights}});
  auto back = pal::io::SafetensorsFile::open(dir / "w.safetensors").tensor("w");
  if (!torch::equal(back, weights)) return 1;
  try {
    pal::config::parse<AppConfig>("threads: 0\n", "app.yaml");
    return 1;
  } catch (const pal::ConfigError&) {
  }
  std::printf("consumer OK: pal %s, LibTorch threads %d\n", PAL_VERSION_STRING,
              pal::runtime_info().intra_op_threads);
  return 0;
}
