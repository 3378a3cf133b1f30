// Parity with the reference libraries, on real clips (tests/fixtures/audio, written by
// scripts/make_parity_fixtures.py with soundfile + soxr, HF transformers and torchaudio).
//
// Tolerance: max |ours - reference| / max |reference| <= 1e-4 per tensor (fp32).
// Exception: raw log-fbank values within 3 nats of the floor log(FLT_EPSILON) come from
// mel energies of ~1e-7, where float32 FFT rounding decides the value (two FFT libraries
// differ by up to ~0.01 there on a pure synthetic chirp); those elements are compared
// with an absolute tolerance of 0.02 instead. (Exact digital silence gives exactly the
// floor in both; the synthetic chirp carries white noise at -20 dBFS so that its spectrum is
// above the floor, as real recordings are.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "pal/audio/decode.h"
#include "pal/audio/frontend.h"
#include "pal/io/safetensors.h"
#include "test_util.h"

namespace pal::audio {
namespace {

constexpr double kTolerance = 1e-4;

using test::relative_error;

struct Fixture {
  std::string stem;
  std::filesystem::path clip;
  io::SafetensorsFile expected;
};

std::vector<Fixture> fixtures() {
  std::vector<Fixture> out;
  const auto folder = test::fixtures() / "audio";
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    if (entry.path().extension() != ".safetensors") continue;
    Fixture f{entry.path().stem().string(), {}, io::SafetensorsFile::open(entry.path())};
    for (const auto& clip : std::filesystem::directory_iterator(folder / "clips"))
      if (clip.path().stem() == f.stem) f.clip = clip.path();
    out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end(), [](const Fixture& a, const Fixture& b) { return a.stem < b.stem; });
  return out;
}

TEST(ParityAudio, FixturesCoverSpeechSoundsRatesAndChannels) {
  auto all = fixtures();
  ASSERT_GE(all.size(), 6u);
  std::set<int64_t> rates, channels;
  for (const auto& f : all) {
    ASSERT_FALSE(f.clip.empty()) << "no clip for fixture " << f.stem;
    rates.insert(f.expected.tensor("source_rate").item<int64_t>());
    channels.insert(f.expected.tensor("source_channels").item<int64_t>());
  }
  EXPECT_GE(rates.size(), 4u);
  EXPECT_GE(channels.size(), 3u);
}

// Decoding + downmix + soxr HQ resampling against soundfile + python-soxr.
TEST(ParityAudio, DecodeAndResample) {
  for (const auto& f : fixtures()) {
    SCOPED_TRACE(f.stem);
    at::Tensor expected = f.expected.tensor("waveform_16k");
    at::Tensor ours = load_audio(f.clip);
    ASSERT_EQ(ours.size(0), expected.size(0));
    // Vorbis decoding is not bit-exact across decoder versions; the rest is.
    const double tolerance = f.clip.extension() == ".ogg" ? 1e-3 : kTolerance;
    EXPECT_LE(relative_error(ours, expected), tolerance);
  }
}

TEST(ParityAudio, WhisperMelMatchesTransformers) {
  WhisperMelFrontend mel80;
  WhisperMelOptions o128;
  o128.n_mels = 128;
  WhisperMelFrontend mel128(o128);
  WhisperMelOptions o30;
  o30.pad_to_30s = true;
  WhisperMelFrontend mel30(o30);
  int checked_128 = 0, checked_30s = 0;
  for (const auto& f : fixtures()) {
    SCOPED_TRACE(f.stem);
    at::Tensor wave = f.expected.tensor("waveform_16k");
    EXPECT_LE(relative_error(mel80(wave).values[0], f.expected.tensor("whisper_mel_80")), kTolerance);
    if (f.expected.contains("whisper_mel_128")) {
      EXPECT_LE(relative_error(mel128(wave).values[0], f.expected.tensor("whisper_mel_128")), kTolerance);
      ++checked_128;
    }
    if (f.expected.contains("whisper_mel_80_30s_head")) {
      at::Tensor full = mel30(wave).values[0];
      ASSERT_EQ(full.size(0), 3000);
      at::Tensor head = f.expected.tensor("whisper_mel_80_30s_head");
      EXPECT_LE(relative_error(full.narrow(0, 0, head.size(0)), head), kTolerance);
      at::Tensor tail = full.narrow(0, head.size(0), 3000 - head.size(0));
      double tail_value = f.expected.tensor("whisper_mel_80_30s_tail_value").item<double>();
      EXPECT_LE((tail - tail_value).abs().max().item<double>(), kTolerance * head.abs().max().item<double>());
      ++checked_30s;
    }
  }
  EXPECT_GE(checked_128, 1);
  EXPECT_GE(checked_30s, 1);
}

// Relative error over the elements above the float32 noise floor; checks the others
// (if any) against the absolute noise tolerance.
double fbank_relative_error(const at::Tensor& ours, const at::Tensor& reference) {
  const double floor = std::log(std::numeric_limits<float>::epsilon()) + 3.0;
  at::Tensor noise = reference < floor;
  EXPECT_LT(noise.to(torch::kDouble).mean().item<double>(), 0.8) << "too few elements above the noise floor";
  at::Tensor diff = (ours - reference).abs();
  if (noise.any().item<bool>()) {
    EXPECT_LE(diff.masked_select(noise).max().item<double>(), 0.02);
  }
  return diff.masked_fill(noise, 0.0).max().item<double>() / reference.abs().max().item<double>();
}

TEST(ParityAudio, KaldiFbankMatchesTorchaudio) {
  KaldiFbankFrontend ast_raw;
  KaldiFbankOptions povey;
  povey.window = "povey";
  povey.n_mels = 80;
  KaldiFbankFrontend povey80(povey);
  KaldiFbankOptions ast = KaldiFbankOptions::ast();
  ast.target_frames = 300;
  KaldiFbankFrontend ast300(ast);
  KaldiFbankOptions eat = KaldiFbankOptions::eat();
  eat.target_frames = 64;
  KaldiFbankFrontend eat64(eat);
  int checked_norm = 0;
  for (const auto& f : fixtures()) {
    SCOPED_TRACE(f.stem);
    at::Tensor wave = f.expected.tensor("waveform_16k");
    EXPECT_LE(fbank_relative_error(ast_raw(wave).values[0], f.expected.tensor("fbank_ast")), kTolerance);
    EXPECT_LE(fbank_relative_error(povey80(wave).values[0], f.expected.tensor("fbank_povey_80")), kTolerance);
    if (f.expected.contains("fbank_ast_norm_300")) {
      EXPECT_LE(relative_error(ast300(wave).values[0], f.expected.tensor("fbank_ast_norm_300")), kTolerance);
      EXPECT_LE(relative_error(eat64(wave).values[0], f.expected.tensor("fbank_eat_norm_64")), kTolerance);
      ++checked_norm;
    }
  }
  EXPECT_GE(checked_norm, 1);
}

// The whole path a user runs: file -> 16 kHz -> features, against the reference's
// features of the reference's waveform.
TEST(ParityAudio, EndToEndFromFiles) {
  WhisperMelFrontend mel80;
  KaldiFbankFrontend fbank;
  for (const auto& f : fixtures()) {
    if (f.clip.extension() == ".ogg") continue;  // lossy decoder, see DecodeAndResample
    SCOPED_TRACE(f.stem);
    at::Tensor wave = load_audio(f.clip);
    EXPECT_LE(relative_error(mel80(wave).values[0], f.expected.tensor("whisper_mel_80")), 1e-3);
    EXPECT_LE(relative_error(fbank(wave).values[0], f.expected.tensor("fbank_ast")), 1e-3);
  }
}

}  // namespace
}  // namespace pal::audio
