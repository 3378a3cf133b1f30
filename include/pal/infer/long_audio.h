// Audio of any length through a PAL model's encoders, in bounded memory.
//
// An encoder with a bounded input (AudioEncoder::window(): Whisper's 30 s context, AST's
// 1024 fbank frames) sees a long clip as windows of its input length that start every
// `hop` samples; the valid outputs of the windows, one after another, make one sequence
// at the encoder's frame rate (for AST, whose hop is shorter than its window, each
// window's outputs stand for its first `hop` samples). The sequences then go through the
// ensemble and the projector once, as a short clip's would: a clip no longer than every
// encoder's window gives exactly PalModel::encode_audio's tokens.
//
// The audio is read chunk by chunk and dropped once every encoder is past it, so memory
// holds about windows_per_batch hops plus one window of samples (8 MiB for Whisper's 30 s
// windows four at a time), plus the encoder outputs (which grow with the clip: 10 minutes
// of Whisper-base are 30000 x 512 floats). An encoder without a window limit sees the
// clip whole.
//
// Summary (cls) vectors of windowed encoders are the mean over windows, weighted by each
// window's valid frames. A last window shorter than kMinTailSamples after at least one
// full window is left out: some encoders cannot read so little (an EAT patch is 0.175 s).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pal/models/ensemble.h"

namespace pal::models {
class PalModelImpl;
}

namespace pal::infer {

inline constexpr int64_t kMinTailSamples = 4000;  // 0.25 s at 16 kHz

struct LongAudioOptions {
  double max_seconds = 3600;      // longer audio is an AudioError before any decoding; 0: no limit
  int64_t windows_per_batch = 4;  // windows of one encoder run at once (speed vs memory)

  void validate() const;  // throws ConfigError naming the field
};

// Appends the next samples (mono float32, 16 kHz) to `out`; returns false at the end.
// AudioStream::read has this shape.
using SampleReader = std::function<bool(std::vector<float>& out)>;

struct EncodedAudio {
  models::EnsembleOutput tokens;      // by route, projected to the LLM's width: [1, N, hidden], mask [1, N]
  int64_t samples = 0;                // 16 kHz samples read
  int64_t windows = 0;                // encoder calls' windows, over every encoder
  int64_t peak_buffered_samples = 0;  // the most samples held at once

  double seconds() const { return static_cast<double>(samples) / 16000.0; }
  // Valid audio tokens over both routes.
  int64_t token_count() const;
};

// Encodes the audio `read` yields with `model`'s encoders, ensemble and projector, on the
// model's device, without autograd. `name` is the audio's name in messages. Throws
// AudioError when there are no samples, when there are more than options.max_seconds (as
// soon as they are read), or when an encoder rejects a window.
EncodedAudio encode_long_audio(models::PalModelImpl& model, const SampleReader& read,
                               const LongAudioOptions& options = {}, const std::string& name = "audio");

// A reader over a waveform [N] float32 at 16 kHz (CPU), in chunks of `chunk` samples.
SampleReader waveform_reader(const at::Tensor& waveform, int64_t chunk = 1 << 16);

}  // namespace pal::infer
