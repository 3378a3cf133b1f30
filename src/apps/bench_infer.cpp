// pal-bench infer: what answering a question about a clip costs, through pal::Pipeline
// and through `pal-infer serve`.
//
// The model (random weights, written once into --folder): a Whisper-base encoder (d 512,
// 6 layers, 30 s context), an ensemble at 25 tokens/s (250 audio tokens for 10 s), an MLP
// projector and a Llama decoder (--llm-width, --llm-layers, GQA) with the Llama 3 test
// tokenizer and chat template; `probe` and `prefix` are the same weights with another
// fusion.mode.
//
// 1. Per mode, a 10 s clip: time to first token for a new clip (decode + encode +
//    prefill) and for a clip already encoded (the prefill alone: the question after the
//    first), and decoding tokens/s. Probe prefills the text alone and reads the audio
//    through per-layer keys/values computed once, so its first token comes sooner.
// 2. A loopback load test of the HTTP server (probe mode, audio cache off: every request
//    decodes and encodes its clip): N clients each posting up to M chat completions with
//    a base64 WAV, within a time bound; requests/s, p50/p99 latency, errors.
#include "bench_infer.h"

#include <httplib.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "infer_server.h"
#include "pal/audio/decode.h"
#include "pal/core/atomic_file.h"
#include "pal/core/config.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/infer/chat_completions.h"
#include "pal/io/safetensors.h"
#include "pal/models/pal_checkpoint.h"
#include "pal/models/whisper_encoder.h"
#include "pal/pipeline.h"

namespace pal::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

// A 16-bit mono WAV of `seconds`: a few tones and some noise.
std::string wav_bytes(double seconds, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(seconds * 16000);
  torch::manual_seed(seed);
  torch::Tensor t = torch::arange(n, torch::kFloat64) / 16000.0;
  const double f = 200.0 + 37.0 * static_cast<double>(seed % 13);
  torch::Tensor x = 0.3 * torch::sin(2 * M_PI * f * t) + 0.2 * torch::sin(2 * M_PI * 2.7 * f * t) +
                    0.05 * torch::randn({n}, torch::kFloat64);
  torch::Tensor pcm = (x.clamp(-1, 1) * 32767).round().to(torch::kInt16).contiguous();
  auto u32 = [](uint32_t v) { return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; };
  auto u16 = [](uint16_t v) { return std::string{char(v), char(v >> 8)}; };
  const uint32_t data = static_cast<uint32_t>(n * 2);
  std::string out = "RIFF" + u32(36 + data) + "WAVEfmt " + u32(16) + u16(1) + u16(1) + u32(16000) +
                    u32(32000) + u16(2) + u16(16) + "data" + u32(data);
  out.append(reinterpret_cast<const char*>(pcm.data_ptr<int16_t>()), data);
  return out;
}

