#include "pal/models/ast_encoder.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>

#include "bidirectional_attention.h"
#include "hf_checkpoint.h"
#include "pal/audio/decode.h"
#include "pal/core/error.h"
#include "pal/nn/functional.h"

namespace pal::models {

namespace {
const char* const kAstType = "audio-spectrogram-transformer";
const char* const kEatType = "eat";
}  // namespace

// ---- config ------------------------------------------------------------------------------

AstEncoderConfig AstEncoderConfig::eat() {
  AstEncoderConfig c;
  c.model_type = kEatType;
  c.frequency_stride = c.time_stride = 16;
  c.layer_norm_eps = 1e-6;
  c.distillation_token = false;
  return c;
}

AstEncoderConfig AstEncoderConfig::from_json_file(const std::filesystem::path& file) {
  const auto json = detail::ConfigJson::open(file);
  json.require_model_type({kAstType, kEatType}, "AST / EAT");
  const bool is_eat = json.model_type() == kEatType;
  AstEncoderConfig c = is_eat ? eat() : AstEncoderConfig{};
  c.hidden_size = json.integer("hidden_size");
  c.num_hidden_layers = json.integer("num_hidden_layers");
  c.num_attention_heads = json.integer("num_attention_heads");
  c.intermediate_size = json.integer("intermediate_size");
  c.num_mel_bins = json.integer("num_mel_bins", c.num_mel_bins);
  c.max_length = json.integer("max_length", c.max_length);
  c.patch_size = json.integer("patch_size", c.patch_size);
  c.frequency_stride = json.integer("frequency_stride", c.frequency_stride);
  c.time_stride = json.integer("time_stride", c.time_stride);
  c.layer_norm_eps = json.number("layer_norm_eps", c.layer_norm_eps);
  c.qkv_bias = json.boolean("qkv_bias", c.qkv_bias);
  c.hidden_act = json.string("hidden_act", c.hidden_act);
  // AST's feature extractor pads / crops to the model's max_length.
  c.target_length = json.integer("target_length", c.max_length);
  c.position_resize = json.string("position_resize", c.position_resize);
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(json.file() + ": " + e.what());
  }
  return c;
}

void AstEncoderConfig::validate() const {
  auto at_least = [](const char* key, int64_t v, int64_t low) {
    if (v < low)
      throw ConfigError(std::string(key) + " must be >= " + std::to_string(low) + ", got " +
                        std::to_string(v));
  };
  at_least("hidden_size", hidden_size, 1);
  at_least("num_hidden_layers", num_hidden_layers, 1);
  at_least("num_attention_heads", num_attention_heads, 1);
  at_least("intermediate_size", intermediate_size, 1);
  at_least("patch_size", patch_size, 1);
  at_least("frequency_stride", frequency_stride, 1);
  at_least("time_stride", time_stride, 1);
  at_least("num_mel_bins", num_mel_bins, patch_size);
  at_least("max_length", max_length, patch_size);
  if (target_length != 0) at_least("target_length", target_length, patch_size);
  if (hidden_size % num_attention_heads != 0)
    throw ConfigError("hidden_size (" + std::to_string(hidden_size) +
                      ") must be a multiple of num_attention_heads (" + std::to_string(num_attention_heads) +
                      ")");
  if (hidden_act != "gelu")
    throw ConfigError("hidden_act: '" + hidden_act + "' is not supported (expected gelu)");
  if (position_resize != "interpolate" && position_resize != "truncate")
    throw ConfigError("position_resize: '" + position_resize +
                      "' is not supported (expected interpolate or truncate)");
}

audio::KaldiFbankOptions AstEncoderConfig::fbank() const {
  audio::KaldiFbankOptions o =
      distillation_token ? audio::KaldiFbankOptions::ast() : audio::KaldiFbankOptions::eat();
  o.n_mels = static_cast<int>(num_mel_bins);
  o.target_frames = target_length;
  return o;
}

