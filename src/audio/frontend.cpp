#include "pal/audio/frontend.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "pal/audio/decode.h"
#include "pal/core/error.h"

namespace pal::audio {
namespace {

// Features are float32 whatever the caller's autocast: inside a training step under CUDA
// AMP, the mel matmul would otherwise run in fp16 (power spectra of loud clips overflow
// it) and the features would come out in the autocast dtype.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

// ---- mel filter banks (computed in double, stored as float32) ------------------------------

// ref: transformers.audio_utils.hertz_to_mel / mel_to_hertz (mel_scale="slaney"), which
// follow librosa: linear below 1 kHz, logarithmic above.
double slaney_hz_to_mel(double hz) {
  const double logstep = 27.0 / std::log(6.4);
  return hz < 1000.0 ? 3.0 * hz / 200.0 : 15.0 + std::log(hz / 1000.0) * logstep;
}
double slaney_mel_to_hz(double mel) {
  const double logstep = std::log(6.4) / 27.0;
  return mel < 15.0 ? 200.0 * mel / 3.0 : 1000.0 * std::exp(logstep * (mel - 15.0));
}

// ref: transformers.audio_utils.mel_filter_bank(num_frequency_bins=201, fmin=0, fmax=8000,
// sampling_rate=16000, norm="slaney", mel_scale="slaney"); returns [n_mels, 201].
at::Tensor whisper_mel_filters(int n_mels) {
  const int n_freqs = WhisperMelFrontend::kNfft / 2 + 1;
  const double mel_min = slaney_hz_to_mel(0.0), mel_max = slaney_hz_to_mel(8000.0);
  std::vector<double> edges(n_mels + 2);
  for (int i = 0; i < n_mels + 2; ++i)
    edges[i] = slaney_mel_to_hz(mel_min + (mel_max - mel_min) * i / (n_mels + 1));
  at::Tensor filters = at::zeros({n_mels, n_freqs}, at::kDouble);
  auto f = filters.accessor<double, 2>();
  for (int m = 0; m < n_mels; ++m) {
    const double lower = edges[m], center = edges[m + 1], upper = edges[m + 2];
    const double norm = 2.0 / (upper - lower);  // Slaney: constant energy per filter
    for (int k = 0; k < n_freqs; ++k) {
      const double hz = 8000.0 * k / (n_freqs - 1);  // linspace(0, sr // 2, 201)
      const double down = (hz - lower) / (center - lower);
      const double up = (upper - hz) / (upper - center);
      f[m][k] = std::max(0.0, std::min(down, up)) * norm;
    }
  }
  return filters.to(at::kFloat);
}

double kaldi_mel(double hz) {
  return 1127.0 * std::log(1.0 + hz / 700.0);
}

// ref: torchaudio.compliance.kaldi.get_mel_banks (no VTLN), padded with a zero column
// for the Nyquist bin as fbank() does; returns [n_mels, 257].
at::Tensor kaldi_mel_banks(int n_mels, double low_freq, double high_freq) {
  const double sample_rate = kSampleRate, nyquist = 0.5 * sample_rate;
  if (high_freq <= 0.0) high_freq += nyquist;
  if (low_freq < 0 || low_freq >= nyquist || high_freq <= 0 || high_freq > nyquist || high_freq <= low_freq)
    throw ConfigError("kaldi_fbank: need 0 <= low_freq < high_freq <= Nyquist (8000 Hz), got low_freq " +
                      std::to_string(low_freq) + ", high_freq " + std::to_string(high_freq));
  const int64_t n_fft_bins = KaldiFbankFrontend::kPaddedWindow / 2;
  const double bin_width = sample_rate / KaldiFbankFrontend::kPaddedWindow;
  const double mel_low = kaldi_mel(low_freq), mel_high = kaldi_mel(high_freq);
  const double delta = (mel_high - mel_low) / (n_mels + 1);
  at::Tensor banks = at::zeros({n_mels, n_fft_bins + 1}, at::kDouble);
  auto b = banks.accessor<double, 2>();
  for (int m = 0; m < n_mels; ++m) {
    const double left = mel_low + m * delta, center = mel_low + (m + 1) * delta,
                 right = mel_low + (m + 2) * delta;
    for (int64_t k = 0; k < n_fft_bins; ++k) {
      const double mel = kaldi_mel(bin_width * k);
      const double up = (mel - left) / (center - left), down = (right - mel) / (right - center);
      b[m][k] = std::max(0.0, std::min(up, down));
    }
  }
  return banks.to(at::kFloat);
}

// ---- shared input handling -------------------------------------------------------------

struct Batch {
  at::Tensor waveforms;          // [B, N] float32 on the frontend's device
  std::vector<int64_t> lengths;  // valid samples per example
};

Batch check_batch(const char* who, const at::Tensor& waveforms, const at::Tensor& lengths,
                  c10::Device device) {
  if (waveforms.dim() != 2)
    throw ModelError(std::string(who) + ": waveforms must be [batch, samples], got " +
                     std::to_string(waveforms.dim()) + " dimensions");
  if (lengths.dim() != 1 || lengths.size(0) != waveforms.size(0))
    throw ModelError(std::string(who) +
                     ": lengths must be [batch] with batch = " + std::to_string(waveforms.size(0)));
  Batch b;
  at::Tensor cpu_lengths = lengths.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = cpu_lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < cpu_lengths.size(0); ++i) {
    if (p[i] < 0 || p[i] > waveforms.size(1))
      throw ModelError(std::string(who) + ": length " + std::to_string(p[i]) + " of example " +
                       std::to_string(i) + " is outside [0, " + std::to_string(waveforms.size(1)) + "]");
    b.lengths.push_back(p[i]);
  }
  b.waveforms = waveforms.to(device, at::kFloat);
  return b;
}

at::Tensor lengths_tensor(const std::vector<int64_t>& lengths, c10::Device device) {
  return at::tensor(lengths, at::kLong).to(device);
}

// Mask [B, T] true on each example's valid frames.
at::Tensor frame_mask(const std::vector<int64_t>& valid, int64_t frames, c10::Device device) {
  at::Tensor t = at::arange(frames, at::TensorOptions().dtype(at::kLong).device(device));
  return t.unsqueeze(0) < lengths_tensor(valid, device).unsqueeze(1);
}

// Signal length per example after the optional pad/trim to 30 s; each must be longer
// than the reflect padding of n_fft / 2.
std::vector<int64_t> whisper_signal_lengths(const Batch& in, bool pad_to_30s) {
  const int64_t half = WhisperMelFrontend::kNfft / 2;
  std::vector<int64_t> samples;
  for (size_t i = 0; i < in.lengths.size(); ++i) {
    samples.push_back(pad_to_30s ? WhisperMelFrontend::kSamples30s : in.lengths[i]);
    if (samples.back() <= half)
      throw ModelError("whisper_mel: example " + std::to_string(i) + " has " + std::to_string(in.lengths[i]) +
                       " samples; at least " + std::to_string(half + 1) + " (12.6 ms) are needed");
  }
  return samples;
}

// Work items of the CPU path: `count` frames of one example starting at `first`.
struct FrameChunk {
  int64_t example, first, count;
};
constexpr int64_t kChunkFrames = 512;  // [512, 512] float frames: 1 MiB, stays in L2/L3

std::vector<FrameChunk> frame_chunks(const std::vector<int64_t>& valid) {
  std::vector<FrameChunk> chunks;
  for (int64_t i = 0; i < static_cast<int64_t>(valid.size()); ++i)
    for (int64_t f = 0; f < valid[i]; f += kChunkFrames)
      chunks.push_back({i, f, std::min(kChunkFrames, valid[i] - f)});
  return chunks;
}

// |X|^2 of one rfft row of `n` bins.
inline void power_spectrum(const c10::complex<float>* spectrum, int64_t n, float* power) {
  for (int64_t k = 0; k < n; ++k) {
    const float re = spectrum[k].real(), im = spectrum[k].imag();
    power[k] = re * re + im * im;
  }
}

}  // namespace