// Writes the bench model folders (once): <base>/probe and <base>/prefix.
fs::path prepare_models(const InferBenchArgs& a) {
  const fs::path base = a.folder.empty()
                            ? fs::temp_directory_path() / ("pal-bench-infer-" + std::to_string(a.llm_width) +
                                                           "x" + std::to_string(a.llm_layers))
                            : fs::path(a.folder);
  if (fs::exists(base / "prefix" / models::kModelWeightsFile)) return base;
  fs::create_directories(base / "llm");
  const fs::path tiny_chat = fs::path(PAL_SOURCE_DIR) / "tests" / "fixtures" / "llm" / "tiny_chat";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    write_file_atomic(base / "llm" / f, read_file(tiny_chat / f));
  const json llm = {{"architectures", {"LlamaForCausalLM"}},
                    {"model_type", "llama"},
                    {"vocab_size", 1500},
                    {"hidden_size", a.llm_width},
                    {"intermediate_size", a.llm_width * 11 / 4},
                    {"num_hidden_layers", a.llm_layers},
                    {"num_attention_heads", a.llm_width / 64},
                    {"num_key_value_heads", std::max(1, a.llm_width / 256)},
                    {"head_dim", 64},
                    {"max_position_embeddings", 4096},
                    {"rms_norm_eps", 1e-5},
                    {"rope_theta", 500000.0},
                    {"tie_word_embeddings", true},
                    {"bos_token_id", 0},
                    {"eos_token_id", 6}};
  write_file_atomic(base / "llm" / "config.json", llm.dump(2));
  // Whisper-base's encoder, random.
  fs::create_directories(base / "whisper_base");
  const json whisper = {{"model_type", "whisper"},      {"d_model", 512},
                        {"encoder_layers", 6},          {"encoder_attention_heads", 8},
                        {"encoder_ffn_dim", 2048},      {"num_mel_bins", 80},
                        {"max_source_positions", 1500}, {"activation_function", "gelu"}};
  write_file_atomic(base / "whisper_base" / "config.json", whisper.dump(2));
  torch::manual_seed(0);
  models::WhisperEncoder encoder(
      models::WhisperEncoderConfig::from_json_file(base / "whisper_base" / "config.json"));
  io::NamedTensors tensors;
  for (const auto& p : encoder->named_parameters()) tensors.emplace_back(p.key(), p.value().detach());
  io::save_safetensors(base / "whisper_base" / "model.safetensors", tensors, {{"format", "pt"}});

  const std::string yaml =
      "llm: ../llm\n"
      "llm_weights: random\n"
      "encoders:\n"
      "  - {type: whisper, checkpoint: ../whisper_base}\n"
      "ensemble: {width: 512, frames_per_second: 25}\n"
      "projector: {type: mlp}\n"
      "fusion: {mode: probe, start_layer: 2}\n";
  fs::create_directories(base / "probe");
  write_file_atomic(base / "probe" / models::kModelConfigFile, yaml);
  torch::manual_seed(1);
  models::PalModel model(config::load<models::PalModelConfig>(base / "probe" / models::kModelConfigFile),
                         base / "probe");
  models::save_pal_model(*model, base / "probe", /*trainable_only=*/false);
  // `prefix`: the same weights, another fusion mode.
  models::PalModelConfig prefix =
      config::load<models::PalModelConfig>(base / "probe" / models::kModelConfigFile);
  prefix.fusion.mode = models::FusionMode::prefix;
  fs::create_directories(base / "prefix");
  for (const auto& entry : fs::directory_iterator(base / "probe"))
    if (entry.path().filename() != models::kModelConfigFile)
      fs::copy_file(entry.path(), base / "prefix" / entry.path().filename(),
                    fs::copy_options::overwrite_existing);
  config::save(prefix, base / "prefix" / models::kModelConfigFile);
  return base;
}

json bench_mode(const fs::path& folder, const fs::path& clip, const InferBenchArgs& a) {
  PipelineOptions options;
  options.threads = a.threads;
  options.audio_cache_clips = 0;  // every encode() decodes and encodes
  Pipeline pipeline = Pipeline::load(folder, options);
  GenerationOptions g;
  g.max_new_tokens = a.new_tokens;
  const std::string question = "What can you hear in this recording?";
  pipeline.ask(pipeline.encode(clip), question, g);  // warm-up
  std::vector<double> encode_s, ttft_new, ttft_cached, decode_rate, answer_rate, tokens;
  int64_t audio_tokens = 0, prompt_tokens = 0;
  for (int r = 0; r < a.repeats; ++r) {
    const auto start = Clock::now();
    Pipeline::Audio audio = pipeline.encode(clip);
    encode_s.push_back(since(start));
    const Answer first = pipeline.ask(audio, question, g);
    ttft_new.push_back(encode_s.back() + first.first_token_seconds);
    const Answer again = pipeline.ask(audio, "Describe the sound in detail.", g);
    ttft_cached.push_back(again.first_token_seconds);
    const double n = static_cast<double>(again.tokens.size());
    tokens.push_back(n);
    if (n > 1) decode_rate.push_back((n - 1) / (again.seconds - again.first_token_seconds));
    answer_rate.push_back(n / again.seconds);
    audio_tokens = again.audio_tokens;
    prompt_tokens = again.prompt_tokens;
  }
  return {{"pipeline", pipeline.describe()},
          {"audio_tokens", audio_tokens},
          {"prompt_tokens", prompt_tokens},
          {"answer_tokens_median", median(tokens)},
          {"encode_s", median(encode_s)},
          {"ttft_new_clip_s", median(ttft_new)},
          {"ttft_encoded_clip_s", median(ttft_cached)},
          {"decode_tokens_per_s", median(decode_rate)},
          {"answer_tokens_per_s", median(answer_rate)}};
}