// ---- modules -----------------------------------------------------------------------------

namespace {

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

torch::nn::LayerNorm make_layer_norm(const AstEncoderConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

AstPatchEmbeddingsImpl::AstPatchEmbeddingsImpl(const AstEncoderConfig& c) {
  projection = register_module(
      "projection", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, c.hidden_size, {c.patch_size, c.patch_size})
                                          .stride({c.frequency_stride, c.time_stride})));
}

torch::Tensor AstPatchEmbeddingsImpl::forward(const torch::Tensor& fbank) {
  // ref: ASTPatchEmbeddings: [B, T, mels] -> image [B, 1, mels, T] -> [B, hidden, n_freq, n_time].
  return projection(fbank.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2);
}

AstEmbeddingsImpl::AstEmbeddingsImpl(const AstEncoderConfig& c) {
  const int64_t d = c.hidden_size;
  cls_token = register_parameter("cls_token", torch::zeros({1, 1, d}));
  if (c.distillation_token)
    distillation_token = register_parameter("distillation_token", torch::zeros({1, 1, d}));
  const int64_t patches = c.frequency_patches() * c.time_patches(c.max_length);
  position_embeddings =
      register_parameter("position_embeddings", torch::zeros({1, c.extra_tokens() + patches, d}));
  patch_embeddings = register_module("patch_embeddings", AstPatchEmbeddings(c));
}

AstSelfAttentionImpl::AstSelfAttentionImpl(const AstEncoderConfig& c)
    : heads_(c.num_attention_heads), head_dim_(c.hidden_size / c.num_attention_heads) {
  query = register_module("query", linear(c.hidden_size, c.hidden_size, c.qkv_bias));
  key = register_module("key", linear(c.hidden_size, c.hidden_size, c.qkv_bias));
  value = register_module("value", linear(c.hidden_size, c.hidden_size, c.qkv_bias));
}

torch::Tensor AstSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& key_valid) {
  const int64_t batch = x.size(0), length = x.size(1);
  auto heads = [&](const torch::Tensor& t) {
    return t.view({batch, length, heads_, head_dim_}).transpose(1, 2);
  };
  return detail::bidirectional_attention(heads(query(x)), heads(key(x)), heads(value(x)), key_valid);
}

AstDenseImpl::AstDenseImpl(int64_t in, int64_t out) {
  dense = register_module("dense", linear(in, out, true));
}

AstAttentionImpl::AstAttentionImpl(const AstEncoderConfig& c) {
  attention = register_module("attention", AstSelfAttention(c));
  output = register_module("output", AstDense(c.hidden_size, c.hidden_size));
}

AstLayerImpl::AstLayerImpl(const AstEncoderConfig& c) {
  attention = register_module("attention", AstAttention(c));
  intermediate = register_module("intermediate", AstDense(c.hidden_size, c.intermediate_size));
  output = register_module("output", AstDense(c.intermediate_size, c.hidden_size));
  layernorm_before = register_module("layernorm_before", make_layer_norm(c));
  layernorm_after = register_module("layernorm_after", make_layer_norm(c));
}

torch::Tensor AstLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& key_valid) {
  torch::Tensor h = x + attention->forward(layernorm_before(x), key_valid);
  return h + output(pal::nn::gelu(intermediate(layernorm_after(h))));
}

AstLayerStackImpl::AstLayerStackImpl(const AstEncoderConfig& c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(AstLayer(c));
}

AstEncoderImpl::AstEncoderImpl(const AstEncoderConfig& config, const AstEncoderOptions& options)
    : config_(config), options_(options), frontend_(config.fbank()) {
  config_.validate();
  if (options_.frequency != "pooled" && options_.frequency != "stacked")
    throw ConfigError("frequency: '" + options_.frequency +
                      "' is not supported (expected pooled or stacked)");
  embeddings = register_module("embeddings", AstEmbeddings(config_));
  encoder = register_module("encoder", AstLayerStack(config_));
  layernorm = register_module("layernorm", make_layer_norm(config_));
}

