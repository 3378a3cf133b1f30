#include "pal/models/ensemble.h"

#include <torch/torch.h>

#include <cmath>

#include "pal/core/error.h"
#include "pal/models/audio_batch.h"

namespace pal::models {
namespace {

// LayerNorm over an encoder's width, then a projection to the shared width.
class StreamProjectionImpl : public torch::nn::Module {
 public:
  StreamProjectionImpl(int64_t in_width, int64_t stacked_width, int64_t out_width) {
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({in_width})));
    proj = register_module("proj", torch::nn::Linear(stacked_width, out_width));
  }
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(StreamProjection);

std::string rate(double fps) {
  std::string s = std::to_string(fps);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s + " frames/s";
}

// x [B, T, C] with mask [B, T] -> [B, ceil(T / f), C]: the mean over each group's valid
// frames; a group is valid when any of its frames is.
AudioTokens average_pool(const torch::Tensor& x, const torch::Tensor& mask, int64_t f) {
  const int64_t batch = x.size(0), length = x.size(1), channels = x.size(2);
  const int64_t groups = (length + f - 1) / f, padded = groups * f;
  torch::Tensor m = mask.to(x.scalar_type()).unsqueeze(-1);
  torch::Tensor sum =
      torch::constant_pad_nd(x * m, {0, 0, 0, padded - length}).view({batch, groups, f, channels}).sum(2);
  torch::Tensor count =
      torch::constant_pad_nd(m, {0, 0, 0, padded - length}).view({batch, groups, f, 1}).sum(2);
  return {sum / count.clamp_min(1), count.squeeze(-1) > 0};
}

// x [B, T, C] -> [B, ceil(T / f), f * C]: f consecutive frames side by side (zeros past
// the end); a group is valid when its first frame is.
AudioTokens stack_frames(const torch::Tensor& x, const torch::Tensor& mask, int64_t f) {
  const int64_t batch = x.size(0), length = x.size(1), channels = x.size(2);
  const int64_t groups = (length + f - 1) / f, padded = groups * f;
  torch::Tensor masked = x * mask.to(x.scalar_type()).unsqueeze(-1);
  torch::Tensor stacked =
      torch::constant_pad_nd(masked, {0, 0, 0, padded - length}).view({batch, groups, f * channels});
  torch::Tensor valid = torch::constant_pad_nd(mask.to(torch::kInt64), {0, padded - length})
                            .view({batch, groups, f})
                            .select(2, 0)
                            .to(torch::kBool);
  return {stacked, valid};
}

// Pads tokens [B, T, C] / mask [B, T] with invalid steps to `length`.
AudioTokens pad_to(const AudioTokens& a, int64_t length) {
  const int64_t extra = length - a.tokens.size(1);
  if (extra == 0) return a;
  return {torch::constant_pad_nd(a.tokens, {0, 0, 0, extra}), torch::constant_pad_nd(a.mask, {0, extra}, 0)};
}

}  // namespace

EncoderEnsembleImpl::EncoderEnsembleImpl(const EnsembleConfig& config,
                                         const std::vector<EnsembleInput>& inputs)
    : config_(config), inputs_(inputs) {
  if (inputs_.empty()) throw ConfigError("ensemble: no encoders");
  if (config_.width <= 0)
    throw ConfigError("ensemble.width: must be > 0, got " + std::to_string(config_.width));
  if (config_.streams.empty()) config_.streams.resize(inputs_.size());
  if (config_.streams.size() != inputs_.size())
    throw ConfigError("ensemble.streams: " + std::to_string(config_.streams.size()) + " entries for " +
                      std::to_string(inputs_.size()) +
                      " encoders (one per encoder, in the same order, or none for the defaults)");
  if (config_.fusion != EnsembleFusion::concat_time && !(config_.frames_per_second > 0))
    throw ConfigError("ensemble.frames_per_second: must be > 0 (a common frame rate) for " +
                      config::enum_name(config_.fusion) + " fusion");
  streams = register_module("streams", torch::nn::ModuleList());
  summaries = register_module("summaries", torch::nn::ModuleList());
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const EnsembleInput& in = inputs_[i];
    const EnsembleStreamConfig& s = config_.streams[i];
    if (in.width <= 0 || !(in.frames_per_second > 0))
      throw ModelError("ensemble: " + in.name + " reports width " + std::to_string(in.width) + " and " +
                       rate(in.frames_per_second));
    Alignment a;
    if (config_.frames_per_second > 0) {
      const double ratio = in.frames_per_second / config_.frames_per_second;
      a.factor = std::llround(ratio);
      if (a.factor < 1 || std::abs(ratio - static_cast<double>(a.factor)) > 1e-6)
        throw ConfigError("ensemble.frames_per_second: " + rate(config_.frames_per_second) +
                          " does not divide " + in.name + "'s " + rate(in.frames_per_second) +
                          " (alignment pools or stacks a whole number of frames)");
    }
    alignment_.push_back(a);
    const int64_t stacked = s.align == TimeAlignment::stack ? in.width * a.factor : in.width;
    streams->push_back(StreamProjection(in.width, stacked, config_.width));
    const int64_t summary_width = in.cls_width > 0 ? in.cls_width : in.width;
    if (s.summary_token) summaries->push_back(StreamProjection(summary_width, summary_width, config_.width));
  }
  if (config_.fusion == EnsembleFusion::concat_time)
    type_embedding = register_parameter(
        "type_embedding", torch::randn({static_cast<int64_t>(inputs_.size()), config_.width}) * 0.02);
  channel_mix_ = register_module("channel_mix", torch::nn::ModuleDict());
  if (config_.fusion == EnsembleFusion::concat_channel) {
    for (AudioRoute route : {AudioRoute::prefix, AudioRoute::probe}) {
      int64_t n = 0;
      for (const auto& s : config_.streams) n += s.route == route;
      if (n > 1)
        channel_mix_->update(
            {{config::enum_name(route), torch::nn::Linear(n * config_.width, config_.width).ptr()}});
    }
  }
}

