// Writes test audio with libsndfile, in any format it writes.
#pragma once

#include <sndfile.h>

#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace pal::test {

// `interleaved` holds frames x channels samples in [-1, 1].
inline void write_audio(const std::filesystem::path& file, int format, int rate, int channels,
                        const std::vector<float>& interleaved) {
  SF_INFO info{};
  info.samplerate = rate;
  info.channels = channels;
  info.format = format;
  SNDFILE* snd = sf_open(file.c_str(), SFM_WRITE, &info);
  if (!snd)
    throw std::runtime_error("cannot write test audio " + file.string() + ": " + sf_strerror(nullptr));
  sf_writef_float(snd, interleaved.data(), static_cast<sf_count_t>(interleaved.size() / channels));
  sf_close(snd);
}

inline std::vector<float> sine(double hz, int rate, double seconds, double amplitude = 0.5,
                               int channels = 1) {
  const auto frames = static_cast<size_t>(seconds * rate);
  std::vector<float> out(frames * channels);
  for (size_t i = 0; i < frames; ++i)
    for (int c = 0; c < channels; ++c)
      out[i * channels + c] = static_cast<float>(amplitude * std::sin(2 * M_PI * hz * i / rate));
  return out;
}

}  // namespace pal::test