namespace detail {

// A mel filter bank stored by rows of nonzero weights: each filter covers a few FFT bins,
// so applying it costs ~2 multiply-adds per bin instead of n_mels.
struct SparseFilterBank {
  std::vector<int64_t> first;               // first nonzero input bin per filter
  std::vector<std::vector<float>> weights;  // the weights from there on

  explicit SparseFilterBank(const at::Tensor& dense) {  // [n_filters, n_bins], float32, CPU
    auto d = dense.accessor<float, 2>();
    for (int64_t m = 0; m < dense.size(0); ++m) {
      int64_t lo = 0, hi = dense.size(1);
      while (lo < hi && d[m][lo] == 0.0f) ++lo;
      while (hi > lo && d[m][hi - 1] == 0.0f) --hi;
      first.push_back(lo);
      weights.emplace_back();
      for (int64_t k = lo; k < hi; ++k) weights.back().push_back(d[m][k]);
    }
  }
  void apply(const float* power, float* out) const {
    for (size_t m = 0; m < first.size(); ++m) {
      const float* p = power + first[m];
      const std::vector<float>& w = weights[m];
      float sum = 0.0f;
      for (size_t k = 0; k < w.size(); ++k) sum += w[k] * p[k];
      out[m] = sum;
    }
  }
};

}  // namespace detail

