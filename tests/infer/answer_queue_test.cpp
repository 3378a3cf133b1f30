#include "pal/infer/answer_queue.h"

#include <gtest/gtest.h>

#include <thread>

#include "infer_test_util.h"

namespace pal::infer {
namespace {

Pipeline load() {
  PipelineOptions o;
  o.threads = 2;
  return Pipeline::load(test::tiny_model(), o);
}

TEST(AnswerQueue, ConcurrentQuestionsAreBatchedAndAnsweredAsAlone) {
  Pipeline pipeline = load();
  test::TempDir dir;
  std::vector<Pipeline::Audio> clips = {pipeline.encode(test::speech_clip()),
                                        pipeline.encode(test::write_clip(dir / "a.wav", 1.5, 300)),
                                        pipeline.encode(test::write_clip(dir / "b.wav", 3.0, 900))};
  std::vector<Answer> alone;
  for (size_t i = 0; i < 6; ++i)
    alone.push_back(pipeline.ask(clips[i % 3], "Question " + std::to_string(i), test::max_tokens(3 + i)));

  AnswerQueueOptions o;
  o.max_batch = 4;
  o.max_wait = std::chrono::milliseconds(200);
  AnswerQueue queue(pipeline, o);
  std::vector<std::future<Answer>> futures(6);
  std::vector<std::string> streamed(6);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 6; ++i)
    threads.emplace_back([&, i] {
      Pipeline::Question q{clips[i % 3], "Question " + std::to_string(i), {}, 0};
      futures[i] = queue.submit(q, test::max_tokens(3 + i), [&, i](const TokenEvent& e) {
        streamed[i] += e.text;
        return true;
      });
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < 6; ++i) {
    SCOPED_TRACE(i);
    Answer a = futures[i].get();
    EXPECT_EQ(a.tokens, alone[i].tokens);
    EXPECT_EQ(streamed[i], a.text);
  }
  const AnswerQueueStats s = queue.stats();
  EXPECT_EQ(s.questions, 6);
  EXPECT_LT(s.batches, 6);  // some were answered together
  EXPECT_LE(s.largest_batch, 4);
  EXPECT_EQ(s.queued, 0);
}

TEST(AnswerQueue, DifferentSamplingRunsApartAndAFailureStaysAlone) {
  Pipeline pipeline = load();
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  AnswerQueueOptions o;
  o.max_wait = std::chrono::milliseconds(100);
  AnswerQueue queue(pipeline, o);
  GenerationOptions sampled = test::max_tokens(4);
  sampled.sample = true;
  sampled.seed = 3;
  // A minute of audio overflows the model's 1024 positions (1200 probe tokens placed
  // before the text): that question fails, batched with one that does not.
  test::TempDir dir;
  Pipeline::Audio minute = pipeline.encode(test::write_clip(dir / "minute.wav", 60));
  auto greedy = queue.submit({clip, "What is it?", {}, 0}, test::max_tokens(4));
  auto sample = queue.submit({clip, "What is it?", {}, 0}, sampled);
  auto fail = queue.submit({minute, "What is it?", {}, 0}, test::max_tokens(4));
  EXPECT_EQ(greedy.get().tokens, pipeline.ask(clip, "What is it?", test::max_tokens(4)).tokens);
  EXPECT_EQ(sample.get().tokens, pipeline.ask(clip, "What is it?", sampled).tokens);
  EXPECT_THROW(fail.get(), GenerationError);
  EXPECT_GE(queue.stats().batches, 2);
}

TEST(AnswerQueue, RefusesBeyondItsBound) {
  Pipeline pipeline = load();
  Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  AnswerQueueOptions o;
  o.max_batch = 1;
  o.max_queued = 2;
  o.max_wait = std::chrono::milliseconds(0);
  AnswerQueue queue(pipeline, o);
  // Hold the worker inside a generation until the queue has filled.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> started;
  bool first = true;
  auto busy = queue.submit({clip, "Hold on.", {}, 0}, test::max_tokens(2), [&](const TokenEvent&) {
    if (first) {
      first = false;
      started.set_value();
      released.wait();
    }
    return true;
  });
  started.get_future().wait();
  auto a = queue.submit({clip, "One.", {}, 0}, test::max_tokens(2));
  auto b = queue.submit({clip, "Two.", {}, 0}, test::max_tokens(2));
  EXPECT_THROW(queue.submit({clip, "Three.", {}, 0}, test::max_tokens(2)), QueueFullError);
  release.set_value();
  EXPECT_FALSE(busy.get().tokens.empty());
  EXPECT_FALSE(a.get().tokens.empty());
  EXPECT_FALSE(b.get().tokens.empty());
}

}  // namespace
}  // namespace pal::infer
