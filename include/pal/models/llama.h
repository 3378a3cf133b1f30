// The Llama / Qwen2 decoder family, with sub-module names equal to the Hugging Face
// checkpoint keys ("model.layers.3.self_attn.q_proj.weight"), so that loading a folder
// is a name lookup.
//
// ref: transformers models/llama/modeling_llama.py and models/qwen2/modeling_qwen2.py:
// pre-norm decoder layers (RMSNorm -> GQA self-attention with RoPE -> residual, RMSNorm
// -> SwiGLU MLP -> residual), final RMSNorm, tied or untied LM head. Qwen2 adds biases
// to q/k/v. RoPE: default or "llama3" frequency scaling.
//
// Two ways to run it: forward(input_ids) for a whole sequence (tests, training), and
// forward_cached(...) that appends positions to a KVCache (generation; see generation.h).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <filesystem>
#include <string>
#include <vector>

#include "pal/models/lora.h"

namespace pal::models {

struct LlamaConfig {
  std::string model_type = "llama";  // "llama" or "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;         // GQA groups; = num_attention_heads for MHA
  int64_t head_dim = 0;                    // default hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;  // the context: prompts and generation must fit
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::string rope_type = "default";  // "default" or "llama3"
  double rope_factor = 1.0;           // llama3 scaling parameters
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_positions = 8192;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2: biases on q/k/v projections
  bool o_bias = false;    // Llama attention_bias: biases on q/k/v/o
  bool mlp_bias = false;

  // Reads an HF config.json (both "rope_scaling" + "rope_theta" and transformers 5's
  // "rope_parameters"); errors name the file and the key.
  static LlamaConfig from_json_file(const std::filesystem::path& file);
  void validate() const;
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // [..., dim] -> same
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// cos/sin tables of rotary embeddings for given positions: each [B, T, head_dim], float32.
struct RotaryTables {
  torch::Tensor cos, sin;
};

// Keys and values of one layer for a whole request, allocated once:
// [B, kv_heads, capacity, head_dim]. A forward writes its T positions at `past`.
struct LayerCacheView {
  torch::Tensor keys, values;
  int64_t past = 0;  // positions already stored
};

// Keys and values from outside the sequence, put before its own keys (the probe route of
// audio): [B, kv_heads, N, head_dim] each, already rotated.
struct ExtraKeyValues {
  torch::Tensor keys, values;
};

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlamaConfig& config);
  // x [B, T, hidden]; rope for the T positions; mask: additive float [B or 1, 1, T, S]
  // (0 or -inf) over the S keys: S = T without a cache, past + T with one, plus N in
  // front with `extra`. -> [B, T, hidden]
  // `probabilities` (analysis tools, pal/analyze): when not null, attention is computed
  // explicitly, softmax(q k^T / sqrt(d) + mask) in float32 instead of the fused kernel,
  // and its probabilities [B, heads, T, S] float32 are stored there. Null: no extra cost.
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& mask,
                        const LayerCacheView* cache = nullptr, const ExtraKeyValues* extra = nullptr,
                        torch::Tensor* probabilities = nullptr);
  // This layer's keys and values of (already normed) x [B, N, hidden], rotated with `rope`
  // unless it is null: [B, kv_heads, N, head_dim] each.
  ExtraKeyValues key_values(const torch::Tensor& x, const RotaryTables* rope);
  LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(LlamaAttention);

class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  LoraLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaConfig& config);
  // See LlamaAttentionImpl::forward (`probabilities`: its attention probabilities).
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& mask,
                        const LayerCacheView* cache = nullptr, const ExtraKeyValues* extra = nullptr,
                        torch::Tensor* probabilities = nullptr);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

struct LlamaOutput {
  torch::Tensor logits;                      // [B, T, vocab]
  std::vector<torch::Tensor> hidden_states;  // taps: embeddings, after each layer but the last, final norm
};

class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& config);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

// The keys and values of every layer for one request (a batch of sequences), allocated
// once for `capacity` positions, and which of those positions are padding.
class KVCache {
 public:
  // For `layers` decoder layers (-1: all of the config's).
  KVCache(const LlamaConfig& config, int64_t batch, int64_t capacity, torch::TensorOptions options,
          int64_t layers = -1);
  int64_t batch() const { return valid_.size(0); }
  int64_t capacity() const { return valid_.size(1); }
  int64_t length() const { return length_; }  // positions stored so far
  size_t bytes() const;                       // memory held by keys and values

  // A step of T positions: extend() records which are padding (valid [B, T] bool) and
  // returns the additive attention mask [B, 1, T, length + T] of their queries (causal,
  // padding keys hidden; a padding query sees itself, so that no row is empty); the
  // layers write through layer(i); commit() makes the T positions part of length().
  // extend() throws GenerationError when the cache would overflow.
  torch::Tensor extend(const torch::Tensor& valid);
  LayerCacheView layer(size_t index) const;
  void commit();

 private:
  std::vector<torch::Tensor> keys_, values_;
  torch::Tensor valid_;  // [B, capacity] bool
  int64_t length_ = 0, pending_ = 0;
};

// Additive causal mask [1, 1, T, T] (0 on and below the diagonal, -inf above).
torch::Tensor causal_mask(int64_t length, torch::Device device);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLMImpl(const LlamaConfig& config);
  // input_ids [B, T] int64 -> logits and taps. Causal attention, positions 0..T-1.
  LlamaOutput forward(const torch::Tensor& input_ids);

  // Runs the decoder over `embeds` [B, T, hidden] at `positions` [B, T] int64, storing
  // their keys and values in `cache` after what it holds; `valid` [B, T] bool marks
  // padding (false). Returns the final-normed hidden states [B, T, hidden].
  torch::Tensor forward_cached(const torch::Tensor& embeds, const torch::Tensor& positions,
                               const torch::Tensor& valid, KVCache& cache);
  torch::Tensor embed(const torch::Tensor& input_ids);        // [B, T] -> [B, T, hidden]
  torch::Tensor logits(const torch::Tensor& hidden);          // [..., hidden] -> [..., vocab]
  RotaryTables rotary(const torch::Tensor& positions) const;  // positions [B, T] int64
  const LlamaConfig& config() const { return config_; }

  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // absent (nullptr) when tied to model.embed_tokens

 private:
  LlamaConfig config_;
  torch::Tensor inv_freq_;  // [head_dim / 2] float32
};
TORCH_MODULE(LlamaForCausalLM);

// Builds the model from an HF folder (config.json + model.safetensors or a sharded
// index), with weights cast to `dtype`. Every missing, unexpected or mis-shaped tensor
// is a pal::WeightsError naming it.
LlamaForCausalLM load_llama(const std::filesystem::path& folder, torch::Dtype dtype = torch::kFloat32);

// Builds the model of `folder`/config.json with fresh weights, for training from
// scratch: linear and embedding weights ~ N(0, initializer_range) (0.02 when
// config.json has none), biases 0, norms 1, drawn from LibTorch's default generator
// (seed it with torch::manual_seed for a reproducible model).
LlamaForCausalLM init_llama(const std::filesystem::path& folder, torch::Dtype dtype = torch::kFloat32);

}  // namespace pal::models
