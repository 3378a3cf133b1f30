// Decoding audio file bytes held in memory (AudioStream::from_memory), as the server does.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "audio_test_util.h"
#include "pal/audio/decode.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::audio {
namespace {

TEST(DecodeMemory, EqualsDecodingTheFile) {
  for (const char* name :
       {"speech_8k_mono.wav", "sound_44k_stereo.flac", "sound_22k_mono.ogg", "speech_48k_stereo_24bit.wav"}) {
    SCOPED_TRACE(name);
    const auto file = test::fixtures() / "audio" / "clips" / name;
    const at::Tensor from_file = load_audio(file);
    const at::Tensor from_memory = load_audio_from_memory(read_file(file), name);
    EXPECT_TRUE(torch::equal(from_file, from_memory));
    LoadOptions window;
    window.start = 0.25;
    window.end = 0.75;
    EXPECT_TRUE(
        torch::equal(load_audio(file, window), load_audio_from_memory(read_file(file), name, window)));
  }
}

TEST(DecodeMemory, BadBytesAreErrorsNamingTheSource) {
  std::string msg = test::error_message<AudioError>([] { load_audio_from_memory("", "upload"); });
  EXPECT_NE(msg.find("cannot decode 'upload': the audio data is empty"), std::string::npos) << msg;
  msg =
      test::error_message<AudioError>([] { load_audio_from_memory("%PDF-1.4 not audio at all", "doc.pdf"); });
  EXPECT_NE(msg.find("cannot decode 'doc.pdf'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a format libsndfile reads"), std::string::npos) << msg;
  // A WAV cut short: its header promises more data than there is.
  test::TempDir dir;
  test::write_audio(dir / "a.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 16000, 1, test::sine(440, 16000, 1.0));
  const std::string wav = read_file(dir / "a.wav");
  msg = test::error_message<AudioError>(
      [&] { load_audio_from_memory(wav.substr(0, wav.size() / 2), "cut.wav"); });
  EXPECT_NE(msg.find("cut.wav"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::audio
