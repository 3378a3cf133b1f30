#include "pal/models/projector.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>

#include "pal/core/error.h"
#include "pal/nn/functional.h"

namespace pal::models {
namespace {

class MlpProjector : public AudioProjector {
 public:
  MlpProjector(const ProjectorConfig& c, int64_t in_width, int64_t out_width) {
    const int64_t hidden = c.hidden > 0 ? c.hidden : out_width;
    fc1 = register_module("fc1", torch::nn::Linear(in_width, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, out_width));
  }
  AudioTokens forward(const AudioTokens& audio) override {
    return {fc2(pal::nn::gelu(fc1(audio.tokens))), audio.mask};
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// Queries [B, M, d] attend to keys/values [B, N, d]; key_mask [B, N] bool.
class CrossAttentionImpl : public torch::nn::Module {
 public:
  CrossAttentionImpl(int64_t width, int64_t heads) : heads_(heads), head_dim_(width / heads) {
    q_proj = register_module("q_proj", torch::nn::Linear(width, width));
    k_proj = register_module("k_proj", torch::nn::Linear(width, width));
    v_proj = register_module("v_proj", torch::nn::Linear(width, width));
    out_proj = register_module("out_proj", torch::nn::Linear(width, width));
  }
  torch::Tensor forward(const torch::Tensor& queries, const torch::Tensor& context,
                        const torch::Tensor& key_mask) {
    const int64_t batch = queries.size(0), m = queries.size(1), n = context.size(1);
    auto heads = [&](const torch::Tensor& x, int64_t len) {
      return x.view({batch, len, heads_, head_dim_}).transpose(1, 2);
    };
    torch::Tensor q = heads(q_proj(queries), m), k = heads(k_proj(context), n), v = heads(v_proj(context), n);
    // Rows without any valid key (no audio) attend to everything rather than to nothing
    // (NaN); their output is masked out downstream.
    torch::Tensor visible = key_mask.logical_or(key_mask.any(1, true).logical_not());
    torch::Tensor bias = torch::zeros({batch, 1, 1, n}, q.options())
                             .masked_fill(visible.logical_not().view({batch, 1, 1, n}),
                                          -std::numeric_limits<double>::infinity());
#if TORCH_VERSION_MAJOR >= 2
    torch::Tensor out = at::scaled_dot_product_attention(q, k, v, bias);
#else
    torch::Tensor scores =
        torch::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(head_dim_)) + bias;
    torch::Tensor out = torch::matmul(torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type()), v);
#endif
    return out_proj(out.transpose(1, 2).reshape({batch, m, heads_ * head_dim_}));
  }
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(CrossAttention);

class LatentLayerImpl : public torch::nn::Module {
 public:
  LatentLayerImpl(int64_t width, int64_t heads, int64_t ffn) {
    norm_queries =
        register_module("norm_queries", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    norm_context =
        register_module("norm_context", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    attn = register_module("attn", CrossAttention(width, heads));
    norm_ffn = register_module("norm_ffn", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    fc1 = register_module("fc1", torch::nn::Linear(width, ffn));
    fc2 = register_module("fc2", torch::nn::Linear(ffn, width));
  }
  torch::Tensor forward(torch::Tensor q, const torch::Tensor& context, const torch::Tensor& mask) {
    q = q + attn(norm_queries(q), norm_context(context), mask);
    return q + fc2(pal::nn::gelu(fc1(norm_ffn(q))));
  }
  torch::nn::LayerNorm norm_queries{nullptr}, norm_context{nullptr}, norm_ffn{nullptr};
  CrossAttention attn{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(LatentLayer);

class LatentProjector : public AudioProjector {
 public:
  LatentProjector(const ProjectorConfig& c, int64_t in_width, int64_t out_width) {
    const int64_t width = c.width > 0 ? c.width : in_width;
    if (width % c.heads != 0)
      throw ConfigError("projector.heads: " + std::to_string(c.heads) + " does not divide the latent width " +
                        std::to_string(width));
    queries = register_parameter("queries", torch::randn({c.queries, width}) * 0.02);
    if (width != in_width) in_proj = register_module("in_proj", torch::nn::Linear(in_width, width));
    layers = register_module("layers", torch::nn::ModuleList());
    const auto ffn = static_cast<int64_t>(std::llround(c.ffn_ratio * static_cast<double>(width)));
    for (int64_t i = 0; i < c.layers; ++i) layers->push_back(LatentLayer(width, c.heads, ffn));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    out_proj = register_module("out_proj", torch::nn::Linear(width, out_width));
  }
  AudioTokens forward(const AudioTokens& audio) override {
    torch::Tensor context = in_proj ? in_proj(audio.tokens) : audio.tokens;
    const int64_t batch = context.size(0);
    torch::Tensor q = queries.unsqueeze(0).expand({batch, queries.size(0), queries.size(1)});
    for (const auto& layer : *layers) q = layer->as<LatentLayerImpl>()->forward(q, context, audio.mask);
    torch::Tensor valid = audio.mask.any(1, true).expand({batch, queries.size(0)});
    return {out_proj(norm(q)), valid};
  }
  torch::Tensor queries;
  torch::nn::Linear in_proj{nullptr}, out_proj{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};

}  // namespace

ProjectorRegistry& projector_registry() {
  static ProjectorRegistry registry = [] {
    ProjectorRegistry r("projector");
    r.add("mlp", [](const ProjectorConfig& c, int64_t in, int64_t out) -> std::shared_ptr<AudioProjector> {
      return std::make_shared<MlpProjector>(c, in, out);
    });
    r.add("latent", [](const ProjectorConfig& c, int64_t in, int64_t out) -> std::shared_ptr<AudioProjector> {
      return std::make_shared<LatentProjector>(c, in, out);
    });
    return r;
  }();
  return registry;
}

std::shared_ptr<AudioProjector> make_projector(const ProjectorConfig& config, int64_t in_width,
                                               int64_t out_width, const std::string& key) {
  if (in_width <= 0 || out_width <= 0)
    throw ModelError("projector: widths must be > 0, got " + std::to_string(in_width) + " -> " +
                     std::to_string(out_width));
  return projector_registry().make(config.type, key, config, in_width, out_width);
}

}  // namespace pal::models
