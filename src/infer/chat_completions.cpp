#include "pal/infer/chat_completions.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

namespace pal::infer {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw RequestError(400, param + ": " + message, param);
}

std::string type_of(const json& j) {
  return j.type_name();
}

const json& require(const json& object, const std::string& key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end()) bad(where.empty() ? key : where + "." + key, "missing");
  return *it;
}

std::string text_of(const json& j, const std::string& param) {
  if (!j.is_string()) bad(param, "expected a string, got " + type_of(j));
  return j.get<std::string>();
}

int decode_char(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

double number(const json& j, const std::string& param, double lo, double hi, bool lo_open = false) {
  if (!j.is_number()) bad(param, "expected a number, got " + type_of(j));
  const double v = j.get<double>();
  if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo)) {
    char range[96];
    std::snprintf(range, sizeof range, "must be in %s%g, %g], got %g", lo_open ? "(" : "[", lo, hi, v);
    bad(param, range);
  }
  return v;
}

int64_t integer(const json& j, const std::string& param, int64_t lo, int64_t hi) {
  if (!j.is_number_integer()) bad(param, "expected an integer, got " + j.dump());
  const int64_t v = j.get<int64_t>();
  if (v < lo || v > hi)
    bad(param,
        "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
  return v;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

std::string decode_base64(std::string_view text, const std::string& param) {
  if (text.rfind("data:", 0) == 0) {
    const size_t comma = text.find(',');
    if (comma == std::string_view::npos || text.substr(0, comma).find(";base64") == std::string_view::npos)
      bad(param, "a data URI must be data:<type>;base64,<data>");
    text.remove_prefix(comma + 1);
  }
  std::string out;
  out.reserve(text.size() / 4 * 3 + 3);
  uint32_t bits = 0;
  int have = 0;
  size_t padding = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++padding;
      continue;
    }
    const int v = decode_char(c);
    if (v < 0 || padding > 0)
      bad(param, std::string("invalid base64: ") + (padding > 0 ? "data after '=' padding" : "character") +
                     " at offset " + std::to_string(i));
    bits = (bits << 6) | static_cast<uint32_t>(v);
    have += 6;
    if (have >= 8) {
      have -= 8;
      out.push_back(static_cast<char>((bits >> have) & 0xFF));
    }
  }
  if (have >= 6 || padding > 2) bad(param, "invalid base64: the data ends mid-character (truncated?)");
  return out;
}

