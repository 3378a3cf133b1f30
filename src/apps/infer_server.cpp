#include "infer_server.h"

#include <httplib.h>

#include <atomic>
#include <csignal>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "pal/core/error.h"
#include "pal/core/logging.h"

namespace pal::apps {
namespace {

using Clock = std::chrono::steady_clock;

void reply_error(httplib::Response& res, int status, const std::string& message,
                 const std::string& param = {}, const std::string& type = "invalid_request_error") {
  res.status = status;
  res.set_content(infer::error_json(message, type, param), "application/json");
}

// What a streaming request's token callback (on the queue's worker) hands to its HTTP
// thread.
struct StreamState {
  std::mutex mutex;
  std::condition_variable wake;
  std::vector<std::string> pieces;
  bool gone = false;  // the client disconnected: stop generating
  bool started = false;
  std::future<Answer> answer;
};

}  // namespace

void ServerOptions::validate() const {
  if (port < 0 || port > 65535) throw ConfigError("port: must be in [0, 65535], got " + std::to_string(port));
  if (max_body_bytes < 1024) throw ConfigError("max_body_bytes: must be at least 1024");
  if (limits.max_tokens < 1 || limits.default_max_tokens < 1)
    throw ConfigError("max_tokens and default_max_tokens: must be >= 1");
  if (http_threads < 1) throw ConfigError("http_threads: must be >= 1");
  queue.validate();
}

struct InferServer::State {
  State(Pipeline& p, const ServerOptions& o) : pipeline(p), options(o), queue(p, o.queue) {}

  Pipeline& pipeline;
  ServerOptions options;
  infer::AnswerQueue queue;
  httplib::Server http;
  std::atomic<uint64_t> requests{0}, refused{0};
  Clock::time_point started = Clock::now();
  std::string id_prefix;

  std::string next_id() {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%06llx", static_cast<unsigned long long>(requests.load()));
    return "chatcmpl-" + id_prefix + buf;
  }

  void health(httplib::Response& res) {
    const infer::AnswerQueueStats q = queue.stats();
    const PipelineStats p = pipeline.stats();
    nlohmann::json j = {{"status", "ok"},
                        {"model", options.model_name},
                        {"uptime_s", std::chrono::duration<double>(Clock::now() - started).count()},
                        {"requests", requests.load()},
                        {"refused", refused.load()},
                        {"queued", q.queued},
                        {"batches", q.batches},
                        {"largest_batch", q.largest_batch},
                        {"clips_encoded", p.clips_encoded},
                        {"audio_cache_hits", p.cache_hits}};
    res.set_content(j.dump(), "application/json");
  }

  void chat(const httplib::Request& req, httplib::Response& res);
};

void InferServer::State::chat(const httplib::Request& req, httplib::Response& res) {
  ++requests;
  const std::string content_type = req.get_header_value("Content-Type");
  if (content_type.rfind("application/json", 0) != 0) {
    ++refused;
    return reply_error(res, 415, "Content-Type must be application/json, got '" + content_type + "'");
  }
  infer::ChatRequest request;
  Pipeline::Question question;
  try {
    request = infer::parse_chat_request(req.body, options.limits);
    question.question = request.question;
    question.system = request.system;
    if (!request.audio.empty())
      question.audio = pipeline.encode_bytes(std::move(request.audio), request.audio_param);
  } catch (const infer::RequestError& e) {
    ++refused;
    return reply_error(res, e.status(), e.what(), e.param());
  } catch (const AudioError& e) {
    ++refused;
    return reply_error(res, 400, e.what(), request.audio_param);
  }
  const std::string id = next_id(), model = options.model_name;
  const int64_t created = static_cast<int64_t>(std::time(nullptr));

  if (!request.stream) {
    try {
      Answer answer = queue.submit(std::move(question), request.generation).get();
      res.set_content(infer::chat_completion_json(id, model, created, answer), "application/json");
    } catch (const infer::QueueFullError& e) {
      ++refused;
      reply_error(res, 503, e.what(), {}, "server_busy");
    } catch (const GenerationError& e) {
      ++refused;
      reply_error(res, 400, e.what());
    }
    return;
  }

  auto stream = std::make_shared<StreamState>();
  try {
    stream->answer = queue.submit(std::move(question), request.generation, [stream](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(stream->mutex);
      if (stream->gone) return false;
      if (!e.text.empty()) stream->pieces.emplace_back(e.text);
      stream->wake.notify_all();
      return true;
    });
  } catch (const infer::QueueFullError& e) {
    ++refused;
    return reply_error(res, 503, e.what(), {}, "server_busy");
  }
  const bool usage = request.include_usage;
  res.set_header("Cache-Control", "no-cache");
  auto event = [](httplib::DataSink& sink, const std::string& data) {
    const std::string text = "data: " + data + "\n\n";
    return sink.write(text.data(), text.size());
  };
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream, id, model, created, usage, event](size_t, httplib::DataSink& sink) {
        if (!stream->started) {
          stream->started = true;
          infer::ChunkContent first;
          first.role = "assistant";
          first.content = "";
          if (!event(sink, infer::chat_chunk_json(id, model, created, first))) return false;
        }
        std::vector<std::string> pieces;
        bool finished = false;
        {
          std::unique_lock<std::mutex> lock(stream->mutex);
          stream->wake.wait_for(lock, std::chrono::milliseconds(20), [&] { return !stream->pieces.empty(); });
          pieces.swap(stream->pieces);
          finished =
              pieces.empty() && stream->answer.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
        }
        for (const auto& piece : pieces) {
          infer::ChunkContent chunk;
          chunk.content = piece;
          if (!event(sink, infer::chat_chunk_json(id, model, created, chunk))) {
            std::lock_guard<std::mutex> lock(stream->mutex);
            stream->gone = true;
            return false;
          }
        }
        if (!finished) return true;
        try {
          const Answer answer = stream->answer.get();
          infer::ChunkContent last;
          last.finish_reason = finish_reason_name(answer.finish_reason);
          event(sink, infer::chat_chunk_json(id, model, created, last));
          if (usage) {
            infer::ChunkContent u;
            u.usage = &answer;
            event(sink, infer::chat_chunk_json(id, model, created, u));
          }
        } catch (const std::exception& e) {
          // The status line is out already: the error goes as an event, as OpenAI's does.
          event(sink,
                infer::error_json(e.what(), dynamic_cast<const GenerationError*>(&e) ? "invalid_request_error"
                                                                                     : "server_error"));
        }
        event(sink, "[DONE]");
        sink.done();
        return true;
      },
      [stream](bool success) {
        if (success) return;
        std::lock_guard<std::mutex> lock(stream->mutex);
        stream->gone = true;
      });
}

InferServer::InferServer(Pipeline& pipeline, const ServerOptions& options) {
  options.validate();
  // A client that goes away mid-response must not kill the server (writes get EPIPE).
  std::signal(SIGPIPE, SIG_IGN);
  state_ = std::make_unique<State>(pipeline, options);
  State& s = *state_;
  std::random_device random;
  char prefix[16];
  std::snprintf(prefix, sizeof prefix, "%08x", random());
  s.id_prefix = prefix;

  const int threads = options.http_threads;
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.http.set_payload_max_length(options.max_body_bytes);
  s.http.set_read_timeout(30, 0);
  s.http.Get("/health", [&s](const httplib::Request&, httplib::Response& res) { s.health(res); });
  s.http.Get("/v1/models", [&s](const httplib::Request&, httplib::Response& res) {
    nlohmann::json j = {{"object", "list"},
                        {"data", {{{"id", s.options.model_name}, {"object", "model"}, {"owned_by", "pal"}}}}};
    res.set_content(j.dump(), "application/json");
  });
  s.http.Post("/v1/chat/completions",
              [&s](const httplib::Request& req, httplib::Response& res) { s.chat(req, res); });
  const size_t max_body = options.max_body_bytes;
  s.http.set_error_handler([max_body](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message;
    switch (res.status) {
      case 404: message = "no such endpoint: " + req.method + " " + req.path; break;
      case 413:
        message =
            "the request body is over the limit of " + std::to_string(max_body) + " bytes (--max-body-mb)";
        break;
      case 400: message = "malformed HTTP request"; break;
      default: message = "HTTP status " + std::to_string(res.status);
    }
    res.set_content(infer::error_json(message, res.status >= 500 ? "server_error" : "invalid_request_error"),
                    "application/json");
  });
  s.http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
    }
    log_message(LogLevel::error, "pal-infer serve: " + message);
    reply_error(res, 500, message, {}, "server_error");
  });
}

InferServer::~InferServer() {
  stop();
}

int InferServer::bind() {
  State& s = *state_;
  const ServerOptions& o = s.options;
  const int port =
      o.port == 0 ? s.http.bind_to_any_port(o.host) : (s.http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port <= 0)
    throw IoError("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                  " (address in use, not an address of this machine, or a privileged port)");
  return port;
}

void InferServer::serve() {
  state_->http.listen_after_bind();
}

void InferServer::stop() {
  if (state_) state_->http.stop();
}

}  // namespace pal::apps
