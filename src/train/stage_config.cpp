#include "pal/train/stage_config.h"

namespace pal::train {
namespace fs = std::filesystem;
namespace {

void make_absolute(std::string& path, const fs::path& base) {
  if (path.empty()) return;
  fs::path p(path);
  if (!p.is_absolute()) path = (base / p).lexically_normal().string();
}

}  // namespace

StageConfig resolve_stage_paths(StageConfig config, const fs::path& base_dir) {
  const fs::path base = fs::absolute(base_dir);
  make_absolute(config.model.llm, base);
  for (auto& e : config.model.encoders) make_absolute(e.checkpoint, base);
  make_absolute(config.init_from, base);
  make_absolute(config.output_dir, base);
  for (auto& m : config.data.train) make_absolute(m.path, base);
  for (auto& m : config.data.eval) make_absolute(m.path, base);
  make_absolute(config.data.cache_dir, base);
  return config;
}

StageConfig load_stage_config(const fs::path& file, const std::vector<std::string>& overrides) {
  return resolve_stage_paths(config::load<StageConfig>(file, overrides), fs::absolute(file).parent_path());
}

}  // namespace pal::train
