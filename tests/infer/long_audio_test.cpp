#include "pal/infer/long_audio.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "infer_test_util.h"
#include "pal/audio/decode.h"
#include "pal/core/error.h"
#include "pal/models/pal_checkpoint.h"
#include "pal/pipeline.h"

namespace pal::infer {
namespace {

models::PalModel tiny(const std::string& mode = "probe") {
  return models::load_pal_model(test::tiny_model(mode));
}

torch::Tensor noise(int64_t samples, uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::randn({samples}) * 0.1;
}

TEST(LongAudio, EncoderWindowsComeFromTheirConfigs) {
  models::PalModel model = tiny();
  auto* whisper = dynamic_cast<models::AudioEncoder*>(model->encoders[0].get());
  auto* ast = dynamic_cast<models::AudioEncoder*>(model->encoders[1].get());
  // Whisper: 2 x 250 positions of mel frames = 5 s, back to back.
  EXPECT_EQ(whisper->window().samples, 80000);
  EXPECT_EQ(whisper->window().hop, 80000);
  // AST: 64 fbank frames (400 + 63 x 160 samples) hold 5 time patches of 10 frames.
  EXPECT_EQ(ast->window().samples, 10480);
  EXPECT_EQ(ast->window().hop, 8000);
}

TEST(LongAudio, AClipWithinEveryWindowGivesEncodeAudiosTokens) {
  models::PalModel model = tiny();
  torch::Tensor w = noise(9000);  // 0.56 s: inside AST's 10480-sample window
  torch::NoGradGuard no_grad;
  models::EnsembleOutput direct = model->encode_audio(w.unsqueeze(0), torch::tensor({w.size(0)}));
  EncodedAudio encoded = encode_long_audio(*model, waveform_reader(w, 1000));
  EXPECT_EQ(encoded.samples, 9000);
  EXPECT_EQ(encoded.windows, 2);  // one per encoder
  for (auto route : {models::AudioRoute::prefix, models::AudioRoute::probe}) {
    ASSERT_EQ(encoded.tokens.route(route).tokens.sizes(), direct.route(route).tokens.sizes());
    EXPECT_LT(test::relative_error(encoded.tokens.route(route).tokens, direct.route(route).tokens), 1e-5);
    EXPECT_TRUE(torch::equal(encoded.tokens.route(route).mask, direct.route(route).mask));
  }
}

// The design of long_audio.h written out plainly: every encoder's windows over the whole
// waveform, their valid frames concatenated, cls averaged by frames, then the ensemble.
models::EnsembleOutput by_hand(models::PalModelImpl& model, const torch::Tensor& w) {
  torch::NoGradGuard no_grad;
  const int64_t total = w.size(0);
  std::vector<models::EncoderOutput> outputs;
  for (const auto& module : *model.encoders) {
    auto* encoder = dynamic_cast<models::AudioEncoder*>(module.get());
    const models::EncoderWindow win = encoder->window();
    std::vector<torch::Tensor> frames;
    torch::Tensor cls;
    int64_t count = 0;
    for (int64_t start = 0; start == 0 || start - win.hop + win.samples < total; start += win.hop) {
      const int64_t len = std::min(win.samples, total - start);
      if (start > 0 && len < kMinTailSamples) break;
      models::EncoderOutput o = encoder->encode(w.narrow(0, start, len).unsqueeze(0), torch::tensor({len}));
      const int64_t valid = o.mask.sum().item<int64_t>();
      frames.push_back(o.hidden[0].narrow(0, 0, valid));
      if (o.cls.defined()) cls = cls.defined() ? cls + o.cls[0] * valid : o.cls[0] * valid;
      count += valid;
    }
    models::EncoderOutput whole;
    whole.hidden = torch::cat(frames, 0).unsqueeze(0);
    whole.mask = torch::ones({1, whole.hidden.size(1)}, torch::kBool);
    if (cls.defined()) whole.cls = (cls / count).unsqueeze(0);
    outputs.push_back(whole);
  }
  models::EnsembleOutput e = model.ensemble->forward(outputs);
  e.prefix = model.projector->forward(e.prefix);
  e.probe = model.projector->forward(e.probe);
  return e;
}

TEST(LongAudio, WindowsTileTimeAtTheEncodersFrameRate) {
  models::PalModel model = tiny();
  // 12.3 s: Whisper runs 5 s + 5 s + 2.3 s; AST 25 windows with a hop of 0.5 s, the last
  // one 0.3 s (3 time patches). Both streams keep 10 tokens/s over the whole clip.
  const int64_t samples = 196800;
  torch::Tensor w = noise(samples);
  LongAudioOptions o;
  o.windows_per_batch = 3;
  EncodedAudio encoded = encode_long_audio(*model, waveform_reader(w, 7777), o);
  EXPECT_EQ(encoded.windows, 3 + 25);
  EXPECT_EQ(encoded.tokens.prefix.tokens.size(1), 2);         // the summary tokens (summary_route: prefix)
  EXPECT_EQ(encoded.tokens.probe.tokens.size(1), 123 + 123);  // whisper pooled x5, then AST
  EXPECT_EQ(encoded.token_count(), 248);
  EXPECT_LE(encoded.peak_buffered_samples, 3 * 80000 + 80000 + 7777);
  const models::EnsembleOutput expected = by_hand(*model, w);
  EXPECT_LT(test::relative_error(encoded.tokens.probe.tokens, expected.probe.tokens), 1e-5);
  EXPECT_LT(test::relative_error(encoded.tokens.prefix.tokens, expected.prefix.tokens), 1e-5);
}

TEST(LongAudio, ShortTailsAreLeftOutAndLimitsHold) {
  models::PalModel model = tiny();
  // 5 s + 0.1 s: Whisper's second window would be 0.1 s, under kMinTailSamples.
  EncodedAudio encoded = encode_long_audio(*model, waveform_reader(noise(81600)));
  // Whisper: 1 window; AST: windows at 0, 0.5, ..., 4.5 s (4.5 + 0.655 > 5.1 ends it).
  EXPECT_EQ(encoded.windows, 1 + 10);
  LongAudioOptions o;
  o.max_seconds = 2;
  std::string msg = test::error_message<AudioError>(
      [&] { encode_long_audio(*model, waveform_reader(noise(40000)), o, "big.wav"); });
  EXPECT_NE(msg.find("big.wav: longer than the limit of 2.00 s"), std::string::npos) << msg;
  msg = test::error_message<AudioError>([&] {
    encode_long_audio(
        *model, [](std::vector<float>&) { return false; }, {}, "empty.wav");
  });
  EXPECT_NE(msg.find("empty.wav: no audio samples"), std::string::npos) << msg;
  // Too short for the encoders: their own message, with the clip's name.
  msg = test::error_message<AudioError>(
      [&] { encode_long_audio(*model, waveform_reader(noise(100)), {}, "tiny.wav"); });
  EXPECT_NE(msg.find("tiny.wav: encoders.0 (whisper)"), std::string::npos) << msg;
  o.windows_per_batch = 0;
  EXPECT_THROW(o.validate(), ConfigError);
}

// Ten minutes of audio from a file, streamed: bounded buffering, and the answer needs no
// more than the tokens (probe with unrotated audio keys has no position limit).
TEST(E2ELongAudio, TenMinuteClipIsAnsweredInBoundedMemory) {
  test::TempDir dir;
  const auto file = test::write_clip(dir / "ten_minutes.wav", 600.0, 220);
  PipelineOptions options;
  options.threads = 2;
  options.long_audio.windows_per_batch = 16;
  Pipeline pipeline = Pipeline::load(test::tiny_model("probe", ", audio_rope: none"), options);
  Pipeline::Audio clip = pipeline.encode(file);
  EXPECT_NEAR(clip.seconds(), 600.0, 0.01);
  const infer::EncodedAudio& e = clip.encoded();
  EXPECT_EQ(e.windows, 120 + 1200);  // Whisper 5 s windows; AST 0.5 s hops
  EXPECT_EQ(e.token_count(), 2 + 6000 + 6000);
  // Never more than a batch of hops plus a window and a decoder chunk of samples.
  EXPECT_LE(e.peak_buffered_samples, 16 * 80000 + 80000 + (1 << 16) + 4096);
  EXPECT_LT(e.peak_buffered_samples, 600 * 16000 / 4);
  GenerationOptions g;
  g.max_new_tokens = 4;
  Answer a = pipeline.ask(clip, "What happens in this recording?", g);
  EXPECT_EQ(a.audio_tokens, 12002);
  EXPECT_GE(a.tokens.size(), 1u);
}

}  // namespace
}  // namespace pal::infer
