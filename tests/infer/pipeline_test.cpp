#include "pal/pipeline.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <thread>

#include "infer_test_util.h"
#include "pal/audio/decode.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/text/tokenizer.h"

namespace pal {
namespace {

PipelineOptions two_threads() {
  PipelineOptions o;
  o.threads = 2;
  return o;
}

TEST(Pipeline, AnswersAQuestionAboutARealClip) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  EXPECT_NE(
      pipeline.describe().find("probe fusion (start layer 2), encoders whisper + ast, 4-layer llama LLM"),
      std::string::npos)
      << pipeline.describe();
  EXPECT_NE(pipeline.describe().find("llama3 prompts, cpu float32"), std::string::npos)
      << pipeline.describe();
  Answer a = pipeline.ask(test::speech_clip(), "What is said?", test::max_tokens(8));
  EXPECT_GE(a.tokens.size(), 1u);
  EXPECT_LE(a.tokens.size(), 8u);
  EXPECT_EQ(a.text, pipeline.tokenizer().decode(a.tokens, true));
  EXPECT_GT(a.prompt_tokens, 5);  // the Llama 3 template's header and the question
  EXPECT_GT(a.audio_tokens, 0);
  EXPECT_GT(a.seconds, 0);
  EXPECT_LE(a.first_token_seconds, a.seconds);
  // Greedy: the same answer from a second pipeline on the same folder.
  Pipeline again = Pipeline::load(test::tiny_model(), two_threads());
  EXPECT_EQ(again.ask(test::speech_clip(), "What is said?", test::max_tokens(8)).tokens, a.tokens);
}

TEST(Pipeline, AudioIsEncodedOnceForManyQuestions) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  EXPECT_EQ(pipeline.stats().clips_encoded, 1);
  const double seconds = audio::probe_audio(test::speech_clip()).seconds();
  EXPECT_NEAR(clip.seconds(), seconds, 0.01);
  // Two routes' worth: 10 frames/s from each encoder plus the two summary tokens.
  EXPECT_NEAR(static_cast<double>(clip.token_count()), 2 * 10 * seconds + 2, 4);
  Answer first = pipeline.ask(clip, "What is said?", test::max_tokens(6));
  Answer second = pipeline.ask(clip, "Who speaks?", test::max_tokens(6));
  EXPECT_EQ(pipeline.stats().clips_encoded, 1);
  EXPECT_EQ(pipeline.stats().answers, 2);
  // The same file again comes from the cache, and answers as the handle does.
  EXPECT_EQ(pipeline.ask(test::speech_clip(), "What is said?", test::max_tokens(6)).tokens, first.tokens);
  EXPECT_EQ(pipeline.stats().clips_encoded, 1);
  EXPECT_EQ(pipeline.stats().cache_hits, 1);
  // A changed file is encoded again.
  test::TempDir dir;
  const auto copy = dir / "clip.wav";
  std::filesystem::copy_file(test::speech_clip(), copy);
  pipeline.encode(copy);
  EXPECT_EQ(pipeline.stats().clips_encoded, 2);
  test::write_clip(copy, 1.0);
  pipeline.encode(copy);
  EXPECT_EQ(pipeline.stats().clips_encoded, 3);
  // Bytes in memory: cached by content.
  const std::string bytes = read_file(test::speech_clip());
  Pipeline::Audio from_bytes = pipeline.encode_bytes(bytes, "upload");
  EXPECT_EQ(pipeline.ask(from_bytes, "What is said?", test::max_tokens(6)).tokens, first.tokens);
  pipeline.encode_bytes(bytes, "upload again");
  EXPECT_EQ(pipeline.stats().clips_encoded, 4);
}

TEST(Pipeline, BatchedAnswersEqualSingleOnes) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  test::TempDir dir;
  Pipeline::Audio a = pipeline.encode(test::speech_clip());
  Pipeline::Audio b = pipeline.encode(test::write_clip(dir / "tone.wav", 2.5));
  ASSERT_NE(a.token_count(), b.token_count());  // different lengths: padded and masked in the batch
  std::vector<Pipeline::Question> questions = {{a, "What is said?", {}, 0},
                                               {b, "What is this sound?", {}, 0},
                                               {a, "Is it a person?", {}, 3},
                                               {{}, "Say something.", {}, 0}};
  std::vector<Answer> batch = pipeline.ask_batch(questions, test::max_tokens(7));
  ASSERT_EQ(batch.size(), 4u);
  for (size_t i = 0; i < questions.size(); ++i) {
    SCOPED_TRACE(i);
    GenerationOptions g = test::max_tokens(questions[i].max_new_tokens ? questions[i].max_new_tokens : 7);
    Answer single = pipeline.ask(questions[i].audio, questions[i].question, g);
    EXPECT_EQ(batch[i].tokens, single.tokens);
    EXPECT_EQ(batch[i].text, single.text);
    EXPECT_EQ(batch[i].finish_reason, single.finish_reason);
  }
  EXPECT_LE(batch[2].tokens.size(), 3u);  // its own limit, inside a batch of 7
  if (batch[2].tokens.size() == 3u) {
    EXPECT_EQ(batch[2].finish_reason, FinishReason::length);
  }
  EXPECT_EQ(batch[3].audio_tokens, 0);
}

