// The PAL model: encoders -> ensemble -> projector -> LLM with a fusion mode, built from
// one config (DESIGN.md sections 1 and 3), so that the paper's comparisons are a change
// of one YAML key:
//
//   model:
//     llm: checkpoints/Llama-3.2-1B-Instruct          # HF folder (config.json, safetensors, tokenizer)
//     encoders:
//       - {type: whisper, checkpoint: checkpoints/whisper-base}
//       - {type: ast, checkpoint: checkpoints/ast-audioset, frequency: pooled}
//     ensemble: {width: 768, frames_per_second: 12.5, fusion: concat_time}
//     projector: {type: mlp}
//     fusion: {mode: probe, start_layer: 4}
//     lora: {rank: 8, targets: [q_proj, v_proj]}
//
// Relative paths are taken from the config file's folder.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pal/core/config.h"
#include "pal/core/registry.h"
#include "pal/models/audio_encoder.h"
#include "pal/models/ensemble.h"
#include "pal/models/fusion.h"
#include "pal/models/lora.h"
#include "pal/models/projector.h"
#include "pal/text/prompt.h"

namespace pal::text {
class Tokenizer;
class PromptBuilder;
}

namespace pal::models {

enum class ModelDtype { float32, bfloat16, float16 };

}  // namespace pal::models

template <>
struct pal::config::EnumNames<pal::models::ModelDtype> {
  static std::vector<std::pair<pal::models::ModelDtype, std::string>> get() {
    return {{pal::models::ModelDtype::float32, "float32"},
            {pal::models::ModelDtype::bfloat16, "bfloat16"},
            {pal::models::ModelDtype::float16, "float16"}};
  }
};

namespace pal::models {

// One encoder of the ensemble. The keys after `checkpoint` apply to some types only.
struct EncoderEntryConfig {
  std::string type;                  // a name in encoder_registry(): whisper, ast, eat
  std::string checkpoint;            // HF folder: config.json + safetensors
  std::string weights = "pretrained"; // pretrained: the folder's safetensors; random: config.json only, fresh weights
  int64_t trainable_blocks = 0;      // 0: frozen; n: the last n blocks train
  bool pad_to_30s = false;           // whisper: run on 30 s windows as Whisper was trained
  std::string frequency = "pooled";  // ast / eat: frequency patches per time step, pooled or stacked

  template <class V>
  void visit(V& v) {
    v("type", type, config::Rule().required().non_empty());
    v("checkpoint", checkpoint, config::Rule().required().non_empty());
    v("weights", weights, config::Rule().one_of({"pretrained", "random"}));
    v("trainable_blocks", trainable_blocks, config::Rule().at_least(0));
    v("pad_to_30s", pad_to_30s);
    v("frequency", frequency, config::Rule().one_of({"pooled", "stacked"}));
  }
};

using EncoderRegistry = Registry<std::shared_ptr<AudioEncoder>(
    const EncoderEntryConfig&, const std::filesystem::path& checkpoint, torch::Dtype)>;
// The registry with the built-in encoders; add() your own to it.
EncoderRegistry& encoder_registry();

struct PalModelConfig {
  std::string llm;                           // HF folder of the decoder (required)
  std::string llm_weights = "pretrained";    // pretrained: the folder's safetensors; random: config.json only, fresh weights
  ModelDtype dtype = ModelDtype::float32;    // weights of the decoder and encoders
  std::string audio_token = "<|audio|>";     // the placeholder in prompts
  std::vector<EncoderEntryConfig> encoders;  // at least one
  EnsembleConfig ensemble;
  ProjectorConfig projector;
  FusionConfig fusion;
  LoraConfig lora;  // on the decoder; rank 0: none
  text::PromptConfig prompt;  // how questions become token ids (training and inference alike)

  template <class V>
  void visit(V& v) {
    v("llm", llm, config::Rule().required().non_empty());
    v("llm_weights", llm_weights, config::Rule().one_of({"pretrained", "random"}));
    v("dtype", dtype);
    v("audio_token", audio_token, config::Rule().non_empty());
    v("encoders", encoders, config::Rule().non_empty());
    v("ensemble", ensemble);
    v("projector", projector);
    v("fusion", fusion);
    v("lora", lora);
    v("prompt", prompt);
  }
};

class PalModelImpl : public torch::nn::Module {
 public:
  // Loads the decoder, its tokenizer (when the folder has one) and the encoders; builds
  // ensemble and projector with fresh weights. Relative paths are under `base_dir`.
  PalModelImpl(const PalModelConfig& config, const std::filesystem::path& base_dir = ".");
  ~PalModelImpl() override;

  // waveforms [B, N] 16 kHz, lengths [B] -> the audio tokens of each route, in the LLM's
  // width.
  EnsembleOutput encode_audio(const at::Tensor& waveforms, const at::Tensor& lengths);
  // The same before the projector: the ensemble's tokens, in its width (ensemble.width).
  // The `classify` training objective reads them (pal/train/stage_config.h).
  EnsembleOutput encode_ensemble(const at::Tensor& waveforms, const at::Tensor& lengths);

  // Training / scoring: see FusionDecoder::forward.
  FusionOutput forward(const at::Tensor& waveforms, const at::Tensor& lengths, const at::Tensor& input_ids,
                       const at::Tensor& valid, const at::Tensor& labels = {});

  GenerationResult generate(const at::Tensor& waveforms, const at::Tensor& lengths,
                            const std::vector<std::vector<int64_t>>& prompts,
                            const GenerationOptions& options, const TokenCallback& on_token = {},
                            const Detokenizer& detokenize = {});

  // Parameters by group, for freezing and optimiser groups: "encoders", "ensemble",
  // "projector", "probe_adapters", "lora", "llm" (the decoder's own weights).
  std::map<std::string, std::vector<at::Tensor>> parameter_groups();
  // The group of one parameter name (one of the above).
  static std::string parameter_group(const std::string& name);

  int64_t audio_token_id() const { return audio_token_id_; }
  const text::Tokenizer* tokenizer() const { return tokenizer_.get(); }  // null when the LLM folder has none
  // Builds prompts as config().prompt says; null when there is no tokenizer.
  const text::PromptBuilder* prompts() const { return prompts_.get(); }
  const PalModelConfig& config() const { return config_; }
  // The folder the config's relative paths are taken from.
  const std::filesystem::path& base_dir() const { return base_dir_; }

  torch::nn::ModuleList encoders{nullptr};
  EncoderEnsemble ensemble{nullptr};
  std::shared_ptr<AudioProjector> projector;
  FusionDecoder decoder{nullptr};

 private:
  PalModelConfig config_;
  std::filesystem::path base_dir_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
  std::unique_ptr<text::PromptBuilder> prompts_;
  int64_t audio_token_id_ = -1;
};
TORCH_MODULE(PalModel);

}  // namespace pal::models
