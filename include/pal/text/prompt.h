// How a question about a clip becomes token ids, the same way in training and in
// inference: the chat template of the LLM (or a plain format for base models), with the
// audio placeholder at the start of the user turn.
//
//   llama3 / chatml   the model's template (pal/text/chat_template.h): user content is
//                     "<|audio|>\n" + question; the answer ends with the end-of-turn token
//   plain             [BOS] [system "\n\n"] "User: <|audio|>\n" question "\nAssistant:"
//                     and the answer " " + answer + EOS (for base models without a template)
//
// Prompts longer than `max_tokens` lose question tokens from the left (the template's
// header and the audio placeholder stay).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "pal/core/config.h"
#include "pal/text/chat_template.h"

namespace pal::text {

class Tokenizer;

struct PromptConfig {
  std::string chat_template = "auto";  // auto (from the LLM folder's template, else plain), llama3, chatml, plain
  std::string system;                  // a system message for every prompt ("" none)
  int64_t max_tokens = 512;            // prompt + answer tokens in training; prompt tokens in inference

  template <class V>
  void visit(V& v) {
    v("chat_template", chat_template, config::Rule().one_of({"auto", "llama3", "chatml", "plain"}));
    v("system", system);
    v("max_tokens", max_tokens, config::Rule().at_least(8));
  }
};

class PromptBuilder {
 public:
  // `llm_folder` resolves chat_template: auto. The tokenizer must outlive the builder
  // and already know the audio placeholder (Tokenizer::add_special_token).
  PromptBuilder(const Tokenizer& tokenizer, const PromptConfig& config, const std::filesystem::path& llm_folder,
                std::string audio_token = std::string(kAudioPlaceholder));

  // The ids the model continues from to answer `question`.
  std::vector<int64_t> prompt(const std::string& question, bool with_audio) const;

  struct Example {
    std::vector<int64_t> ids;
    std::vector<uint8_t> is_answer;  // 1 at the answer's tokens (the loss targets), end marker included
  };
  // A training example: prompt + answer + end marker, cut to max_tokens.
  Example example(const std::string& question, const std::string& answer, bool with_audio) const;

  // Ids that end an answer (end of turn, EOS), for generation's stop tokens.
  std::vector<int64_t> stop_ids() const { return stop_ids_; }
  // "llama3", "chatml" or "plain".
  std::string format() const;

 private:
  std::vector<int64_t> prompt_ids(const std::string& question, bool with_audio, int64_t budget) const;

  const Tokenizer& tokenizer_;
  PromptConfig config_;
  std::string audio_token_;
  bool plain_ = false;
  ChatTemplateKind kind_ = ChatTemplateKind::llama3;
  std::string end_marker_;  // the chat template's end of turn: "<|eot_id|>", "<|im_end|>"
  int64_t end_id_ = -1;     // the id that ends every answer (end of turn, or EOS for plain)
  bool answer_space_ = false;  // plain: write " " before the answer
  std::vector<int64_t> stop_ids_;
};

}  // namespace pal::text