TEST(Pipeline, StreamingEventsConcatenateToTheAnswer) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  std::string streamed;
  int events = 0;
  Answer a = pipeline.ask(clip, "Describe the audio.", test::max_tokens(12), [&](const TokenEvent& e) {
    EXPECT_EQ(e.index, 0u);
    streamed += e.text;
    ++events;
    return true;
  });
  EXPECT_EQ(streamed, a.text);
  EXPECT_GE(events, static_cast<int>(a.tokens.size()));
  // Returning false ends the answer there.
  int seen = 0;
  Answer stopped = pipeline.ask(clip, "Describe the audio.", test::max_tokens(12),
                                [&](const TokenEvent& e) { return e.token < 0 || ++seen < 2; });
  if (a.tokens.size() > 2) {
    EXPECT_EQ(stopped.tokens.size(), 2u);
    EXPECT_EQ(stopped.finish_reason, FinishReason::cancelled);
    EXPECT_EQ(std::vector<int64_t>(a.tokens.begin(), a.tokens.begin() + 2), stopped.tokens);
  }
}

TEST(Pipeline, SamplingIsSeeded) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  GenerationOptions g = test::max_tokens(10);
  g.sample = true;
  g.temperature = 1.5;
  g.seed = 7;
  Answer x = pipeline.ask(clip, "Describe it.", g), y = pipeline.ask(clip, "Describe it.", g);
  EXPECT_EQ(x.tokens, y.tokens);
  g.seed = 8;
  Answer z = pipeline.ask(clip, "Describe it.", g);
  g.seed = 9;
  Answer w = pipeline.ask(clip, "Describe it.", g);
  EXPECT_TRUE(z.tokens != x.tokens || w.tokens != x.tokens);  // a random model at temperature 1.5
}

TEST(Pipeline, SystemMessageChangesThePrompt) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  Pipeline::Question plain{clip, "What is it?", {}, 0};
  Pipeline::Question system{clip, "What is it?", std::string("Answer in one word, always."), 0};
  std::vector<Answer> out = pipeline.ask_batch({plain, system}, test::max_tokens(4));
  EXPECT_GT(out[1].prompt_tokens, out[0].prompt_tokens + 5);
}

TEST(Pipeline, ConcurrentCallersAreSerialised) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  const std::vector<int64_t> expected = pipeline.ask(clip, "What is it?", test::max_tokens(5)).tokens;
  std::vector<std::vector<int64_t>> got(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i)
    threads.emplace_back(
        [&, i] { got[i] = pipeline.ask(test::speech_clip(), "What is it?", test::max_tokens(5)).tokens; });
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, expected);
}

TEST(Pipeline, BadInputIsAnErrorNamingIt) {
  test::TempDir dir;
  // No such folder; a folder without weights; a folder without a config.
  std::string msg = test::error_message<IoError>([&] { Pipeline::load(dir / "absent"); });
  EXPECT_NE(msg.find("absent: no such folder"), std::string::npos) << msg;
  std::filesystem::create_directories(dir / "partial");
  std::filesystem::copy_file(test::tiny_model() / "model.yaml", dir / "partial" / "model.yaml");
  msg = test::error_message<IoError>([&] { Pipeline::load(dir / "partial"); });
  EXPECT_NE(msg.find("partial: no model.safetensors"), std::string::npos) << msg;
  std::filesystem::create_directories(dir / "weights_only");
  std::filesystem::copy_file(test::tiny_model() / "model.safetensors",
                             dir / "weights_only" / "model.safetensors");
  msg = test::error_message<IoError>([&] { Pipeline::load(dir / "weights_only"); });
  EXPECT_NE(msg.find("weights_only: no model.yaml"), std::string::npos) << msg;

  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  msg = test::error_message<AudioError>([&] { pipeline.encode(dir / "missing.wav"); });
  EXPECT_NE(msg.find("missing.wav"), std::string::npos) << msg;
  test::write_bytes(dir / "text.wav", "this is not audio");
  msg = test::error_message<AudioError>([&] { pipeline.encode(dir / "text.wav"); });
  EXPECT_NE(msg.find("text.wav"), std::string::npos) << msg;
  msg = test::error_message<AudioError>([&] { pipeline.encode_bytes("RIFF garbage", "upload.wav"); });
  EXPECT_NE(msg.find("upload.wav"), std::string::npos) << msg;
  msg = test::error_message<GenerationError>([&] { pipeline.ask(test::speech_clip(), "  \n"); });
  EXPECT_NE(msg.find("the question is empty"), std::string::npos) << msg;
  // Too long for the limit: refused from the header, before decoding.
  PipelineOptions limited = two_threads();
  limited.long_audio.max_seconds = 0.5;
  Pipeline strict = Pipeline::load(test::tiny_model(), limited);
  msg = test::error_message<AudioError>([&] { strict.encode(test::speech_clip()); });
  EXPECT_NE(msg.find("the limit is 0.50 s (long_audio.max_seconds)"), std::string::npos) << msg;
  // No CUDA in this build or machine: a clear error, not a crash.
  if (!torch::cuda::is_available()) {
    PipelineOptions cuda;
    cuda.device = c10::Device("cuda");
    msg = test::error_message<ModelError>([&] { Pipeline::load(test::tiny_model(), cuda); });
    EXPECT_NE(msg.find("CUDA is not available"), std::string::npos) << msg;
  }
}

TEST(Pipeline, ModelWithoutTokenizerIsRefused) {
  test::TempDir dir;
  const std::string yaml = "llm: " + (test::fixtures() / "llm" / "tiny_llama").string() +
                           "\nencoders:\n  - {type: whisper, checkpoint: " +
                           (test::fixtures() / "encoders" / "tiny_whisper").string() +
                           "}\nensemble: {width: 16}\nfusion: {mode: probe, start_layer: 1}\n";
  models::PalModel model(config::parse<models::PalModelConfig>(yaml, "model.yaml"), dir.path());
  models::save_pal_model(*model, dir / "m", true);
  const std::string msg = test::error_message<ModelError>([&] { Pipeline::load(dir / "m"); });
  EXPECT_NE(msg.find("has no tokenizer"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal
