// Batches questions that arrive from many threads (the server's request handlers) into
// Pipeline::ask_batch calls on one worker thread.
//
// The worker takes the oldest question, waits up to `max_wait` for more, and runs together
// the oldest questions (up to max_batch) whose sampling settings equal the first one's;
// their max_new_tokens may differ. A batch that fails with a pal::Error runs again one
// question at a time, so that one bad question (a prompt with its audio that overflows
// the context) fails alone.
//
// Thread safety: submit() and stats() may be called from any thread. Token callbacks run
// on the worker thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "pal/core/error.h"
#include "pal/pipeline.h"

namespace pal::infer {

// submit() refused a question: max_queued are waiting already.
class QueueFullError : public Error {
 public:
  using Error::Error;
};

struct AnswerQueueOptions {
  int64_t max_batch = 8;                  // questions per ask_batch (>= 1)
  std::chrono::milliseconds max_wait{5};  // how long the first question waits for company
  int64_t max_queued = 64;                // questions waiting, beyond which submit() refuses

  void validate() const;  // throws ConfigError
};

struct AnswerQueueStats {
  int64_t batches = 0;        // ask_batch calls
  int64_t questions = 0;      // questions answered (or failed)
  int64_t largest_batch = 0;  // the most questions in one call
  int64_t queued = 0;         // waiting now
};

class AnswerQueue {
 public:
  AnswerQueue(Pipeline& pipeline, const AnswerQueueOptions& options = {});
  // Answers what is queued, then stops the worker.
  ~AnswerQueue();
  AnswerQueue(const AnswerQueue&) = delete;
  AnswerQueue& operator=(const AnswerQueue&) = delete;

  // Queues one question, answered with `options` (question.max_new_tokens is overridden
  // by options.max_new_tokens). The future holds the answer, or the exception that
  // answering it threw. Throws QueueFullError when max_queued are waiting.
  std::future<Answer> submit(Pipeline::Question question, const GenerationOptions& options,
                             TokenCallback on_token = {});

  AnswerQueueStats stats() const;

 private:
  struct Job {
    Pipeline::Question question;
    GenerationOptions options;
    TokenCallback on_token;
    std::promise<Answer> promise;
  };
  void run();
  void answer(std::vector<Job>& batch);

  Pipeline& pipeline_;
  AnswerQueueOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  AnswerQueueStats stats_;
  std::thread worker_;
};

}  // namespace pal::infer
