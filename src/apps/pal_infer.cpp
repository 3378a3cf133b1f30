// pal-infer: ask a trained PAL model about audio, from the command line or over HTTP.
//
//   pal-infer --model DIR --audio clip.wav --question "What is it?"   one answer on stdout
//   pal-infer --model DIR --audio clip.wav --interactive             questions from stdin, one a line
//   pal-infer --model DIR --manifest in.jsonl --output out.jsonl     batched; rerun to resume
//   pal-infer serve --model DIR --port 8080                          OpenAI-compatible server
//
// Exit codes: 0 success; 1 bad input (model folder, audio, manifest, question; the message
// names the file or field); 2 bad usage; 3 a manifest run that finished with lines it
// could not answer (error records in the output; a rerun retries them).
#include <unistd.h>

#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "infer_server.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/infer/manifest.h"
#include "pal/pipeline.h"

namespace {

struct Args {
  std::string model, audio, question, manifest, output;
  double start = 0;
  std::optional<double> end;
  bool interactive = false, stream = false, json = false;
  int64_t batch_size = 8;
  std::string device = "cpu", dtype, log_level = "warn";
  int threads = 0;
  double max_audio_seconds = 3600;
  pal::GenerationOptions generation;
};

void print_answer(const pal::Answer& a, const pal::Pipeline::Audio& audio, bool json, bool streamed) {
  if (json) {
    nlohmann::json j = {{"answer", a.text},
                        {"finish_reason", pal::finish_reason_name(a.finish_reason)},
                        {"answer_tokens", a.tokens.size()},
                        {"prompt_tokens", a.prompt_tokens},
                        {"audio_tokens", a.audio_tokens},
                        {"audio_seconds", audio.seconds()},
                        {"first_token_s", a.first_token_seconds},
                        {"seconds", a.seconds}};
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    std::cout << (streamed ? "" : a.text) << std::endl;
  }
}

pal::Answer ask(pal::Pipeline& pipeline, const pal::Pipeline::Audio& audio, const std::string& question,
                const Args& a) {
  pal::TokenCallback print;
  if (a.stream && !a.json)
    print = [](const pal::TokenEvent& e) {
      std::cout << e.text << std::flush;
      return true;
    };
  return pipeline.ask(audio, question, a.generation, print);
}

int run_interactive(pal::Pipeline& pipeline, const pal::Pipeline::Audio& audio, const Args& a) {
  const bool tty = isatty(STDIN_FILENO);
  std::fprintf(stderr, "pal-infer: %s: %.2f s, %lld audio tokens. Ask questions, one a line%s.\n",
               a.audio.c_str(), audio.seconds(), static_cast<long long>(audio.token_count()),
               tty ? " (Ctrl-D ends)" : "");
  std::string line;
  while (true) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    print_answer(ask(pipeline, audio, line, a), audio, a.json, a.stream);
  }
  return 0;
}

int run_manifest(pal::Pipeline& pipeline, const Args& a) {
  pal::infer::ManifestOptions o;
  o.manifest = a.manifest;
  o.output = a.output;
  o.batch_size = a.batch_size;
  o.generation = a.generation;
  const pal::infer::ManifestProgress p =
      pal::infer::answer_manifest(pipeline, o, [](const pal::infer::ManifestProgress& p) {
        std::fprintf(stderr, "\rpal-infer: %lld/%lld answered (%lld from an earlier run, %lld failed)",
                     static_cast<long long>(p.answered + p.skipped), static_cast<long long>(p.lines),
                     static_cast<long long>(p.skipped), static_cast<long long>(p.failed));
      });
  std::fprintf(stderr, "\npal-infer: wrote %s\n", a.output.c_str());
  if (p.failed > 0) {
    std::fprintf(stderr, "pal-infer: %lld lines failed (see \"error\" in %s); rerun to retry them\n",
                 static_cast<long long>(p.failed), a.output.c_str());
    return 3;
  }
  return 0;
}

// SIGINT / SIGTERM stop the server through a pipe (the handler may run on any thread,
// e.g. one of OpenBLAS's); a second one ends the process at once.
int stop_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int signal) {
  std::signal(signal, SIG_DFL);
  const char c = 1;
  [[maybe_unused]] ssize_t n = write(stop_pipe[1], &c, 1);
}

