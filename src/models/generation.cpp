#include "pal/models/generation.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "pal/core/error.h"
#include "pal/core/runtime.h"

namespace pal::models {

void GenerationOptions::validate() const {
  auto fail = [](const std::string& field, const std::string& why) {
    throw GenerationError("generation option " + field + ": " + why);
  };
  if (max_new_tokens <= 0) fail("max_new_tokens", "must be > 0, got " + std::to_string(max_new_tokens));
  if (!(temperature > 0) || !std::isfinite(temperature))
    fail("temperature", "must be a finite number > 0, got " + std::to_string(temperature));
  if (top_k < 0) fail("top_k", "must be >= 0 (0: off), got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail("top_p", "must be in (0, 1], got " + std::to_string(top_p));
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty))
    fail("repetition_penalty", "must be a finite number > 0, got " + std::to_string(repetition_penalty));
  for (const auto& s : stop_strings)
    if (s.empty()) fail("stop_strings", "an empty stop string would stop at once");
}

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::length: return "length";
    case FinishReason::stop_token: return "stop";
    case FinishReason::stop_string: return "stop_string";
    case FinishReason::cancelled: return "cancelled";
  }
  return "?";
}

torch::Tensor process_logits(const torch::Tensor& logits, const torch::Tensor& seen,
                             const GenerationOptions& o) {
  torch::Tensor scores = logits.to(torch::kFloat32);
  // ref: RepetitionPenaltyLogitsProcessor
  if (o.repetition_penalty != 1.0 && seen.defined()) {
    torch::Tensor penalised =
        torch::where(scores < 0, scores * o.repetition_penalty, scores / o.repetition_penalty);
    scores = torch::where(seen, penalised, scores);
  }
  if (!o.sample) return scores;
  // ref: TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (min_tokens_to_keep 1)
  if (o.temperature != 1.0) scores = scores / o.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (o.top_k > 0 && o.top_k < scores.size(-1)) {
    torch::Tensor kth = std::get<0>(scores.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    scores = scores.masked_fill(scores < kth, neg_inf);
  }
  if (o.top_p < 1.0) {
    auto [sorted, order] = scores.sort(-1, /*descending=*/false);
    torch::Tensor remove = sorted.softmax(-1).cumsum(-1) <= (1.0 - o.top_p);
    remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);
    scores = scores.masked_fill(remove.scatter(-1, order, remove), neg_inf);
  }
  return scores;
}

namespace {

// The state of one request's sequences between steps.
class SequenceSet {
 public:
  SequenceSet(size_t count, const GenerationOptions& options, const TokenCallback& on_token,
              const Detokenizer& detokenize)
      : options_(options), on_token_(on_token), detokenize_(detokenize), done_(count, false) {
    result_.tokens.resize(count);
    result_.finish_reasons.assign(count, FinishReason::length);
    for (const auto& s : options.stop_strings) longest_stop_ = std::max(longest_stop_, s.size());
    if (!options.stop_strings.empty() && !detokenize)
      throw GenerationError("generation option stop_strings: needs a detokenizer (the tokenizer's decode)");
  }

  bool done(size_t i) const { return done_[i]; }
  bool all_done() const {
    return std::all_of(done_.begin(), done_.end(), [](bool d) { return d; });
  }

  void add(size_t i, int64_t token) {
    auto& tokens = result_.tokens[i];
    tokens.push_back(token);
    if (on_token_ && !on_token_(i, token)) return finish(i, FinishReason::cancelled);
    if (std::find(options_.stop_token_ids.begin(), options_.stop_token_ids.end(), token) !=
        options_.stop_token_ids.end())
      return finish(i, FinishReason::stop_token);
    if (longest_stop_ > 0) {
      // A stop string ends in the newest token; every token decodes to at least one byte
      // except special ones, so a tail a little longer than the longest stop string is
      // enough, and anything found there is new (an older match would have stopped).
      const size_t tail = std::min(tokens.size(), longest_stop_ + 8);
      const std::string text = detokenize_(std::vector<int64_t>(tokens.end() - tail, tokens.end()));
      for (const auto& s : options_.stop_strings)
        if (text.find(s) != std::string::npos) return finish(i, FinishReason::stop_string);
    }
  }

  GenerationResult take(int64_t steps) {
    result_.steps = steps;
    return std::move(result_);
  }

 private:
  void finish(size_t i, FinishReason reason) {
    done_[i] = true;
    result_.finish_reasons[i] = reason;
  }

  const GenerationOptions& options_;
  const TokenCallback& on_token_;
  const Detokenizer& detokenize_;
  std::vector<bool> done_;
  GenerationResult result_;
  size_t longest_stop_ = 0;
};

// Draws one token per row from softmax(scores) with a CPU generator, so that a seed gives
// the same tokens on every device and LibTorch version.
std::vector<int64_t> draw(const torch::Tensor& scores, std::mt19937_64& rng) {
  torch::Tensor probs = scores.softmax(-1).to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t rows = probs.size(0), vocab = probs.size(1);
  std::vector<int64_t> out(rows);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double* p = probs.data_ptr<double>() + r * vocab;
    double total = 0;
    for (int64_t v = 0; v < vocab; ++v) total += p[v];
    const double target = uniform(rng) * total;
    double sum = 0;
    int64_t chosen = -1;
    for (int64_t v = 0; v < vocab; ++v) {
      if (p[v] <= 0) continue;
      chosen = v;  // the last token with probability, should rounding leave target unreached
      sum += p[v];
      if (sum > target) break;
    }
    out[r] = chosen < 0 ? 0 : chosen;
  }
  return out;
}

}  // namespace

