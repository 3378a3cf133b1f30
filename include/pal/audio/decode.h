// Audio decoding (libsndfile) and resampling (libsoxr) to the mono 16 kHz float32
// waveform every PAL frontend takes.
//
// Formats: whatever the installed libsndfile reads (WAV/W64/RF64 in every PCM width and
// float, FLAC, OGG/Vorbis, OGG/Opus, AIFF, AU, CAF, ... see `supported_audio_formats()`).
// Any channel count is downmixed to mono by averaging; any rate is resampled with libsoxr
// at its high-quality setting (SOXR_HQ), in streaming chunks, so memory stays bounded
// whatever the file's length (AudioStream), or grows only with the output (load_audio).
//
// Errors are pal::AudioError naming the file and the reason.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pal::audio {

constexpr int kSampleRate = 16000;  // every frontend's input rate

struct AudioInfo {
  int64_t frames = 0;   // samples per channel
  int sample_rate = 0;  // Hz
  int channels = 0;
  std::string format;  // e.g. "WAV (Microsoft) / Signed 16 bit PCM"
  double seconds() const { return sample_rate > 0 ? static_cast<double>(frames) / sample_rate : 0.0; }
};

// Reads the header only.
AudioInfo probe_audio(const std::filesystem::path& file);

struct LoadOptions {
  int sample_rate = kSampleRate;   // output rate
  double start = 0.0;              // window start in seconds (seeked to, not decoded)
  std::optional<double> end;       // window end in seconds, exclusive; clamped to the
                                   // file's end; nullopt = to the end
  int64_t chunk_frames = 1 << 16;  // frames decoded per read (bounds working memory)
};

// Streams a file as mono float32 at `options.sample_rate`, chunk by chunk.
class AudioStream {
 public:
  AudioStream(const std::filesystem::path& file, const LoadOptions& options = {});
  // The bytes of an audio file held in memory (a WAV, FLAC, OGG, ... as it would be on
  // disk, e.g. from an HTTP request); `name` stands for the file in messages.
  static AudioStream from_memory(std::string bytes, const std::string& name, const LoadOptions& options = {});
  ~AudioStream();
  AudioStream(AudioStream&&) noexcept;
  AudioStream& operator=(AudioStream&&) noexcept;

  const AudioInfo& info() const;
  // Appends up to about `options.chunk_frames` output samples to `out`; returns false
  // once the window is exhausted and the resampler flushed.
  bool read(std::vector<float>& out);

 private:
  struct State;
  AudioStream(std::unique_ptr<State> state, const LoadOptions& options);
  std::unique_ptr<State> state_;
};

// The whole window as a float32 CPU tensor [samples], mono at `options.sample_rate`.
at::Tensor load_audio(const std::filesystem::path& file, const LoadOptions& options = {});

// The same for audio file bytes held in memory (see AudioStream::from_memory).
at::Tensor load_audio_from_memory(std::string bytes, const std::string& name,
                                  const LoadOptions& options = {});

// Names of the major formats the linked libsndfile reads (e.g. "WAV", "FLAC", "OGG").
std::vector<std::string> supported_audio_formats();

}  // namespace pal::audio