// ---- Whisper log-mel ---------------------------------------------------------------------

WhisperMelFrontend::WhisperMelFrontend(const WhisperMelOptions& options, c10::Device device)
    : options_(options) {
  if (options.n_mels <= 0)
    throw ConfigError("whisper_mel: n_mels must be > 0, got " + std::to_string(options.n_mels));
  window_ = at::hann_window(kNfft, /*periodic=*/true, at::kFloat);
  mel_filters_ = whisper_mel_filters(options.n_mels);
  sparse_filters_ = std::make_shared<detail::SparseFilterBank>(mel_filters_);
  to(device);
}

void WhisperMelFrontend::to(c10::Device device) {
  window_ = window_.to(device);
  mel_filters_ = mel_filters_.to(device);
}

int64_t WhisperMelFrontend::frames(int64_t samples) const {
  return options_.pad_to_30s ? kFrames30s : samples / kHop;
}

Features WhisperMelFrontend::operator()(const at::Tensor& waveform) const {
  if (waveform.dim() != 1) throw ModelError("whisper_mel: a single waveform must be [samples]");
  return (*this)(waveform.unsqueeze(0), at::full({1}, waveform.size(0), at::kLong));
}

Features WhisperMelFrontend::operator()(const at::Tensor& waveforms, const at::Tensor& lengths) const {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  return window_.device().is_cpu() ? forward_cpu(waveforms, lengths) : forward_generic(waveforms, lengths);
}

Features WhisperMelFrontend::forward_cpu(const at::Tensor& waveforms, const at::Tensor& lengths) const {
  Batch in = check_batch("whisper_mel", waveforms, lengths, c10::kCPU);
  at::Tensor x = in.waveforms.contiguous();
  const int64_t batch = x.size(0), stride = x.size(1), half = kNfft / 2, n_mels = options_.n_mels;
  const std::vector<int64_t> samples = whisper_signal_lengths(in, options_.pad_to_30s);
  std::vector<int64_t> valid(batch);
  for (int64_t i = 0; i < batch; ++i) valid[i] = samples[i] / kHop;
  const int64_t frames_out = *std::max_element(valid.begin(), valid.end());
  at::Tensor out = at::zeros({batch, frames_out, n_mels}, at::kFloat);
  const float* wave = x.data_ptr<float>();
  const float* window = window_.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const auto chunks = frame_chunks(valid);

  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    at::Tensor frames = at::empty({kChunkFrames, kNfft}, at::kFloat);
    std::vector<float> power(kNfft / 2 + 1);
    for (int64_t c = begin; c < end; ++c) {
      const FrameChunk& chunk = chunks[c];
      const float* xi = wave + chunk.example * stride;
      const int64_t real = std::min(in.lengths[chunk.example], samples[chunk.example]);  // samples present
      const int64_t n = samples[chunk.example];  // signal length after pad/trim
      float* f = frames.data_ptr<float>();
      for (int64_t t = 0; t < chunk.count; ++t, f += kNfft) {
        const int64_t start = (chunk.first + t) * kHop - half;  // centred frame
        if (start >= 0 && start + kNfft <= real) {
          for (int64_t j = 0; j < kNfft; ++j) f[j] = xi[start + j] * window[j];
        } else {  // reflect at both ends of the (padded) signal, zeros past the real samples
          for (int64_t j = 0; j < kNfft; ++j) {
            int64_t k = start + j;
            k = k < 0 ? -k : (k >= n ? 2 * (n - 1) - k : k);
            f[j] = (k < real ? xi[k] : 0.0f) * window[j];
          }
        }
      }
      at::Tensor spectrum = at::fft_rfft(frames.narrow(0, 0, chunk.count), kNfft, -1);
      const auto* s = spectrum.data_ptr<c10::complex<float>>();
      float* o = result + (chunk.example * frames_out + chunk.first) * n_mels;
      for (int64_t t = 0; t < chunk.count; ++t, s += kNfft / 2 + 1) {
        power_spectrum(s, kNfft / 2 + 1, power.data());
        sparse_filters_->apply(power.data(), o + t * n_mels);
      }
      // Vectorised log (a scalar log10 per value would cost more than the FFT).
      at::from_blob(o, {chunk.count * n_mels}, at::kFloat).clamp_min_(1e-10f).log10_();
    }
  });
  // Per example: floor at its maximum - 8, then (x + 4) / 4 on its valid frames.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* o = result + i * frames_out * n_mels;
      const int64_t count = valid[i] * n_mels;
      const float floor = *std::max_element(o, o + count) - 8.0f;
      for (int64_t k = 0; k < count; ++k) o[k] = (std::max(o[k], floor) + 4.0f) / 4.0f;
    }
  });
  return {out, lengths_tensor(valid, c10::kCPU)};
}

