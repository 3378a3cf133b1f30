#include "pal/infer/long_audio.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/models/pal_model.h"

namespace pal::infer {
namespace {

constexpr int64_t kSampleRate = 16000;

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

// One encoder's progress through the audio.
struct EncoderStream {
  models::AudioEncoder* encoder = nullptr;
  std::string name;                   // for messages: "encoders.0 (whisper)"
  int64_t window = 0, hop = 0;        // samples; window 0: the whole clip at once
  int64_t next_start = 0;             // start of the next window to schedule
  bool scheduled_all = false;         // no window after the pending ones
  std::vector<int64_t> pending;       // starts of windows waiting for a batch
  std::vector<torch::Tensor> hidden;  // valid output frames, [T_i, width] each
  torch::Tensor cls_sum;              // [cls_width] weighted by valid frames
  int64_t frames = 0, windows = 0;
};

}  // namespace

void LongAudioOptions::validate() const {
  if (!(max_seconds >= 0) || !std::isfinite(max_seconds))
    throw ConfigError("long_audio.max_seconds: must be a number of seconds >= 0 (0: no limit), got " +
                      std::to_string(max_seconds));
  if (windows_per_batch < 1)
    throw ConfigError("long_audio.windows_per_batch: must be >= 1, got " + std::to_string(windows_per_batch));
}

int64_t EncodedAudio::token_count() const {
  int64_t n = 0;
  for (const models::AudioTokens* a : {&tokens.prefix, &tokens.probe})
    if (!a->empty()) n += a->mask.sum().item<int64_t>();
  return n;
}

SampleReader waveform_reader(const at::Tensor& waveform, int64_t chunk) {
  if (waveform.dim() != 1)
    throw ModelError("waveform: expected [samples] (mono, 16 kHz), got " + c10::str(waveform.sizes()));
  auto samples = std::make_shared<torch::Tensor>(waveform.to(torch::kCPU, torch::kFloat32).contiguous());
  auto position = std::make_shared<int64_t>(0);
  return [samples, position, chunk](std::vector<float>& out) {
    const int64_t total = samples->numel();
    if (*position >= total) return false;
    const int64_t n = std::min(chunk, total - *position);
    const float* p = samples->data_ptr<float>() + *position;
    out.insert(out.end(), p, p + n);
    *position += n;
    return true;
  };
}

EncodedAudio encode_long_audio(models::PalModelImpl& model, const SampleReader& read,
                               const LongAudioOptions& options, const std::string& name) {
  options.validate();
  c10::InferenceMode inference;
  BlasThreadingGuard blas_threading;  // matmul-bound, as decoding (pal/core/runtime.h)
  std::vector<EncoderStream> streams;
  for (size_t i = 0; i < model.encoders->size(); ++i) {
    auto* encoder = dynamic_cast<models::AudioEncoder*>(model.encoders[i].get());
    if (!encoder) throw ModelError("encoders." + std::to_string(i) + " is not an AudioEncoder");
    EncoderStream s;
    s.encoder = encoder;
    s.name = "encoders." + std::to_string(i) + " (" + encoder->type() + ")";
    const models::EncoderWindow w = encoder->window();
    if (w.samples > 0 && (w.hop <= 0 || w.hop > w.samples))
      throw ModelError(s.name + ": window of " + std::to_string(w.samples) + " samples with a hop of " +
                       std::to_string(w.hop) + " (expected 0 < hop <= window)");
    s.window = w.samples;
    s.hop = w.hop;
    streams.push_back(std::move(s));
  }
  const torch::Device device =
      model.parameters().empty() ? torch::Device(torch::kCPU) : model.parameters().front().device();
  const int64_t max_samples =
      options.max_seconds > 0 ? static_cast<int64_t>(std::floor(options.max_seconds * kSampleRate)) : 0;

  std::vector<float> buffer;  // samples [buffer_start, buffer_start + size)
  int64_t buffer_start = 0, total = -1;
  EncodedAudio out;

  // Runs the pending windows of `s` as one batch; their valid outputs join s.hidden.
  auto run_pending = [&](EncoderStream& s) {
    if (s.pending.empty()) return;
    const int64_t end = buffer_start + static_cast<int64_t>(buffer.size());
    const int64_t batch = static_cast<int64_t>(s.pending.size());
    std::vector<int64_t> lengths;
    for (int64_t start : s.pending)
      lengths.push_back(s.window > 0 ? std::min(s.window, end - start) : end - start);
    const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
    torch::Tensor waveforms = torch::zeros({batch, longest}, torch::kFloat32);
    for (int64_t b = 0; b < batch; ++b)
      std::memcpy(waveforms[b].data_ptr<float>(),
                  buffer.data() + (s.pending[static_cast<size_t>(b)] - buffer_start),
                  static_cast<size_t>(lengths[static_cast<size_t>(b)]) * sizeof(float));
    models::EncoderOutput o;
    try {
      o = s.encoder->encode(waveforms.to(device), torch::tensor(lengths, torch::kInt64).to(device));
    } catch (const AudioError& e) {
      throw AudioError(name + ": " + s.name + ": " + e.what());
    }
    const torch::Tensor valid = o.mask.sum(1).to(torch::kCPU, torch::kInt64);
    std::vector<torch::Tensor> pieces;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t n = valid[b].item<int64_t>();
      pieces.push_back(o.hidden[b].narrow(0, 0, n));
      if (o.cls.defined()) {
        torch::Tensor weighted = o.cls[b].to(torch::kFloat32) * static_cast<double>(n);
        s.cls_sum = s.cls_sum.defined() ? s.cls_sum + weighted : weighted;
      }
      s.frames += n;
    }
    s.hidden.push_back(torch::cat(pieces, 0));  // a copy: the batch's padded output goes
    s.windows += batch;
    out.windows += batch;
    s.pending.clear();
  };

