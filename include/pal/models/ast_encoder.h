// The ViT-on-fbank encoder family (AST, and EAT / SSLAM as a config variant), with
// sub-module names equal to the Hugging Face AST checkpoint keys
// ("encoder.layer.3.attention.attention.query.weight" under
// "audio_spectrogram_transformer."), so that loading a folder is a name lookup.
//
// ref: transformers models/audio_spectrogram_transformer (ASTModel; transformers 5 renames
// its modules in memory but save_pretrained writes, and every published checkpoint holds,
// these names): the fbank image [frequency, time] is cut into patch_size^2 patches by a
// Conv2d with stride (frequency_stride, time_stride); CLS (+ distillation) tokens are
// prepended; learned position embeddings (frequency-major: patch f * n_time + t) are
// added; pre-LN ViT layers (layernorm_before -> self-attention -> residual,
// layernorm_after -> intermediate.dense -> GELU -> output.dense -> residual); a final
// layernorm.
//
// Output: the patch grid as a time sequence: for each time patch its frequency patches
// are averaged ("pooled", width = hidden_size) or concatenated from low to high
// frequency ("stacked", width = hidden_size * n_frequency_patches); cls is the CLS output
// (AST: the mean of the CLS and distillation outputs, as ASTModel's pooler), of
// hidden_size. Rate: 100 / time_stride time steps per second (AST 10, EAT 6.25).
//
// Lengths: with a fixed frontend length (target_length > 0: AST's 1024 frames), every clip
// is padded / cropped to that many fbank frames and the model sees the padding, as the
// references run it (no attention mask); the output mask marks the time patches that
// hold the clip (at least the first, so a clip shorter than one patch still gives one
// step). With target_length 0 (EAT / SSLAM on variable-length input), each clip keeps its
// own frames: a clip of L >= patch_size frames gives 1 + ceil((L - patch_size) /
// time_stride) time patches (the last padded with the normalised zero, as EAT's feature
// extraction pads to a whole patch), padded patches are masked from attention so a clip's
// outputs do not depend on the batch, and a clip shorter than one patch is an AudioError.
// When the number of time patches differs from the position table's (max_length), the
// table is resized over time (position_resize).
//
// config.json for EAT / SSLAM (PAL's convention; these encoders have no transformers
// class): {"model_type": "eat", "hidden_size": 768, "num_hidden_layers": 12,
// "num_attention_heads": 12, "intermediate_size": 3072, "num_mel_bins": 128,
// "max_length": 1024, "patch_size": 16, "frequency_stride": 16, "time_stride": 16,
// "layer_norm_eps": 1e-6, "qkv_bias": true, "target_length": 1024,
// "position_resize": "interpolate"}; tensors named as AST's without
// embeddings.distillation_token (position_embeddings [1, 1 + patches, hidden]; the patch
// kernel over the [frequency, time] image, as AST's). Released EAT checkpoints (fairseq
// data2vec layout: blocks.N.attn.qkv, a [time, frequency] image, post-LN blocks) need a
// conversion to this layout.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <filesystem>
#include <string>
#include <vector>

#include "pal/audio/frontend.h"
#include "pal/core/config.h"
#include "pal/models/audio_encoder.h"

namespace pal::models {

struct AstEncoderConfig {
  std::string model_type = "audio-spectrogram-transformer";  // or "eat" (EAT / SSLAM)
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t num_mel_bins = 128;
  int64_t max_length = 1024;  // fbank frames the position table is laid out for
  int64_t patch_size = 16;
  int64_t frequency_stride = 10;  // EAT: 16 (no overlap)
  int64_t time_stride = 10;       // EAT: 16
  double layer_norm_eps = 1e-12;  // EAT: 1e-6
  bool qkv_bias = true;
  std::string hidden_act = "gelu";  // only "gelu" (exact, erf)
  bool distillation_token = true;   // AST: true; EAT: false (CLS only)
  int64_t target_length = 1024;     // frontend pad / crop to this many frames; 0: each clip's own (EAT only)
  std::string position_resize =
      "interpolate";  // other time lengths: "interpolate" (linear over
                      // time) or "truncate" (first columns; interpolate when longer)

  // Reads an HF ASTConfig (model_type "audio-spectrogram-transformer") or PAL's EAT
  // config.json (model_type "eat"; see above). Errors (ConfigError) name the file and
  // the key; another architecture's config names its model_type.
  static AstEncoderConfig from_json_file(const std::filesystem::path& file);
  static AstEncoderConfig eat();  // EAT-base's architecture
  void validate() const;          // throws ConfigError

  int64_t frequency_patches() const { return (num_mel_bins - patch_size) / frequency_stride + 1; }
  int64_t time_patches(int64_t frames) const { return (frames - patch_size) / time_stride + 1; }
  int64_t extra_tokens() const { return distillation_token ? 2 : 1; }
  // The frontend: AST's or EAT's fbank statistics, padded / cropped to target_length.
  audio::KaldiFbankOptions fbank() const;
};

// How the encoder runs (not part of the checkpoint).
struct AstEncoderOptions {
  std::string frequency = "pooled";  // per time step: "pooled" (mean) or "stacked" (concatenated)

  template <class V>
  void visit(V& v) {
    v("frequency", frequency, config::Rule().one_of({"pooled", "stacked"}));
  }
};

class AstPatchEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit AstPatchEmbeddingsImpl(const AstEncoderConfig& config);
  // fbank [B, T, n_mels] -> patches [B, n_freq * n_time, hidden] (frequency-major)
  torch::Tensor forward(const torch::Tensor& fbank);
  torch::nn::Conv2d projection{nullptr};
};
TORCH_MODULE(AstPatchEmbeddings);

class AstEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit AstEmbeddingsImpl(const AstEncoderConfig& config);
  torch::Tensor cls_token, distillation_token;  // [1, 1, hidden]; distillation undefined for EAT
  torch::Tensor position_embeddings;            // [1, extra + n_freq * n_time(max_length), hidden]
  AstPatchEmbeddings patch_embeddings{nullptr};
};
TORCH_MODULE(AstEmbeddings);

class AstSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit AstSelfAttentionImpl(const AstEncoderConfig& config);
  // x [B, S, hidden]; key_valid [B, S] bool or undefined -> [B, S, hidden] (heads merged)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_valid);
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(AstSelfAttention);

// A module holding one Linear named "dense" (HF's ASTSelfOutput, ASTIntermediate, ASTOutput).
class AstDenseImpl : public torch::nn::Module {
 public:
  AstDenseImpl(int64_t in, int64_t out);
  torch::Tensor forward(const torch::Tensor& x) { return dense(x); }
  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(AstDense);

class AstAttentionImpl : public torch::nn::Module {
 public:
  explicit AstAttentionImpl(const AstEncoderConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_valid) {
    return output(attention->forward(x, key_valid));
  }
  AstSelfAttention attention{nullptr};
  AstDense output{nullptr};
};
TORCH_MODULE(AstAttention);

class AstLayerImpl : public torch::nn::Module {
 public:
  explicit AstLayerImpl(const AstEncoderConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_valid);  // [B, S, hidden]
  AstAttention attention{nullptr};
  AstDense intermediate{nullptr}, output{nullptr};
  torch::nn::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
};
TORCH_MODULE(AstLayer);

class AstLayerStackImpl : public torch::nn::Module {  // HF's ASTEncoder: "encoder.layer.N"
 public:
  explicit AstLayerStackImpl(const AstEncoderConfig& config);
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(AstLayerStack);

// Every intermediate of a forward, for layer-by-layer comparison with transformers.
struct AstEncoderTaps {
  // [0]: the embeddings (tokens + positions), the input of layer 0; [i]: the output of
  // layer i - 1 (before the final layernorm). Each [B, extra + n_freq * n_time, hidden].
  std::vector<torch::Tensor> hidden_states;
  torch::Tensor last_hidden_state;  // [B, extra + n_freq * n_time, hidden] after the final layernorm
  EncoderOutput output;             // the time sequence, its mask and cls, as encode() returns them
};

class AstEncoderImpl : public AudioEncoder {
 public:
  explicit AstEncoderImpl(const AstEncoderConfig& config, const AstEncoderOptions& options = {});

  // waveforms [B, N] float32 16 kHz (zero-padded), lengths [B] int64 valid samples.
  // Throws AudioError for a clip with no fbank frame (< 400 samples) or, with
  // target_length 0, shorter than one patch.
  EncoderOutput encode(const torch::Tensor& waveforms, const torch::Tensor& lengths) override;
  // fbank [B, T, num_mel_bins] as the frontend gives it (T = target_length when > 0),
  // lengths [B] int64 valid frames -> every intermediate.
  AstEncoderTaps forward_features(const torch::Tensor& fbank, const torch::Tensor& lengths,
                                  bool keep_taps = true);

  int64_t width() const override;
  int64_t cls_width() const override { return config_.hidden_size; }
  double frames_per_second() const override { return 100.0 / static_cast<double>(config_.time_stride); }
  std::string type() const override { return config_.distillation_token ? "ast" : "eat"; }
  // target_length fbank frames (max_length when 0), and a hop of the time patches they
  // hold: AST's 1024 frames are 10.255 s, 101 patches, a hop of 10.1 s.
  EncoderWindow window() const override;
  void train_last_blocks(int64_t n) override;

  // Valid time patches of a clip of `frames` valid fbank frames (after pad / crop).
  int64_t valid_time_patches(int64_t frames) const;
  // The position embeddings of the patches for a grid of `time_patches` columns:
  // [n_freq * time_patches, hidden], resized over time when it differs from max_length's.
  torch::Tensor patch_positions(int64_t time_patches) const;

  const AstEncoderConfig& config() const { return config_; }
  const AstEncoderOptions& options() const { return options_; }
  const audio::KaldiFbankFrontend& frontend() const { return frontend_; }

  AstEmbeddings embeddings{nullptr};
  AstLayerStack encoder{nullptr};
  torch::nn::LayerNorm layernorm{nullptr};

 private:
  AstEncoderConfig config_;
  AstEncoderOptions options_;
  audio::KaldiFbankFrontend frontend_;
};
TORCH_MODULE(AstEncoder);

// Builds the encoder from a folder: config.json + safetensors of an HF
// ASTForAudioClassification (tensors "audio_spectrogram_transformer.*"; the classifier
// head is ignored) or ASTModel (no prefix), or of an EAT checkpoint in PAL's convention.
// Weights are cast to `dtype`; the module is in eval mode and fully frozen. Every
// missing, unexpected or mis-shaped tensor is a pal::WeightsError naming it; a folder of
// another architecture is a pal::ConfigError naming its model_type.
AstEncoder load_ast_encoder(const std::filesystem::path& folder, const AstEncoderOptions& options = {},
                            torch::Dtype dtype = torch::kFloat32);

// An AST / EAT encoder with fresh weights from the folder's config.json alone
// (truncated N(0, initializer_range), as Hugging Face initialises ASTModel).
AstEncoder init_ast_encoder(const std::filesystem::path& folder, const AstEncoderOptions& options = {},
                            torch::Dtype dtype = torch::kFloat32);

}  // namespace pal::models
