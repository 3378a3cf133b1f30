// Chat templates written as code: the prompt text of a conversation, byte-identical to
// transformers' tokenizer.apply_chat_template(messages, tokenize=False) with the model's
// official Jinja template (for messages without tools).
//
//   ChatTemplate chat(chat_template_kind("models/Qwen2.5-0.5B-Instruct"));
//   std::string prompt = chat.render({{"user", "What is in <|audio|>?"}}, true);
//
// Audio: the user content holds kAudioPlaceholder where the audio goes; the tokenizer needs
// it as a special token (Tokenizer::add_special_token) so that it encodes to one id.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace pal::text {

inline constexpr std::string_view kAudioPlaceholder = "<|audio|>";

enum class ChatTemplateKind {
  llama3,  // Llama 3.1 / 3.2 Instruct: header blocks, <|eot_id|>, a dated system header
  chatml,  // Qwen2 / Qwen2.5 Instruct: <|im_start|>role\n...<|im_end|>
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

struct ChatTemplateOptions {
  // llama3: the "Today Date:" of the system header. The template's own fallback; transformers
  // renders today's date instead (its strftime_now), unless date_string is passed.
  std::string date = "26 Jul 2024";
  // chatml: the system message when the conversation has none (Qwen2.5's).
  std::string default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
};

class ChatTemplate {
 public:
  explicit ChatTemplate(ChatTemplateKind kind, ChatTemplateOptions options = {});

  // The prompt text; add_generation_prompt appends the assistant header that the model
  // continues from. Throws TokenizerError for an empty conversation or an unsupported role
  // (tool calls are not supported).
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  ChatTemplateKind kind() const { return kind_; }
  const ChatTemplateOptions& options() const { return options_; }

 private:
  ChatTemplateKind kind_;
  ChatTemplateOptions options_;
};

// The kind whose markers the Jinja text of a chat template uses ("<|start_header_id|>":
// llama3, "<|im_start|>": chatml); throws TokenizerError naming `source` when neither.
ChatTemplateKind chat_template_kind_of(std::string_view jinja, const std::string& source);

// The kind of an HF model folder's template: chat_template.jinja, else tokenizer_config.json's
// "chat_template". Throws TokenizerError when there is none or it is of an unknown kind.
ChatTemplateKind chat_template_kind(const std::filesystem::path& folder);

// "llama3" / "chatml" <-> the kind (for configs); parsing throws TokenizerError.
ChatTemplateKind parse_chat_template_kind(std::string_view name);
std::string to_string(ChatTemplateKind kind);

}  // namespace pal::text