json load_test(const fs::path& folder, const InferBenchArgs& a) {
  PipelineOptions options;
  options.threads = a.threads;
  options.audio_cache_clips = 0;
  Pipeline pipeline = Pipeline::load(folder, options);
  apps::ServerOptions so;
  so.port = 0;
  so.limits.max_tokens = std::max<int64_t>(64, a.load_tokens);
  so.http_threads = a.clients + 2;
  so.queue.max_queued = 4 * a.clients;
  apps::InferServer server(pipeline, so);
  const int port = server.bind();
  std::thread serving([&] { server.serve(); });

  // Each client's clips differ, so every request decodes and encodes a new one.
  std::vector<std::vector<std::string>> bodies(static_cast<size_t>(a.clients));
  for (int c = 0; c < a.clients; ++c)
    for (int r = 0; r < std::min(a.requests_per_client, 3); ++r) {
      json body = {
          {"model", "pal"},
          {"max_tokens", a.load_tokens},
          {"messages",
           {{{"role", "user"},
             {"content",
              {{{"type", "text"}, {"text", "What can you hear?"}},
               {{"type", "input_audio"},
                {"input_audio",
                 {{"data", infer::encode_base64(wav_bytes(a.clip_seconds, static_cast<uint64_t>(c * 3 + r)))},
                  {"format", "wav"}}}}}}}}}};
      bodies[static_cast<size_t>(c)].push_back(body.dump());
    }
  std::mutex mutex;
  std::vector<double> latencies;
  int64_t errors = 0;
  std::vector<std::string> error_samples;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(a.load_seconds);
  std::vector<std::thread> clients;
  for (int c = 0; c < a.clients; ++c)
    clients.emplace_back([&, c] {
      httplib::Client client("127.0.0.1", port);
      client.set_read_timeout(300, 0);
      for (int r = 0; r < a.requests_per_client && Clock::now() < deadline; ++r) {
        const auto& body =
            bodies[static_cast<size_t>(c)][static_cast<size_t>(r) % bodies[static_cast<size_t>(c)].size()];
        const auto t = Clock::now();
        auto res = client.Post("/v1/chat/completions", body, "application/json");
        const double latency = since(t);
        std::lock_guard<std::mutex> lock(mutex);
        bool ok = res && res->status == 200;
        if (ok) {
          try {
            ok = json::parse(res->body)["choices"][0]["message"]["content"].is_string();
          } catch (const json::exception&) {
            ok = false;
          }
        }
        if (ok) {
          latencies.push_back(latency);
        } else {
          ++errors;
          if (error_samples.size() < 3)
            error_samples.push_back(res ? std::to_string(res->status) + " " + res->body.substr(0, 200)
                                        : "transport: " + httplib::to_string(res.error()));
        }
      }
    });
  for (auto& t : clients) t.join();
  const double wall = since(start);
  json health;
  if (auto h = httplib::Client("127.0.0.1", port).Get("/health")) health = json::parse(h->body);
  server.stop();
  serving.join();
  const double batches = health.value("batches", 0.0);
  return {{"clients", a.clients},
          {"requests", static_cast<int64_t>(latencies.size()) + errors},
          {"errors", errors},
          {"error_samples", error_samples},
          {"seconds", wall},
          {"requests_per_s", static_cast<double>(latencies.size()) / wall},
          {"latency_p50_s", percentile(latencies, 50)},
          {"latency_p99_s", percentile(latencies, 99)},
          {"max_tokens", a.load_tokens},
          {"clip_seconds", a.clip_seconds},
          {"batches", batches},
          {"mean_batch",
           batches > 0 ? static_cast<double>(latencies.size() + static_cast<size_t>(errors)) / batches : 0.0},
          {"largest_batch", health.value("largest_batch", 0)}};
}

}  // namespace

CLI::App* add_infer_command(CLI::App& app, InferBenchArgs& a) {
  auto* cmd = app.add_subcommand(
      "infer",
      "pal::Pipeline time to first token and tokens/s, probe vs prefix; a load test of pal-infer serve");
  cmd->add_option("--folder", a.folder, "bench model folder (written once; default: under the temp dir)");
  cmd->add_option("--seconds", a.clip_seconds, "clip length")->check(CLI::Range(1.0, 30.0));
  cmd->add_option("--new-tokens", a.new_tokens, "tokens per answer")->check(CLI::Range(2, 512));
  cmd->add_option("--repeats", a.repeats, "timed questions per figure (the median counts)")
      ->check(CLI::Range(1, 50));
  cmd->add_option("--threads", a.threads, "intra-op threads; 0: all cores")->check(CLI::NonNegativeNumber);
  cmd->add_option("--llm-layers", a.llm_layers, "decoder layers")->check(CLI::Range(3, 64));
  cmd->add_option("--llm-width", a.llm_width, "decoder width (a multiple of 256)")
      ->check(CLI::Range(256, 4096));
  cmd->add_option("--clients", a.clients, "concurrent clients of the load test")->check(CLI::Range(1, 64));
  cmd->add_option("--requests", a.requests_per_client, "requests per client, at most")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--load-seconds", a.load_seconds, "the load test's time bound")
      ->check(CLI::Range(1.0, 300.0));
  cmd->add_option("--load-tokens", a.load_tokens, "max_tokens of each load-test request")
      ->check(CLI::Range(1, 256));
  cmd->add_flag("--json", a.json, "print one JSON object");
  return cmd;
}

