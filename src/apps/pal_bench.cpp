// pal-bench: throughput benchmarks, each against a reference measured in the same run.
//
//   pal-bench frontend [--json]   seconds of audio per second (x real time) of whisper_mel
//                                 and kaldi_fbank on 10 s clips in batches of 16, on 1 thread
//                                 and on all threads, beside the Python references
//                                 (scripts/bench/frontend_reference.py: openai-whisper's
//                                 log_mel_spectrogram algorithm, torchaudio's kaldi fbank)
//   pal-bench generate [--json]   tokens/s of greedy generation (128 new tokens, batch 1
//                                 and 8) with a ~100M-parameter Llama, beside transformers'
//                                 generate on the same weights (scripts/bench/
//                                 generate_reference.py writes them); peak and per-token RSS
//   pal-bench encoders [--json]   clips/s of a Whisper-base and an AST-base encoder (random
//                                 weights) on batches of 8 10 s clips, forward only, beside
//                                 transformers' WhisperEncoder (at 30 s, the only length it
//                                 takes) and ASTModel on the same weights (scripts/bench/
//                                 encoders_reference.py writes them); PAL's Whisper runs the
//                                 clips unpadded and, for a like-for-like figure, padded to 30 s
//   pal-bench infer [--json]      pal::Pipeline time to first token and tokens/s, probe vs prefix,
//                                 and a loopback load test of pal-infer serve (bench_infer.cpp)
//   pal-bench fusion [--json]     step time, memory and FLOPs per fusion mode (bench_fusion.cpp);
//                                 --device cuda --dtype bfloat16 --llm-preset llama-3.2-1b
//                                 --encoders whisper-base,ast-base --mfu: the GPU run of
//                                 scripts/gpu/check.sh
//   pal-bench train [--json]      training tokens/s of the C++ trainer (pal::train::Trainer,
//                                 data loading included) beside an equivalent PyTorch loop
//                                 (scripts/bench/train_reference.py), same model and batch
//   pal-bench ddp [--json]        data-parallel training tokens/s with 1 and 2 processes
//                                 (Gloo on the CPU) and the gradient all-reduce's share of
//                                 the step (bench_ddp.cpp)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_device.h"
#include "bench_fusion.h"
#include "bench_infer.h"
#include "bench_ddp.h"
#include "bench_train.h"
#include "pal/audio/decode.h"
#include "pal/audio/frontend.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/core/runtime.h"
#include "pal/models/ast_encoder.h"
#include "pal/models/generation.h"
#include "pal/models/llama.h"
#include "pal/models/whisper_encoder.h"

namespace {

using Clock = std::chrono::steady_clock;

// Runs `work` once to warm up, then until `min_time` seconds have passed; returns
// seconds of audio processed per second.
double x_realtime(const std::function<void()>& work, double audio_seconds, double min_time) {
  work();
  int iterations = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    work();
    ++iterations;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_time);
  return audio_seconds * iterations / elapsed;
}

struct FrontendArgs {
  int batch = 16;
  double seconds = 10;
  double min_time = 3;
  bool json = false;
  bool reference = true;
  std::string python = "python3";
  std::string reference_script = PAL_SOURCE_DIR "/scripts/bench/frontend_reference.py";
};

