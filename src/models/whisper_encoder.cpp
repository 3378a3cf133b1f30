#include "pal/models/whisper_encoder.h"

#include <torch/torch.h>

#include <cmath>

#include "bidirectional_attention.h"
#include "hf_checkpoint.h"
#include "pal/audio/decode.h"
#include "pal/core/error.h"
#include "pal/nn/functional.h"

namespace pal::models {

// ---- config ------------------------------------------------------------------------------

WhisperEncoderConfig WhisperEncoderConfig::from_json_file(const std::filesystem::path& file) {
  const auto json = detail::ConfigJson::open(file);
  json.require_model_type({"whisper"}, "Whisper");
  WhisperEncoderConfig c;
  c.d_model = json.integer("d_model");
  c.encoder_layers = json.integer("encoder_layers");
  c.encoder_attention_heads = json.integer("encoder_attention_heads");
  c.encoder_ffn_dim = json.integer("encoder_ffn_dim");
  c.num_mel_bins = json.integer("num_mel_bins", c.num_mel_bins);
  c.max_source_positions = json.integer("max_source_positions", c.max_source_positions);
  c.activation_function = json.string("activation_function", c.activation_function);
  if (json.boolean("scale_embedding", false)) json.fail("scale_embedding", "true is not supported");
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(json.file() + ": " + e.what());
  }
  return c;
}

void WhisperEncoderConfig::validate() const {
  auto positive = [](const char* key, int64_t v) {
    if (v <= 0) throw ConfigError(std::string(key) + " must be > 0, got " + std::to_string(v));
  };
  positive("d_model", d_model);
  positive("encoder_layers", encoder_layers);
  positive("encoder_attention_heads", encoder_attention_heads);
  positive("encoder_ffn_dim", encoder_ffn_dim);
  positive("num_mel_bins", num_mel_bins);
  positive("max_source_positions", max_source_positions);
  if (d_model % encoder_attention_heads != 0)
    throw ConfigError("d_model (" + std::to_string(d_model) +
                      ") must be a multiple of encoder_attention_heads (" +
                      std::to_string(encoder_attention_heads) + ")");
  if (activation_function != "gelu")
    throw ConfigError("activation_function: '" + activation_function + "' is not supported (expected gelu)");
}

// ---- modules -----------------------------------------------------------------------------

namespace {

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

torch::nn::LayerNorm make_layer_norm(int64_t dim) {
  // ref: nn.LayerNorm(d_model): eps 1e-5.
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-5));
}

// [B] valid counts -> [B, T] bool.
torch::Tensor valid_mask(const torch::Tensor& counts, int64_t length) {
  return torch::arange(length, counts.options()).unsqueeze(0) < counts.unsqueeze(1);
}

}  // namespace

WhisperAttentionImpl::WhisperAttentionImpl(int64_t d_model, int64_t heads)
    : heads_(heads), head_dim_(d_model / heads) {
  k_proj = register_module("k_proj", linear(d_model, d_model, false));
  v_proj = register_module("v_proj", linear(d_model, d_model, true));
  q_proj = register_module("q_proj", linear(d_model, d_model, true));
  out_proj = register_module("out_proj", linear(d_model, d_model, true));
}

torch::Tensor WhisperAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& key_valid) {
  const int64_t batch = x.size(0), length = x.size(1);
  auto heads = [&](const torch::Tensor& t) {
    return t.view({batch, length, heads_, head_dim_}).transpose(1, 2);
  };
  // ref: WhisperAttention scales q by head_dim^-0.5 before q k^T; the same product here.
  torch::Tensor out =
      detail::bidirectional_attention(heads(q_proj(x)), heads(k_proj(x)), heads(v_proj(x)), key_valid);
  return out_proj(out);
}

WhisperEncoderLayerImpl::WhisperEncoderLayerImpl(const WhisperEncoderConfig& c) {
  self_attn = register_module("self_attn", WhisperAttention(c.d_model, c.encoder_attention_heads));
  self_attn_layer_norm = register_module("self_attn_layer_norm", make_layer_norm(c.d_model));
  fc1 = register_module("fc1", linear(c.d_model, c.encoder_ffn_dim, true));
  fc2 = register_module("fc2", linear(c.encoder_ffn_dim, c.d_model, true));
  final_layer_norm = register_module("final_layer_norm", make_layer_norm(c.d_model));
}

torch::Tensor WhisperEncoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& key_valid) {
  torch::Tensor h = x + self_attn->forward(self_attn_layer_norm(x), key_valid);
  return h + fc2(pal::nn::gelu(fc1(final_layer_norm(h))));
}