int bench_infer(const InferBenchArgs& a) {
  if (a.llm_width % 256 != 0) throw ConfigError("--llm-width: must be a multiple of 256");
  const int threads = a.threads > 0 ? a.threads : available_cores();
  configure_threads({threads, 0});
  const fs::path base = prepare_models(a);
  const fs::path clip = base / ("clip_" + std::to_string(static_cast<int>(a.clip_seconds * 1000)) + "ms.wav");
  if (!fs::exists(clip)) write_file_atomic(clip, wav_bytes(a.clip_seconds, 99));

  const json probe = bench_mode(base / "probe", clip, a);
  const json prefix = bench_mode(base / "prefix", clip, a);
  const json load = load_test(base / "probe", a);
  auto ratio = [&](const char* key) { return prefix[key].get<double>() / probe[key].get<double>(); };
  json summary = {
      {"benchmark", "infer"},
      {"torch_version", runtime_info().torch_version},
      {"threads", threads},
      {"clip_seconds", a.clip_seconds},
      {"new_tokens", a.new_tokens},
      {"timed", "median of " + std::to_string(a.repeats) +
                    " after a warm-up; ttft_new_clip: decode + encode + prefill of a clip not seen before; "
                    "ttft_encoded_clip: the next question about the same encoded clip (prefill alone)"},
      {"probe", probe},
      {"prefix", prefix},
      {"prefix_over_probe_ttft_new_clip", ratio("ttft_new_clip_s")},
      {"prefix_over_probe_ttft_encoded_clip", ratio("ttft_encoded_clip_s")},
      {"probe_over_prefix_decode_tokens_per_s",
       probe["decode_tokens_per_s"].get<double>() / prefix["decode_tokens_per_s"].get<double>()},
      {"server_load_test", load}};
  if (a.json) {
    std::cout << summary.dump(2) << "\n";
    return load["errors"].get<int64_t>() == 0 ? 0 : 1;
  }
  std::printf("pal::Pipeline, %g s clip, %lld new tokens, %d threads\n", a.clip_seconds,
              static_cast<long long>(a.new_tokens), threads);
  std::printf("  %s\n", probe["pipeline"].get<std::string>().c_str());
  std::printf("%-8s %12s %16s %20s %14s\n", "mode", "audio tok", "TTFT new clip", "TTFT encoded clip",
              "decode tok/s");
  for (const auto* m : {&probe, &prefix})
    std::printf("%-8s %12lld %14.1f ms %17.1f ms %14.1f\n", m == &probe ? "probe" : "prefix",
                static_cast<long long>((*m)["audio_tokens"].get<int64_t>()),
                1e3 * (*m)["ttft_new_clip_s"].get<double>(), 1e3 * (*m)["ttft_encoded_clip_s"].get<double>(),
                (*m)["decode_tokens_per_s"].get<double>());
  std::printf("prefix / probe time to first token: %.2fx (new clip), %.2fx (encoded clip)\n",
              summary["prefix_over_probe_ttft_new_clip"].get<double>(),
              summary["prefix_over_probe_ttft_encoded_clip"].get<double>());
  std::printf(
      "server load test: %d clients, %lld requests in %.1f s: %.2f requests/s, latency p50 %.0f ms, p99 %.0f "
      "ms, "
      "%lld errors, mean batch %.2f\n",
      a.clients, static_cast<long long>(load["requests"].get<int64_t>()), load["seconds"].get<double>(),
      load["requests_per_s"].get<double>(), 1e3 * load["latency_p50_s"].get<double>(),
      1e3 * load["latency_p99_s"].get<double>(), static_cast<long long>(load["errors"].get<int64_t>()),
      load["mean_batch"].get<double>());
  return load["errors"].get<int64_t>() == 0 ? 0 : 1;
}

}  // namespace pal::bench
