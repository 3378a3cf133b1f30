#include "pal/models/fusion.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/nn/functional.h"

namespace pal::models {
namespace {

// A bottleneck on the normed audio of one probe layer: x + up(gelu(down(x))), with `up`
// starting at zero so that a new adapter leaves the LLM's own projections unchanged.
class ProbeAdapterImpl : public torch::nn::Module {
 public:
  ProbeAdapterImpl(int64_t width, int64_t rank) {
    down = register_module("down", torch::nn::Linear(width, rank));
    up = register_module("up", torch::nn::Linear(rank, width));
    torch::NoGradGuard no_grad;
    up->weight.zero_();
    up->bias.zero_();
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + up(pal::nn::gelu(down(x))); }
  torch::nn::Linear down{nullptr}, up{nullptr};
};
TORCH_MODULE(ProbeAdapter);

AudioTokens concat(const AudioTokens& a, const AudioTokens& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return {torch::cat({a.tokens, b.tokens}, 1), torch::cat({a.mask, b.mask}, 1)};
}

// Additive mask [B, 1, L, L] over a fused sequence: causal, invalid keys hidden, and
// every query sees itself (so that padding rows are not empty).
torch::Tensor sequence_mask(const torch::Tensor& valid, torch::ScalarType dtype) {
  const int64_t length = valid.size(1);
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(valid.device());
  torch::Tensor query = torch::arange(length, opts).view({1, length, 1});
  torch::Tensor key = torch::arange(length, opts).view({1, 1, length});
  torch::Tensor visible = (key <= query).logical_and(valid.unsqueeze(1)).logical_or(key == query);
  return torch::zeros({valid.size(0), 1, length, length},
                      torch::TensorOptions().dtype(dtype).device(valid.device()))
      .masked_fill_(visible.logical_not().unsqueeze(1), -std::numeric_limits<float>::infinity());
}

// Additive mask [B, 1, L, N] of text queries over probe audio keys: every valid audio
// key is visible to every query.
torch::Tensor probe_key_mask(const torch::Tensor& audio_mask, int64_t queries, torch::ScalarType dtype) {
  const int64_t batch = audio_mask.size(0), keys = audio_mask.size(1);
  return torch::zeros({batch, 1, queries, keys},
                      torch::TensorOptions().dtype(dtype).device(audio_mask.device()))
      .masked_fill_(audio_mask.logical_not().view({batch, 1, 1, keys}),
                    -std::numeric_limits<float>::infinity());
}

// `mask` [B, 1, Q, S] with the keys `hidden` [B, S] hidden from the queries `queries`
// [B, Q] (bool): audio withheld from a layer (FusionAnalysis).
torch::Tensor hide_keys(const torch::Tensor& mask, const torch::Tensor& queries,
                        const torch::Tensor& hidden) {
  torch::Tensor hide = queries.unsqueeze(1).unsqueeze(-1).logical_and(hidden.unsqueeze(1).unsqueeze(1));
  return mask.masked_fill(hide, -std::numeric_limits<float>::infinity());
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

FusionDecoderImpl::FusionDecoderImpl(LlamaForCausalLM llm_, const FusionConfig& config,
                                     int64_t audio_token_id)
    : config_(config), audio_token_id_(audio_token_id) {
  llm = register_module("llm", std::move(llm_));
  const int64_t layers = llm->config().num_hidden_layers;
  if (config_.mode != FusionMode::prefix && config_.start_layer >= layers)
    throw ConfigError("fusion.start_layer: " + std::to_string(config_.start_layer) +
                      " is not below the LLM's " + std::to_string(layers) + " layers");
  probe_adapters = register_module("probe_adapters", torch::nn::ModuleList());
  if (config_.adapter_rank > 0 && (config_.mode == FusionMode::probe || config_.mode == FusionMode::pal))
    for (int64_t l = config_.start_layer; l < layers; ++l)
      probe_adapters->push_back(ProbeAdapter(llm->config().hidden_size, config_.adapter_rank));
}

int64_t FusionDecoderImpl::insert_layer() const {
  return config_.mode == FusionMode::delayed ? config_.start_layer : 0;
}

int64_t FusionDecoderImpl::probe_layer() const {
  return config_.mode == FusionMode::probe || config_.mode == FusionMode::pal
             ? config_.start_layer
             : llm->config().num_hidden_layers;
}

EnsembleOutput FusionDecoderImpl::route(const EnsembleOutput& audio) const {
  switch (config_.mode) {
    case FusionMode::prefix:
    case FusionMode::delayed: return {concat(audio.prefix, audio.probe), {}};
    case FusionMode::probe: return {{}, concat(audio.prefix, audio.probe)};
    case FusionMode::pal: return audio;
  }
  return audio;
}

FusedLayout FusionDecoderImpl::layout(const torch::Tensor& input_ids, const torch::Tensor& valid,
                                      const AudioTokens& prefix, const AudioTokens& probe,
                                      bool left_pad) const {
  const int64_t batch = input_ids.size(0), text = input_ids.size(1);
  if (valid.sizes() != input_ids.sizes())
    throw ModelError("fusion: input_ids " + c10::str(input_ids.sizes()) + " and valid " +
                     c10::str(valid.sizes()) + " differ in shape");
  for (const AudioTokens* a : {&prefix, &probe})
    if (!a->empty() && a->tokens.size(0) != batch)
      throw ModelError("fusion: audio for " + std::to_string(a->tokens.size(0)) + " clips with " +
                       std::to_string(batch) + " prompts");
  const std::vector<int64_t> ids = to_vector(input_ids), ok = to_vector(valid);
  const std::vector<int64_t> prefix_ok = prefix.empty() ? std::vector<int64_t>{} : to_vector(prefix.mask);
  const std::vector<int64_t> probe_ok = probe.empty() ? std::vector<int64_t>{} : to_vector(probe.mask);
  const int64_t n_prefix = prefix.empty() ? 0 : prefix.tokens.size(1);
  const int64_t n_probe = probe.empty() ? 0 : probe.tokens.size(1);

  // Each row: text elements are (input index t >= 0), audio elements are (-1 - audio row).
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    auto& row = rows[static_cast<size_t>(b)];
    int64_t placeholders = 0;
    for (int64_t t = 0; t < text; ++t) {
      const size_t i = static_cast<size_t>(b * text + t);
      if (!ok[i]) continue;
      if (ids[i] != audio_token_id_) {
        row.push_back(t);
        continue;
      }
      ++placeholders;
      for (int64_t a = 0; a < n_prefix; ++a)
        if (prefix_ok[static_cast<size_t>(b * n_prefix + a)]) row.push_back(-1 - a);
    }
    if (n_prefix > 0 && placeholders != 1)
      throw ModelError("fusion: prompt " + std::to_string(b) + " has " + std::to_string(placeholders) +
                       " audio placeholders (token id " + std::to_string(audio_token_id_) +
                       "); the audio of the prefix route needs exactly one");
  }
  size_t length = 1;
  for (const auto& row : rows) length = std::max(length, row.size());
  const int64_t L = static_cast<int64_t>(length);

  std::vector<int64_t> out_ids(static_cast<size_t>(batch * L), 0), is_audio(out_ids.size(), 0),
      audio_index(out_ids.size(), 0), out_valid(out_ids.size(), 0), positions(out_ids.size(), 0),
      text_index(static_cast<size_t>(batch * text), -1), offset(static_cast<size_t>(batch), 0);
  for (int64_t b = 0; b < batch; ++b) {
    const auto& row = rows[static_cast<size_t>(b)];
    if (config_.audio_rope == AudioRope::prefix)
      for (int64_t a = 0; a < n_probe; ++a)
        offset[static_cast<size_t>(b)] += probe_ok[static_cast<size_t>(b * n_probe + a)];
    const int64_t start = left_pad ? L - static_cast<int64_t>(row.size()) : 0;
    for (size_t j = 0; j < row.size(); ++j) {
      const size_t at = static_cast<size_t>(b * L + start + static_cast<int64_t>(j));
      out_valid[at] = 1;
      positions[at] = static_cast<int64_t>(j) + offset[static_cast<size_t>(b)];
      if (row[j] >= 0) {
        out_ids[at] = ids[static_cast<size_t>(b * text + row[j])];
        text_index[static_cast<size_t>(b * text + row[j])] = start + static_cast<int64_t>(j);
      } else {
        is_audio[at] = 1;
        audio_index[at] = -1 - row[j];
      }
    }
  }
  const auto device = input_ids.device();
  auto tensor = [&](const std::vector<int64_t>& v, std::vector<int64_t> shape) {
    return torch::tensor(v, torch::kInt64).view(shape).to(device);
  };
  FusedLayout out;
  out.ids = tensor(out_ids, {batch, L});
  out.is_audio = tensor(is_audio, {batch, L}).to(torch::kBool);
  out.audio_index = tensor(audio_index, {batch, L});
  out.valid = tensor(out_valid, {batch, L}).to(torch::kBool);
  out.positions = tensor(positions, {batch, L});
  out.text_index = tensor(text_index, {batch, text});
  out.probe_offset = tensor(offset, {batch});
  return out;
}

torch::Tensor FusionDecoderImpl::embed(const FusedLayout& layout, const AudioTokens& prefix) {
  torch::Tensor h = llm->embed(layout.ids);
  if (prefix.empty()) return h;
  const int64_t hidden = h.size(2);
  torch::Tensor rows =
      prefix.tokens.to(h.scalar_type()).gather(1, layout.audio_index.unsqueeze(-1).expand({-1, -1, hidden}));
  return torch::where(layout.is_audio.unsqueeze(-1), rows, h);
}

torch::Tensor FusionDecoderImpl::probe_input(int64_t layer, const torch::Tensor& audio) {
  auto decoder = llm->model->layers[static_cast<size_t>(layer)]->as<LlamaDecoderLayer>();
  torch::Tensor x = decoder->input_layernorm(audio.to(llm->model->embed_tokens->weight.scalar_type()));
  if (!probe_adapters->is_empty())
    x = probe_adapters[static_cast<size_t>(layer - config_.start_layer)]->as<ProbeAdapter>()->forward(x);
  return x;
}

RotaryTables FusionDecoderImpl::probe_rotary(const AudioTokens& probe) const {
  return llm->rotary((probe.mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0));
}

FusionOutput FusionDecoderImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& valid,
                                        const EnsembleOutput& audio, const torch::Tensor& labels, bool taps) {
  const EnsembleOutput routed = route(audio);
  FusionOutput out;
  out.layout = layout(input_ids, valid, routed.prefix, routed.probe, /*left_pad=*/false);
  const FusedLayout& lay = out.layout;
  const auto dtype = llm->model->embed_tokens->weight.scalar_type();
  const RotaryTables rope = llm->rotary(lay.positions);
  const int64_t insert = routed.prefix.empty() ? 0 : insert_layer();
  const int64_t probe_from = routed.probe.empty() ? llm->config().num_hidden_layers : probe_layer();

  torch::Tensor mask = sequence_mask(lay.valid, dtype);
  torch::Tensor probe_mask;
  RotaryTables audio_rope;
  if (!routed.probe.empty()) {
    probe_mask = torch::cat({probe_key_mask(routed.probe.mask, lay.ids.size(1), dtype), mask}, -1);
    if (config_.audio_rope == AudioRope::prefix) audio_rope = probe_rotary(routed.probe);
  }

  const int64_t n = llm->config().num_hidden_layers;
  torch::Tensor h;
  if (insert > 0) {
    // Layers below the insert layer (delayed) run on the text alone, gathered in order
    // (positions keep the gap where audio goes); at the insert layer the text rows go
    // back to their places beside the audio.
    const int64_t L = lay.ids.size(1), batch = lay.ids.size(0);
    torch::Tensor is_text = lay.valid.logical_and(lay.is_audio.logical_not());
    torch::Tensor counts = is_text.sum(1);
    const int64_t text_length = std::max<int64_t>(1, counts.max().item<int64_t>());
    torch::Tensor at = torch::arange(L, lay.ids.options());
    torch::Tensor order =
        torch::where(is_text, at, at + L).argsort(/*dim=*/1, /*descending=*/false).narrow(1, 0, text_length);
    torch::Tensor text_valid =
        torch::arange(text_length, lay.ids.options()).unsqueeze(0) < counts.unsqueeze(1);
    torch::Tensor rows = torch::arange(batch, lay.ids.options()).unsqueeze(1).expand({batch, text_length});
    const torch::Tensor row_index = rows.masked_select(text_valid),
                        col_index = order.masked_select(text_valid);
    auto to_full = [&](const torch::Tensor& base, const torch::Tensor& text_rows) {
      return base.index_put({row_index, col_index}, text_rows.index({text_valid}));
    };
    const RotaryTables text_rope = llm->rotary(lay.positions.gather(1, order));
    const torch::Tensor text_only_mask = sequence_mask(text_valid, dtype);
    torch::Tensor ht = llm->embed(lay.ids.gather(1, order));
    if (taps) out.hidden_states.push_back(to_full(torch::zeros({batch, L, ht.size(2)}, ht.options()), ht));
    for (int64_t l = 0; l < insert; ++l) {
      torch::Tensor probabilities;
      ht = llm->model->layers[static_cast<size_t>(l)]->as<LlamaDecoderLayer>()->forward(
          ht, text_rope, text_only_mask, nullptr, nullptr,
          analysis_ && analysis_->on_attention ? &probabilities : nullptr);
      if (probabilities.defined())
        analysis_->on_attention({l, probabilities, order.masked_fill(text_valid.logical_not(), -1),
                                 torch::zeros_like(text_valid)});
      if (taps && l + 1 < n)
        out.hidden_states.push_back(to_full(torch::zeros({batch, L, ht.size(2)}, ht.options()), ht));
    }
    h = to_full(embed(lay, routed.prefix), ht);
  } else {
    h = embed(lay, routed.prefix);
    if (taps) out.hidden_states.push_back(h);
  }
  // Analysis: the mask of layers with the audio withheld (text queries do not see the
  // prefix-routed audio), and the rows of the attention probabilities.
  torch::Tensor withheld_mask, query_element;
  if (analysis_) {
    withheld_mask = hide_keys(mask, lay.valid.logical_and(lay.is_audio.logical_not()), lay.is_audio);
    query_element = torch::arange(lay.ids.size(1), lay.ids.options())
                        .unsqueeze(0)
                        .expand_as(lay.ids)
                        .masked_fill(lay.valid.logical_not(), -1);
  }
  for (int64_t l = insert; l < n; ++l) {
    auto decoder = llm->model->layers[static_cast<size_t>(l)]->as<LlamaDecoderLayer>();
    const bool withheld = analysis_ && analysis_->withholds(l);
    torch::Tensor probabilities;
    torch::Tensor* want = analysis_ && analysis_->on_attention ? &probabilities : nullptr;
    const bool probe = l >= probe_from && !withheld;
    if (probe) {
      ExtraKeyValues kv =
          decoder->self_attn->key_values(probe_input(l, routed.probe.tokens),
                                         config_.audio_rope == AudioRope::prefix ? &audio_rope : nullptr);
      h = decoder->forward(h, rope, probe_mask, nullptr, &kv, want);
    } else {
      h = decoder->forward(h, rope, withheld ? withheld_mask : mask, nullptr, nullptr, want);
    }
    if (probabilities.defined())
      analysis_->on_attention(
          {l, probabilities, query_element,
           probe ? torch::cat({routed.probe.mask.to(torch::kBool), lay.is_audio}, 1) : lay.is_audio});
    if (taps && l + 1 < n) out.hidden_states.push_back(h);
  }
  h = llm->model->norm(h);
  if (taps) out.hidden_states.push_back(h);
  if (!labels.defined()) {
    out.logits = llm->logits(h);
    return out;
  }

  // The logits at the element before each label token (the previous valid element of
  // the fused sequence) predict it; only those rows are computed.
  const int64_t batch = input_ids.size(0), text = input_ids.size(1), L = lay.ids.size(1);
  // Floating-point labels weigh their tokens: the loss is then sum(w * ce) / sum(w).
  const bool weighted = labels.is_floating_point();
  const torch::Tensor weight_cpu = labels.to(torch::kCPU, torch::kFloat32).contiguous();
  const float* weight = weight_cpu.data_ptr<float>();
  const std::vector<int64_t> where = to_vector(lay.text_index), ids = to_vector(input_ids),
                             ok = to_vector(lay.valid);
  std::vector<int64_t> rows, targets;
  std::vector<float> weights;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < text; ++t) {
      const size_t i = static_cast<size_t>(b * text + t);
      if (weight[i] == 0.0f || where[i] < 0) continue;
      if (weighted && !(weight[i] > 0.0f && std::isfinite(weight[i])))
        throw ModelError("fusion: label weights must be finite and not negative (got " +
                         std::to_string(weight[i]) + ")");
      int64_t p = where[i] - 1;
      while (p >= 0 && !ok[static_cast<size_t>(b * L + p)]) --p;
      if (p < 0) continue;  // the first element has nothing before it
      rows.push_back(b * L + p);
      targets.push_back(ids[i]);
      weights.push_back(weight[i]);
    }
  if (rows.empty()) throw ModelError("fusion: labels mark no token that can be predicted");
  const auto device = h.device();
  torch::Tensor picked = h.reshape({batch * L, h.size(2)}).index_select(0, torch::tensor(rows).to(device));
  out.logits = llm->logits(picked);
  const torch::Tensor target = torch::tensor(targets).to(device);
  if (!weighted) {
    out.loss = torch::nn::functional::cross_entropy(out.logits.to(torch::kFloat32), target);
    return out;
  }
  const torch::Tensor w = torch::tensor(weights).to(device);
  const torch::Tensor ce = torch::nn::functional::cross_entropy(
      out.logits.to(torch::kFloat32), target,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  out.loss = (ce * w).sum() / w.sum();
  return out;
}

GenerationResult FusionDecoderImpl::generate(const std::vector<std::vector<int64_t>>& prompts,
                                             const EnsembleOutput& audio, const GenerationOptions& options,
                                             const TokenCallback& on_token, const Detokenizer& detokenize) {
  options.validate();
  if (prompts.empty()) throw GenerationError("generate: no prompts");
  const LlamaConfig& config = llm->config();
  const int64_t batch = static_cast<int64_t>(prompts.size());
  size_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw GenerationError("generate: prompt " + std::to_string(i) + " is empty");
    for (int64_t id : prompts[i])
      if (id != audio_token_id_ && (id < 0 || id >= config.vocab_size))
        throw GenerationError("generate: prompt " + std::to_string(i) + " has token id " +
                              std::to_string(id) + " outside the vocabulary [0, " +
                              std::to_string(config.vocab_size) + ")");
    longest = std::max(longest, prompts[i].size());
  }
  c10::InferenceMode inference;
  BlasThreadingGuard blas_threading;
  const torch::Tensor weight = llm->model->embed_tokens->weight;
  const auto device = weight.device();
  const auto dtype = weight.scalar_type();
  std::vector<int64_t> ids(static_cast<size_t>(batch) * longest, 0), ok(ids.size(), 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::copy(prompts[i].begin(), prompts[i].end(), ids.begin() + static_cast<int64_t>(i * longest));
    std::fill(ok.begin() + static_cast<int64_t>(i * longest),
              ok.begin() + static_cast<int64_t>(i * longest + prompts[i].size()), 1);
  }
  const int64_t T = static_cast<int64_t>(longest);
  const EnsembleOutput routed = route(audio);
  const FusedLayout lay = layout(torch::tensor(ids).view({batch, T}).to(device),
                                 torch::tensor(ok).view({batch, T}).to(device).to(torch::kBool),
                                 routed.prefix, routed.probe, /*left_pad=*/true);
  const int64_t L = lay.ids.size(1);
  const int64_t reach = L + lay.probe_offset.max().item<int64_t>();  // positions used by the prompt
  if (reach >= config.max_position_embeddings)
    throw GenerationError("generate: the prompt with its audio takes " + std::to_string(reach) +
                          " positions; the model's context (max_position_embeddings) is " +
                          std::to_string(config.max_position_embeddings) +
                          ", which leaves no room for new tokens");
  const int64_t new_tokens = std::min(options.max_new_tokens, config.max_position_embeddings - reach);