int run_server(pal::Pipeline& pipeline, const pal::apps::ServerOptions& options) {
  pal::apps::InferServer server(pipeline, options);
  const int port = server.bind();
  if (pipe(stop_pipe) != 0) throw pal::IoError("cannot create a pipe for signal handling");
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::thread watcher([&] {
    char c = 0;
    while (read(stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    server.stop();
  });
  std::printf("pal-infer: serving %s on http://%s:%d (POST /v1/chat/completions, GET /health)\n",
              pipeline.folder().c_str(), options.host.c_str(), port);
  std::fflush(stdout);
  server.serve();
  on_stop_signal(SIGTERM);  // serve() may also end on its own: release the watcher
  watcher.join();
  std::fprintf(stderr, "pal-infer: stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pal-infer: ask a trained PAL model about audio clips"};
  app.footer(
      "Exit codes: 0 success, 1 bad input (model folder, audio, manifest, question), 2 bad usage, 3 a "
      "manifest run "
      "with lines it could not answer (rerun to retry them).");
  Args a;
  pal::apps::ServerOptions server;
  auto model_options = [&](CLI::App* cmd) {
    cmd->add_option("--model", a.model, "model folder (model.yaml + model.safetensors)")->required();
    cmd->add_option("--device", a.device, "cpu, cuda or cuda:N");
    cmd->add_option("--dtype", a.dtype, "weights and activations (default: the model's)")
        ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
    cmd->add_option("--threads", a.threads, "LibTorch intra-op threads (0: all cores)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--max-audio-seconds", a.max_audio_seconds,
                    "longest audio accepted (0: no limit; default 3600, serve: 600)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--log-level", a.log_level, "trace, debug, info, warn, error or off");
  };
  auto sampling_options = [&](CLI::App* cmd) {
    pal::GenerationOptions& g = a.generation;
    cmd->add_option("--max-new-tokens", g.max_new_tokens, "most tokens per answer")
        ->check(CLI::PositiveNumber);
    auto* sample = cmd->add_flag("--sample", g.sample, "sample (default: greedy)");
    cmd->add_option("--temperature", g.temperature, "sampling temperature (> 0)")->needs(sample);
    cmd->add_option("--top-k", g.top_k, "sample from the k most likely tokens (0: all)")->needs(sample);
    cmd->add_option("--top-p", g.top_p, "sample from the smallest set with this probability")->needs(sample);
    cmd->add_option("--seed", g.seed, "sampling seed")->needs(sample);
    cmd->add_option("--repetition-penalty", g.repetition_penalty, "> 1 discourages repeats (1: off)");
  };
  model_options(&app);
  sampling_options(&app);
  app.add_option("--audio", a.audio, "the clip (wav, flac, ogg, mp3, ...; any length)");
  app.add_option("--start", a.start, "clip window start, seconds")->check(CLI::NonNegativeNumber);
  app.add_option("--end", a.end, "clip window end, seconds");
  app.add_option("--question", a.question, "one question about the clip");
  app.add_flag("--interactive", a.interactive, "read questions about the clip from stdin, one a line");
  app.add_flag("--stream", a.stream, "print answers token by token");
  app.add_flag("--json", a.json, "print each answer as a JSON object");
  app.add_option("--manifest", a.manifest, "JSONL of {\"audio\", \"question\"} lines to answer");
  app.add_option("--output", a.output, "JSONL answers of --manifest (resumed when it exists)");
  app.add_option("--batch-size", a.batch_size, "questions per batch (--manifest)")
      ->check(CLI::PositiveNumber);

  auto* serve = app.add_subcommand("serve", "OpenAI-compatible HTTP server (POST /v1/chat/completions)");
  serve->fallthrough();
  serve->add_option("--host", server.host, "address to listen on (0.0.0.0: every interface)");
  serve->add_option("--port", server.port, "port (0: any free one)")->check(CLI::Range(0, 65535));
  serve->add_option("--model-name", server.model_name, "the model's name in responses");
  double max_body_mb = 32;
  serve->add_option("--max-body-mb", max_body_mb, "largest request body, MiB")->check(CLI::PositiveNumber);
  serve->add_option("--max-tokens", server.limits.max_tokens, "largest max_tokens a request may ask for")
      ->check(CLI::PositiveNumber);
  serve
      ->add_option("--default-max-tokens", server.limits.default_max_tokens,
                   "max_tokens when a request gives none")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-batch", server.queue.max_batch, "concurrent questions answered together")
      ->check(CLI::PositiveNumber);
  int batch_wait_ms = 5;
  serve->add_option("--batch-wait-ms", batch_wait_ms, "how long a question waits for others to batch with")
      ->check(CLI::NonNegativeNumber);
  serve
      ->add_option("--max-queued", server.queue.max_queued, "waiting questions beyond which requests get 503")
      ->check(CLI::PositiveNumber);
  serve->add_option("--http-threads", server.http_threads, "connections served at once")
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
    if (!*serve) {
      const int modes =
          (!a.question.empty() || app.count("--question")) + a.interactive + !a.manifest.empty();
      if (modes != 1)
        throw CLI::ValidationError(
            "mode", "give one of --question, --interactive or --manifest (or the serve command)");
      if ((app.count("--question") || a.interactive) && a.audio.empty())
        throw CLI::ValidationError("--audio", "--question and --interactive need --audio");
      if (!a.manifest.empty() && a.output.empty())
        throw CLI::ValidationError("--output", "--manifest needs --output");
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    pal::set_log_level(pal::parse_log_level(a.log_level));
    pal::PipelineOptions options;
    try {
      options.device = c10::Device(a.device);
    } catch (const c10::Error&) {
      std::fprintf(stderr, "pal-infer: --device: '%s' is not a device (cpu, cuda, cuda:N)\n",
                   a.device.c_str());
      return 2;
    }
    if (!a.dtype.empty())
      options.dtype = a.dtype == "float32"    ? pal::models::ModelDtype::float32
                      : a.dtype == "bfloat16" ? pal::models::ModelDtype::bfloat16
                                              : pal::models::ModelDtype::float16;
    options.threads = a.threads;
    // The server's default is tighter: its audio comes from anyone who can reach it.
    options.long_audio.max_seconds = *serve && !app.count("--max-audio-seconds") ? 600 : a.max_audio_seconds;
    a.generation.validate();
    pal::Pipeline pipeline = pal::Pipeline::load(a.model, options);
    if (*serve) {
      server.max_body_bytes = static_cast<size_t>(max_body_mb * 1024 * 1024);
      server.queue.max_wait = std::chrono::milliseconds(batch_wait_ms);
      return run_server(pipeline, server);
    }
    if (!a.manifest.empty()) return run_manifest(pipeline, a);
    if (!a.interactive && a.question.find_first_not_of(" \t\r\n") == std::string::npos)
      throw pal::GenerationError("--question: the question is empty; ask something about the clip");
    const pal::Pipeline::Audio audio = pipeline.encode(a.audio, a.start, a.end);
    if (a.interactive) return run_interactive(pipeline, audio, a);
    print_answer(ask(pipeline, audio, a.question, a), audio, a.json, a.stream);
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-infer: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
