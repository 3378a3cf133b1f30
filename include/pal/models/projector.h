// Projectors: map the ensemble's audio tokens into the LLM's embedding space.
//
//   mlp     Linear(in, hidden) -> GELU -> Linear(hidden, out), per token (LLaVA-1.5's
//           connector); keeps the number of tokens.
//   latent  `queries` learned vectors cross-attend to the audio tokens through a small
//           pre-LN transformer (cross-attention + FFN per layer, as the Perceiver
//           resampler / the paper's v1 connector), then LayerNorm + Linear(width, out);
//           gives a fixed number of tokens per clip whatever its length.
//
// Both are registered by name in projector_registry(); a config's `type:` picks one.
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <string>

#include "pal/core/config.h"
#include "pal/core/registry.h"
#include "pal/models/ensemble.h"

namespace pal::models {

struct ProjectorConfig {
  std::string type = "mlp";  // a name in projector_registry(): mlp, latent
  int64_t hidden = 0;        // mlp: hidden width; 0: the output width
  int64_t queries = 32;      // latent: number of output tokens
  int64_t layers = 2;        // latent: transformer layers
  int64_t heads = 8;         // latent: attention heads (must divide width)
  int64_t width = 0;         // latent: width of the queries; 0: the input width
  double ffn_ratio = 4.0;    // latent: FFN hidden = ffn_ratio * width

  template <class V>
  void visit(V& v) {
    v("type", type, config::Rule().non_empty());
    v("hidden", hidden, config::Rule().at_least(0));
    v("queries", queries, config::Rule().at_least(1));
    v("layers", layers, config::Rule().at_least(1));
    v("heads", heads, config::Rule().at_least(1));
    v("width", width, config::Rule().at_least(0));
    v("ffn_ratio", ffn_ratio, config::Rule().greater_than(0));
  }
};

class AudioProjector : public torch::nn::Module {
 public:
  // tokens [B, N, in_width], mask [B, N] -> tokens [B, M, out_width], mask [B, M].
  virtual AudioTokens forward(const AudioTokens& audio) = 0;
};

using ProjectorRegistry =
    Registry<std::shared_ptr<AudioProjector>(const ProjectorConfig&, int64_t in_width, int64_t out_width)>;
// The registry with the built-in projectors; add() your own to it.
ProjectorRegistry& projector_registry();

// projector_registry().make(config.type, ...): `key` names the config entry in errors.
std::shared_ptr<AudioProjector> make_projector(const ProjectorConfig& config, int64_t in_width,
                                               int64_t out_width, const std::string& key = "projector.type");

}  // namespace pal::models