  // Two caches: layers below `split` (text, and prefix audio unless delayed) and layers
  // from `split` (probe audio keys/values first, then the sequence).
  const int64_t n = config.num_hidden_layers;
  const int64_t split = config_.mode == FusionMode::prefix ? 0 : config_.start_layer;
  const int64_t insert = routed.prefix.empty() ? 0 : insert_layer();
  const int64_t n_probe = routed.probe.empty() ? 0 : routed.probe.tokens.size(1);
  std::unique_ptr<KVCache> lo, hi;
  if (split > 0) lo = std::make_unique<KVCache>(config, batch, L + new_tokens, weight.options(), split);
  hi = std::make_unique<KVCache>(config, batch, n_probe + L + new_tokens, weight.options(), n - split);
  if (n_probe > 0) {  // the audio's keys and values, once per request
    hi->extend(routed.probe.mask);
    RotaryTables audio_rope;
    if (config_.audio_rope == AudioRope::prefix) audio_rope = probe_rotary(routed.probe);
    for (int64_t l = split; l < n; ++l) {
      auto decoder = llm->model->layers[static_cast<size_t>(l)]->as<LlamaDecoderLayer>();
      ExtraKeyValues kv =
          decoder->self_attn->key_values(probe_input(l, routed.probe.tokens),
                                         config_.audio_rope == AudioRope::prefix ? &audio_rope : nullptr);
      LayerCacheView view = hi->layer(static_cast<size_t>(l - split));
      view.keys.narrow(2, 0, n_probe).copy_(kv.keys);
      view.values.narrow(2, 0, n_probe).copy_(kv.values);
    }
    hi->commit();
  }

