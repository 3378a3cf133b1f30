// ref: the chat_template of meta-llama/Llama-3.2-1B-Instruct and of Qwen/Qwen2.5-*-Instruct
// (tokenizer_config.json); scripts/make_parity_fixtures.py holds both Jinja texts.
#include "pal/text/chat_template.h"

#include <nlohmann/json.hpp>

#include "pal/core/error.h"
#include "tokenizer_impl.h"
#include "unicode.h"

namespace pal::text {
namespace {

// Python's str.isspace(), which Jinja's trim filter (str.strip()) uses.
bool is_python_space(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Jinja's `| trim`.
std::string trim(const std::string& s) {
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  if (unicode::decode_utf8(s, cps, offsets) != std::string::npos)
    throw TokenizerError("chat message content is not valid UTF-8");
  size_t b = 0, e = cps.size();
  while (b < e && is_python_space(cps[b])) ++b;
  while (e > b && is_python_space(cps[e - 1])) --e;
  return s.substr(offsets[b], offsets[e] - offsets[b]);
}

[[noreturn]] void unsupported_role(ChatTemplateKind kind, const std::string& role) {
  throw TokenizerError("chat template " + to_string(kind) + ": unsupported message role '" + role +
                       "' (supported: system, user, assistant)");
}

}  // namespace

ChatTemplate::ChatTemplate(ChatTemplateKind kind, ChatTemplateOptions options)
    : kind_(kind), options_(std::move(options)) {}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (messages.empty())
    throw TokenizerError("chat template " + to_string(kind_) + ": the conversation is empty");
  std::string out;
  bool has_system = messages.front().role == "system";
  if (kind_ == ChatTemplateKind::llama3) {
    // The system header always comes, with the dates; a system message goes after them.
    out += "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n";
    out += "Cutting Knowledge Date: December 2023\nToday Date: " + options_.date + "\n\n";
    if (has_system) out += trim(messages.front().content);
    out += "<|eot_id|>";
    for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      if (m.role == "tool" || m.role == "ipython") unsupported_role(kind_, m.role);
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
    }
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }
  // chatml (Qwen2.5): a default system message when there is none; content is not trimmed.
  if (!has_system) out += "<|im_start|>system\n" + options_.default_system + "<|im_end|>\n";
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") unsupported_role(kind_, m.role);
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

ChatTemplateKind chat_template_kind_of(std::string_view jinja, const std::string& source) {
  if (jinja.find("<|start_header_id|>") != std::string_view::npos) return ChatTemplateKind::llama3;
  if (jinja.find("<|im_start|>") != std::string_view::npos) return ChatTemplateKind::chatml;
  throw TokenizerError(
      source +
      ": unknown chat template (supported: Llama 3 with <|start_header_id|>, ChatML with <|im_start|>)");
}

ChatTemplateKind chat_template_kind(const std::filesystem::path& folder) {
  // transformers >= 4.43 saves the template as chat_template.jinja, older ones inside
  // tokenizer_config.json (a string, or a list of {"name", "template"}).
  const std::filesystem::path jinja = folder / "chat_template.jinja";
  if (std::filesystem::exists(jinja))
    return chat_template_kind_of(read_tokenizer_file(jinja), jinja.string());
  const std::filesystem::path config = folder / "tokenizer_config.json";
  if (!std::filesystem::exists(config))
    throw TokenizerError(folder.string() +
                         ": no chat template (neither chat_template.jinja nor tokenizer_config.json)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_tokenizer_file(config));
  } catch (const nlohmann::json::exception& e) {
    throw TokenizerError(config.string() + ": not valid JSON: " + e.what());
  }
  const std::string source = config.string() + ": chat_template";
  if (!j.is_object() || !j.contains("chat_template")) throw TokenizerError(source + ": the key is missing");
  const nlohmann::json& t = j["chat_template"];
  if (t.is_string()) return chat_template_kind_of(t.get<std::string>(), source);
  if (t.is_array()) {
    for (const auto& named : t) {
      if (named.value("name", "") == "default" && named.contains("template") && named["template"].is_string())
        return chat_template_kind_of(named["template"].get<std::string>(), source);
    }
  }
  throw TokenizerError(source + ": expected a string or a list with a \"default\" template");
}

ChatTemplateKind parse_chat_template_kind(std::string_view name) {
  if (name == "llama3") return ChatTemplateKind::llama3;
  if (name == "chatml") return ChatTemplateKind::chatml;
  throw TokenizerError("unknown chat template kind '" + std::string(name) + "' (expected llama3 or chatml)");
}

std::string to_string(ChatTemplateKind kind) {
  return kind == ChatTemplateKind::llama3 ? "llama3" : "chatml";
}

}  // namespace pal::text
