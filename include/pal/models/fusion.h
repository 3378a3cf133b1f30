// How audio gets into the LLM: the fusion modes of the study (DESIGN.md section 3), as
// one decoder around an unchanged LlamaForCausalLM.
//
//   prefix   audio tokens replace the <|audio|> placeholder in the embedded input and
//            every layer processes them (queries, attention, FFN)
//   delayed  layers [0, k) see the text only (positions keep a gap where audio goes); at
//            layer k the audio tokens are put in at the placeholder and processed fully
//   probe    layers [0, k) see the text only; in every layer l >= k the text queries
//            attend over [audio keys/values ; text keys/values], where the audio keys and
//            values are layer l's own K/V projections of its input RMSNorm of the audio
//            (plus an optional per-layer adapter). Audio never forms queries, never enters
//            an FFN and is not updated between layers; its keys/values are computed once
//            per request and cached for generation. Audio keys are visible to every text
//            query; text stays causal.
//   pal      the hybrid: tokens routed `prefix` (e.g. per-encoder summary tokens) go the
//            prefix way from layer 0, tokens routed `probe` go the probe way from layer k
//
// Positions are assigned once for the whole sequence as if prefix-routed audio sat at
// its placeholder. Probe-routed audio keys get positions [0, Na) with the text after them
// (audio_rope: prefix) or no rotation (audio_rope: none).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <functional>
#include <vector>

#include "pal/core/config.h"
#include "pal/models/ensemble.h"
#include "pal/models/generation.h"
#include "pal/models/llama.h"

namespace pal::models {

enum class FusionMode { prefix, delayed, probe, pal };
enum class AudioRope { prefix, none };

}  // namespace pal::models

template <>
struct pal::config::EnumNames<pal::models::FusionMode> {
  static std::vector<std::pair<pal::models::FusionMode, std::string>> get() {
    using pal::models::FusionMode;
    return {{FusionMode::prefix, "prefix"},
            {FusionMode::delayed, "delayed"},
            {FusionMode::probe, "probe"},
            {FusionMode::pal, "pal"}};
  }
};
template <>
struct pal::config::EnumNames<pal::models::AudioRope> {
  static std::vector<std::pair<pal::models::AudioRope, std::string>> get() {
    return {{pal::models::AudioRope::prefix, "prefix"}, {pal::models::AudioRope::none, "none"}};
  }
};

namespace pal::models {

struct FusionConfig {
  FusionMode mode = FusionMode::probe;
  int64_t start_layer = 4;                   // k: first layer that reads audio (delayed, probe, pal)
  AudioRope audio_rope = AudioRope::prefix;  // positions of probe-routed audio keys
  int64_t adapter_rank = 0;                  // probe layers: bottleneck adapter on the normed audio; 0: none

  template <class V>
  void visit(V& v) {
    v("mode", mode);
    v("start_layer", start_layer, config::Rule().at_least(0));
    v("audio_rope", audio_rope);
    v("adapter_rank", adapter_rank, config::Rule().at_least(0));
  }
};

// Where each element of the fused sequence comes from, for one batch. Built by
// FusionDecoder::layout(); the fused sequence is the text with the placeholder replaced
// by the valid prefix-routed audio tokens, padded (right for training, left for
// generation).
struct FusedLayout {
  at::Tensor ids;           // [B, L] int64: text token ids; 0 at audio and padding
  at::Tensor is_audio;      // [B, L] bool: a prefix-routed audio token
  at::Tensor audio_index;   // [B, L] int64: which row of the prefix audio tokens, 0 elsewhere
  at::Tensor valid;         // [B, L] bool: text or audio (not padding)
  at::Tensor positions;     // [B, L] int64: RoPE positions (probe-route offset included)
  at::Tensor text_index;    // [B, T] int64: where each input token went; -1 for placeholder and padding
  at::Tensor probe_offset;  // [B] int64: valid probe-routed audio tokens put before the text positions
};

struct FusionOutput {
  at::Tensor logits;                      // [B, L, vocab] over the fused sequence
  at::Tensor loss;                        // (weighted) mean cross-entropy over label tokens (or undefined)
  std::vector<at::Tensor> hidden_states;  // with taps: embeddings, after each layer but the last, final norm
  FusedLayout layout;
};

// The attention of one decoder layer, for FusionAnalysis::on_attention.
struct LayerAttention {
  int64_t layer = 0;
  at::Tensor probabilities;  // [B, heads, Q, S] float32
  at::Tensor query_element;  // [B, Q] int64: the fused-sequence element of each query row; -1: padding
  at::Tensor audio_keys;     // [B, S] bool: audio keys (prefix-routed positions of the sequence, probe keys)
};

// Instrumentation of a FusionDecoder for the analysis tools (pal/analyze), set with
// FusionDecoderImpl::set_analysis. While none is set (the default), forward() and
// generate() run exactly as without it.
struct FusionAnalysis {
  // Per decoder layer (missing entries: false). true withholds the audio from that layer,
  // so that its text queries read none of it (forward and generate):
  //   prefix-routed audio (prefix, delayed, pal's prefix route): the audio positions of
  //     the sequence are hidden as keys from the layer's text queries; the audio rows
  //     themselves still run, so later layers see them as usual;
  //   probe-routed audio (probe, pal's probe route): the layer's probe block is skipped
  //     (no audio keys/values), so that it runs as a text-only layer.
  std::vector<bool> withhold_audio;
  // forward() only: called after each decoder layer with its attention probabilities,
  // which are then computed explicitly (one layer's at a time) instead of by the fused kernel.
  std::function<void(const LayerAttention&)> on_attention;

