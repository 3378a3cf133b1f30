// `pal-infer serve`: the OpenAI-compatible HTTP server over a pal::Pipeline (cpp-httplib,
// a private dependency of the tools; the protocol is pal/infer/chat_completions.h).
//
//   POST /v1/chat/completions   a question about a base64 audio clip; stream: true for SSE
//   GET  /v1/models             the one model served
//   GET  /health                {"status": "ok", ...} while serving
//
// Requests run on the HTTP thread pool up to the audio encoding; their questions then go
// to an AnswerQueue, which batches concurrent ones. Every refusal is a 4xx with an OpenAI
// error body: 400 bad JSON / field / base64 / audio, 404 unknown path, 413 body over the
// limit, 415 not application/json, 503 queue full. A client that disconnects mid-stream
// stops its own generation only.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "pal/infer/answer_queue.h"
#include "pal/infer/chat_completions.h"
#include "pal/pipeline.h"

namespace pal::apps {

struct ServerOptions {
  std::string host = "127.0.0.1";     // loopback unless told otherwise (0.0.0.0: every interface)
  int port = 8080;                    // 0: any free port
  std::string model_name = "pal";     // "model" in responses and /v1/models
  size_t max_body_bytes = 32u << 20;  // larger request bodies get 413
  infer::ChatLimits limits;           // max_tokens per request, and its default
  infer::AnswerQueueOptions queue;    // batching and the queue's bound
  int http_threads = 16;              // connections served at once

  void validate() const;  // throws ConfigError
};

class InferServer {
 public:
  // The pipeline's long_audio.max_seconds bounds the audio of a request.
  InferServer(Pipeline& pipeline, const ServerOptions& options);
  ~InferServer();
  InferServer(const InferServer&) = delete;
  InferServer& operator=(const InferServer&) = delete;

  // Binds host:port; returns the port (the chosen one for port 0). Throws IoError when it
  // cannot bind.
  int bind();
  // Serves until stop(); call bind() first.
  void serve();
  // From any thread: ends serve() after the requests in progress.
  void stop();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace pal::apps
