#include "pal/infer/chat_completions.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace pal::infer {
namespace {

using nlohmann::json;

std::string request(const json& audio_part, const json& extra = json::object()) {
  json j = {{"model", "pal"},
            {"messages",
             {{{"role", "system"}, {"content", "Be brief."}},
              {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "What is it?"}}, audio_part}}}}}};
  j.update(extra);
  return j.dump();
}

json audio(const std::string& data) {
  return {{"type", "input_audio"}, {"input_audio", {{"data", data}, {"format", "wav"}}}};
}

// The RequestError's status, param and message.
RequestError refusal(const std::string& body, const ChatLimits& limits = {}) {
  try {
    parse_chat_request(body, limits);
  } catch (const RequestError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body.substr(0, 200);
  return RequestError(0, "");
}

TEST(Base64, RoundTripsEveryLengthAndVariant) {
  std::string bytes;
  for (int i = 0; i < 300; ++i) bytes.push_back(static_cast<char>(i * 7 + 3));
  for (size_t n = 0; n < 20; ++n)
    EXPECT_EQ(decode_base64(encode_base64(bytes.substr(0, n))), bytes.substr(0, n));
  EXPECT_EQ(encode_base64("RIFF"), "UklGRg==");
  EXPECT_EQ(decode_base64("UklG\nRg=="), "RIFF");
  EXPECT_EQ(decode_base64("UklGRg"), "RIFF");                          // padding optional
  EXPECT_EQ(decode_base64("data:audio/wav;base64,UklGRg=="), "RIFF");  // data URI
  EXPECT_EQ(decode_base64(encode_base64("\xfb\xff")), "\xfb\xff");
  EXPECT_EQ(decode_base64("-_8="), decode_base64("+/8="));  // URL-safe alphabet
  std::string msg = test::error_message<RequestError>([] { decode_base64("UklG*Rg==", "x.data"); });
  EXPECT_NE(msg.find("x.data: invalid base64: character at offset 4"), std::string::npos) << msg;
  msg = test::error_message<RequestError>([] { decode_base64("UklGR", "x"); });
  EXPECT_NE(msg.find("ends mid-character"), std::string::npos) << msg;
  msg = test::error_message<RequestError>([] { decode_base64("UklGRg==Rg", "x"); });
  EXPECT_NE(msg.find("data after '=' padding"), std::string::npos) << msg;
}

TEST(ChatRequest, ParsesTheOpenAIShape) {
  ChatRequest r = parse_chat_request(
      request(audio(encode_base64("RIFF....WAVE")), {{"max_tokens", 32},
                                                     {"temperature", 0.7},
                                                     {"top_p", 0.9},
                                                     {"seed", 5},
                                                     {"stop", "\n"},
                                                     {"stream", true},
                                                     {"stream_options", {{"include_usage", true}}},
                                                     {"user", "ignored"}}));
  EXPECT_EQ(r.model, "pal");
  ASSERT_TRUE(r.system);
  EXPECT_EQ(*r.system, "Be brief.");
  EXPECT_EQ(r.question, "What is it?");
  EXPECT_EQ(r.audio, "RIFF....WAVE");
  EXPECT_EQ(r.audio_param, "messages[1].content[1].input_audio.data");
  EXPECT_EQ(r.generation.max_new_tokens, 32);
  EXPECT_TRUE(r.generation.sample);
  EXPECT_DOUBLE_EQ(r.generation.temperature, 0.7);
  EXPECT_DOUBLE_EQ(r.generation.top_p, 0.9);
  EXPECT_EQ(r.generation.seed, 5u);
  EXPECT_EQ(r.generation.stop_strings, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);

  // Defaults: greedy, the server's max_tokens; a plain string content; no audio.
  ChatLimits limits;
  limits.default_max_tokens = 77;
  r = parse_chat_request(R"({"messages": [{"role": "user", "content": "Hello?"}], "temperature": 0})",
                         limits);
  EXPECT_FALSE(r.generation.sample);
  EXPECT_EQ(r.generation.max_new_tokens, 77);
  EXPECT_EQ(r.question, "Hello?");
  EXPECT_TRUE(r.audio.empty());
  EXPECT_FALSE(r.system);
  EXPECT_FALSE(r.stream);
  // Several text parts join with newlines.
  r = parse_chat_request(
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
          "max_completion_tokens": 3})");
  EXPECT_EQ(r.question, "a\nb");
  EXPECT_EQ(r.generation.max_new_tokens, 3);
}

