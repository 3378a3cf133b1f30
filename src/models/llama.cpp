#include "pal/models/llama.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"

namespace pal::models {
namespace {

// ---- config.json -----------------------------------------------------------------------

struct JsonReader {
  const nlohmann::json& j;
  const std::string& file;

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw ConfigError(file + ": " + key + ": " + why);
  }
  int64_t integer(const char* key, std::optional<int64_t> fallback = std::nullopt) const {
    if (!j.contains(key) || j[key].is_null()) {
      if (fallback) return *fallback;
      fail(key, "required key is missing");
    }
    if (!j[key].is_number_integer()) fail(key, "expected an integer, got " + j[key].dump());
    return j[key].get<int64_t>();
  }
  double number(const nlohmann::json& obj, const char* key, double fallback) const {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_number()) fail(key, "expected a number, got " + obj[key].dump());
    return obj[key].get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_boolean()) fail(key, "expected true or false, got " + j[key].dump());
    return j[key].get<bool>();
  }
};

}  // namespace

LlamaConfig LlamaConfig::from_json_file(const std::filesystem::path& file) {
  const std::string name = file.string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(name + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw ConfigError(name + ": expected a JSON object");
  JsonReader r{j, name};
  LlamaConfig c;
  c.model_type = j.value("model_type", std::string("llama"));
  if (c.model_type != "llama" && c.model_type != "qwen2")
    r.fail("model_type", "'" + c.model_type + "' is not supported (expected llama or qwen2)");
  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  c.head_dim = r.integer("head_dim", c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  c.max_position_embeddings = r.integer("max_position_embeddings", c.max_position_embeddings);
  c.rms_norm_eps = r.number(j, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.mlp_bias = r.boolean("mlp_bias", false);
  c.o_bias = r.boolean("attention_bias", false);
  c.qkv_bias = c.model_type == "qwen2" || c.o_bias;

  // RoPE: transformers 5 writes "rope_parameters" {rope_theta, rope_type, ...}; older
  // checkpoints (all published Llama 3.x / Qwen2.5) write "rope_theta" + "rope_scaling".
  const nlohmann::json none = nlohmann::json::object();
  const nlohmann::json& rope =
      j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"]
      : j.contains("rope_scaling") && j["rope_scaling"].is_object()     ? j["rope_scaling"]
                                                                        : none;
  c.rope_theta = r.number(rope, "rope_theta", r.number(j, "rope_theta", 10000.0));
  c.rope_type = rope.value("rope_type", rope.value("type", std::string("default")));
  if (c.rope_type != "default" && c.rope_type != "llama3")
    r.fail("rope_type", "'" + c.rope_type + "' is not supported (expected default or llama3)");
  if (c.rope_type == "llama3") {
    for (const char* key :
         {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      if (!rope.contains(key)) r.fail(std::string("rope.") + key, "required for rope_type llama3");
    c.rope_factor = r.number(rope, "factor", 1.0);
    c.rope_low_freq_factor = r.number(rope, "low_freq_factor", 1.0);
    c.rope_high_freq_factor = r.number(rope, "high_freq_factor", 4.0);
    c.rope_original_max_positions = rope["original_max_position_embeddings"].get<int64_t>();
  }
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(name + ": " + e.what());
  }
  return c;
}

void LlamaConfig::validate() const {
  auto positive = [](const char* key, int64_t v) {
    if (v <= 0) throw ConfigError(std::string(key) + " must be > 0, got " + std::to_string(v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  if (num_attention_heads % num_key_value_heads != 0)
    throw ConfigError("num_attention_heads (" + std::to_string(num_attention_heads) +
                      ") must be a multiple of num_key_value_heads (" + std::to_string(num_key_value_heads) +
                      ")");
  if (head_dim % 2 != 0) throw ConfigError("head_dim must be even for RoPE, got " + std::to_string(head_dim));
}

// ---- modules -----------------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // ref: LlamaRMSNorm: normalise in float32, cast back, then scale.
  torch::Tensor h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * h.to(x.scalar_type());
}

namespace {

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// q, k [B, heads, T, D]; cos/sin [B, T, D].
torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& rope) {
  torch::Tensor cos = rope.cos.unsqueeze(1).to(x.scalar_type()),
                sin = rope.sin.unsqueeze(1).to(x.scalar_type());
  return x * cos + rotate_half(x) * sin;
}

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

LoraLinear adaptable(int64_t in, int64_t out, bool bias) {
  return LoraLinear(in, out, bias);
}

}  // namespace

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c)
    : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim) {
  q_proj = register_module("q_proj", adaptable(c.hidden_size, heads_ * head_dim_, c.qkv_bias));
  k_proj = register_module("k_proj", adaptable(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
  v_proj = register_module("v_proj", adaptable(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
  o_proj = register_module("o_proj", adaptable(heads_ * head_dim_, c.hidden_size, c.o_bias));
}

ExtraKeyValues LlamaAttentionImpl::key_values(const torch::Tensor& x, const RotaryTables* rope) {
  const int64_t batch = x.size(0), length = x.size(1);
  torch::Tensor k = k_proj(x).view({batch, length, kv_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({batch, length, kv_heads_, head_dim_}).transpose(1, 2);
  if (rope) k = apply_rotary(k, *rope);
  return {k, v};
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const RotaryTables& rope,
                                          const torch::Tensor& mask, const LayerCacheView* cache,
                                          const ExtraKeyValues* extra, torch::Tensor* probabilities) {
  const int64_t batch = x.size(0), length = x.size(1);
  torch::Tensor q = q_proj(x).view({batch, length, heads_, head_dim_}).transpose(1, 2);
  torch::Tensor k = k_proj(x).view({batch, length, kv_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({batch, length, kv_heads_, head_dim_}).transpose(1, 2);
  q = apply_rotary(q, rope);
  k = apply_rotary(k, rope);
  if (cache) {
    const int64_t total = cache->past + length;
    cache->keys.narrow(2, cache->past, length).copy_(k);
    cache->values.narrow(2, cache->past, length).copy_(v);
    k = cache->keys.narrow(2, 0, total);
    v = cache->values.narrow(2, 0, total);
  }
  if (extra) {
    k = torch::cat({extra->keys.to(k.scalar_type()), k}, 2);
    v = torch::cat({extra->values.to(v.scalar_type()), v}, 2);
  }
  const int64_t keys = k.size(2);
  // GQA without copying keys and values: query head h = g * groups + j reads key/value
  // head g, so the queries of a group are stacked along the time axis: q [B, kv_heads,
  // groups * T, D] against k, v [B, kv_heads, S, D]; the mask repeats per group.
  const int64_t groups = heads_ / kv_heads_;
  q = q.reshape({batch, kv_heads_, groups * length, head_dim_});
  torch::Tensor grouped_mask = mask;
  if (groups > 1)
    grouped_mask = mask.unsqueeze(2)
                       .expand({mask.size(0), 1, groups, length, keys})
                       .reshape({mask.size(0), 1, groups * length, keys});
  torch::Tensor out;
  if (probabilities) {
    // Explicit attention, for its probabilities: [B, kv_heads, groups * T, S] are heads
    // g * groups + j in order, so a reshape gives [B, heads, T, S].
    torch::Tensor scores = torch::matmul(q, k.transpose(2, 3)).to(torch::kFloat32) *
                           (1.0 / std::sqrt(static_cast<double>(head_dim_)));
    torch::Tensor p = torch::softmax(scores + grouped_mask.to(torch::kFloat32), -1);
    out = torch::matmul(p.to(q.scalar_type()), v);
    *probabilities = p.reshape({batch, heads_, length, keys});
  } else {
#if TORCH_VERSION_MAJOR >= 2
    out = at::scaled_dot_product_attention(q, k, v, grouped_mask.to(q.scalar_type()));
#else
    // LibTorch 1.13 has no fused attention: softmax(q k^T / sqrt(d) + mask) v, softmax in fp32.
    torch::Tensor scores =
        torch::matmul(q, k.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(head_dim_)));
    scores = scores + grouped_mask.to(scores.scalar_type());
    out = torch::matmul(torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type()), v);
#endif
  }
  // [B, kv_heads, groups * T, D] -> [B, heads, T, D] -> [B, T, heads * D]. reshape, not
  // view: CUDA's fused kernels return a transposed layout ([B, T', H, D] in memory), which
  // cannot be viewed with the group dimension split off (a copy then; on the CPU the output
  // is contiguous and this stays a view).
  out = out.reshape({batch, heads_, length, head_dim_});
  return o_proj(out.transpose(1, 2).reshape({batch, length, heads_ * head_dim_}));
}

LlamaMLPImpl::LlamaMLPImpl(const LlamaConfig& c) {
  gate_proj = register_module("gate_proj", adaptable(c.hidden_size, c.intermediate_size, c.mlp_bias));
  up_proj = register_module("up_proj", adaptable(c.hidden_size, c.intermediate_size, c.mlp_bias));
  down_proj = register_module("down_proj", adaptable(c.intermediate_size, c.hidden_size, c.mlp_bias));
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c) {
  self_attn = register_module("self_attn", LlamaAttention(c));
  mlp = register_module("mlp", LlamaMLP(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const RotaryTables& rope,
                                             const torch::Tensor& mask, const LayerCacheView* cache,
                                             const ExtraKeyValues* extra, torch::Tensor* probabilities) {
  torch::Tensor h = x + self_attn->forward(input_layernorm(x), rope, mask, cache, extra, probabilities);
  return h + mlp(post_attention_layernorm(h));
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(LlamaDecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlamaConfig& config) : config_(config) {
  config_.validate();
  model = register_module("model", LlamaModel(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", linear(config_.hidden_size, config_.vocab_size, false));

  // ref: transformers modeling_rope_utils (_compute_default / _compute_llama3_parameters),
  // computed in float32 as there.
  const int64_t dim = config_.head_dim;
  torch::Tensor exponent =
      torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(dim);
  inv_freq_ = 1.0 / torch::pow(torch::tensor(config_.rope_theta, torch::kFloat32), exponent);
  if (config_.rope_type == "llama3") {
    const double old_len = static_cast<double>(config_.rope_original_max_positions);
    const double low_wavelen = old_len / config_.rope_low_freq_factor;
    const double high_wavelen = old_len / config_.rope_high_freq_factor;
    torch::Tensor wavelen = 2 * M_PI / inv_freq_;
    torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv_freq_ / config_.rope_factor, inv_freq_);
    torch::Tensor smooth = (old_len / wavelen - config_.rope_low_freq_factor) /
                           (config_.rope_high_freq_factor - config_.rope_low_freq_factor);
    torch::Tensor smoothed = (1 - smooth) * scaled / config_.rope_factor + smooth * scaled;
    torch::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq_ = torch::where(medium, smoothed, scaled);
  }
}

RotaryTables LlamaForCausalLMImpl::rotary(const torch::Tensor& positions) const {
  torch::Tensor inv = inv_freq_.to(positions.device());
  torch::Tensor freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv;  // [B, T, D/2]
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

torch::Tensor causal_mask(int64_t length, torch::Device device) {
  return torch::full({length, length}, -std::numeric_limits<float>::infinity(),
                     torch::TensorOptions().dtype(torch::kFloat32).device(device))
      .triu(1)
      .view({1, 1, length, length});
}

LlamaOutput LlamaForCausalLMImpl::forward(const torch::Tensor& input_ids) {
  const int64_t batch = input_ids.size(0), length = input_ids.size(1);
  const auto device = input_ids.device();
  torch::Tensor positions = torch::arange(length, torch::TensorOptions().dtype(torch::kInt64).device(device))
                                .unsqueeze(0)
                                .expand({batch, length});
  RotaryTables rope = rotary(positions);
  torch::Tensor mask = causal_mask(length, device);
  LlamaOutput out;
  torch::Tensor h = model->embed_tokens(input_ids);
  out.hidden_states.push_back(h);
  const size_t n = model->layers->size();
  for (size_t i = 0; i < n; ++i) {
    h = model->layers[i]->as<LlamaDecoderLayer>()->forward(h, rope, mask);
    if (i + 1 < n) out.hidden_states.push_back(h);
  }
  h = model->norm(h);
  out.hidden_states.push_back(h);
  out.logits = logits(h);
  return out;
}

torch::Tensor LlamaForCausalLMImpl::embed(const torch::Tensor& input_ids) {
  return model->embed_tokens(input_ids);
}

torch::Tensor LlamaForCausalLMImpl::logits(const torch::Tensor& hidden) {
  return project(hidden, lm_head ? lm_head->weight : model->embed_tokens->weight, torch::Tensor());
}

torch::Tensor LlamaForCausalLMImpl::forward_cached(const torch::Tensor& embeds,
                                                   const torch::Tensor& positions, const torch::Tensor& valid,
                                                   KVCache& cache) {
  RotaryTables rope = rotary(positions);
  torch::Tensor mask = cache.extend(valid).to(embeds.scalar_type());
  torch::Tensor h = embeds;
  const size_t n = model->layers->size();
  for (size_t i = 0; i < n; ++i) {
    LayerCacheView view = cache.layer(i);
    h = model->layers[i]->as<LlamaDecoderLayer>()->forward(h, rope, mask, &view);
  }
  cache.commit();
  return model->norm(h);
}

// ---- KV cache ----------------------------------------------------------------------------

KVCache::KVCache(const LlamaConfig& config, int64_t batch, int64_t capacity, torch::TensorOptions options,
                 int64_t layers) {
  if (batch <= 0 || capacity <= 0)
    throw GenerationError("KV cache: batch and capacity must be > 0, got " + std::to_string(batch) + " and " +
                          std::to_string(capacity));
  if (layers < 0) layers = config.num_hidden_layers;
  for (int64_t i = 0; i < layers; ++i) {
    keys_.push_back(torch::empty({batch, config.num_key_value_heads, capacity, config.head_dim}, options));
    values_.push_back(torch::empty_like(keys_.back()));
  }
  valid_ = torch::zeros({batch, capacity}, options.dtype(torch::kBool));
}

size_t KVCache::bytes() const {
  size_t total = 0;
  for (size_t i = 0; i < keys_.size(); ++i) total += keys_[i].nbytes() + values_[i].nbytes();
  return total;
}

torch::Tensor KVCache::extend(const torch::Tensor& valid) {
  const int64_t length = valid.size(1);
  if (valid.size(0) != batch())
    throw GenerationError("KV cache: a step of batch " + std::to_string(valid.size(0)) +
                          " for a cache of batch " + std::to_string(batch()));
  if (length_ + length > capacity())
    throw GenerationError("KV cache: " + std::to_string(length_) + " + " + std::to_string(length) +
                          " positions exceed its capacity of " + std::to_string(capacity()));
  valid_.narrow(1, length_, length).copy_(valid);
  const int64_t total = length_ + length;
  const auto device = valid_.device();
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  torch::Tensor query_at = torch::arange(length_, total, opts).view({1, length, 1});
  torch::Tensor key_at = torch::arange(total, opts).view({1, 1, total});
  torch::Tensor visible = (key_at <= query_at)
                              .logical_and(valid_.narrow(1, 0, total).unsqueeze(1))
                              .logical_or(key_at == query_at);
  pending_ = length;
  return torch::zeros({batch(), 1, length, total},
                      torch::TensorOptions().dtype(torch::kFloat32).device(device))
      .masked_fill_(visible.logical_not().unsqueeze(1), -std::numeric_limits<float>::infinity());
}

LayerCacheView KVCache::layer(size_t index) const {
  return {keys_.at(index), values_.at(index), length_};
}

void KVCache::commit() {
  length_ += pending_;
  pending_ = 0;
}

// ---- loading -------------------------------------------------------------------------------

LlamaForCausalLM load_llama(const std::filesystem::path& folder, torch::Dtype dtype) {
  const LlamaConfig config = LlamaConfig::from_json_file(folder / "config.json");
  LlamaForCausalLM model(config);
  auto checkpoint = io::SafetensorsCheckpoint::open(folder);
  std::set<std::string> unused;
  for (const auto& name : checkpoint.names()) unused.insert(name);
  // Tied checkpoints may still carry lm_head.weight; it equals the embedding.
  if (config.tie_word_embeddings) unused.erase("lm_head.weight");
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    if (!checkpoint.contains(p.key()))
      throw WeightsError(folder.string() + ": tensor '" + p.key() + "' is missing from the checkpoint");
    torch::Tensor t = checkpoint.tensor(p.key());
    if (t.sizes() != p.value().sizes())
      throw WeightsError(folder.string() + ": tensor '" + p.key() + "' has shape " + c10::str(t.sizes()) +
                         ", the model (config.json) expects " + c10::str(p.value().sizes()));
    p.value().copy_(t);
    unused.erase(p.key());
  }
  if (!unused.empty())
    throw WeightsError(folder.string() + ": unexpected tensor '" + *unused.begin() + "' (" +
                       std::to_string(unused.size()) + " unexpected in all) for a " + config.model_type +
                       " model");
  model->to(dtype);
  model->eval();
  return model;
}

LlamaForCausalLM init_llama(const std::filesystem::path& folder, torch::Dtype dtype) {
  const std::filesystem::path file = folder / "config.json";
  const LlamaConfig config = LlamaConfig::from_json_file(file);
  double std = 0.02;
  {
    const auto json = nlohmann::json::parse(read_file(file), nullptr, /*allow_exceptions=*/false);
    if (json.is_object() && json.contains("initializer_range") && json["initializer_range"].is_number())
      std = json["initializer_range"].get<double>();
  }
  LlamaForCausalLM model(config);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    if (name.find("norm") != std::string::npos)
      p.value().fill_(1.0);
    else if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0)
      p.value().zero_();
    else
      p.value().normal_(0.0, std);
  }
  model->to(dtype);
  model->eval();
  return model;
}

}  // namespace pal::models
