// Autoregressive generation with a KV cache: batched prompts, greedy or sampled decoding,
// stop tokens and strings, streaming.
//
// ref: transformers generation/utils.py (GenerationMixin._sample) and logits_process.py:
// the order of the logits processors (repetition penalty, then temperature, top-k,
// top-p) and their definitions follow it, so that greedy decoding gives the same ids as
// `generate(do_sample=False)`. Prompts of a batch are left-padded, as transformers does
// for decoder-only models, so that every row's next token is read at the last position.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pal/models/llama.h"

namespace pal::models {

struct GenerationOptions {
  int64_t max_new_tokens = 128;     // at most this many new tokens per prompt (> 0)
  bool sample = false;              // false: greedy (argmax); true: sample from the processed logits
  double temperature = 1.0;         // sampling: divides the logits (> 0)
  int64_t top_k = 0;                // sampling: keep the k most likely tokens; 0: all
  double top_p = 1.0;               // sampling: keep the smallest set with probability >= top_p, in (0, 1]
  double repetition_penalty = 1.0;  // > 0; 1: off. Seen tokens' logits: x / p if x > 0 else x * p
  std::vector<int64_t> stop_token_ids;    // any of these ends a sequence (it is kept in the output)
  std::vector<std::string> stop_strings;  // decoded text containing one ends a sequence (needs a detokenizer)
  uint64_t seed = 0;                      // sampling: same seed, same prompts -> same tokens
  int64_t pad_token_id = 0;               // fills the left padding of shorter prompts (never attended)

  // Throws GenerationError naming the field and value.
  void validate() const;
};

enum class FinishReason {
  length,       // max_new_tokens reached, or the model's context is full
  stop_token,   // produced one of stop_token_ids
  stop_string,  // the decoded text contains one of stop_strings
  cancelled,    // the streaming callback returned false
};
const char* to_string(FinishReason reason);

struct GenerationResult {
  std::vector<std::vector<int64_t>> tokens;  // per prompt: the new tokens, stop token included
  std::vector<FinishReason> finish_reasons;  // per prompt
  int64_t steps = 0;                         // decoder calls after the prompt (batch-wide)
};

// Streaming: called once per new token of each unfinished sequence, in order; returning
// false ends that sequence (FinishReason::cancelled).
using TokenCallback = std::function<bool(size_t sequence, int64_t token)>;
// Turns token ids into text, for stop strings (e.g. a Tokenizer's decode).
using Detokenizer = std::function<std::string(const std::vector<int64_t>&)>;

// Generates from token prompts with `model`. The KV cache is allocated once, for the
// longest prompt plus max_new_tokens (capped at max_position_embeddings). Throws
// GenerationError for an empty prompt, a prompt that fills the context, or bad options.
GenerationResult generate(LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationOptions& options, const TokenCallback& on_token = {},
                          const Detokenizer& detokenize = {});

// The decoding loop alone, for models that build their own prompt (audio embeddings):
// `first_logits` [B, vocab] are the logits after each prompt; `step` takes the chosen
// tokens [B] int64 and returns the next logits [B, vocab], and is called at most
// `max_steps` times. `prompts` are the prompts' token ids (for the repetition penalty;
// may be empty). Finished sequences are fed pad_token_id.
using DecodeStep = std::function<at::Tensor(const at::Tensor& tokens)>;
GenerationResult decode_loop(const at::Tensor& first_logits, const DecodeStep& step, int64_t max_steps,
                             const std::vector<std::vector<int64_t>>& prompts,
                             const GenerationOptions& options, const TokenCallback& on_token = {},
                             const Detokenizer& detokenize = {});

// The logits processors and the choice of the next token, one step. scores [B, vocab]
// float (modified copy); seen [B, vocab] bool (tokens of each sequence so far, for the
// repetition penalty; may be undefined). Returns the processed scores; -inf where
// top-k / top-p removed a token.
at::Tensor process_logits(const at::Tensor& scores, const at::Tensor& seen, const GenerationOptions& options);

}  // namespace pal::models