WhisperEncoderImpl::WhisperEncoderImpl(const WhisperEncoderConfig& config,
                                       const WhisperEncoderOptions& options)
    : config_(config), options_(options), frontend_([&] {
        audio::WhisperMelOptions mel;
        mel.n_mels = static_cast<int>(config.num_mel_bins);
        return mel;
      }()) {
  config_.validate();
  const int64_t d = config_.d_model;
  conv1 = register_module("conv1",
                          torch::nn::Conv1d(torch::nn::Conv1dOptions(config_.num_mel_bins, d, 3).padding(1)));
  conv2 = register_module("conv2", torch::nn::Conv1d(torch::nn::Conv1dOptions(d, d, 3).stride(2).padding(1)));
  embed_positions = register_module("embed_positions", torch::nn::Embedding(config_.max_source_positions, d));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.encoder_layers; ++i) layers->push_back(WhisperEncoderLayer(config_));
  layer_norm = register_module("layer_norm", make_layer_norm(d));
}

WhisperEncoderTaps WhisperEncoderImpl::forward_features(const torch::Tensor& features,
                                                        const torch::Tensor& lengths, bool keep_taps) {
  if (features.dim() != 3 || features.size(2) != config_.num_mel_bins)
    throw ModelError("whisper encoder: features must be [batch, frames, " +
                     std::to_string(config_.num_mel_bins) + "], got " + c10::str(features.sizes()));
  const int64_t batch = features.size(0), frames = features.size(1);
  if (lengths.dim() != 1 || lengths.size(0) != batch)
    throw ModelError("whisper encoder: lengths must be [" + std::to_string(batch) + "], got " +
                     c10::str(lengths.sizes()));
  if (frames > config_.context_frames())
    throw ModelError("whisper encoder: " + std::to_string(frames) + " mel frames exceed the context of " +
                     std::to_string(config_.context_frames()));
  const torch::Tensor counts = lengths.to(torch::kLong).to(features.device());
  const int64_t shortest = counts.min().item<int64_t>(), longest = counts.max().item<int64_t>();
  if (shortest < 1 || longest > frames)
    throw ModelError("whisper encoder: lengths must be in 1.." + std::to_string(frames) + ", got " +
                     std::to_string(shortest) + ".." + std::to_string(longest));
  const bool ragged = shortest < frames;

  // ref: WhisperEncoder.forward, without its 3000-frame check.
  torch::Tensor x = pal::nn::gelu(conv1(features.transpose(1, 2)));  // [B, d, frames]
  // conv2 reads one frame past a clip's end: zero it, as the clip alone would see conv2's
  // zero padding there.
  if (ragged) x = x * valid_mask(counts, frames).unsqueeze(1).to(x.scalar_type());
  x = pal::nn::gelu(conv2(x)).transpose(1, 2);  // [B, ceil(frames / 2), d]
  const int64_t length = x.size(1);
  x = x + embed_positions->weight.narrow(0, 0, length);

  WhisperEncoderTaps taps;
  taps.mask = valid_mask((counts + 1).div(2, "floor"), length);
  const torch::Tensor key_valid = ragged ? taps.mask : torch::Tensor();
  if (keep_taps) taps.hidden_states.push_back(x);
  for (const auto& layer : *layers) {
    x = layer->as<WhisperEncoderLayer>()->forward(x, key_valid);
    if (keep_taps) taps.hidden_states.push_back(x);
  }
  taps.last_hidden_state = layer_norm(x);
  return taps;
}