// Runs a reference script that prints one JSON object; nullopt when it fails.
std::optional<nlohmann::json> run_json_command(const std::string& cmd) {
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return std::nullopt;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  if (pclose(pipe) != 0) return std::nullopt;
  try {
    return nlohmann::json::parse(out);
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::optional<nlohmann::json> run_reference(const FrontendArgs& a, int threads) {
  char cmd[2048];
  std::snprintf(cmd, sizeof cmd,
                "%s %s --threads %d --batch %d --seconds %g --min-time %g --json 2>/dev/null",
                a.python.c_str(), a.reference_script.c_str(), threads, a.batch, a.seconds, a.min_time);
  return run_json_command(cmd);
}

int bench_frontend(const FrontendArgs& a) {
  const int64_t samples = static_cast<int64_t>(a.seconds * pal::audio::kSampleRate);
  at::manual_seed(0);
  const at::Tensor batch = at::randn({a.batch, samples}) * 0.1;
  const at::Tensor lengths = at::full({a.batch}, samples, at::kLong);
  const double audio_seconds = a.batch * a.seconds;
  pal::audio::WhisperMelFrontend whisper;
  pal::audio::KaldiFbankFrontend fbank(pal::audio::KaldiFbankOptions{});  // AST settings, no pad/normalise

  std::vector<int> thread_counts = {1};
  if (pal::available_cores() > 1) thread_counts.push_back(pal::available_cores());
  nlohmann::json results = nlohmann::json::array();
  for (int threads : thread_counts) {
    at::set_num_threads(threads);
    nlohmann::json r = {{"threads", threads}};
    r["whisper_mel_x_realtime"] = x_realtime([&] { whisper(batch, lengths); }, audio_seconds, a.min_time);
    r["fbank_x_realtime"] = x_realtime([&] { fbank(batch, lengths); }, audio_seconds, a.min_time);
    if (a.reference) {
      if (auto ref = run_reference(a, threads)) {
        r["reference"] = *ref;
        r["whisper_mel_ratio_vs_reference"] =
            r["whisper_mel_x_realtime"].get<double>() / (*ref)["whisper_mel_x_realtime"].get<double>();
        r["fbank_ratio_vs_torchaudio"] =
            r["fbank_x_realtime"].get<double>() / (*ref)["fbank_x_realtime"].get<double>();
      } else {
        r["reference"] = "unavailable: '" + a.python + " " + a.reference_script +
                         "' failed (needs python3 with torch and torchaudio)";
      }
    }
    results.push_back(r);
  }
  const nlohmann::json& one = results[0];
  nlohmann::json summary = {{"benchmark", "frontend"},
                            {"cores", pal::available_cores()},
                            {"torch_version", pal::runtime_info().torch_version},
                            {"batch", a.batch},
                            {"clip_seconds", a.seconds},
                            {"whisper_mel_x_realtime", one["whisper_mel_x_realtime"]},
                            {"fbank_x_realtime", one["fbank_x_realtime"]},
                            {"per_thread_count", results}};
  if (one.contains("fbank_ratio_vs_torchaudio")) {
    summary["ratio_vs_torchaudio"] = one["fbank_ratio_vs_torchaudio"];
    summary["ratio_vs_whisper_reference"] = one["whisper_mel_ratio_vs_reference"];
  }
  if (a.json) {
    std::cout << summary.dump(2) << "\n";
    return 0;
  }
  std::printf("frontend throughput, x real time (%d clips of %g s per batch; %d cores)\n", a.batch, a.seconds,
              pal::available_cores());
  std::printf("%-8s %14s %14s %14s %14s\n", "threads", "whisper_mel", "reference", "kaldi_fbank",
              "torchaudio");
  for (const auto& r : results) {
    bool ref = r.contains("fbank_ratio_vs_torchaudio");
    std::printf(
        "%-8d %14.0f %14s %14.0f %14s\n", r["threads"].get<int>(), r["whisper_mel_x_realtime"].get<double>(),
        ref ? std::to_string(static_cast<int>(r["reference"]["whisper_mel_x_realtime"].get<double>())).c_str()
            : "-",
        r["fbank_x_realtime"].get<double>(),
        ref ? std::to_string(static_cast<int>(r["reference"]["fbank_x_realtime"].get<double>())).c_str()
            : "-");
  }
  if (!one.contains("fbank_ratio_vs_torchaudio") && a.reference)
    std::printf("reference: %s\n", one["reference"].get<std::string>().c_str());
  return 0;
}

// ---- generate ------------------------------------------------------------------------------

struct GenerateArgs {
  std::string model = (std::filesystem::temp_directory_path() / "pal-bench-llama-100m").string();
  int threads = 0;  // 0: all cores
  std::vector<int64_t> batches = {1, 8};
  int64_t prompt_length = 32;
  int64_t new_tokens = 128;
  int repeats = 3;
  std::string dtype = "float32";
  std::string device = "cpu";  // cpu, cuda, cuda:N
  std::string llm_preset;  // random weights of these shapes (bench_device.h) instead of --model; no reference
  bool json = false;
  bool reference = true;
  std::string python = std::filesystem::exists(PAL_SOURCE_DIR "/build/pip/venv/bin/python") ? PAL_SOURCE_DIR
                           "/build/pip/venv/bin/python"
                                                                                            : "python3";
  std::string reference_script = PAL_SOURCE_DIR "/scripts/bench/generate_reference.py";
};

using pal::bench::peak_resident_mib;
using pal::bench::resident_mib;

int bench_generate(const GenerateArgs& a) {
  const int threads = a.threads > 0 ? a.threads : pal::available_cores();
  pal::configure_threads({threads, 0});
  const at::ScalarType dtype = a.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const c10::Device device = pal::bench::parse_device(a.device);
  const bool random_weights = !a.llm_preset.empty();
  std::string batches;
  for (int64_t b : a.batches) batches += (batches.empty() ? "" : ",") + std::to_string(b);

  nlohmann::json reference;
  if (random_weights) {
    reference = "none: random weights of --llm-preset " + a.llm_preset;
  } else if (a.reference) {
    // The reference runs first: it also writes the random weights when the folder is new.
    char cmd[4096];
    std::snprintf(cmd, sizeof cmd,
                  "%s %s --model '%s' --threads %d --batches %s --prompt-length %lld --new-tokens %lld "
                  "--repeats %d --dtype %s --json 2>/dev/null",
                  a.python.c_str(), a.reference_script.c_str(), a.model.c_str(), threads, batches.c_str(),
                  static_cast<long long>(a.prompt_length), static_cast<long long>(a.new_tokens), a.repeats,
                  a.dtype.c_str());
    if (auto r = run_json_command(cmd))
      reference = *r;
    else
      reference = "unavailable: '" + a.python + " " + a.reference_script +
                  "' failed (needs python3 with torch and transformers)";
  }
  pal::models::LlamaForCausalLM model{nullptr};
  if (random_weights) {
    at::manual_seed(0);
    model = pal::models::LlamaForCausalLM(pal::bench::llm_preset(a.llm_preset));
    model->to(dtype);
    model->eval();
  } else {
    if (!std::filesystem::exists(std::filesystem::path(a.model) / "config.json"))
      throw pal::IoError(a.model +
                         ": no config.json; run with the Python reference once (it writes the weights) "
                         "or pass --model with an HF Llama folder");
    model = pal::models::load_llama(a.model, dtype);
  }
  model->to(device);
  int64_t parameters = 0;
  for (const auto& p : model->parameters()) parameters += p.numel();

  nlohmann::json results = nlohmann::json::array();
  for (int64_t batch : a.batches) {
    at::manual_seed(batch);
    const at::Tensor ids = at::randint(3, model->config().vocab_size, {batch, a.prompt_length}, at::kLong);
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t i = 0; i < batch; ++i)
      prompts.emplace_back(ids[i].data_ptr<int64_t>(), ids[i].data_ptr<int64_t>() + a.prompt_length);
    pal::models::GenerationOptions options;
    options.max_new_tokens = a.new_tokens;
    double rss_first = 0, rss_last = 0;
    int64_t produced = 0;
    auto on_token = [&](size_t sequence, int64_t) {
      if (sequence == 0 && ++produced == 1) rss_first = resident_mib();
      if (sequence == 0) rss_last = resident_mib();
      return true;
    };
    pal::models::generate(model, prompts, options);  // warm-up
    pal::bench::synchronize(device);
    pal::bench::reset_peak_memory(device);
    std::vector<double> seconds;
    for (int r = 0; r < a.repeats; ++r) {
      produced = 0;
      const auto start = Clock::now();
      auto out = pal::models::generate(model, prompts, options, on_token);
      seconds.push_back(pal::bench::seconds_since(start, device));
      if (static_cast<int64_t>(out.tokens[0].size()) != a.new_tokens)
        throw pal::GenerationError("benchmark run ended early");
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    nlohmann::json r = {{"batch", batch},
                        {"tokens_per_s", static_cast<double>(batch * a.new_tokens) / median},
                        {"seconds", median},
                        {"rss_mib_after_first_token", rss_first},
                        {"rss_mib_after_last_token", rss_last}};
    if (device.is_cuda()) r["device_peak_mib"] = pal::bench::memory_peak_mib(device);
    if (reference.is_object())
      for (const auto& ref : reference["results"])
        if (ref["batch"] == batch) {
          r["reference_tokens_per_s"] = ref["tokens_per_s"];
          r["ratio_vs_transformers"] = r["tokens_per_s"].get<double>() / ref["tokens_per_s"].get<double>();
        }
    results.push_back(r);
  }
  nlohmann::json summary = {{"benchmark", "generate"},
                            {"torch_version", pal::runtime_info().torch_version},
                            {"threads", threads},
                            {"dtype", a.dtype},
                            {"parameters", parameters},
                            {"prompt_length", a.prompt_length},
                            {"new_tokens", a.new_tokens},
                            {"decoding", "greedy, KV cache"},
                            {"peak_rss_mib", peak_resident_mib()},
                            {"results", results},
                            {"reference", reference}};
  if (device.is_cuda() || random_weights) {
    summary["device"] = device.str();
    summary["device_name"] = pal::bench::device_name(device);
    summary["llm"] = random_weights ? a.llm_preset : a.model;
  }
  if (a.json) {
    std::cout << summary.dump(2) << "\n";
    return 0;
  }
  std::printf(
      "greedy generation, %lld new tokens after %lld prompt tokens, %s, %s, %d threads, %.0fM parameters\n",
      static_cast<long long>(a.new_tokens), static_cast<long long>(a.prompt_length), a.dtype.c_str(),
      pal::bench::device_name(device).c_str(), threads, static_cast<double>(parameters) / 1e6);
  std::printf("%-6s %12s %14s %8s %22s\n", "batch", "PAL tok/s", "transformers", "ratio",
              "RSS first/last (MiB)");
  for (const auto& r : results) {
    const bool ref = r.contains("ratio_vs_transformers");
    std::printf("%-6lld %12.1f %14s %8s %10.0f / %-10.0f\n",
                static_cast<long long>(r["batch"].get<int64_t>()), r["tokens_per_s"].get<double>(),
                ref ? std::to_string(r["reference_tokens_per_s"].get<double>()).substr(0, 7).c_str() : "-",
                ref ? std::to_string(r["ratio_vs_transformers"].get<double>()).substr(0, 5).c_str() : "-",
                r["rss_mib_after_first_token"].get<double>(), r["rss_mib_after_last_token"].get<double>());
  }
  std::printf("peak RSS %.0f MiB\n", summary["peak_rss_mib"].get<double>());
  if (reference.is_string()) std::printf("reference: %s\n", reference.get<std::string>().c_str());
  return 0;
}

// ---- encoders --------------------------------------------------------------------------------

struct EncodersArgs {
  std::string folder = (std::filesystem::temp_directory_path() / "pal-bench-encoders").string();
  int threads = 0;  // 0: all cores
  int64_t batch = 8;
  double seconds = 10;
  int repeats = 3;
  bool json = false;
  bool reference = true;
  std::string python = std::filesystem::exists(PAL_SOURCE_DIR "/build/pip/venv/bin/python") ? PAL_SOURCE_DIR
                           "/build/pip/venv/bin/python"
                                                                                            : "python3";
  std::string reference_script = PAL_SOURCE_DIR "/scripts/bench/encoders_reference.py";
};

// Runs `work` once to warm up, then `repeats` times; the median seconds.
double median_seconds(const std::function<void()>& work, int repeats) {
  work();
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    work();
    seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

int bench_encoders(const EncodersArgs& a) {
  const int threads = a.threads > 0 ? a.threads : pal::available_cores();
  pal::configure_threads({threads, 0});
  nlohmann::json reference;
  if (a.reference) {
    // The reference runs first: it also writes the random weights when the folders are new.
    char cmd[4096];
    std::snprintf(cmd, sizeof cmd,
                  "%s %s --folder '%s' --threads %d --batch %lld --repeats %d --json 2>/dev/null",
                  a.python.c_str(), a.reference_script.c_str(), a.folder.c_str(), threads,
                  static_cast<long long>(a.batch), a.repeats);
    if (auto r = run_json_command(cmd))
      reference = *r;
    else
      reference = "unavailable: '" + a.python + " " + a.reference_script +
                  "' failed (needs python3 with torch and transformers)";
  }
  const std::filesystem::path folder(a.folder);
  for (const char* name : {"whisper_base", "ast_base"})
    if (!std::filesystem::exists(folder / name / "config.json"))
      throw pal::IoError((folder / name).string() +
                         ": no config.json; run with the Python reference once (it writes the weights)");
  const int64_t samples = static_cast<int64_t>(a.seconds * pal::audio::kSampleRate);
  at::manual_seed(0);
  const at::Tensor waveforms = at::randn({a.batch, samples}) * 0.1;
  const at::Tensor lengths = at::full({a.batch}, samples, at::kLong);
  c10::InferenceMode inference;
  auto rate = [&](double seconds) { return static_cast<double>(a.batch) / seconds; };

  // The frontends run outside the timing (as in the reference): forward_features only.
  nlohmann::json whisper;
  {
    pal::models::WhisperEncoder model = pal::models::load_whisper_encoder(folder / "whisper_base");
    const pal::audio::Features clip = model->frontend()(waveforms, lengths);
    pal::audio::WhisperMelOptions padded_options;
    padded_options.pad_to_30s = true;
    const pal::audio::Features padded = pal::audio::WhisperMelFrontend(padded_options)(waveforms, lengths);
    const double unpadded_s =
        median_seconds([&] { model->forward_features(clip.values, clip.lengths, false); }, a.repeats);
    const double padded_s =
        median_seconds([&] { model->forward_features(padded.values, padded.lengths, false); }, a.repeats);
    whisper = {{"pal_unpadded_clips_per_s", rate(unpadded_s)},
               {"pal_pad_to_30s_clips_per_s", rate(padded_s)},
               {"pal_input",
                "unpadded: [B, " + std::to_string(clip.values.size(1)) + ", 80]; pad_to_30s: [B, 3000, 80]"}};
    if (reference.is_object() && reference.contains("whisper_pad_to_30s")) {
      const double ref = reference["whisper_pad_to_30s"]["clips_per_s"].get<double>();
      whisper["transformers_pad_to_30s_clips_per_s"] = ref;
      whisper["ratio_as_users_run_it"] = rate(unpadded_s) / ref;  // PAL unpadded vs transformers at 30 s
      whisper["ratio_same_input"] = rate(padded_s) / ref;         // both at 30 s
    }
  }
  nlohmann::json ast;
  {
    pal::models::AstEncoder model = pal::models::load_ast_encoder(folder / "ast_base");
    const pal::audio::Features clip = model->frontend()(waveforms, lengths);
    const double s =
        median_seconds([&] { model->forward_features(clip.values, clip.lengths, false); }, a.repeats);
    ast = {{"pal_clips_per_s", rate(s)}, {"pal_input", "[B, 1024, 128]"}};
    if (reference.is_object() && reference.contains("ast")) {
      const double ref = reference["ast"]["clips_per_s"].get<double>();
      ast["transformers_clips_per_s"] = ref;
      ast["ratio_vs_transformers"] = rate(s) / ref;
    }
  }
  nlohmann::json summary = {
      {"benchmark", "encoders"},
      {"torch_version", pal::runtime_info().torch_version},
      {"threads", threads},
      {"batch", a.batch},
      {"clip_seconds", a.seconds},
      {"timed", "encoder forward only (frontends excluded on both sides), inference mode, fp32, median of " +
                    std::to_string(a.repeats) + " after a warm-up"},
      {"whisper_base", whisper},
      {"ast_base", ast},
      {"reference", reference}};
  if (a.json) {
    std::cout << summary.dump(2) << "\n";
    return 0;
  }
  std::printf("audio encoders, clips/s, batch %lld of %g s clips, %d threads, forward only (no frontend)\n",
              static_cast<long long>(a.batch), a.seconds, threads);
  auto ref_or_dash = [](const nlohmann::json& j, const char* key) {
    return j.contains(key) ? std::to_string(j[key].get<double>()).substr(0, 6) : std::string("-");
  };
  std::printf("%-28s %10s %14s %8s\n", "", "PAL", "transformers", "ratio");
  std::printf("%-28s %10.2f %14s %8s\n", "whisper-base, PAL unpadded",
              whisper["pal_unpadded_clips_per_s"].get<double>(),
              ref_or_dash(whisper, "transformers_pad_to_30s_clips_per_s").c_str(),
              ref_or_dash(whisper, "ratio_as_users_run_it").c_str());
  std::printf("%-28s %10.2f %14s %8s\n", "whisper-base, both at 30 s",
              whisper["pal_pad_to_30s_clips_per_s"].get<double>(),
              ref_or_dash(whisper, "transformers_pad_to_30s_clips_per_s").c_str(),
              ref_or_dash(whisper, "ratio_same_input").c_str());
  std::printf("%-28s %10.2f %14s %8s\n", "ast-base, 1024 frames", ast["pal_clips_per_s"].get<double>(),
              ref_or_dash(ast, "transformers_clips_per_s").c_str(),
              ref_or_dash(ast, "ratio_vs_transformers").c_str());
  if (reference.is_string()) std::printf("reference: %s\n", reference.get<std::string>().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pal-bench: PAL's throughput against a reference measured in the same run"};
  app.require_subcommand(1);
  FrontendArgs f;
  auto* frontend =
      app.add_subcommand("frontend", "whisper_mel and kaldi_fbank, x real time, vs the Python references");
  frontend->add_option("--batch", f.batch, "clips per batch")->check(CLI::PositiveNumber);
  frontend->add_option("--seconds", f.seconds, "seconds per clip")->check(CLI::Range(0.1, 600.0));
  frontend->add_option("--min-time", f.min_time, "seconds to measure each figure")
      ->check(CLI::PositiveNumber);
  frontend->add_flag("--json", f.json, "print one JSON object");
  frontend->add_flag("!--no-reference", f.reference, "skip the Python reference");
  frontend->add_option("--python", f.python, "Python with torch and torchaudio for the reference");
  frontend->add_option("--reference-script", f.reference_script, "the reference benchmark script");
  GenerateArgs g;
  auto* generate = app.add_subcommand("generate", "greedy generation tokens/s vs transformers' generate");
  generate->add_option("--model", g.model,
                       "HF Llama folder (the reference writes random weights there if new)");
  generate->add_option("--threads", g.threads, "intra-op threads for both; 0: all cores")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--batches", g.batches, "batch sizes")->delimiter(',')->check(CLI::PositiveNumber);
  generate->add_option("--prompt-length", g.prompt_length, "prompt tokens")->check(CLI::PositiveNumber);
  generate->add_option("--new-tokens", g.new_tokens, "new tokens per prompt")->check(CLI::PositiveNumber);
  generate->add_option("--repeats", g.repeats, "timed runs (the median counts)")->check(CLI::PositiveNumber);
  generate->add_option("--dtype", g.dtype, "weights and activations")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  generate->add_option("--device", g.device, "cpu, cuda or cuda:N");
  generate
      ->add_option("--llm-preset", g.llm_preset,
                   "random weights of these shapes instead of --model (no reference)")
      ->check(CLI::IsMember({"llama-3.2-1b", "tiny"}));
  generate->add_flag("--json", g.json, "print one JSON object");
  generate->add_flag("!--no-reference", g.reference, "skip the Python reference");
  generate->add_option("--python", g.python, "Python with torch and transformers for the reference");
  generate->add_option("--reference-script", g.reference_script, "the reference benchmark script");
  EncodersArgs e;
  auto* encoders = app.add_subcommand(
      "encoders", "Whisper-base and AST-base encoder clips/s vs transformers on the same random weights");
  encoders->add_option("--folder", e.folder,
                       "folder of the HF checkpoints (the reference writes them if new)");
  encoders->add_option("--threads", e.threads, "intra-op threads for both; 0: all cores")
      ->check(CLI::NonNegativeNumber);
  encoders->add_option("--batch", e.batch, "clips per batch")->check(CLI::PositiveNumber);
  encoders->add_option("--seconds", e.seconds, "seconds per clip (Whisper unpadded; AST pads to 10.24 s)")
      ->check(CLI::Range(1.0, 30.0));
  encoders->add_option("--repeats", e.repeats, "timed runs (the median counts)")->check(CLI::PositiveNumber);
  encoders->add_flag("--json", e.json, "print one JSON object");
  encoders->add_flag("!--no-reference", e.reference, "skip the Python reference");
  encoders->add_option("--python", e.python, "Python with torch and transformers for the reference");
  encoders->add_option("--reference-script", e.reference_script, "the reference benchmark script");
  pal::bench::FusionBenchArgs fu;
  auto* fusion =
      app.add_subcommand("fusion", "training step, memory, generation and FLOPs of each fusion mode");
  fusion->add_option("--audio-lengths", fu.audio_lengths, "audio tokens Na")->delimiter(',');
  fusion->add_option("--text-lengths", fu.text_lengths, "text tokens Nt")->delimiter(',');
  fusion->add_option("--batch", fu.batch, "examples per step")->check(CLI::PositiveNumber);
  fusion->add_option("--layers", fu.layers, "decoder layers")->check(CLI::PositiveNumber);
  fusion->add_option("--width", fu.width, "decoder width (a multiple of 128)")->check(CLI::PositiveNumber);
  fusion->add_option("--start-layer", fu.start_layer, "fusion.start_layer")->check(CLI::NonNegativeNumber);
  fusion->add_option("--answer", fu.answer, "answer tokens (the loss)")->check(CLI::PositiveNumber);
  fusion->add_option("--repeats", fu.repeats, "timed steps (the median counts)")->check(CLI::PositiveNumber);
  fusion->add_option("--threads", fu.threads, "intra-op threads; 0: all cores")
      ->check(CLI::NonNegativeNumber);
  fusion->add_flag("--json", fu.json, "print one JSON object");
  fusion->add_flag("--whole", fu.whole,
                   "the whole step: a frozen Whisper-base encoder computes the audio frames");
  fusion
      ->add_option("--encoders", fu.encoders,
                   "frozen encoders that compute the audio frames in the step (several: concatenated "
                   "along channels)")
      ->delimiter(',')
      ->check(CLI::IsMember({"whisper-base", "ast-base", "whisper-test", "ast-test"}));
  fusion->add_option("--device", fu.device, "cpu, cuda or cuda:N");
  fusion->add_option("--dtype", fu.dtype, "bfloat16: bf16 frozen weights, float32 projector, CUDA autocast")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  fusion->add_option("--llm-preset", fu.llm_preset, "decoder shapes by name instead of --layers / --width")
      ->check(CLI::IsMember({"llama-3.2-1b", "tiny"}));
  fusion->add_flag("--mfu", fu.mfu, "measure the dense matmul peak of --dtype here and report MFU per mode");
  fusion->add_option("--matmul-size", fu.matmul_size, "n of the n^3 matmuls of --mfu")
      ->check(CLI::PositiveNumber);
  std::string single;
  fusion->add_option("--single", single, "run one mode in this process (internal)")
      ->check(CLI::IsMember({"prefix", "delayed", "probe", "pal"}));
  fusion->add_option("--audio", fu.audio, "Na of a --single run");
  fusion->add_option("--text", fu.text, "Nt of a --single run");
  pal::bench::TrainBenchArgs tr;
  auto* train = app.add_subcommand("train", "training tokens/s of the C++ trainer vs an equivalent PyTorch loop");
  train->add_option("--folder", tr.folder, "model and clips of the benchmark (written if new)");
  train->add_option("--batch", tr.batch, "examples per step")->check(CLI::PositiveNumber);
  train->add_option("--steps", tr.steps, "timed steps (the median counts)")->check(CLI::PositiveNumber);
  train->add_option("--hidden", tr.hidden, "LLM width (a multiple of 64)")->check(CLI::PositiveNumber);
  train->add_option("--layers", tr.layers, "LLM layers")->check(CLI::PositiveNumber);
  train->add_option("--threads", tr.threads, "intra-op threads for both; 0: all cores")->check(CLI::NonNegativeNumber);
  train->add_flag("--json", tr.json, "print one JSON object");
  train->add_flag("!--no-reference", tr.reference, "skip the Python reference");
  train->add_option("--python", tr.python, "Python with torch and transformers for the reference");
  pal::bench::DdpBenchArgs dd;
  auto* ddp = app.add_subcommand("ddp", "data-parallel training tokens/s with 1 and N processes, all-reduce share");
  ddp->add_option("--processes", dd.processes, "ranks of the multi-process run")->check(CLI::Range(2, 64));
  ddp->add_option("--batch", dd.batch, "examples per rank and step")->check(CLI::PositiveNumber);
  ddp->add_option("--steps", dd.steps, "timed steps (the median counts)")->check(CLI::PositiveNumber);
  ddp->add_option("--hidden", dd.hidden, "LLM width (a multiple of 64)")->check(CLI::PositiveNumber);
  ddp->add_option("--layers", dd.layers, "LLM layers")->check(CLI::PositiveNumber);
  ddp->add_option("--device", dd.device, "cpu (Gloo) or cuda (NCCL, cuda:LOCAL_RANK per rank)");
  ddp->add_option("--folder", dd.folder, "model config, stage and runs (rewritten)");
  ddp->add_flag("--json", dd.json, "print one JSON object");
  ddp->add_flag("--worker", dd.worker, "run one rank (internal)");
  ddp->add_option("--threads", dd.threads, "intra-op threads of a --worker (internal)");
  pal::bench::InferBenchArgs inf;
  auto* infer = pal::bench::add_infer_command(app, inf);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    pal::set_log_level(pal::LogLevel::warn);
    if (*frontend) return bench_frontend(f);
    if (*generate) return bench_generate(g);
    if (*encoders) return bench_encoders(e);
    if (*infer) return pal::bench::bench_infer(inf);
    if (*train) return pal::bench::bench_train(tr);
    if (*ddp) return pal::bench::bench_ddp(dd, std::filesystem::read_symlink("/proc/self/exe").string());
    if (*fusion) {
      if (!single.empty()) {
        fu.single_run = true;
        fu.single = single == "prefix"    ? pal::models::FusionMode::prefix
                    : single == "delayed" ? pal::models::FusionMode::delayed
                    : single == "probe"   ? pal::models::FusionMode::probe
                                          : pal::models::FusionMode::pal;
      }
      return pal::bench::bench_fusion(fu, std::filesystem::read_symlink("/proc/self/exe").string());
    }
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