int64_t AstEncoderImpl::width() const {
  return options_.frequency == "stacked" ? config_.hidden_size * config_.frequency_patches()
                                         : config_.hidden_size;
}

int64_t AstEncoderImpl::valid_time_patches(int64_t frames) const {
  const int64_t patch = config_.patch_size;
  if (frames < 1)
    throw AudioError(type() + " encoder: a clip with no fbank frame (it needs 400 samples, 25 ms)");
  if (frames < patch) {
    if (config_.target_length == 0)
      throw AudioError(type() + " encoder: a clip of " + std::to_string(frames) +
                       " fbank frames is shorter than one patch: at least " + std::to_string(patch) +
                       " frames (" + std::to_string(400 + (patch - 1) * 160) + " samples) are needed");
    return 1;  // padded to target_length: the first patch holds the whole clip
  }
  int64_t n = 1 + ceil_div(frames - patch, config_.time_stride);
  if (config_.target_length > 0) n = std::min(n, config_.time_patches(config_.target_length));
  return n;
}

torch::Tensor AstEncoderImpl::patch_positions(int64_t time_patches) const {
  const int64_t nf = config_.frequency_patches(), grid = config_.time_patches(config_.max_length);
  const int64_t d = config_.hidden_size;
  torch::Tensor table = embeddings->position_embeddings[0].narrow(0, config_.extra_tokens(), nf * grid);
  if (time_patches == grid) return table;
  torch::Tensor columns = table.view({nf, grid, d});
  if (config_.position_resize == "truncate" && time_patches < grid)
    return columns.narrow(1, 0, time_patches).reshape({nf * time_patches, d});
  // Linear over time (bilinear on the [n_freq, n_time] grid with n_freq unchanged).
  namespace F = torch::nn::functional;
  torch::Tensor image = columns.permute({2, 0, 1}).unsqueeze(0);  // [1, hidden, n_freq, grid]
  image = F::interpolate(image, F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{nf, time_patches})
                                    .mode(torch::kBilinear)
                                    .align_corners(false));
  return image[0].permute({1, 2, 0}).reshape({nf * time_patches, d});
}