Features WhisperMelFrontend::forward_generic(const at::Tensor& waveforms, const at::Tensor& lengths) const {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const c10::Device device = window_.device();
  Batch in = check_batch("whisper_mel", waveforms, lengths, device);
  const int64_t batch = in.waveforms.size(0);
  const int64_t half = kNfft / 2;

  // Each example: its own samples (padded with zeros or trimmed to 30 s when asked),
  // reflect-padded by n_fft/2 at both ends as torch.stft(center=True) does.
  const std::vector<int64_t> samples = whisper_signal_lengths(in, options_.pad_to_30s);
  const int64_t longest = *std::max_element(samples.begin(), samples.end());
  at::Tensor padded = at::zeros({batch, longest + kNfft}, in.waveforms.options());
  for (int64_t i = 0; i < batch; ++i) {
    at::Tensor x = in.waveforms[i].narrow(0, 0, std::min(in.lengths[i], samples[i]));
    if (x.size(0) < samples[i]) x = at::constant_pad_nd(x, {0, samples[i] - x.size(0)}, 0.0);
    at::Tensor reflected = at::reflection_pad1d(x.view({1, 1, -1}), {half, half}).view({-1});
    padded[i].narrow(0, 0, reflected.size(0)).copy_(reflected);
  }

  const int64_t frames_out = longest / kHop;  // torch.stft gives longest/hop + 1; the last is dropped
  at::Tensor frames = padded.unfold(1, kNfft, kHop).narrow(1, 0, frames_out);  // [B, T, 400]
  at::Tensor spectrum = at::fft_rfft(frames * window_, kNfft, -1);             // [B, T, 201]
  at::Tensor power = at::real(spectrum).square() + at::imag(spectrum).square();
  at::Tensor mel = at::matmul(power, mel_filters_.t());  // [B, T, n_mels]
  at::Tensor log_spec = at::clamp_min(mel, 1e-10).log10();

  std::vector<int64_t> valid(batch);
  for (int64_t i = 0; i < batch; ++i) valid[i] = samples[i] / kHop;
  at::Tensor mask = frame_mask(valid, frames_out, device).unsqueeze(-1);  // [B, T, 1]
  const float lowest = -std::numeric_limits<float>::infinity();
  at::Tensor peak = log_spec.masked_fill(~mask, lowest).amax({1, 2}, /*keepdim=*/true);  // per example
  log_spec = at::maximum(log_spec, peak - 8.0);
  log_spec = ((log_spec + 4.0) / 4.0).masked_fill(~mask, 0.0);
  return {log_spec, lengths_tensor(valid, device)};
}

// ---- Kaldi fbank ----------------------------------------------------------------------------

KaldiFbankOptions KaldiFbankOptions::ast() {
  KaldiFbankOptions o;
  o.target_frames = 1024;
  o.norm_mean = -4.2677393;
  o.norm_std = 4.5689974;
  return o;
}

KaldiFbankOptions KaldiFbankOptions::eat() {
  KaldiFbankOptions o;
  o.remove_waveform_mean = true;
  o.target_frames = 1024;
  o.norm_mean = -4.268;
  o.norm_std = 4.569;
  return o;
}

