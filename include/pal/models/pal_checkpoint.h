// Model folders: how a trained PAL model is saved and loaded again, by the trainer's
// checkpoints, pal-infer and pal::Pipeline alike.
//
//   model.yaml         the PalModelConfig; its paths (llm, encoder checkpoints) are
//                      relative to this folder, or absolute
//   model.safetensors  weights named as PalModel::named_parameters(): every parameter
//                      (a self-contained model) or a subset (the trained ones, laid over
//                      the base weights that model.yaml points to)
//   tokenizer.json / tokenizer.model / tokenizer_config.json
//                      a copy of the LLM's tokenizer files, for tools that read them
#pragma once

#include <c10/core/Device.h>

#include <filesystem>
#include <set>
#include <optional>
#include <string>

#include "pal/models/pal_model.h"

namespace pal::models {

inline constexpr const char* kModelConfigFile = "model.yaml";
inline constexpr const char* kModelWeightsFile = "model.safetensors";

struct ModelLoadOptions {
  c10::Device device = c10::Device(c10::kCPU);
  std::optional<ModelDtype> dtype;  // overrides model.yaml's dtype when set
};

// True when `folder` has a model.yaml.
bool is_model_folder(const std::filesystem::path& folder);

// Builds the model of `folder`/model.yaml and lays model.safetensors over it (when
// present). Missing files, unknown keys, and tensors that name no parameter or have the
// wrong shape are errors naming the file and the tensor. The model is in eval mode.
PalModel load_pal_model(const std::filesystem::path& folder, const ModelLoadOptions& options = {});

// Copies every tensor of `weights` (a .safetensors file) into the parameter of the same
// name, casting to its dtype; the file may hold a subset of the parameters. Returns how
// many were loaded. Throws WeightsError naming the file and tensor on an unknown name or
// a shape mismatch.
size_t load_pal_weights(PalModelImpl& model, const std::filesystem::path& weights);

// Writes model.yaml, model.safetensors and the tokenizer files into `folder` (created if
// needed; each file atomically). `trainable_only`: only the parameters that require
// grad (the base weights then come from the folders model.yaml points to).
void save_pal_model(PalModelImpl& model, const std::filesystem::path& folder, bool trainable_only);
// The same, saving the parameters named in `names` (unknown names are ignored).
void save_pal_model(PalModelImpl& model, const std::filesystem::path& folder, const std::set<std::string>& names);

// The config with its paths rewritten relative to `folder` (for model.yaml).
PalModelConfig relocate_config(const PalModelConfig& config, const std::filesystem::path& from_base,
                               const std::filesystem::path& to_folder);

}  // namespace pal::models
