#include "pal/text/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "pal/core/error.h"
#include "pal/text/tokenizer.h"
#include "test_util.h"

namespace pal::text {
namespace {

using nlohmann::json;

std::filesystem::path tokenizer_fixture(const std::string& name) {
  return test::fixtures() / "tokenizer" / name;
}

std::vector<ChatMessage> messages_of(const json& j) {
  std::vector<ChatMessage> out;
  for (const json& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

TEST(ParityChatTemplate, RendersAsTransformersApplyChatTemplate) {
  std::ifstream in(tokenizer_fixture("expected.json"));
  const json expected = json::parse(in);
  ASSERT_GE(expected["chat"].size(), 16u);
  for (const json& c : expected["chat"]) {
    ChatTemplateKind kind = parse_chat_template_kind(c["kind"].get<std::string>());
    EXPECT_EQ(chat_template_kind(tokenizer_fixture(c["folder"].get<std::string>())), kind);
    std::string got =
        ChatTemplate(kind).render(messages_of(c["messages"]), c["add_generation_prompt"].get<bool>());
    EXPECT_EQ(got, c["text"].get<std::string>()) << c["messages"].dump();
  }
}

TEST(ChatTemplate, DateIsAnOption) {
  ChatTemplateOptions options;
  options.date = "01 Jan 2026";
  std::string text = ChatTemplate(ChatTemplateKind::llama3, options).render({{"user", "Hi"}}, true);
  EXPECT_NE(text.find("Today Date: 01 Jan 2026\n\n"), std::string::npos) << text;
}

TEST(ChatTemplate, AudioPlaceholderEncodesToOneId) {
  for (const auto& [folder, kind] :
       {std::pair{"llama3", ChatTemplateKind::llama3}, {"qwen2", ChatTemplateKind::chatml}}) {
    auto tok = load_tokenizer(tokenizer_fixture(folder));
    int64_t audio = tok->add_special_token(std::string(kAudioPlaceholder));
    std::string prompt =
        ChatTemplate(kind).render({{"user", "Transcribe: " + std::string(kAudioPlaceholder)}}, true);
    std::vector<int64_t> ids = tok->encode(prompt, false);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), audio), 1) << folder;
    EXPECT_EQ(tok->decode(ids), prompt) << folder;
  }
}

TEST(ChatTemplate, RejectsEmptyConversationsAndToolRoles) {
  for (ChatTemplateKind kind : {ChatTemplateKind::llama3, ChatTemplateKind::chatml}) {
    EXPECT_THROW(ChatTemplate(kind).render({}, true), TokenizerError);
    std::string msg = test::error_message<TokenizerError>([&] {
      ChatTemplate(kind).render({{"tool", "{}"}}, true);
    });
    EXPECT_NE(msg.find("'tool'"), std::string::npos) << msg;
  }
}

TEST(ChatTemplate, KindFromFolderErrorsNameTheFile) {
  test::TempDir dir;
  std::string msg = test::error_message<TokenizerError>([&] { chat_template_kind(dir.path()); });
  EXPECT_NE(msg.find(dir.path().string()), std::string::npos) << msg;
  test::write_bytes(dir / "tokenizer_config.json", R"({"chat_template": "{{ messages }}"})");
  msg = test::error_message<TokenizerError>([&] { chat_template_kind(dir.path()); });
  EXPECT_NE(msg.find((dir / "tokenizer_config.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown chat template"), std::string::npos) << msg;
  test::write_bytes(dir / "tokenizer_config.json", R"({"chat_template": [{"name": "default",
    "template": "{{ '<|im_start|>' }}"}]})");
  EXPECT_EQ(chat_template_kind(dir.path()), ChatTemplateKind::chatml);
  // chat_template.jinja, where transformers saves it now, comes first.
  test::write_bytes(dir / "chat_template.jinja", "{{ '<|start_header_id|>' }}");
  EXPECT_EQ(chat_template_kind(dir.path()), ChatTemplateKind::llama3);
  EXPECT_THROW(parse_chat_template_kind("vicuna"), TokenizerError);
  EXPECT_EQ(to_string(parse_chat_template_kind("chatml")), "chatml");
}

}  // namespace
}  // namespace pal::text