KaldiFbankFrontend::KaldiFbankFrontend(const KaldiFbankOptions& options, c10::Device device)
    : options_(options) {
  if (options.n_mels <= 0)
    throw ConfigError("kaldi_fbank: n_mels must be > 0, got " + std::to_string(options.n_mels));
  if (options.norm_mean.has_value() != options.norm_std.has_value() ||
      (options.norm_std && *options.norm_std <= 0))
    throw ConfigError("kaldi_fbank: normalisation needs both norm_mean and norm_std > 0");
  // ref: torchaudio.compliance.kaldi._feature_window_function (symmetric windows).
  if (options.window == "hanning") {
    window_ = at::hann_window(kWindow, /*periodic=*/false, at::kFloat);
  } else if (options.window == "povey") {
    window_ = at::hann_window(kWindow, /*periodic=*/false, at::kFloat).pow(0.85);
  } else if (options.window == "hamming") {
    window_ = at::hamming_window(kWindow, /*periodic=*/false, 0.54, 0.46, at::kFloat);
  } else if (options.window == "rectangular") {
    window_ = at::ones({kWindow}, at::kFloat);
  } else {
    throw ConfigError("kaldi_fbank: unknown window '" + options.window +
                      "' (expected hanning, povey, hamming or rectangular)");
  }
  mel_banks_ = kaldi_mel_banks(options.n_mels, options.low_freq, options.high_freq);
  sparse_banks_ = std::make_shared<detail::SparseFilterBank>(mel_banks_);
  to(device);
}

void KaldiFbankFrontend::to(c10::Device device) {
  window_ = window_.to(device);
  mel_banks_ = mel_banks_.to(device);
}

int64_t KaldiFbankFrontend::frames(int64_t samples) const {
  return samples < kWindow ? 0 : 1 + (samples - kWindow) / kShift;
}

int64_t KaldiFbankFrontend::valid_frames(int64_t example, int64_t samples) const {
  const int64_t n = frames(samples);
  if (n == 0 && options_.target_frames == 0)
    throw ModelError("kaldi_fbank: example " + std::to_string(example) + " has " + std::to_string(samples) +
                     " samples; a frame needs " + std::to_string(kWindow) + " (25 ms)");
  return n;
}

Features KaldiFbankFrontend::operator()(const at::Tensor& waveform) const {
  if (waveform.dim() != 1) throw ModelError("kaldi_fbank: a single waveform must be [samples]");
  return (*this)(waveform.unsqueeze(0), at::full({1}, waveform.size(0), at::kLong));
}

Features KaldiFbankFrontend::operator()(const at::Tensor& waveforms, const at::Tensor& lengths) const {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  return window_.device().is_cpu() ? forward_cpu(waveforms, lengths) : forward_generic(waveforms, lengths);
}

Features KaldiFbankFrontend::forward_cpu(const at::Tensor& waveforms, const at::Tensor& lengths) const {
  Batch in = check_batch("kaldi_fbank", waveforms, lengths, c10::kCPU);
  at::Tensor x = in.waveforms.contiguous();
  const int64_t batch = x.size(0), stride = x.size(1), n_mels = options_.n_mels, bins = kPaddedWindow / 2 + 1;
  std::vector<int64_t> valid(batch);
  std::vector<float> offset(batch, 0.0f);  // the clip mean, when it is removed
  const float* wave = x.data_ptr<float>();
  for (int64_t i = 0; i < batch; ++i) {
    valid[i] = valid_frames(i, in.lengths[i]);
    if (options_.remove_waveform_mean && in.lengths[i] > 0)
      offset[i] = x[i].narrow(0, 0, in.lengths[i]).mean().item<float>();
  }
  const int64_t frames_out = *std::max_element(valid.begin(), valid.end());
  at::Tensor out = at::zeros({batch, frames_out, n_mels}, at::kFloat);
  const float* window = window_.data_ptr<float>();
  const float coefficient = static_cast<float>(options_.preemphasis);
  const float eps = std::numeric_limits<float>::epsilon();
  float* result = out.data_ptr<float>();
  const auto chunks = frame_chunks(valid);

  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    at::Tensor frames = at::zeros({kChunkFrames, kPaddedWindow}, at::kFloat);  // columns 400.. stay 0
    std::vector<float> power(bins), v(kWindow);
    for (int64_t c = begin; c < end; ++c) {
      const FrameChunk& chunk = chunks[c];
      float* f = frames.data_ptr<float>();
      for (int64_t t = 0; t < chunk.count; ++t, f += kPaddedWindow) {
        const float* xs = wave + chunk.example * stride + (chunk.first + t) * kShift;
        // ref: torchaudio.compliance.kaldi._get_window: DC removal, pre-emphasis, window.
        for (int64_t j = 0; j < kWindow; ++j) v[j] = xs[j] - offset[chunk.example];
        if (options_.remove_dc_offset) {
          float sum = 0.0f;
          for (int64_t j = 0; j < kWindow; ++j) sum += v[j];
          const float mean = sum / static_cast<float>(kWindow);
          for (int64_t j = 0; j < kWindow; ++j) v[j] -= mean;
        }
        f[0] = (v[0] - coefficient * v[0]) * window[0];
        for (int64_t j = 1; j < kWindow; ++j) f[j] = (v[j] - coefficient * v[j - 1]) * window[j];
      }
      at::Tensor spectrum = at::fft_rfft(frames.narrow(0, 0, chunk.count), kPaddedWindow, -1);
      const auto* s = spectrum.data_ptr<c10::complex<float>>();
      float* o = result + (chunk.example * frames_out + chunk.first) * n_mels;
      for (int64_t t = 0; t < chunk.count; ++t, s += bins) {
        power_spectrum(s, bins, power.data());
        sparse_banks_->apply(power.data(), o + t * n_mels);
      }
      at::from_blob(o, {chunk.count * n_mels}, at::kFloat).clamp_min_(eps).log_();
    }
  });
  return finish(out, std::move(valid));
}