EnsembleOutput EncoderEnsembleImpl::forward(const std::vector<EncoderOutput>& outputs) {
  if (outputs.size() != inputs_.size())
    throw ModelError("ensemble: got " + std::to_string(outputs.size()) + " encoder outputs for " +
                     std::to_string(inputs_.size()) + " encoders");
  std::vector<AudioTokens> parts[2], summary_parts;
  std::vector<size_t> index[2];
  size_t summary = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const EncoderOutput& out = outputs[i];
    const EnsembleStreamConfig& s = config_.streams[i];
    if (out.hidden.dim() != 3 || out.hidden.size(2) != inputs_[i].width)
      throw ModelError("ensemble: " + inputs_[i].name + " output has shape " + c10::str(out.hidden.sizes()) +
                       ", expected [batch, time, " + std::to_string(inputs_[i].width) + "]");
    auto& proj = *streams[i]->as<StreamProjectionImpl>();
    torch::Tensor h = proj.norm(out.hidden);
    const int64_t f = alignment_[i].factor;
    AudioTokens aligned{h, out.mask};
    if (f > 1)
      aligned = s.align == TimeAlignment::pool ? average_pool(h, out.mask, f) : stack_frames(h, out.mask, f);
    aligned.tokens = proj.proj(aligned.tokens);
    const bool removed = i < removed_.size() && removed_[i];
    if (removed) aligned = {torch::zeros_like(aligned.tokens), torch::zeros_like(aligned.mask)};
    const int r = s.route == AudioRoute::prefix ? 0 : 1;
    parts[r].push_back(aligned);
    index[r].push_back(i);
    if (s.summary_token) {
      auto& sp = *summaries[summary++]->as<StreamProjectionImpl>();
      torch::Tensor cls = out.cls;
      if (!cls.defined()) {  // mean over valid frames
        torch::Tensor m = out.mask.to(out.hidden.scalar_type()).unsqueeze(-1);
        cls = (out.hidden * m).sum(1) / m.sum(1).clamp_min(1);
      }
      torch::Tensor token = sp.proj(sp.norm(cls)).unsqueeze(1);  // [B, 1, width]
      torch::Tensor valid = out.mask.any(1, /*keepdim=*/true);
      if (removed) {
        token = torch::zeros_like(token);
        valid = torch::zeros_like(valid);
      }
      summary_parts.push_back({token, valid});
    }
  }
  EnsembleOutput result;
  result.prefix = fuse(AudioRoute::prefix, parts[0], index[0]);
  result.probe = fuse(AudioRoute::probe, parts[1], index[1]);
  if (!summary_parts.empty()) {
    AudioTokens& target = config_.summary_route == AudioRoute::prefix ? result.prefix : result.probe;
    // Summary tokens come first, in encoder order.
    std::vector<torch::Tensor> tokens, masks;
    for (const auto& p : summary_parts) {
      tokens.push_back(p.tokens);
      masks.push_back(p.mask);
    }
    if (!target.empty()) {
      tokens.push_back(target.tokens);
      masks.push_back(target.mask);
    }
    target = {torch::cat(tokens, 1), torch::cat(masks, 1)};
  }
  return result;
}

AudioTokens EncoderEnsembleImpl::fuse(AudioRoute route, std::vector<AudioTokens> parts,
                                      const std::vector<size_t>& stream_index) {
  if (parts.empty()) return {};
  switch (config_.fusion) {
    case EnsembleFusion::concat_time: {
      std::vector<torch::Tensor> tokens, masks;
      for (size_t j = 0; j < parts.size(); ++j) {
        tokens.push_back(parts[j].tokens + type_embedding[static_cast<int64_t>(stream_index[j])]);
        masks.push_back(parts[j].mask);
      }
      return {torch::cat(tokens, 1), torch::cat(masks, 1)};
    }
    case EnsembleFusion::concat_channel:
    case EnsembleFusion::sum: {
      int64_t longest = 0;
      for (const auto& p : parts) longest = std::max(longest, p.tokens.size(1));
      std::vector<torch::Tensor> tokens;
      torch::Tensor mask;
      for (auto& p : parts) {
        p = pad_to(p, longest);
        tokens.push_back(p.tokens);
        mask = mask.defined() ? mask.logical_or(p.mask) : p.mask;
      }
      if (parts.size() == 1) return {tokens[0], mask};
      if (config_.fusion == EnsembleFusion::sum) return {torch::stack(tokens).sum(0), mask};
      auto mix = channel_mix_[config::enum_name(route)]->as<torch::nn::LinearImpl>();
      return {mix->forward(torch::cat(tokens, -1)), mask};
    }
  }
  return {};
}

AudioTokens stack_audio_tokens(const std::vector<const AudioTokens*>& clips) {
  int64_t longest = 0;
  for (const auto* c : clips) longest = std::max(longest, c->tokens.size(1));
  std::vector<torch::Tensor> tokens, masks;
  for (const auto* c : clips) {
    const int64_t extra = longest - c->tokens.size(1);
    tokens.push_back(torch::constant_pad_nd(c->tokens, {0, 0, 0, extra}));
    masks.push_back(torch::constant_pad_nd(c->mask.to(torch::kBool), {0, extra}, 0));
  }
  return {torch::cat(tokens, 0), torch::cat(masks, 0)};
}


}  // namespace pal::models