  bool withholds(int64_t layer) const {
    return layer >= 0 && layer < static_cast<int64_t>(withhold_audio.size()) &&
           withhold_audio[static_cast<size_t>(layer)];
  }
};

class FusionDecoderImpl : public torch::nn::Module {
 public:
  // `audio_token_id`: the placeholder's id in the prompts (it need not be in the LLM's
  // vocabulary: it is never embedded). Throws ConfigError when start_layer is not below
  // the LLM's layer count.
  FusionDecoderImpl(LlamaForCausalLM llm, const FusionConfig& config, int64_t audio_token_id);

  // input_ids [B, T] int64 with `valid` [B, T] bool (false at padding); audio: tokens
  // already in the LLM's width. labels [B, T] bool marks the tokens to predict (answer
  // tokens); the loss is the mean cross-entropy over those. Floating-point labels weigh
  // them instead (0: not predicted): the loss is sum(w * ce) / sum(w). Every prompt with
  // prefix-routed audio holds one placeholder.
  FusionOutput forward(const at::Tensor& input_ids, const at::Tensor& valid, const EnsembleOutput& audio,
                       const at::Tensor& labels = {}, bool taps = false);

  // Generation from token prompts (each with its placeholder when there is audio) and
  // the batch's audio tokens; see generate() in generation.h for the options.
  GenerationResult generate(const std::vector<std::vector<int64_t>>& prompts, const EnsembleOutput& audio,
                            const GenerationOptions& options, const TokenCallback& on_token = {},
                            const Detokenizer& detokenize = {});

  // The audio of `audio` as this mode routes it: everything prefix (prefix, delayed),
  // everything probe (probe), or as the ensemble routed it (pal).
  EnsembleOutput route(const EnsembleOutput& audio) const;
  FusedLayout layout(const at::Tensor& input_ids, const at::Tensor& valid, const AudioTokens& prefix,
                     const AudioTokens& probe, bool left_pad) const;

  const FusionConfig& config() const { return config_; }
  int64_t insert_layer() const;  // first layer that sees prefix-routed audio
  int64_t probe_layer() const;   // first layer that reads probe-routed audio
  int64_t audio_token_id() const { return audio_token_id_; }

  // Instruments forward() and generate() until reset with nullptr; the caller keeps
  // `analysis` alive meanwhile.
  void set_analysis(FusionAnalysis* analysis) { analysis_ = analysis; }

  LlamaForCausalLM llm{nullptr};
  torch::nn::ModuleList probe_adapters{nullptr};  // one per probe layer when adapter_rank > 0

 private:
  at::Tensor probe_input(int64_t layer, const at::Tensor& audio);  // RMSNorm_l (+ adapter)
  RotaryTables probe_rotary(const AudioTokens& probe) const;
  at::Tensor embed(const FusedLayout& layout, const AudioTokens& prefix);

  FusionConfig config_;
  int64_t audio_token_id_;
  FusionAnalysis* analysis_ = nullptr;
};
TORCH_MODULE(FusionDecoder);

}  // namespace pal::models