AstEncoderTaps AstEncoderImpl::forward_features(const torch::Tensor& fbank_in, const torch::Tensor& lengths,
                                                bool keep_taps) {
  const std::string name = type() + " encoder";
  if (fbank_in.dim() != 3 || fbank_in.size(2) != config_.num_mel_bins)
    throw ModelError(name + ": fbank must be [batch, frames, " + std::to_string(config_.num_mel_bins) +
                     "], got " + c10::str(fbank_in.sizes()));
  const int64_t batch = fbank_in.size(0);
  if (lengths.dim() != 1 || lengths.size(0) != batch)
    throw ModelError(name + ": lengths must be [" + std::to_string(batch) + "], got " +
                     c10::str(lengths.sizes()));
  const torch::Tensor frames = lengths.to(torch::kCPU, torch::kLong);
  std::vector<int64_t> valid(batch);
  for (int64_t i = 0; i < batch; ++i) {
    try {
      valid[i] = valid_time_patches(std::min(frames[i].item<int64_t>(), fbank_in.size(1)));
    } catch (const AudioError& e) {
      throw AudioError(std::string(e.what()) + " (clip " + std::to_string(i) + ")");
    }
  }
  const bool variable = config_.target_length == 0;
  torch::Tensor fbank = fbank_in;
  if (variable) {
    // Exactly the patches of the longest clip; a partial last patch reads the frontend's
    // padding value (the normalised zero), as EAT's own padding to a whole patch.
    const int64_t patches = *std::max_element(valid.begin(), valid.end());
    const int64_t needed = (patches - 1) * config_.time_stride + config_.patch_size;
    if (fbank.size(1) > needed) {
      fbank = fbank.narrow(1, 0, needed);
    } else if (fbank.size(1) < needed) {
      const auto& o = frontend_.options();
      const double pad = o.norm_mean ? (0.0 - *o.norm_mean) / (2.0 * *o.norm_std) : 0.0;
      fbank = torch::constant_pad_nd(fbank, {0, 0, 0, needed - fbank.size(1)}, pad);
    }
  } else if (fbank.size(1) < config_.patch_size) {
    throw ModelError(name + ": " + std::to_string(fbank.size(1)) +
                     " fbank frames are fewer than one patch (" + std::to_string(config_.patch_size) + ")");
  }
  const int64_t nf = config_.frequency_patches(), nt = config_.time_patches(fbank.size(1));
  const int64_t extra = config_.extra_tokens(), d = config_.hidden_size;

  // ref: ASTEmbeddings.forward
  torch::Tensor patches = embeddings->patch_embeddings(fbank);  // [B, nf * nt, d]
  std::vector<torch::Tensor> tokens = {embeddings->cls_token.expand({batch, 1, d})};
  if (config_.distillation_token) tokens.push_back(embeddings->distillation_token.expand({batch, 1, d}));
  tokens.push_back(patches);
  torch::Tensor extra_positions = embeddings->position_embeddings.narrow(1, 0, extra);
  const bool ragged = variable && *std::min_element(valid.begin(), valid.end()) < nt;
  torch::Tensor positions;
  if (!ragged) {
    positions = torch::cat({extra_positions, patch_positions(nt).unsqueeze(0)}, 1);
  } else {
    // Each clip's positions as if it were alone (resized to its own patches), padded.
    std::map<int64_t, torch::Tensor> by_length;
    std::vector<torch::Tensor> rows;
    for (int64_t n : valid) {
      auto it = by_length.find(n);
      if (it == by_length.end()) {
        torch::Tensor own = patch_positions(n).view({nf, n, d});
        it = by_length.emplace(n, torch::constant_pad_nd(own, {0, 0, 0, nt - n}, 0.0).view({1, nf * nt, d}))
                 .first;
      }
      rows.push_back(it->second);
    }
    positions = torch::cat({extra_positions.expand({batch, extra, d}), torch::cat(rows, 0)}, 1);
  }
  torch::Tensor h = torch::cat(tokens, 1) + positions;

  const torch::Tensor counts =
      torch::tensor(valid, torch::TensorOptions().dtype(torch::kLong)).to(h.device());
  const torch::Tensor time_valid =
      torch::arange(nt, counts.options()).unsqueeze(0) < counts.unsqueeze(1);  // [B, nt]
  torch::Tensor key_valid;
  if (ragged)
    key_valid = torch::cat({torch::ones({batch, extra}, time_valid.options()),
                            time_valid.unsqueeze(1).expand({batch, nf, nt}).reshape({batch, nf * nt})},
                           1);

  AstEncoderTaps taps;
  if (keep_taps) taps.hidden_states.push_back(h);
  for (const auto& layer : *encoder->layer) {
    h = layer->as<AstLayer>()->forward(h, key_valid);
    if (keep_taps) taps.hidden_states.push_back(h);
  }
  torch::Tensor last = layernorm(h);
  torch::Tensor grid = last.narrow(1, extra, nf * nt).view({batch, nf, nt, d});
  taps.output.hidden = options_.frequency == "stacked"
                           ? grid.permute({0, 2, 1, 3}).reshape({batch, nt, nf * d})
                           : grid.mean(1);
  taps.output.mask = time_valid;
  // ref: ASTModel's pooler: the mean of the CLS and distillation outputs.
  taps.output.cls =
      config_.distillation_token ? (last.select(1, 0) + last.select(1, 1)) / 2 : last.select(1, 0);
  if (keep_taps) taps.last_hidden_state = last;
  return taps;
}