  // Schedules the windows of `s` that the buffer holds (and, at the end, the rest).
  auto schedule = [&](EncoderStream& s) {
    const int64_t end = buffer_start + static_cast<int64_t>(buffer.size());
    while (!s.scheduled_all) {
      if (s.window == 0) {  // no limit: the whole clip, once it is read
        if (total < 0) return;
        s.pending.push_back(0);
        s.scheduled_all = true;
        break;
      }
      const int64_t start = s.next_start;
      if (start + s.window <= end) {  // a full window
        s.pending.push_back(start);
        s.next_start += s.hop;
        if (total >= 0 && start + s.window >= total) s.scheduled_all = true;
      } else if (total >= 0) {  // the last, partial window, unless the one before reached the end
        if (start > 0 && (start - s.hop + s.window >= total || total - start < kMinTailSamples)) {
          s.scheduled_all = true;
          break;
        }
        s.pending.push_back(start);
        s.scheduled_all = true;
      } else {
        return;  // wait for more audio
      }
      if (static_cast<int64_t>(s.pending.size()) >= options.windows_per_batch) run_pending(s);
    }
    if (total >= 0) run_pending(s);
  };

  while (total < 0) {
    if (!read(buffer)) total = buffer_start + static_cast<int64_t>(buffer.size());
    const int64_t end = buffer_start + static_cast<int64_t>(buffer.size());
    if (max_samples > 0 && end > max_samples)
      throw AudioError(name + ": longer than the limit of " + seconds_text(options.max_seconds) +
                       " (long_audio.max_seconds)");
    out.peak_buffered_samples = std::max(out.peak_buffered_samples, static_cast<int64_t>(buffer.size()));
    if (total == 0) throw AudioError(name + ": no audio samples");
    for (auto& s : streams) schedule(s);
    // Drop what every encoder is past.
    int64_t keep_from = end;
    for (const auto& s : streams) {
      if (s.scheduled_all && s.pending.empty()) continue;
      keep_from = std::min(keep_from, s.window == 0       ? 0
                                      : s.pending.empty() ? s.next_start
                                                          : s.pending.front());
    }
    const int64_t drop = keep_from - buffer_start;
    if (drop > 0 && (drop >= static_cast<int64_t>(buffer.size()) / 2 || total >= 0)) {
      buffer.erase(buffer.begin(), buffer.begin() + drop);
      buffer_start = keep_from;
    }
  }
  out.samples = total;

  std::vector<models::EncoderOutput> outputs;
  for (auto& s : streams) {
    models::EncoderOutput o;
    o.hidden = torch::cat(s.hidden, 0).unsqueeze(0);  // [1, T, width]
    s.hidden.clear();
    o.mask = torch::ones({1, o.hidden.size(1)}, torch::TensorOptions().dtype(torch::kBool).device(device));
    if (s.cls_sum.defined())
      o.cls = (s.cls_sum / static_cast<double>(std::max<int64_t>(1, s.frames)))
                  .to(o.hidden.scalar_type())
                  .unsqueeze(0);
    outputs.push_back(std::move(o));
  }
  models::EnsembleOutput fused = model.ensemble->forward(outputs);
  for (models::AudioTokens* a : {&fused.prefix, &fused.probe})
    if (!a->empty()) *a = model.projector->forward(*a);
  out.tokens = fused;
  return out;
}

}  // namespace pal::infer
