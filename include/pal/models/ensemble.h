// The encoder ensemble: combines the outputs of several audio encoders into audio tokens
// of one width, grouped by the route they take into the LLM (DESIGN.md section 3).
//
// Per stream (one encoder's output): LayerNorm over the encoder's width, alignment to the
// ensemble's frame rate (average pooling over valid frames, or stacking consecutive
// frames along channels), then a linear projection to the shared width. The streams of
// each route are then fused:
//   concat_time     one after another in time, each tagged with a learned per-stream
//                   embedding (the streams keep their own lengths and masks)
//   concat_channel  time steps aligned (padded to the longest), concatenated along
//                   channels and mixed back to the width by a linear layer
//   sum             time steps aligned (padded to the longest) and summed
// Optional summary tokens (the encoder's CLS, or its mean over valid frames when it has
// none, normed and projected) are routed on their own (summary_route), e.g. `prefix` in
// the paper's `pal` hybrid while the full sequences take the `probe` route.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <string>
#include <vector>

#include "pal/core/config.h"
#include "pal/models/audio_encoder.h"

namespace pal::models {

enum class AudioRoute { prefix, probe };
enum class TimeAlignment { pool, stack };
enum class EnsembleFusion { concat_time, concat_channel, sum };

}  // namespace pal::models

template <>
struct pal::config::EnumNames<pal::models::AudioRoute> {
  static std::vector<std::pair<pal::models::AudioRoute, std::string>> get() {
    return {{pal::models::AudioRoute::prefix, "prefix"}, {pal::models::AudioRoute::probe, "probe"}};
  }
};
template <>
struct pal::config::EnumNames<pal::models::TimeAlignment> {
  static std::vector<std::pair<pal::models::TimeAlignment, std::string>> get() {
    return {{pal::models::TimeAlignment::pool, "pool"}, {pal::models::TimeAlignment::stack, "stack"}};
  }
};
template <>
struct pal::config::EnumNames<pal::models::EnsembleFusion> {
  static std::vector<std::pair<pal::models::EnsembleFusion, std::string>> get() {
    return {{pal::models::EnsembleFusion::concat_time, "concat_time"},
            {pal::models::EnsembleFusion::concat_channel, "concat_channel"},
            {pal::models::EnsembleFusion::sum, "sum"}};
  }
};

namespace pal::models {

// How one encoder's output enters the ensemble.
struct EnsembleStreamConfig {
  TimeAlignment align = TimeAlignment::pool;  // to the ensemble's frame rate
  AudioRoute route = AudioRoute::probe;       // where this stream's sequence goes
  bool summary_token = false;                 // also emit one summary token (summary_route)

  template <class V>
  void visit(V& v) {
    v("align", align);
    v("route", route);
    v("summary_token", summary_token);
  }
};

struct EnsembleConfig {
  int64_t width = 0;             // shared width of the audio tokens (required, > 0)
  double frames_per_second = 0;  // common frame rate; 0: each stream keeps its own (concat_time only)
  EnsembleFusion fusion = EnsembleFusion::concat_time;
  AudioRoute summary_route = AudioRoute::prefix;  // route of the summary tokens
  std::vector<EnsembleStreamConfig> streams;      // one per encoder, in the encoders' order; empty: defaults

  template <class V>
  void visit(V& v) {
    v("width", width, config::Rule().required().at_least(1));
    v("frames_per_second", frames_per_second, config::Rule().at_least(0));
    v("fusion", fusion);
    v("summary_route", summary_route);
    v("streams", streams);
    v.check(fusion == EnsembleFusion::concat_time || frames_per_second > 0, "frames_per_second",
            "must be > 0 (a common frame rate) for concat_channel and sum fusion");
  }
};

// Audio tokens of one route: tokens [B, N, width], mask [B, N] bool (true = valid).
// Undefined tensors when no stream takes this route.
struct AudioTokens {
  at::Tensor tokens, mask;
  bool empty() const { return !tokens.defined(); }
};

struct EnsembleOutput {
  AudioTokens prefix, probe;
  const AudioTokens& route(AudioRoute r) const { return r == AudioRoute::prefix ? prefix : probe; }
};

// What the ensemble needs to know of each encoder.
struct EnsembleInput {
  std::string name;   // for messages, e.g. "encoders[0] (whisper)"
  int64_t width = 0;  // the encoder's hidden size
  double frames_per_second = 0;
  int64_t cls_width = 0;  // size of its summary (cls) vector; 0: width
};

class EncoderEnsembleImpl : public torch::nn::Module {
 public:
  // Throws ConfigError when a stream's frame rate is not an integer multiple of the
  // ensemble's, or the stream list does not match the encoders.
  EncoderEnsembleImpl(const EnsembleConfig& config, const std::vector<EnsembleInput>& inputs);

  // One EncoderOutput per input, in order (batch sizes equal).
  EnsembleOutput forward(const std::vector<EncoderOutput>& outputs);
  int64_t width() const { return config_.width; }
  const EnsembleConfig& config() const { return config_; }

  // Analysis (pal/analyze): streams, by encoder index, whose tokens forward() removes:
  // the stream's projected features become zeros and its time steps and summary token
  // invalid. With concat_time its tokens thus drop out (masked); with concat_channel /
  // sum the shared time steps stay where another stream is valid, with zeros for the
  // removed one. Empty (the default): none.
  void set_removed_streams(std::vector<bool> removed) { removed_ = std::move(removed); }

  // Parameter names: streams.<i>.norm/proj, summaries.<i>.norm/proj, type_embedding,
  // channel_mix.<route>.
  torch::nn::ModuleList streams{nullptr}, summaries{nullptr};
  torch::Tensor type_embedding;  // [n_streams, width] (concat_time)

 private:
  struct Alignment {
    int64_t factor = 1;  // input frames per output frame
  };
  AudioTokens fuse(AudioRoute route, std::vector<AudioTokens> parts, const std::vector<size_t>& stream_index);

  EnsembleConfig config_;
  std::vector<EnsembleInput> inputs_;
  std::vector<Alignment> alignment_;
  torch::nn::ModuleDict channel_mix_{nullptr};
  std::vector<bool> removed_;
};
TORCH_MODULE(EncoderEnsemble);

}  // namespace pal::models