TEST(ChatRequest, RefusalsNameTheField) {
  struct Case {
    std::string body, param, message;
  };
  const std::string ok_audio = audio(encode_base64("RIFF")).dump();
  const std::vector<Case> cases = {
      {"{not json", "", "the body is not valid JSON"},
      {"[1, 2]", "", "the body must be a JSON object, got array"},
      {"{}", "messages", "messages: missing"},
      {R"({"messages": []})", "messages", "expected a non-empty array"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role", "messages[0].role: missing"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content", "messages[0].content: missing"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content",
       "expected a string or an array"},
      {R"({"messages": [{"role": "user", "content": "  "}]})", "messages[0].content", "needs a question"},
      {R"({"messages": [{"role": "system", "content": "x"}]})", "messages", "no user message"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})",
       "messages[1].role", "not supported"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})", "messages[1]",
       "a second user message"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
       "messages[0].content[0].type", "unsupported content part type 'image_url'"},
      {R"({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})",
       "messages[0].content[0].input_audio", "missing"},
      {R"({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]}]})",
       "messages[0].content[0].input_audio.data", "missing"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "input_audio", "input_audio": {"data": "@@@@"}}]}]})",
       "messages[0].content[1].input_audio.data", "invalid base64"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"},)" + ok_audio + "," +
           ok_audio + "]}]}",
       "messages[0].content[2]", "a second input_audio part"},
      {R"({"messages": [{"role": "user", "content": "q"}], "max_tokens": 100000})", "max_tokens",
       "must be in [1, 512], got 100000"},
      {R"({"messages": [{"role": "user", "content": "q"}], "max_tokens": "ten"})", "max_tokens",
       "expected an integer"},
      {R"({"messages": [{"role": "user", "content": "q"}], "temperature": 3})", "temperature",
       "must be in [0, 2]"},
      {R"({"messages": [{"role": "user", "content": "q"}], "top_p": 0})", "top_p", "must be in (0, 1]"},
      {R"({"messages": [{"role": "user", "content": "q"}], "n": 2})", "n", "must be in [1, 1]"},
      {R"({"messages": [{"role": "user", "content": "q"}], "stream": "yes"})", "stream",
       "expected true or false"},
      {R"({"messages": [{"role": "user", "content": "q"}], "stop": ["a", "b", "c", "d", "e"]})", "stop",
       "at most 4"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    RequestError e = refusal(c.body);
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), c.param);
    EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
  }
}

TEST(ChatResponse, JsonHasTheOpenAIFields) {
  Answer a;
  a.text = "A dog barks.";
  a.tokens = {1, 2, 3, 4};
  a.finish_reason = FinishReason::stop_token;
  a.prompt_tokens = 20;
  a.audio_tokens = 50;
  json j = json::parse(chat_completion_json("chatcmpl-1", "pal", 1700000000, a));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "A dog barks.");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 70);
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j["usage"]["total_tokens"], 74);
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["audio_tokens"], 50);

  ChunkContent first;
  first.role = "assistant";
  j = json::parse(chat_chunk_json("c", "pal", 1, first));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["choices"][0]["delta"], json({{"role", "assistant"}}));
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  ChunkContent piece;
  piece.content = " dog";
  EXPECT_EQ(json::parse(chat_chunk_json("c", "pal", 1, piece))["choices"][0]["delta"]["content"], " dog");
  ChunkContent last;
  last.finish_reason = "length";
  j = json::parse(chat_chunk_json("c", "pal", 1, last));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["delta"].empty());
  ChunkContent usage;
  usage.usage = &a;
  j = json::parse(chat_chunk_json("c", "pal", 1, usage));
  EXPECT_TRUE(j["choices"].empty());
  EXPECT_EQ(j["usage"]["total_tokens"], 74);

  j = json::parse(error_json("bad thing", "invalid_request_error", "messages"));
  EXPECT_EQ(j["error"]["message"], "bad thing");
  EXPECT_EQ(j["error"]["param"], "messages");
  EXPECT_TRUE(j["error"]["code"].is_null());
  // Invalid UTF-8 in an answer (a random model) is replaced, not a crash.
  a.text = "\xff\xfe ok";
  EXPECT_NO_THROW(json::parse(chat_completion_json("c", "pal", 1, a)));
}

}  // namespace
}  // namespace pal::infer