EncoderOutput AstEncoderImpl::encode(const torch::Tensor& waveforms, const torch::Tensor& lengths) {
  const std::string name = type() + " encoder";
  if (waveforms.dim() != 2 || lengths.dim() != 1 || lengths.size(0) != waveforms.size(0))
    throw ModelError(name + ": expected waveforms [batch, samples] and lengths [batch], got " +
                     c10::str(waveforms.sizes()) + " and " + c10::str(lengths.sizes()));
  const torch::Tensor samples = lengths.to(torch::kCPU, torch::kLong);
  const int64_t min_frames = config_.target_length == 0 ? config_.patch_size : 1;
  const int64_t min_samples =
      audio::KaldiFbankFrontend::kWindow + (min_frames - 1) * audio::KaldiFbankFrontend::kShift;
  for (int64_t i = 0; i < waveforms.size(0); ++i) {
    const int64_t n = samples[i].item<int64_t>();
    const int64_t frames = frontend_.frames(n);
    if (frames < min_frames)
      throw AudioError(name + ": clip " + std::to_string(i) + " has " + std::to_string(n) + " samples (" +
                       std::to_string(frames) + " fbank frames); at least " + std::to_string(min_samples) +
                       " samples (" + std::to_string(min_frames) + " frames" +
                       (min_frames > 1 ? std::string(", one patch") : std::string()) + ") are needed");
  }
  if (frontend_.mel_banks().device() != waveforms.device()) frontend_.to(waveforms.device());
  audio::Features f = frontend_(waveforms, lengths);
  return forward_features(f.values.to(embeddings->cls_token.scalar_type()), f.lengths, /*keep_taps=*/false)
      .output;
}

EncoderWindow AstEncoderImpl::window() const {
  using audio::KaldiFbankFrontend;
  const int64_t frames = config_.target_length > 0 ? config_.target_length : config_.max_length;
  return {KaldiFbankFrontend::kWindow + (frames - 1) * KaldiFbankFrontend::kShift,
          config_.time_patches(frames) * config_.time_stride * KaldiFbankFrontend::kShift};
}

void AstEncoderImpl::train_last_blocks(int64_t n) {
  const int64_t total = static_cast<int64_t>(encoder->layer->size());
  if (n < 0 || n > total)
    throw ModelError(type() + " encoder: train_last_blocks(" + std::to_string(n) + "): the encoder has " +
                     std::to_string(total) + " layers");
  detail::set_trainable(*this, false);
  for (int64_t i = total - n; i < total; ++i) detail::set_trainable(*encoder->layer[i], true);
  if (n > 0) detail::set_trainable(*layernorm, true);
}

// ---- loading -------------------------------------------------------------------------------

AstEncoder load_ast_encoder(const std::filesystem::path& folder, const AstEncoderOptions& options,
                            torch::Dtype dtype) {
  AstEncoder model(AstEncoderConfig::from_json_file(folder / "config.json"), options);
  detail::load_prefixed(*model, folder, {"audio_spectrogram_transformer.", ""},
                        "embeddings.patch_embeddings.projection.weight", model->type() + " encoder",
                        [](const std::string& key) { return key.rfind("classifier.", 0) == 0; });
  model->to(dtype);
  model->eval();
  model->train_last_blocks(0);
  return model;
}

AstEncoder init_ast_encoder(const std::filesystem::path& folder, const AstEncoderOptions& options,
                            torch::Dtype dtype) {
  const std::filesystem::path file = folder / "config.json";
  AstEncoder model(AstEncoderConfig::from_json_file(file), options);
  // ref: ASTPreTrainedModel._init_weights (truncated normal; tokens and positions too).
  detail::init_hf_style(*model, detail::ConfigJson::open(file).number("initializer_range", 0.02));
  model->to(dtype);
  model->eval();
  model->train_last_blocks(0);
  return model;
}

}  // namespace pal::models