EncoderOutput WhisperEncoderImpl::encode(const torch::Tensor& waveforms, const torch::Tensor& lengths) {
  if (waveforms.dim() != 2 || lengths.dim() != 1 || lengths.size(0) != waveforms.size(0))
    throw ModelError("whisper encoder: expected waveforms [batch, samples] and lengths [batch], got " +
                     c10::str(waveforms.sizes()) + " and " + c10::str(lengths.sizes()));
  const int64_t batch = waveforms.size(0);
  const int64_t context_samples = config_.context_frames() * audio::WhisperMelFrontend::kHop;
  const torch::Tensor samples = lengths.to(torch::kCPU, torch::kLong);
  // The frontend's minimum: one mel frame needs 160 samples, its centred window 201.
  const int64_t min_samples = audio::WhisperMelFrontend::kNfft / 2 + 1;
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t n = samples[i].item<int64_t>();
    if (n < min_samples)
      throw AudioError("whisper encoder: clip " + std::to_string(i) + " has " + std::to_string(n) +
                       " samples; at least " + std::to_string(min_samples) + " (one mel frame) are needed");
    if (n > context_samples)
      throw AudioError("whisper encoder: clip " + std::to_string(i) + " has " + std::to_string(n) +
                       " samples (" + std::to_string(static_cast<double>(n) / audio::kSampleRate) +
                       " s); the encoder's context is " + std::to_string(context_samples) + " samples (" +
                       std::to_string(context_samples / audio::kSampleRate) + " s)");
  }
  if (frontend_.mel_filters().device() != waveforms.device()) frontend_.to(waveforms.device());
  const auto dtype = conv1->weight.scalar_type();

  if (!options_.pad_to_30s) {
    audio::Features f = frontend_(waveforms, lengths);
    WhisperEncoderTaps taps = forward_features(f.values.to(dtype), f.lengths, /*keep_taps=*/false);
    return {taps.last_hidden_state, taps.mask, torch::Tensor()};
  }
  // The whole context for every clip: zeros after each clip's samples.
  const int64_t kept = std::min(waveforms.size(1), context_samples);
  torch::Tensor padded = torch::zeros({batch, context_samples}, waveforms.options());
  torch::Tensor counts = samples.to(waveforms.device());
  padded.narrow(1, 0, kept)
      .copy_(waveforms.narrow(1, 0, kept) * valid_mask(counts, kept).to(waveforms.scalar_type()));
  audio::Features f = frontend_(padded, torch::full({batch}, context_samples, samples.options()));
  WhisperEncoderTaps taps = forward_features(f.values.to(dtype), f.lengths, /*keep_taps=*/false);
  const torch::Tensor frames = counts.div(audio::WhisperMelFrontend::kHop, "floor");
  const torch::Tensor outputs = (frames + 1).div(2, "floor");
  const int64_t keep = outputs.max().item<int64_t>();
  return {taps.last_hidden_state.narrow(1, 0, keep), valid_mask(outputs, keep), torch::Tensor()};
}

void WhisperEncoderImpl::train_last_blocks(int64_t n) {
  const int64_t total = static_cast<int64_t>(layers->size());
  if (n < 0 || n > total)
    throw ModelError("whisper encoder: train_last_blocks(" + std::to_string(n) + "): the encoder has " +
                     std::to_string(total) + " layers");
  detail::set_trainable(*this, false);
  for (int64_t i = total - n; i < total; ++i) detail::set_trainable(*layers[i], true);
  if (n > 0) detail::set_trainable(*layer_norm, true);
}

// ---- loading -------------------------------------------------------------------------------

WhisperEncoder load_whisper_encoder(const std::filesystem::path& folder, const WhisperEncoderOptions& options,
                                    torch::Dtype dtype) {
  WhisperEncoder model(WhisperEncoderConfig::from_json_file(folder / "config.json"), options);
  detail::load_prefixed(*model, folder, {"model.encoder.", "encoder.", ""}, "conv1.weight",
                        "Whisper encoder");
  model->to(dtype);
  model->eval();
  model->train_last_blocks(0);
  return model;
}

WhisperEncoder init_whisper_encoder(const std::filesystem::path& folder, const WhisperEncoderOptions& options,
                                    torch::Dtype dtype) {
  const std::filesystem::path file = folder / "config.json";
  WhisperEncoder model(WhisperEncoderConfig::from_json_file(file), options);
  detail::init_hf_style(*model, detail::ConfigJson::open(file).number("init_std", 0.02));
  {
    // Whisper's fixed sinusoidal positions (ref: modeling_whisper.sinusoids).
    torch::NoGradGuard no_grad;
    const int64_t length = model->embed_positions->weight.size(0), channels = model->embed_positions->weight.size(1);
    const int64_t half = channels / 2;
    const double increment = std::log(10000.0) / static_cast<double>(std::max<int64_t>(half - 1, 1));
    const torch::Tensor inv = torch::exp(-increment * torch::arange(half, torch::kDouble));
    const torch::Tensor scaled = torch::arange(length, torch::kDouble).unsqueeze(1) * inv.unsqueeze(0);
    model->embed_positions->weight.copy_(torch::cat({torch::sin(scaled), torch::cos(scaled)}, 1));
  }
  model->to(dtype);
  model->eval();
  model->train_last_blocks(0);
  return model;
}

}  // namespace pal::models
