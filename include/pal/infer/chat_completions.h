// The OpenAI chat completions protocol, as `pal-infer serve` speaks it: requests parsed
// and checked, responses and stream chunks written (JSON text in and out; no HTTP here).
//
// Request (POST /v1/chat/completions, Content-Type: application/json):
//   {"model": "pal",                                   (optional, echoed back)
//    "messages": [
//      {"role": "system", "content": "Be brief."},      (optional, at most one)
//      {"role": "user", "content": [
//        {"type": "text", "text": "What is making this sound?"},
//        {"type": "input_audio", "input_audio": {"data": "<base64 of a WAV/FLAC/OGG/MP3 file>",
//                                                "format": "wav"}}]}],
//    "max_tokens": 64,                 (or max_completion_tokens; default: the server's)
//    "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop": ["\n"],
//    "stream": true, "stream_options": {"include_usage": true}}
// One user turn with at most one input_audio part (the model was trained on one question
// about one clip); its text parts, joined by newlines, are the question. Unlike OpenAI,
// the default temperature is 0 (greedy, deterministic); temperature > 0 samples.
// Extensions: "top_k", "repetition_penalty". Unknown fields are ignored, as OpenAI's
// servers do with fields they do not know, except "n" other than 1.
//
// Response: {"id", "object": "chat.completion", "created", "model", "choices": [{"index": 0,
// "message": {"role": "assistant", "content"}, "finish_reason": "stop" | "length"}],
// "usage": {"prompt_tokens" (text + audio), "completion_tokens", "total_tokens",
// "prompt_tokens_details": {"audio_tokens"}}}. Streaming: server-sent events, each
// "data: {chunk}\n\n" with choices[0].delta (first {"role": "assistant"}, then
// {"content": piece}), a last chunk with finish_reason, then "data: [DONE]\n\n".
// Errors: {"error": {"message", "type": "invalid_request_error", "param", "code"}}.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pal/core/error.h"
#include "pal/pipeline.h"

namespace pal::infer {

// A request the server refuses: the HTTP status, and the request field at fault.
class RequestError : public Error {
 public:
  RequestError(int status, const std::string& message, std::string param = {})
      : Error(message), status_(status), param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }  // e.g. "messages[1].content[0].input_audio.data"

 private:
  int status_;
  std::string param_;
};

struct ChatLimits {
  int64_t max_tokens = 512;          // the largest max_tokens a request may ask for
  int64_t default_max_tokens = 256;  // when a request gives none (capped at max_tokens)
};

struct ChatRequest {
  std::string model;                  // as the request named it ("" when absent)
  std::optional<std::string> system;  // the system message
  std::string question;               // the user turn's text
  std::string audio;                  // the decoded audio file bytes ("" without audio)
  std::string audio_param;            // where the audio was: "messages[0].content[1].input_audio.data"
  GenerationOptions generation;       // max_new_tokens, sampling, seed, stop strings
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Throws RequestError (400) naming the field for malformed JSON, a missing or mistyped
// field, invalid base64, or a value outside `limits`.
ChatRequest parse_chat_request(std::string_view body, const ChatLimits& limits = {});

// Standard base64 (RFC 4648; '+' '/', '=' padding, whitespace skipped), also URL-safe
// ('-' '_') and with a "data:...;base64," prefix. Throws RequestError naming `param`
// and the offset of the first bad character.
std::string decode_base64(std::string_view text, const std::string& param = "data");
std::string encode_base64(std::string_view bytes);

// The JSON texts of responses. `id` like "chatcmpl-1a2b", `created` Unix seconds.
std::string chat_completion_json(const std::string& id, const std::string& model, int64_t created,
                                 const Answer& answer);
// A stream chunk: with `role` the first, with `content` a piece, with `finish_reason` the
// last (and with `usage` when asked for: a chunk with empty choices, as OpenAI sends it).
struct ChunkContent {
  std::optional<std::string> role, content, finish_reason;
  const Answer* usage = nullptr;
};
std::string chat_chunk_json(const std::string& id, const std::string& model, int64_t created,
                            const ChunkContent& chunk);
std::string error_json(const std::string& message, const std::string& type = "invalid_request_error",
                       const std::string& param = {});

}  // namespace pal::infer