Features KaldiFbankFrontend::finish(at::Tensor out, std::vector<int64_t> valid) const {
  if (options_.target_frames > 0) {
    const int64_t target = options_.target_frames;
    if (out.size(1) > target)
      out = out.narrow(1, 0, target);
    else if (out.size(1) < target)
      out = at::constant_pad_nd(out, {0, 0, 0, target - out.size(1)}, 0.0);
    for (auto& v : valid) v = std::min(v, target);
  }
  if (options_.norm_mean) out = (out - *options_.norm_mean) / (2.0 * *options_.norm_std);
  return {out.contiguous(), lengths_tensor(valid, out.device())};
}

Features KaldiFbankFrontend::forward_generic(const at::Tensor& waveforms, const at::Tensor& lengths) const {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const c10::Device device = window_.device();
  Batch in = check_batch("kaldi_fbank", waveforms, lengths, device);
  const int64_t batch = in.waveforms.size(0);
  std::vector<int64_t> valid(batch);
  for (int64_t i = 0; i < batch; ++i) valid[i] = valid_frames(i, in.lengths[i]);
  at::Tensor x = in.waveforms;
  if (options_.remove_waveform_mean) {
    x = x.clone();
    for (int64_t i = 0; i < batch; ++i) {
      if (in.lengths[i] == 0) continue;
      at::Tensor row = x[i].narrow(0, 0, in.lengths[i]);
      row.sub_(row.mean());
    }
  }
  const int64_t longest_frames = *std::max_element(valid.begin(), valid.end());
  at::Tensor out;
  if (longest_frames > 0) {
    at::Tensor frames =
        x.narrow(1, 0, kWindow + (longest_frames - 1) * kShift).unfold(1, kWindow, kShift);  // [B,T,400]
    if (options_.remove_dc_offset) frames = frames - frames.mean(-1, /*keepdim=*/true);
    if (options_.preemphasis != 0.0) {
      // x[j] - c * x[j-1], with x[-1] = x[0] (Kaldi's replicate padding)
      at::Tensor previous = at::cat({frames.narrow(-1, 0, 1), frames.narrow(-1, 0, kWindow - 1)}, -1);
      frames = frames - options_.preemphasis * previous;
    }
    at::Tensor spectrum = at::fft_rfft(frames * window_, kPaddedWindow, -1);  // [B, T, 257]
    at::Tensor power = at::real(spectrum).square() + at::imag(spectrum).square();
    at::Tensor mel = at::matmul(power, mel_banks_.t());
    const double eps = std::numeric_limits<float>::epsilon();
    out = at::clamp_min(mel, eps).log();
    out = out.masked_fill(~frame_mask(valid, longest_frames, device).unsqueeze(-1), 0.0);
  } else {
    out = at::zeros({batch, 0, options_.n_mels}, x.options());
  }
  return finish(out, std::move(valid));
}

}  // namespace pal::audio
