// Log-mel frontends over batched 16 kHz waveforms, on CPU or CUDA, float32.
//
//   WhisperMelFrontend  ref: openai-whisper audio.log_mel_spectrogram and HF
//                       WhisperFeatureExtractor: n_fft 400, hop 160, periodic Hann,
//                       centred (reflect) frames with the last one dropped, power
//                       spectrum, Slaney mel 0..8000 Hz, log10(max(x, 1e-10)), floored at
//                       max - 8 per example, (x + 4) / 4; optional pad/trim to 30 s.
//   KaldiFbankFrontend  ref: torchaudio.compliance.kaldi.fbank: 25 ms frames every 10 ms
//                       (snip_edges), DC removal, pre-emphasis 0.97, hanning/povey/hamming
//                       window, 512-point FFT, HTK mel 20 Hz..Nyquist, log(max(x, eps));
//                       then optional pad/crop to N frames and (x - mean) / (2 std), the
//                       AST and EAT/SSLAM input pipelines.
//
// Inputs: waveforms [B, N] float (zero-padded) with lengths [B] (valid samples), or one
// waveform [N]. Output: features [B, T, n_mels] and lengths [B] (valid frames); frames
// past an example's length are computed from its own samples only, so each example's
// valid frames equal those of the example alone. Invalid frames are zero (or, with
// pad/crop + normalisation, the normalised padding value, as the references produce).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <string>

#include "pal/core/config.h"

namespace pal::audio {

namespace detail {
struct SparseFilterBank;
}

struct Features {
  at::Tensor values;   // [B, T, n_mels] float32
  at::Tensor lengths;  // [B] int64, valid frames per example
};

struct WhisperMelOptions {
  int n_mels = 80;          // 80 (Whisper v1-v2) or 128 (large-v3)
  bool pad_to_30s = false;  // zero-pad or trim every clip to 30 s (3000 frames), as Whisper
  template <class V>
  void visit(V& v) {
    v("n_mels", n_mels, config::Rule().at_least(1).at_most(512));
    v("pad_to_30s", pad_to_30s);
  }
};

class WhisperMelFrontend {
 public:
  static constexpr int64_t kNfft = 400, kHop = 160, kSamples30s = 480000, kFrames30s = 3000;

  explicit WhisperMelFrontend(const WhisperMelOptions& options = {}, c10::Device device = c10::kCPU);
  // On CPU: one frame chunk at a time (its working set stays in cache), chunks spread
  // over LibTorch's intra-op threads. On other devices: forward_generic.
  Features operator()(const at::Tensor& waveforms, const at::Tensor& lengths) const;
  Features operator()(const at::Tensor& waveform) const;
  // The same computation in whole-batch tensor ops, on any device (the CUDA path).
  Features forward_generic(const at::Tensor& waveforms, const at::Tensor& lengths) const;

  // Valid output frames for a clip of `samples` samples.
  int64_t frames(int64_t samples) const;
  const WhisperMelOptions& options() const { return options_; }
  const at::Tensor& mel_filters() const { return mel_filters_; }  // [n_mels, 201]
  void to(c10::Device device);

 private:
  Features forward_cpu(const at::Tensor& waveforms, const at::Tensor& lengths) const;

  WhisperMelOptions options_;
  at::Tensor window_;       // [400]
  at::Tensor mel_filters_;  // [n_mels, 201]
  std::shared_ptr<const detail::SparseFilterBank> sparse_filters_;
};

struct KaldiFbankOptions {
  int n_mels = 128;                // mel bins
  std::string window = "hanning";  // hanning (AST, EAT, SSLAM), povey (Kaldi's default), hamming, rectangular
  double low_freq = 20.0;          // Hz
  double high_freq = 0.0;          // Hz; <= 0 means Nyquist + high_freq
  double preemphasis = 0.97;       // coefficient
  bool remove_dc_offset = true;    // subtract each frame's mean
  bool remove_waveform_mean = false;  // subtract the clip's mean first (EAT / SSLAM)
  int64_t target_frames = 0;          // pad (zeros) or crop to this many frames; 0 = keep
  std::optional<double> norm_mean;    // with norm_std: (x - mean) / (2 * std) on every frame
  std::optional<double> norm_std;

  // AST (HF ASTFeatureExtractor): hanning, 128 bins, 1024 frames, mean -4.2677393, std 4.5689974.
  static KaldiFbankOptions ast();
  // EAT / SSLAM: AST's fbank on the mean-removed clip, 1024 frames, mean -4.268, std 4.569.
  static KaldiFbankOptions eat();

  template <class V>
  void visit(V& v) {
    v("n_mels", n_mels, config::Rule().at_least(1).at_most(512));
    v("window", window, config::Rule().one_of({"hanning", "povey", "hamming", "rectangular"}));
    v("low_freq", low_freq, config::Rule().at_least(0));
    v("high_freq", high_freq);
    v("preemphasis", preemphasis, config::Rule().at_least(0).at_most(1));
    v("remove_dc_offset", remove_dc_offset);
    v("remove_waveform_mean", remove_waveform_mean);
    v("target_frames", target_frames, config::Rule().at_least(0));
    double mean = norm_mean.value_or(0), std = norm_std.value_or(0);
    bool has = norm_mean.has_value();
    v("normalize", has);
    v("norm_mean", mean);
    v("norm_std", std, config::Rule().at_least(0));
    if constexpr (V::is_reader) {
      norm_mean = has ? std::optional<double>(mean) : std::nullopt;
      norm_std = has ? std::optional<double>(std) : std::nullopt;
      v.check(!has || std > 0, "norm_std", "must be > 0 when normalize is true");
    }
  }
};

class KaldiFbankFrontend {
 public:
  static constexpr int64_t kWindow = 400, kShift = 160, kPaddedWindow = 512;

  explicit KaldiFbankFrontend(const KaldiFbankOptions& options = {}, c10::Device device = c10::kCPU);
  // CPU: chunked and threaded as WhisperMelFrontend; other devices: forward_generic.
  Features operator()(const at::Tensor& waveforms, const at::Tensor& lengths) const;
  Features operator()(const at::Tensor& waveform) const;
  // The same computation in whole-batch tensor ops, on any device (the CUDA path).
  Features forward_generic(const at::Tensor& waveforms, const at::Tensor& lengths) const;

  int64_t frames(int64_t samples) const;  // valid frames before pad/crop
  const KaldiFbankOptions& options() const { return options_; }
  const at::Tensor& mel_banks() const { return mel_banks_; }  // [n_mels, 257]
  void to(c10::Device device);

 private:
  Features forward_cpu(const at::Tensor& waveforms, const at::Tensor& lengths) const;
  Features finish(at::Tensor values, std::vector<int64_t> valid) const;  // pad/crop, normalise
  int64_t valid_frames(int64_t example, int64_t samples) const;          // frames(), or why none

  KaldiFbankOptions options_;
  at::Tensor window_;     // [400]
  at::Tensor mel_banks_;  // [n_mels, 257]
  std::shared_ptr<const detail::SparseFilterBank> sparse_banks_;
};

}  // namespace pal::audio