GenerationResult decode_loop(const torch::Tensor& first_logits, const DecodeStep& step, int64_t max_steps,
                             const std::vector<std::vector<int64_t>>& prompts,
                             const GenerationOptions& options, const TokenCallback& on_token,
                             const Detokenizer& detokenize) {
  options.validate();
  if (first_logits.dim() != 2)
    throw GenerationError("decode_loop: logits must be [batch, vocab], got " +
                          c10::str(first_logits.sizes()));
  const int64_t batch = first_logits.size(0), vocab = first_logits.size(1);
  const auto device = first_logits.device();
  const int64_t limit = std::min(options.max_new_tokens, max_steps + 1);
  SequenceSet sequences(static_cast<size_t>(batch), options, on_token, detokenize);
  std::mt19937_64 rng(options.seed);

  torch::Tensor seen;
  if (options.repetition_penalty != 1.0) {
    seen = torch::zeros({batch, vocab}, torch::TensorOptions().dtype(torch::kBool).device(device));
    for (size_t i = 0; i < prompts.size() && static_cast<int64_t>(i) < batch; ++i)
      if (!prompts[i].empty())
        seen[static_cast<int64_t>(i)].index_fill_(0, torch::tensor(prompts[i]).to(device), true);
  }

  torch::Tensor logits = first_logits;
  int64_t steps = 0;
  for (int64_t produced = 0; produced < limit; ++produced) {
    torch::Tensor scores = process_logits(logits, seen, options);
    std::vector<int64_t> next;
    if (options.sample) {
      next = draw(scores, rng);
    } else {
      torch::Tensor best = scores.argmax(-1).to(torch::kCPU, torch::kInt64).contiguous();
      next.assign(best.data_ptr<int64_t>(), best.data_ptr<int64_t>() + batch);
    }
    for (int64_t i = 0; i < batch; ++i) {
      if (sequences.done(static_cast<size_t>(i))) {
        next[static_cast<size_t>(i)] = options.pad_token_id;  // finished rows are fed padding
        continue;
      }
      sequences.add(static_cast<size_t>(i), next[static_cast<size_t>(i)]);
    }
    if (sequences.all_done() || produced + 1 == limit) break;
    torch::Tensor tokens = torch::tensor(next, torch::kInt64).to(device);
    if (seen.defined()) seen.scatter_(1, tokens.unsqueeze(1), true);
    logits = step(tokens);
    ++steps;
  }
  return sequences.take(steps);
}

GenerationResult generate(LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationOptions& options, const TokenCallback& on_token,
                          const Detokenizer& detokenize) {
  options.validate();
  const LlamaConfig& config = model->config();
  if (prompts.empty()) throw GenerationError("generate: no prompts");
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t n = static_cast<int64_t>(prompts[i].size());
    if (n == 0) throw GenerationError("generate: prompt " + std::to_string(i) + " is empty");
    if (n >= config.max_position_embeddings)
      throw GenerationError("generate: prompt " + std::to_string(i) + " has " + std::to_string(n) +
                            " tokens; the model's context (max_position_embeddings) is " +
                            std::to_string(config.max_position_embeddings) +
                            ", which leaves no room for new tokens");
    for (int64_t id : prompts[i])
      if (id < 0 || id >= config.vocab_size)
        throw GenerationError("generate: prompt " + std::to_string(i) + " has token id " +
                              std::to_string(id) + " outside the vocabulary [0, " +
                              std::to_string(config.vocab_size) + ")");
    longest = std::max(longest, n);
  }
  const int64_t new_tokens = std::min(options.max_new_tokens, config.max_position_embeddings - longest);
  const int64_t batch = static_cast<int64_t>(prompts.size());

  c10::InferenceMode inference;
  BlasThreadingGuard blas_threading;
  const torch::Tensor weight = model->model->embed_tokens->weight;
  const auto device = weight.device();
  // Left padding: every row's last prompt token is at the last position.
  std::vector<int64_t> ids(static_cast<size_t>(batch * longest), options.pad_token_id);
  std::vector<uint8_t> valid(ids.size(), 0);
  for (int64_t i = 0; i < batch; ++i) {
    const auto& p = prompts[static_cast<size_t>(i)];
    const int64_t offset = i * longest + (longest - static_cast<int64_t>(p.size()));
    std::copy(p.begin(), p.end(), ids.begin() + offset);
    std::fill(valid.begin() + offset, valid.begin() + (i + 1) * longest, 1);
  }
  torch::Tensor input_ids = torch::tensor(ids, torch::kInt64).view({batch, longest}).to(device);
  torch::Tensor valid_mask = torch::tensor(std::vector<int64_t>(valid.begin(), valid.end()), torch::kInt64)
                                 .view({batch, longest})
                                 .to(device);
  // ref: transformers' position_ids for padded batches: cumsum(mask) - 1.
  torch::Tensor positions = (valid_mask.cumsum(1) - 1).clamp_min(0);
  torch::Tensor next_position = valid_mask.sum(1).unsqueeze(1);  // [B, 1]

  KVCache cache(config, batch, longest + new_tokens, weight.options());
  torch::Tensor hidden =
      model->forward_cached(model->embed(input_ids), positions, valid_mask.to(torch::kBool), cache);
  torch::Tensor first_logits = model->logits(hidden.select(1, longest - 1));
  const torch::Tensor all_valid =
      torch::ones({batch, 1}, torch::TensorOptions().dtype(torch::kBool).device(device));
  DecodeStep step = [&](const torch::Tensor& tokens) {
    torch::Tensor h =
        model->forward_cached(model->embed(tokens.unsqueeze(1)), next_position, all_valid, cache);
    next_position += 1;
    return model->logits(h.select(1, 0));
  };
  return decode_loop(first_logits, step, new_tokens - 1, prompts, options, on_token, detokenize);
}

}  // namespace pal::models
