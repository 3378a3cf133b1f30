// The Whisper encoder, with sub-module names equal to the Hugging Face checkpoint keys
// ("layers.3.self_attn.q_proj.weight" under "model.encoder."), so that loading a folder is
// a name lookup.
//
// ref: transformers models/whisper/modeling_whisper.py (WhisperEncoder, WhisperEncoderLayer,
// WhisperAttention): conv1 (kernel 3, padding 1) + GELU, conv2 (kernel 3, stride 2,
// padding 1) + GELU, + embed_positions (sinusoids, stored as a weight), pre-LN layers
// (self_attn_layer_norm -> self-attention with q/v/out biases and a bias-less k_proj ->
// residual, final_layer_norm -> fc1 -> GELU -> fc2 -> residual), final layer_norm.
//
// Unlike transformers, which insists on 30 s (3000 mel frames) of input, clips of any
// length up to the context (2 * max_source_positions mel frames: 30 s for every released
// Whisper) run unpadded: the positions are sliced to the output length, and in a batch
// the frames past each clip's end are masked, so each clip's valid outputs equal those of
// the clip alone. Output rate: 50 frames per second (a mel frame every 10 ms, halved by
// conv2); a clip of T mel frames gives ceil(T / 2) valid outputs.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <filesystem>
#include <string>
#include <vector>

#include "pal/audio/frontend.h"
#include "pal/core/config.h"
#include "pal/models/audio_encoder.h"

namespace pal::models {

// The encoder half of an HF WhisperConfig (config.json, model_type "whisper").
struct WhisperEncoderConfig {
  int64_t d_model = 0;  // hidden size
  int64_t encoder_layers = 0;
  int64_t encoder_attention_heads = 0;
  int64_t encoder_ffn_dim = 0;
  int64_t num_mel_bins = 80;                 // 80, or 128 for large-v3
  int64_t max_source_positions = 1500;       // output frames of the full context (30 s)
  std::string activation_function = "gelu";  // only "gelu" (exact, erf) is supported

  // Reads config.json; errors (ConfigError) name the file and the key, and a config of
  // another architecture (model_type other than "whisper") names its model_type.
  static WhisperEncoderConfig from_json_file(const std::filesystem::path& file);
  void validate() const;                                               // throws ConfigError
  int64_t context_frames() const { return 2 * max_source_positions; }  // mel frames
};

// How the encoder runs (not part of the checkpoint).
struct WhisperEncoderOptions {
  // Zero-pad every clip to the full context (2 * max_source_positions mel frames, 30 s)
  // before the frontend, as openai-whisper and transformers run Whisper. The output keeps
  // the frames that cover the clips (the batch's longest), masked per clip; attention is
  // over the whole context, padding included, as there.
  bool pad_to_30s = false;

  template <class V>
  void visit(V& v) {
    v("pad_to_30s", pad_to_30s);
  }
};

class WhisperAttentionImpl : public torch::nn::Module {
 public:
  WhisperAttentionImpl(int64_t d_model, int64_t heads);
  // x [B, T, d_model]; key_valid [B, T] bool or undefined (all valid) -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_valid);
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(WhisperAttention);

class WhisperEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit WhisperEncoderLayerImpl(const WhisperEncoderConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_valid);  // [B, T, d_model]
  WhisperAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(WhisperEncoderLayer);

// Every intermediate of a forward, for layer-by-layer comparison with transformers.
struct WhisperEncoderTaps {
  // [0]: the embeddings (GELU(conv2) + positions), the input of layer 0; [i]: the output
  // of layer i - 1 (before the final layer_norm). Each [B, T, d_model].
  std::vector<torch::Tensor> hidden_states;
  torch::Tensor last_hidden_state;  // [B, T, d_model] after the final layer_norm
  torch::Tensor mask;               // [B, T] bool, true at valid output frames
};

class WhisperEncoderImpl : public AudioEncoder {
 public:
  explicit WhisperEncoderImpl(const WhisperEncoderConfig& config, const WhisperEncoderOptions& options = {});

  // waveforms [B, N] float32 16 kHz (zero-padded), lengths [B] int64 valid samples (at
  // least 160: one mel frame; at most the context, 30 s) -> hidden [B, T, d_model] (T:
  // the longest clip's output frames), mask [B, T]; no cls. Throws AudioError for clips
  // out of that range.
  EncoderOutput encode(const torch::Tensor& waveforms, const torch::Tensor& lengths) override;
  // features [B, T, num_mel_bins] (Whisper log-mel, zero past each clip's frames), lengths
  // [B] int64 valid mel frames (1 ..= context_frames) -> every intermediate.
  WhisperEncoderTaps forward_features(const torch::Tensor& features, const torch::Tensor& lengths,
                                      bool keep_taps = true);

  int64_t width() const override { return config_.d_model; }
  double frames_per_second() const override { return 50.0; }
  std::string type() const override { return "whisper"; }
  // The context (2 * max_source_positions mel frames: 30 s for every released Whisper),
  // windows back to back.
  EncoderWindow window() const override {
    const int64_t samples = config_.context_frames() * audio::WhisperMelFrontend::kHop;
    return {samples, samples};
  }
  void train_last_blocks(int64_t n) override;

  const WhisperEncoderConfig& config() const { return config_; }
  const WhisperEncoderOptions& options() const { return options_; }
  const audio::WhisperMelFrontend& frontend() const { return frontend_; }

  torch::nn::Conv1d conv1{nullptr}, conv2{nullptr};
  torch::nn::Embedding embed_positions{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};

 private:
  WhisperEncoderConfig config_;
  WhisperEncoderOptions options_;
  audio::WhisperMelFrontend frontend_;
};
TORCH_MODULE(WhisperEncoder);

// Builds the encoder from an HF Whisper folder: config.json + safetensors of a
// WhisperForConditionalGeneration / WhisperModel (tensors "model.encoder.*" or
// "encoder.*"; the decoder's are ignored) or of a bare WhisperEncoder (no prefix).
// Weights are cast to `dtype`; the module is in eval mode and fully frozen
// (train_last_blocks(0)). Every missing, unexpected or mis-shaped encoder tensor is a
// pal::WeightsError naming it; a folder of another architecture is a pal::ConfigError
// naming its model_type.
WhisperEncoder load_whisper_encoder(const std::filesystem::path& folder,
                                    const WhisperEncoderOptions& options = {},
                                    torch::Dtype dtype = torch::kFloat32);

// A Whisper encoder with fresh weights, from the folder's config.json alone (no
// safetensors needed): Hugging Face's initialisation (N(0, init_std), sinusoidal
// positions). For encoders trained from scratch (`weights: random` in a PAL model).
WhisperEncoder init_whisper_encoder(const std::filesystem::path& folder,
                                    const WhisperEncoderOptions& options = {},
                                    torch::Dtype dtype = torch::kFloat32);

}  // namespace pal::models
