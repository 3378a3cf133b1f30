#include "pal/infer/answer_queue.h"

#include <algorithm>

namespace pal::infer {
namespace {

// Questions with equal settings (max_new_tokens apart) can share one batched generation.
bool same_sampling(const GenerationOptions& a, const GenerationOptions& b) {
  return a.sample == b.sample && a.temperature == b.temperature && a.top_k == b.top_k && a.top_p == b.top_p &&
         a.repetition_penalty == b.repetition_penalty && a.stop_token_ids == b.stop_token_ids &&
         a.stop_strings == b.stop_strings && a.seed == b.seed && a.pad_token_id == b.pad_token_id;
}

}  // namespace

void AnswerQueueOptions::validate() const {
  if (max_batch < 1) throw ConfigError("max_batch: must be >= 1, got " + std::to_string(max_batch));
  if (max_wait.count() < 0) throw ConfigError("max_wait: must be >= 0 ms");
  if (max_queued < 1) throw ConfigError("max_queued: must be >= 1, got " + std::to_string(max_queued));
}

AnswerQueue::AnswerQueue(Pipeline& pipeline, const AnswerQueueOptions& options)
    : pipeline_(pipeline), options_(options) {
  options_.validate();
  worker_ = std::thread([this] { run(); });
}

AnswerQueue::~AnswerQueue() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  worker_.join();
}

std::future<Answer> AnswerQueue::submit(Pipeline::Question question, const GenerationOptions& options,
                                        TokenCallback on_token) {
  options.validate();
  Job job{std::move(question), options, std::move(on_token), {}};
  job.question.max_new_tokens = options.max_new_tokens;
  std::future<Answer> future = job.promise.get_future();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queued)
      throw QueueFullError("the server is busy: " + std::to_string(queue_.size()) +
                           " questions are waiting (max_queued); try again shortly");
    queue_.push_back(std::move(job));
  }
  wake_.notify_all();
  return future;
}

AnswerQueueStats AnswerQueue::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  AnswerQueueStats s = stats_;
  s.queued = static_cast<int64_t>(queue_.size());
  return s;
}

void AnswerQueue::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    const auto deadline = std::chrono::steady_clock::now() + options_.max_wait;
    while (!stopping_ && static_cast<int64_t>(queue_.size()) < options_.max_batch &&
           wake_.wait_until(lock, deadline) != std::cv_status::timeout) {
    }
    // The oldest question and those that can join it, in arrival order.
    std::vector<Job> batch;
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
    for (auto it = queue_.begin();
         it != queue_.end() && static_cast<int64_t>(batch.size()) < options_.max_batch;) {
      if (same_sampling(it->options, batch.front().options)) {
        batch.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    stats_.batches += 1;
    stats_.questions += static_cast<int64_t>(batch.size());
    stats_.largest_batch = std::max<int64_t>(stats_.largest_batch, static_cast<int64_t>(batch.size()));
    lock.unlock();
    answer(batch);
    lock.lock();
  }
}

void AnswerQueue::answer(std::vector<Job>& batch) {
  std::vector<Pipeline::Question> questions;
  GenerationOptions options = batch.front().options;
  options.max_new_tokens = 0;
  for (const Job& job : batch) {
    questions.push_back(job.question);
    options.max_new_tokens = std::max(options.max_new_tokens, job.options.max_new_tokens);
  }
  TokenCallback route = [&](const TokenEvent& e) {
    const TokenCallback& own = batch[e.index].on_token;
    return own ? own(e) : true;
  };
  try {
    std::vector<Answer> answers = pipeline_.ask_batch(questions, options, route);
    for (size_t i = 0; i < batch.size(); ++i) batch[i].promise.set_value(std::move(answers[i]));
    return;
  } catch (const Error&) {
    if (batch.size() == 1) {
      batch.front().promise.set_exception(std::current_exception());
      return;
    }
  } catch (...) {
    for (Job& job : batch) job.promise.set_exception(std::current_exception());
    return;
  }
  // One question at a time, so that only the failing ones fail. (Their callbacks may
  // have seen tokens of the failed batch run: it fails before the first token.)
  for (Job& job : batch) {
    try {
      options.max_new_tokens = job.options.max_new_tokens;
      job.promise.set_value(pipeline_.ask_batch({job.question}, options, job.on_token).front());
    } catch (...) {
      job.promise.set_exception(std::current_exception());
    }
  }
}

}  // namespace pal::infer
