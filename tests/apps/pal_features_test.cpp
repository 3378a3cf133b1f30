// End-to-end: the real pal-features binary on the committed clips.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/audio/decode.h"
#include "pal/audio/frontend.h"
#include "pal/io/safetensors.h"
#include "test_util.h"

namespace pal {
namespace {

const std::string kPalFeatures = PAL_FEATURES_EXE;

std::string clip(const std::string& name) {
  return (test::fixtures() / "audio" / "clips" / name).string();
}

TEST(E2EPalFeatures, WritesOneTensorPerInputMatchingTheLibrary) {
  test::TempDir dir;
  auto out = dir / "feats.safetensors";
  auto r =
      test::run_command(kPalFeatures + " --frontend whisper_mel --n-mels 80 " + clip("speech_8k_mono.wav") +
                        " " + clip("sound_44k_stereo.flac") + " --out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto f = io::SafetensorsFile::open(out);
  EXPECT_EQ(f.metadata().at("frontend"), "whisper_mel");
  ASSERT_TRUE(f.contains("speech_8k_mono.wav"));
  ASSERT_TRUE(f.contains("sound_44k_stereo.flac"));
  audio::WhisperMelFrontend mel;
  at::Tensor expected = mel(audio::load_audio(clip("sound_44k_stereo.flac"))).values[0];
  EXPECT_TRUE(torch::allclose(f.tensor("sound_44k_stereo.flac"), expected, 1e-6, 1e-6));

  r = test::run_command(kPalFeatures +
                        " --frontend kaldi_fbank --preset ast --target-frames 200 --start 0.25 --end 0.75 " +
                        clip("chirp_16k_float.wav") + " -o " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  at::Tensor fbank = io::SafetensorsFile::open(out).tensor("chirp_16k_float.wav");
  EXPECT_EQ(fbank.sizes(), (std::vector<int64_t>{200, 128}));

  r = test::run_command(kPalFeatures + " --frontend whisper_mel --pad-to-30s " + clip("tone_11k_u8.wav") +
                        " -o " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(io::SafetensorsFile::open(out).tensor("tone_11k_u8.wav").sizes(),
            (std::vector<int64_t>{3000, 80}));
}

TEST(E2EPalFeatures, BadInputExitsNonZeroAndWritesNothing) {
  test::TempDir dir;
  auto out = dir / "feats.safetensors";
  test::write_bytes(dir / "notes.wav", "plain text\n");
  auto r = test::run_command(kPalFeatures + " --frontend whisper_mel " + clip("speech_8k_mono.wav") + " " +
                             (dir / "notes.wav").string() + " --out " + out.string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("pal-features: error: cannot decode '"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("notes.wav"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));

  r = test::run_command(kPalFeatures + " --frontend whisper_mel --start 30 " + clip("speech_8k_mono.wav") +
                        " -o " + out.string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("past the end"), std::string::npos) << r.output;

  r = test::run_command(kPalFeatures + " --frontend mfcc " + clip("speech_8k_mono.wav") + " -o " +
                        out.string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = test::run_command(kPalFeatures + " --frontend whisper_mel --target-frames 10 " +
                        clip("speech_8k_mono.wav") + " -o " + out.string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("apply to kaldi_fbank"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace pal