  // Analysis: which cache columns hold audio, for layers with the audio withheld: the
  // prefix-routed audio (hidden from text queries) and the probe keys (from every query).
  torch::Tensor prefix_columns_lo, prefix_columns_hi, probe_columns_hi;
  if (analysis_) {
    auto columns = [&](int64_t before, int64_t capacity) {
      return torch::constant_pad_nd(lay.is_audio.to(torch::kInt64), {before, capacity - before - L}, 0)
          .to(torch::kBool);
    };
    if (lo) prefix_columns_lo = columns(0, lo->capacity());
    prefix_columns_hi = columns(n_probe, hi->capacity());
    probe_columns_hi = torch::zeros_like(prefix_columns_hi);
    probe_columns_hi.narrow(1, 0, n_probe).fill_(true);
  }

  // One pass of the decoder over new elements (the prompt, then one token at a time);
  // `text_queries` [B, T] bool: which of them are text (for the analysis).
  auto run = [&](torch::Tensor h, const torch::Tensor& positions, const torch::Tensor& valid_lo,
                 const torch::Tensor& valid_hi, const torch::Tensor& inserted,
                 const torch::Tensor& text_queries) {
    const RotaryTables rope = llm->rotary(positions);
    torch::Tensor mask_lo = lo ? lo->extend(valid_lo).to(dtype) : torch::Tensor();
    torch::Tensor mask_hi = hi->extend(valid_hi).to(dtype);
    torch::Tensor withheld_lo, withheld_hi;
    if (analysis_) {
      if (lo) withheld_lo = hide_keys(mask_lo, text_queries, prefix_columns_lo.narrow(1, 0, mask_lo.size(3)));
      const int64_t keys = mask_hi.size(3);
      withheld_hi = hide_keys(hide_keys(mask_hi, text_queries, prefix_columns_hi.narrow(1, 0, keys)),
                              torch::ones_like(text_queries), probe_columns_hi.narrow(1, 0, keys));
    }
    for (int64_t l = 0; l < n; ++l) {
      if (inserted.defined() && l == insert && insert > 0)
        h = torch::where(lay.is_audio.unsqueeze(-1), inserted, h);
      const bool low = l < split;
      LayerCacheView view =
          low ? lo->layer(static_cast<size_t>(l)) : hi->layer(static_cast<size_t>(l - split));
      const bool withheld = analysis_ && analysis_->withholds(l);
      h = llm->model->layers[static_cast<size_t>(l)]->as<LlamaDecoderLayer>()->forward(
          h, rope, withheld ? (low ? withheld_lo : withheld_hi) : (low ? mask_lo : mask_hi), &view);
    }
    if (lo) lo->commit();
    hi->commit();
    return llm->model->norm(h);
  };
  torch::Tensor prompt_valid_lo = insert > 0 ? lay.valid.logical_and(lay.is_audio.logical_not()) : lay.valid;
  torch::Tensor full = embed(lay, routed.prefix);
  torch::Tensor h =
      run(insert > 0 ? llm->embed(lay.ids) : full, lay.positions, prompt_valid_lo, lay.valid,
          insert > 0 ? full : torch::Tensor(), lay.valid.logical_and(lay.is_audio.logical_not()));
  torch::Tensor first_logits = llm->logits(h.select(1, L - 1));

  torch::Tensor next_position = (lay.positions.select(1, L - 1) + 1).unsqueeze(1);  // [B, 1]
  const torch::Tensor all_valid =
      torch::ones({batch, 1}, torch::TensorOptions().dtype(torch::kBool).device(device));
  DecodeStep step = [&](const torch::Tensor& tokens) {
    torch::Tensor out =
        run(llm->embed(tokens.unsqueeze(1)), next_position, all_valid, all_valid, {}, all_valid);
    next_position += 1;
    return llm->logits(out.select(1, 0));
  };
  std::vector<std::vector<int64_t>> text_prompts;  // for the repetition penalty: without the placeholder
  for (const auto& p : prompts) {
    text_prompts.emplace_back();
    for (int64_t id : p)
      if (id != audio_token_id_) text_prompts.back().push_back(id);
  }
  return decode_loop(first_logits, step, new_tokens - 1, text_prompts, options, on_token, detokenize);
}

}  // namespace pal::models