std::string encode_base64(std::string_view bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(alphabet[(v >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out.push_back(alphabet[(v >> 18) & 63]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

ChatRequest parse_chat_request(std::string_view body, const ChatLimits& limits) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw RequestError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw RequestError(400, "the body must be a JSON object, got " + type_of(j));
  ChatRequest r;
  if (j.contains("model") && !j["model"].is_null()) r.model = text_of(j["model"], "model");

  const json& messages = require(j, "messages", "");
  if (!messages.is_array() || messages.empty()) bad("messages", "expected a non-empty array of messages");
  int users = 0;
  for (size_t m = 0; m < messages.size(); ++m) {
    const std::string where = "messages[" + std::to_string(m) + "]";
    const json& message = messages[m];
    if (!message.is_object()) bad(where, "expected an object, got " + type_of(message));
    const std::string role = text_of(require(message, "role", where), where + ".role");
    const json& content = require(message, "content", where);
    if (role == "assistant" || role == "tool" || role == "function")
      bad(where + ".role", "'" + role +
                               "' messages are not supported: pal-infer answers one question about one clip "
                               "(send one user message, optionally after one system message)");
    if (role != "system" && role != "developer" && role != "user")
      bad(where + ".role", "unknown role '" + role + "' (expected system or user)");
    // Content: a string, or an array of parts.
    std::vector<std::string> texts;
    if (content.is_string()) {
      texts.push_back(content.get<std::string>());
    } else if (content.is_array()) {
      for (size_t p = 0; p < content.size(); ++p) {
        const std::string pwhere = where + ".content[" + std::to_string(p) + "]";
        const json& part = content[p];
        if (!part.is_object()) bad(pwhere, "expected a content part object, got " + type_of(part));
        const std::string type = text_of(require(part, "type", pwhere), pwhere + ".type");
        if (type == "text") {
          texts.push_back(text_of(require(part, "text", pwhere), pwhere + ".text"));
        } else if (type == "input_audio") {
          if (role != "user") bad(pwhere, "audio belongs in the user message");
          if (!r.audio_param.empty())
            bad(pwhere,
                "a second input_audio part (the first is " + r.audio_param + "); one clip per request");
          const json& audio = require(part, "input_audio", pwhere);
          if (!audio.is_object())
            bad(pwhere + ".input_audio", "expected an object with \"data\" and \"format\"");
          r.audio_param = pwhere + ".input_audio.data";
          const std::string data = text_of(require(audio, "data", pwhere + ".input_audio"), r.audio_param);
          if (audio.contains("format")) text_of(audio["format"], pwhere + ".input_audio.format");
          r.audio = decode_base64(data, r.audio_param);
          if (r.audio.empty()) bad(r.audio_param, "no audio data");
        } else {
          bad(pwhere + ".type",
              "unsupported content part type '" + type + "' (expected text or input_audio)");
        }
      }
    } else {
      bad(where + ".content", "expected a string or an array of content parts, got " + type_of(content));
    }
    std::string joined;
    for (const auto& t : texts) {
      if (t.empty()) continue;
      joined += (joined.empty() ? "" : "\n") + t;
    }
    if (role == "user") {
      if (++users > 1)
        bad(where, "a second user message: pal-infer answers one question about one clip per request");
      r.question = joined;
      if (r.question.find_first_not_of(" \t\r\n") == std::string::npos)
        bad(where + ".content", "no text: the user message needs a question");
    } else {
      if (r.system) bad(where, "a second system message (at most one)");
      r.system = joined;
    }
  }
  if (users == 0) bad("messages", "no user message (the question about the clip)");

  GenerationOptions& g = r.generation;
  g.max_new_tokens = std::min(limits.default_max_tokens, limits.max_tokens);
  for (const char* key : {"max_tokens", "max_completion_tokens"})
    if (j.contains(key) && !j[key].is_null()) g.max_new_tokens = integer(j[key], key, 1, limits.max_tokens);
  if (j.contains("temperature") && !j["temperature"].is_null()) {
    g.temperature = number(j["temperature"], "temperature", 0, 2);
    g.sample = g.temperature > 0;
    if (!g.sample) g.temperature = 1.0;
  }
  if (j.contains("top_p") && !j["top_p"].is_null()) g.top_p = number(j["top_p"], "top_p", 0, 1, true);
  if (j.contains("top_k") && !j["top_k"].is_null()) g.top_k = integer(j["top_k"], "top_k", 0, 1 << 30);
  if (j.contains("repetition_penalty") && !j["repetition_penalty"].is_null())
    g.repetition_penalty = number(j["repetition_penalty"], "repetition_penalty", 0, 10, true);
  if (j.contains("seed") && !j["seed"].is_null())
    g.seed = static_cast<uint64_t>(integer(j["seed"], "seed", INT64_MIN, INT64_MAX));
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& stop = j["stop"];
    if (stop.is_string()) {
      g.stop_strings.push_back(stop.get<std::string>());
    } else if (stop.is_array() && stop.size() <= 4) {
      for (size_t i = 0; i < stop.size(); ++i)
        g.stop_strings.push_back(text_of(stop[i], "stop[" + std::to_string(i) + "]"));
    } else {
      bad("stop", "expected a string or an array of at most 4 strings");
    }
    for (const auto& s : g.stop_strings)
      if (s.empty()) bad("stop", "empty stop string");
  }
  if (j.contains("n") && !j["n"].is_null() && integer(j["n"], "n", 1, 1) != 1) bad("n", "must be 1");
  if (j.contains("stream") && !j["stream"].is_null()) {
    if (!j["stream"].is_boolean()) bad("stream", "expected true or false, got " + j["stream"].dump());
    r.stream = j["stream"].get<bool>();
  }
  if (j.contains("stream_options") && j["stream_options"].is_object() &&
      j["stream_options"].contains("include_usage")) {
    const json& u = j["stream_options"]["include_usage"];
    if (!u.is_boolean()) bad("stream_options.include_usage", "expected true or false");
    r.include_usage = u.get<bool>();
  }
  return r;
}

namespace {

json usage_json(const Answer& a) {
  const int64_t prompt = a.prompt_tokens + a.audio_tokens, completion = static_cast<int64_t>(a.tokens.size());
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"audio_tokens", a.audio_tokens}}}};
}

}  // namespace

std::string chat_completion_json(const std::string& id, const std::string& model, int64_t created,
                                 const Answer& answer) {
  json j = {{"id", id},
            {"object", "chat.completion"},
            {"created", created},
            {"model", model},
            {"choices",
             {{{"index", 0},
               {"message", {{"role", "assistant"}, {"content", answer.text}}},
               {"finish_reason", finish_reason_name(answer.finish_reason)}}}},
            {"usage", usage_json(answer)}};
  return dump(j);
}

std::string chat_chunk_json(const std::string& id, const std::string& model, int64_t created,
                            const ChunkContent& chunk) {
  json j = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model}};
  if (chunk.usage) {
    j["choices"] = json::array();
    j["usage"] = usage_json(*chunk.usage);
    return dump(j);
  }
  json delta = json::object();
  if (chunk.role) delta["role"] = *chunk.role;
  if (chunk.content) delta["content"] = *chunk.content;
  json choice = {{"index", 0}, {"delta", delta}, {"finish_reason", nullptr}};
  if (chunk.finish_reason) choice["finish_reason"] = *chunk.finish_reason;
  j["choices"] = json::array({choice});
  return dump(j);
}

std::string error_json(const std::string& message, const std::string& type, const std::string& param) {
  json j = {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", nullptr}}}};
  return dump(j);
}

}  // namespace pal::infer
