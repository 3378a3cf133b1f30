#include "pal/audio/decode.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "audio/audio_test_util.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::audio {
namespace {

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

std::string load_error(const std::filesystem::path& file, const LoadOptions& options = {}) {
  std::string msg = test::error_message<AudioError>([&] { load_audio(file, options); });
  expect_contains(msg, file.filename().string());
  return msg;
}

at::Tensor to_tensor(const std::vector<float>& v) {
  return torch::from_blob(const_cast<float*>(v.data()), {static_cast<int64_t>(v.size())}, torch::kFloat)
      .clone();
}

struct FormatCase {
  const char* name;
  int format;
  double tolerance;  // max abs error after the codec
};

TEST(AudioDecode, ReadsEveryPcmWidthFloatFlacAndOgg) {
  test::TempDir dir;
  const auto source = test::sine(440, kSampleRate, 0.5, 0.5);
  const FormatCase cases[] = {
      {"u8.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_U8, 1.0 / 64},
      {"s16.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 1.0 / 16384},
      {"s24.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_24, 1e-6},
      {"s32.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_32, 1e-7},
      {"f32.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, 0},
      {"s16.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 1.0 / 16384},
      {"s24.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_24, 1e-6},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    test::write_audio(dir / c.name, c.format, kSampleRate, 1, source);
    at::Tensor got = load_audio(dir / c.name);
    ASSERT_EQ(got.size(0), static_cast<int64_t>(source.size()));
    EXPECT_LE((got - to_tensor(source)).abs().max().item<double>(), c.tolerance);
  }
  // Vorbis is lossy: the waveform keeps its shape, not its samples.
  test::write_audio(dir / "v.ogg", SF_FORMAT_OGG | SF_FORMAT_VORBIS, kSampleRate, 1, source);
  at::Tensor got = load_audio(dir / "v.ogg");
  ASSERT_EQ(got.size(0), static_cast<int64_t>(source.size()));
  at::Tensor ref = to_tensor(source);
  double correlation = (got * ref).sum().item<double>() /
                       std::sqrt((got * got).sum().item<double>() * (ref * ref).sum().item<double>());
  EXPECT_GT(correlation, 0.99);
}

TEST(AudioDecode, DownmixesByAveragingChannels) {
  test::TempDir dir;
  std::vector<float> stereo;
  for (int i = 0; i < 1600; ++i) {
    float s = 0.4f * std::sin(0.05f * i);
    stereo.push_back(s);
    stereo.push_back(-0.5f * s);
  }
  test::write_audio(dir / "st.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, kSampleRate, 2, stereo);
  at::Tensor got = load_audio(dir / "st.wav");
  std::vector<float> expected;
  for (size_t i = 0; i < stereo.size(); i += 2) expected.push_back(0.5f * (stereo[i] + stereo[i + 1]));
  EXPECT_LE((got - to_tensor(expected)).abs().max().item<double>(), 1e-7);
}

TEST(AudioDecode, ResamplesToSixteenKilohertz) {
  test::TempDir dir;
  for (int rate : {8000, 22050, 44100, 48000}) {
    SCOPED_TRACE(rate);
    test::write_audio(dir / "r.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, rate, 1, test::sine(440, rate, 1.0));
    at::Tensor got = load_audio(dir / "r.wav");
    EXPECT_NEAR(got.size(0), kSampleRate, 1);
    at::Tensor ref = to_tensor(test::sine(440, kSampleRate, 1.0));
    const int64_t n = std::min(got.size(0), ref.size(0));
    // Away from the edges, the resampled sine is the sine sampled at 16 kHz.
    double err = (got.narrow(0, 500, n - 1000) - ref.narrow(0, 500, n - 1000)).abs().max().item<double>();
    EXPECT_LT(err, 2e-3);
  }
}

TEST(AudioDecode, EightChannelsAt192kHz) {
  test::TempDir dir;
  test::write_audio(dir / "hd.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_24, 192000, 8,
                    test::sine(1000, 192000, 0.5, 0.5, 8));
  AudioInfo info = probe_audio(dir / "hd.wav");
  EXPECT_EQ(info.channels, 8);
  EXPECT_EQ(info.sample_rate, 192000);
  at::Tensor got = load_audio(dir / "hd.wav");
  EXPECT_NEAR(got.size(0), 8000, 1);
  at::Tensor ref = to_tensor(test::sine(1000, kSampleRate, 0.5));
  EXPECT_LT((got.narrow(0, 500, 7000) - ref.narrow(0, 500, 7000)).abs().max().item<double>(), 2e-3);
}

TEST(AudioDecode, StreamsInBoundedChunksWithTheSameResult) {
  test::TempDir dir;
  test::write_audio(dir / "long.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 44100, 2,
                    test::sine(300, 44100, 6.0, 0.3, 2));
  at::Tensor whole = load_audio(dir / "long.flac");
  LoadOptions small;
  small.chunk_frames = 1000;
  AudioStream stream(dir / "long.flac", small);
  std::vector<float> all, chunk;
  size_t largest = 0;
  while (true) {
    chunk.clear();
    if (!stream.read(chunk)) break;
    largest = std::max(largest, chunk.size());
    all.insert(all.end(), chunk.begin(), chunk.end());
  }
  EXPECT_LE(largest, 1000u * 16000 / 44100 + 400);  // working memory follows the chunk, not the file
  ASSERT_EQ(static_cast<int64_t>(all.size()), whole.size(0));
  EXPECT_TRUE(torch::equal(to_tensor(all), whole));
}

TEST(AudioDecode, WindowsSeekToStartAndClampEnd) {
  test::TempDir dir;
  std::vector<float> ramp(kSampleRate * 2);
  for (size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<float>(i) / ramp.size();
  test::write_audio(dir / "ramp.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, kSampleRate, 1, ramp);
  LoadOptions window;
  window.start = 0.5;
  window.end = 0.75;
  at::Tensor got = load_audio(dir / "ramp.wav", window);
  EXPECT_TRUE(torch::equal(got, to_tensor(ramp).narrow(0, 8000, 4000)));
  window.end = 99.0;  // past the end: clamped
  EXPECT_EQ(load_audio(dir / "ramp.wav", window).size(0), kSampleRate * 2 - 8000);

  window.start = 2.5;
  window.end.reset();
  expect_contains(load_error(dir / "ramp.wav", window),
                  "window start 2.500 s is at or past the end of the audio (2.000 s)");
  window.start = 1.0;
  window.end = 0.5;
  expect_contains(load_error(dir / "ramp.wav", window), "must be after its start");
}

TEST(AudioDecodeBadInput, MissingFolderTextAndEmpty) {
  test::TempDir dir;
  expect_contains(load_error(dir / "absent.wav"), "no such file");
  std::filesystem::create_directory(dir / "folder.wav");
  expect_contains(load_error(dir / "folder.wav"), "it is a folder");
  test::write_bytes(dir / "text.wav", "this is not audio, just text that ends in .wav\n");
  expect_contains(load_error(dir / "text.wav"), "not a format libsndfile reads");
  test::write_bytes(dir / "empty.wav", "");
  expect_contains(load_error(dir / "empty.wav"), "the file is empty (0 bytes)");
  test::write_audio(dir / "noframes.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, kSampleRate, 1, {});
  expect_contains(load_error(dir / "noframes.wav"), "holds no audio samples");
}

TEST(AudioDecodeBadInput, TruncatedWavAndFlac) {
  test::TempDir dir;
  test::write_audio(dir / "full.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, kSampleRate, 1,
                    test::sine(440, kSampleRate, 1.0));
  test::write_audio(dir / "full.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16, kSampleRate, 1,
                    test::sine(440, kSampleRate, 1.0));
  for (const char* name : {"wav", "flac"}) {
    SCOPED_TRACE(name);
    std::string bytes = read_file(dir / (std::string("full.") + name));
    auto cut = dir / (std::string("cut.") + name);
    test::write_bytes(cut, bytes.substr(0, bytes.size() / 2));
    expect_contains(load_error(cut), "truncated");
  }
}

TEST(AudioDecodeBadInput, NanAndInfSamplesAreNamed) {
  test::TempDir dir;
  auto samples = test::sine(440, kSampleRate, 0.5);
  samples[4000] = std::numeric_limits<float>::quiet_NaN();
  test::write_audio(dir / "nan.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, kSampleRate, 1, samples);
  expect_contains(load_error(dir / "nan.wav"), "sample 4000 (at 0.250 s) is NaN");
  samples[4000] = 0;
  samples[100] = std::numeric_limits<float>::infinity();
  test::write_audio(dir / "inf.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, kSampleRate, 1, samples);
  expect_contains(load_error(dir / "inf.wav"), "sample 100 (at 0.006 s) is infinite");
}

TEST(AudioDecodeBadInput, SilenceIsValid) {
  test::TempDir dir;
  test::write_audio(dir / "silent.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 22050, 1,
                    std::vector<float>(22050, 0.0f));
  at::Tensor got = load_audio(dir / "silent.wav");
  EXPECT_NEAR(got.size(0), kSampleRate, 1);
  EXPECT_EQ(got.abs().max().item<float>(), 0.0f);
}

TEST(AudioDecode, ListsSupportedFormats) {
  std::string all;
  for (const auto& f : supported_audio_formats()) all += f + "\n";
  expect_contains(all, "WAV");
  expect_contains(all, "FLAC");
  expect_contains(all, "OGG");
}

}  // namespace
}  // namespace pal::audio
