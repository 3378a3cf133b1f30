#include "pal/models/pal_checkpoint.h"

#include <torch/torch.h>

#include <set>
#include <system_error>

#include "pal/core/atomic_file.h"
#include "pal/core/config.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"

namespace pal::models {
namespace fs = std::filesystem;
namespace {

const char* const kTokenizerFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                       "special_tokens_map.json"};

std::string relocate(const std::string& path, const fs::path& from_base, const fs::path& to_folder) {
  fs::path p(path);
  if (p.is_absolute()) return path;
  std::error_code ec;
  const fs::path target = fs::weakly_canonical(fs::absolute(from_base / p), ec);
  if (ec) return fs::absolute(from_base / p).lexically_normal().string();
  const fs::path folder = fs::weakly_canonical(fs::absolute(to_folder), ec);
  if (ec) return target.string();
  fs::path rel = target.lexically_relative(folder);
  return rel.empty() ? target.string() : rel.string();
}

}  // namespace

bool is_model_folder(const fs::path& folder) { return fs::is_regular_file(folder / kModelConfigFile); }

PalModelConfig relocate_config(const PalModelConfig& config, const fs::path& from_base, const fs::path& to_folder) {
  PalModelConfig out = config;
  out.llm = relocate(config.llm, from_base, to_folder);
  for (auto& e : out.encoders) e.checkpoint = relocate(e.checkpoint, from_base, to_folder);
  return out;
}

size_t load_pal_weights(PalModelImpl& model, const fs::path& weights) {
  auto file = io::SafetensorsFile::open(weights);
  auto params = model.named_parameters(/*recurse=*/true);
  torch::NoGradGuard no_grad;
  size_t loaded = 0;
  for (const auto& info : file.tensors()) {
    const torch::Tensor* target = params.find(info.name);
    if (!target) {
      std::string hint;
      if (info.name.find("lora_") != std::string::npos)
        hint = " (a LoRA weight: does model.yaml set lora.rank and the same targets?)";
      else if (info.name.rfind("decoder.probe_adapters.", 0) == 0)
        hint = " (a probe adapter: does model.yaml set fusion.adapter_rank?)";
      throw WeightsError(weights.string() + ": tensor '" + info.name + "' names no parameter of the model" + hint);
    }
    torch::Tensor t = file.tensor(info.name);
    if (t.sizes() != target->sizes()) {
      std::ostringstream msg;
      msg << weights.string() << ": tensor '" << info.name << "' has shape " << t.sizes()
          << " but the model's parameter has " << target->sizes();
      throw WeightsError(msg.str());
    }
    torch::Tensor dst = *target;
    dst.copy_(t);
    ++loaded;
  }
  return loaded;
}

PalModel load_pal_model(const fs::path& folder, const ModelLoadOptions& options) {
  const fs::path yaml = folder / kModelConfigFile;
  if (!fs::is_regular_file(yaml))
    throw IoError(folder.string() + ": not a PAL model folder (no " + kModelConfigFile + ")");
  PalModelConfig config = config::load<PalModelConfig>(yaml);
  if (options.dtype) config.dtype = *options.dtype;
  PalModel model(config, folder);
  const fs::path weights = folder / kModelWeightsFile;
  if (fs::exists(weights)) load_pal_weights(*model, weights);
  model->to(options.device);
  model->eval();
  return model;
}

void save_pal_model(PalModelImpl& model, const fs::path& folder, bool trainable_only) {
  std::set<std::string> names;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    if (!trainable_only || p.value().requires_grad()) names.insert(p.key());
  save_pal_model(model, folder, names);
}

void save_pal_model(PalModelImpl& model, const fs::path& folder, const std::set<std::string>& names) {
  fs::create_directories(folder);
  size_t total = 0;
  config::save(relocate_config(model.config(), model.base_dir(), folder), folder / kModelConfigFile);
  io::NamedTensors tensors;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    ++total;
    if (!names.count(p.key())) continue;
    tensors.emplace_back(p.key(), p.value().detach());
  }
  io::save_safetensors(folder / kModelWeightsFile, tensors,
                       {{"format", "pt"}, {"pal.content", tensors.size() == total ? "full" : "partial"}});
  const fs::path llm = fs::path(model.config().llm).is_absolute() ? fs::path(model.config().llm)
                                                                  : model.base_dir() / model.config().llm;
  for (const char* name : kTokenizerFiles)
    if (fs::is_regular_file(llm / name)) write_file_atomic(folder / name, read_file(llm / name));
}

}  // namespace pal::models
