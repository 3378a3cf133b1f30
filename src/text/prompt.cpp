#include "pal/text/prompt.h"

#include <algorithm>

#include "pal/core/error.h"
#include "pal/text/tokenizer.h"

namespace pal::text {
namespace {

bool has_template(const std::filesystem::path& folder) {
  try {
    chat_template_kind(folder);
    return true;
  } catch (const TokenizerError&) {
    return false;
  }
}

}  // namespace

PromptBuilder::PromptBuilder(const Tokenizer& tokenizer, const PromptConfig& config,
                             const std::filesystem::path& llm_folder, std::string audio_token)
    : tokenizer_(tokenizer), config_(config), audio_token_(std::move(audio_token)) {
  if (config_.chat_template == "plain" || (config_.chat_template == "auto" && !has_template(llm_folder))) {
    plain_ = true;
  } else if (config_.chat_template == "auto") {
    kind_ = chat_template_kind(llm_folder);
  } else {
    kind_ = parse_chat_template_kind(config_.chat_template);
  }
  auto add_stop = [&](const std::string& token) {
    if (auto id = tokenizer_.token_id(token)) {
      if (std::find(stop_ids_.begin(), stop_ids_.end(), *id) == stop_ids_.end()) stop_ids_.push_back(*id);
      return true;
    }
    return false;
  };
  if (!plain_) {
    end_marker_ = kind_ == ChatTemplateKind::llama3 ? "<|eot_id|>" : "<|im_end|>";
    if (!add_stop(end_marker_))
      throw TokenizerError(tokenizer_.describe() + ": the " + to_string(kind_) + " chat template needs the token " +
                           end_marker_ + ", which this tokenizer lacks (set prompt.chat_template: plain?)");
  }
  if (auto eos = tokenizer_.eos_id()) {
    if (std::find(stop_ids_.begin(), stop_ids_.end(), *eos) == stop_ids_.end()) stop_ids_.push_back(*eos);
  }
  if (stop_ids_.empty())
    throw TokenizerError(tokenizer_.describe() + ": the plain prompt format needs an EOS token to end answers");
  end_id_ = stop_ids_.front();
  // A tokenizer that puts a space before the first word (sentencepiece's dummy prefix)
  // needs none written before the answer; a byte-level BPE does.
  const std::vector<int64_t> probe = tokenizer_.encode("a", false);
  answer_space_ = plain_ && !(probe.size() == 1 && tokenizer_.token_bytes(probe[0], false).rfind(' ', 0) == 0);
}

std::string PromptBuilder::format() const { return plain_ ? "plain" : to_string(kind_); }

std::vector<int64_t> PromptBuilder::prompt_ids(const std::string& question, bool with_audio, int64_t budget) const {
  const std::string audio = with_audio ? audio_token_ + "\n" : std::string();
  auto render = [&](const std::string& q) {
    if (plain_) {
      std::string text = config_.system.empty() ? "" : config_.system + "\n\n";
      text += "User: " + audio + q + "\nAssistant:";
      return tokenizer_.encode(text, /*add_special=*/true);
    }
    std::vector<ChatMessage> messages;
    if (!config_.system.empty()) messages.push_back({"system", config_.system});
    messages.push_back({"user", audio + q});
    return tokenizer_.encode(ChatTemplate(kind_).render(messages, true), /*add_special=*/false);
  };
  std::vector<int64_t> ids = render(question);
  if (static_cast<int64_t>(ids.size()) <= budget) return ids;
  // Too long: keep the question's tail. Cut by tokens of the question alone, then
  // re-render (the template's own tokens stay).
  const std::vector<int64_t> q = tokenizer_.encode(question, false);
  const int64_t overhead = static_cast<int64_t>(ids.size()) - static_cast<int64_t>(q.size());
  int64_t keep = std::max<int64_t>(0, budget - overhead);
  while (true) {
    std::vector<int64_t> tail(q.end() - std::min<int64_t>(keep, static_cast<int64_t>(q.size())), q.end());
    ids = render(tokenizer_.decode(tail, true));
    if (static_cast<int64_t>(ids.size()) <= budget || keep == 0) break;
    keep -= std::max<int64_t>(1, static_cast<int64_t>(ids.size()) - budget);
    keep = std::max<int64_t>(0, keep);
  }
  if (static_cast<int64_t>(ids.size()) > budget)
    throw TokenizerError("prompt.max_tokens = " + std::to_string(config_.max_tokens) +
                         " is too small for the prompt template itself (" + std::to_string(ids.size()) + " tokens)");
  return ids;
}

std::vector<int64_t> PromptBuilder::prompt(const std::string& question, bool with_audio) const {
  return prompt_ids(question, with_audio, config_.max_tokens);
}

PromptBuilder::Example PromptBuilder::example(const std::string& question, const std::string& answer,
                                              bool with_audio) const {
  std::vector<int64_t> answer_ids = tokenizer_.encode((answer_space_ ? " " : "") + answer, false);
  answer_ids.push_back(end_id_);
  // The answer keeps at most half the budget; the prompt gets the rest.
  const int64_t half = config_.max_tokens / 2;
  if (static_cast<int64_t>(answer_ids.size()) > half) {
    answer_ids.resize(static_cast<size_t>(half - 1));
    answer_ids.push_back(end_id_);
  }
  Example out;
  out.ids = prompt_ids(question, with_audio, config_.max_tokens - static_cast<int64_t>(answer_ids.size()));
  out.is_answer.assign(out.ids.size(), 0);
  out.ids.insert(out.ids.end(), answer_ids.begin(), answer_ids.end());
  out.is_answer.resize(out.ids.size(), 1);
  return out;
}

}  // namespace pal::text
