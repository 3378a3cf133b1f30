#include "pal/models/pal_model.h"

#include <torch/torch.h>

#include "pal/core/error.h"
#include "pal/models/ast_encoder.h"
#include "pal/models/whisper_encoder.h"
#include "pal/text/prompt.h"
#include "pal/text/tokenizer.h"

namespace pal::models {
namespace {

torch::Dtype to_dtype(ModelDtype d) {
  switch (d) {
    case ModelDtype::float32: return torch::kFloat32;
    case ModelDtype::bfloat16: return torch::kBFloat16;
    case ModelDtype::float16: return torch::kFloat16;
  }
  return torch::kFloat32;
}

std::filesystem::path resolve(const std::filesystem::path& base, const std::string& path) {
  std::filesystem::path p(path);
  return p.is_absolute() ? p : base / p;
}

AudioTokens project(AudioProjector& projector, const AudioTokens& tokens) {
  return tokens.empty() ? tokens : projector.forward(tokens);
}

}  // namespace

EncoderRegistry& encoder_registry() {
  static EncoderRegistry registry = [] {
    EncoderRegistry r("encoder");
    r.add("whisper",
          [](const EncoderEntryConfig& c, const std::filesystem::path& folder, torch::Dtype dtype) {
            WhisperEncoderOptions o;
            o.pad_to_30s = c.pad_to_30s;
            return std::static_pointer_cast<AudioEncoder>(
                (c.weights == "random" ? init_whisper_encoder(folder, o, dtype) : load_whisper_encoder(folder, o, dtype))
                    .ptr());
          });
    auto ast = [](const EncoderEntryConfig& c, const std::filesystem::path& folder, torch::Dtype dtype) {
      AstEncoderOptions o;
      o.frequency = c.frequency;
      return std::static_pointer_cast<AudioEncoder>(
          (c.weights == "random" ? init_ast_encoder(folder, o, dtype) : load_ast_encoder(folder, o, dtype)).ptr());
    };
    r.add("ast", ast);
    r.add("eat", ast);  // the EAT / SSLAM variant is told apart by its config.json
    return r;
  }();
  return registry;
}

PalModelImpl::~PalModelImpl() = default;

PalModelImpl::PalModelImpl(const PalModelConfig& config, const std::filesystem::path& base_dir)
    : config_(config), base_dir_(base_dir) {
  const torch::Dtype dtype = to_dtype(config_.dtype);
  if (config_.encoders.empty()) throw ConfigError("model.encoders: at least one encoder is needed");
  encoders = register_module("encoders", torch::nn::ModuleList());
  std::vector<EnsembleInput> inputs;
  for (size_t i = 0; i < config_.encoders.size(); ++i) {
    const EncoderEntryConfig& e = config_.encoders[i];
    const std::string key = "model.encoders." + std::to_string(i);
    auto encoder = encoder_registry().make(e.type, key + ".type", e, resolve(base_dir, e.checkpoint), dtype);
    encoder->train_last_blocks(e.trainable_blocks);
    inputs.push_back(
        {key + " (" + e.type + ")", encoder->width(), encoder->frames_per_second(), encoder->cls_width()});
    encoders->push_back(encoder);
  }
  ensemble = register_module("ensemble", EncoderEnsemble(config_.ensemble, inputs));

  const std::filesystem::path llm_folder = resolve(base_dir, config_.llm);
  LlamaForCausalLM llm =
      config_.llm_weights == "random" ? init_llama(llm_folder, dtype) : load_llama(llm_folder, dtype);
  if (config_.lora.rank > 0) add_lora(*llm, config_.lora);
  projector = register_module("projector", make_projector(config_.projector, config_.ensemble.width,
                                                          llm->config().hidden_size, "model.projector.type"));

  // The placeholder's id: the tokenizer's (added as a special token when new), else one
  // past the decoder's vocabulary. It is never embedded.
  if (std::filesystem::exists(llm_folder / "tokenizer.json") ||
      std::filesystem::exists(llm_folder / "tokenizer.model")) {
    tokenizer_ = text::load_tokenizer(llm_folder);
    audio_token_id_ = tokenizer_->add_special_token(config_.audio_token);
    prompts_ = std::make_unique<text::PromptBuilder>(*tokenizer_, config_.prompt, llm_folder, config_.audio_token);
  } else {
    audio_token_id_ = llm->config().vocab_size;
  }
  decoder = register_module("decoder", FusionDecoder(llm, config_.fusion, audio_token_id_));
}

EnsembleOutput PalModelImpl::encode_audio(const torch::Tensor& waveforms, const torch::Tensor& lengths) {
  EnsembleOutput audio = encode_ensemble(waveforms, lengths);
  return {project(*projector, audio.prefix), project(*projector, audio.probe)};
}

EnsembleOutput PalModelImpl::encode_ensemble(const torch::Tensor& waveforms, const torch::Tensor& lengths) {
  std::vector<EncoderOutput> outputs;
  for (const auto& module : *encoders) {
    auto* encoder = dynamic_cast<AudioEncoder*>(module.get());
    // Frozen encoders need no graph: their activations would only cost memory.
    bool frozen = true;
    for (const auto& p : encoder->parameters()) frozen = frozen && !p.requires_grad();
    if (frozen) {
      torch::NoGradGuard no_grad;
      outputs.push_back(encoder->encode(waveforms, lengths));
    } else {
      outputs.push_back(encoder->encode(waveforms, lengths));
    }
  }
  return ensemble->forward(outputs);
}

FusionOutput PalModelImpl::forward(const torch::Tensor& waveforms, const torch::Tensor& lengths,
                                   const torch::Tensor& input_ids, const torch::Tensor& valid,
                                   const torch::Tensor& labels) {
  return decoder->forward(input_ids, valid, encode_audio(waveforms, lengths), labels);
}

GenerationResult PalModelImpl::generate(const torch::Tensor& waveforms, const torch::Tensor& lengths,
                                        const std::vector<std::vector<int64_t>>& prompts,
                                        const GenerationOptions& options, const TokenCallback& on_token,
                                        const Detokenizer& detokenize) {
  torch::NoGradGuard no_grad;
  return decoder->generate(prompts, encode_audio(waveforms, lengths), options, on_token, detokenize);
}

std::string PalModelImpl::parameter_group(const std::string& name) {
  if (name.rfind("encoders.", 0) == 0) return "encoders";
  if (name.rfind("ensemble.", 0) == 0) return "ensemble";
  if (name.rfind("projector.", 0) == 0) return "projector";
  if (name.rfind("decoder.probe_adapters.", 0) == 0) return "probe_adapters";
  if (name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos) return "lora";
  return "llm";
}

std::map<std::string, std::vector<torch::Tensor>> PalModelImpl::parameter_groups() {
  std::map<std::string, std::vector<torch::Tensor>> groups;
  for (const char* g : {"encoders", "ensemble", "projector", "probe_adapters", "lora", "llm"}) groups[g];
  for (const auto& p : named_parameters()) groups[parameter_group(p.key())].push_back(p.value());
  return groups;
}

}  // namespace pal::models
