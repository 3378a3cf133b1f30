// pal-bench: throughput benchmarks, each against a reference measured in the same run.
//
//   pal-bench frontend [--json]   seconds of audio per second (x real time) of whisper_mel
//                                 and kaldi_fbank on 10 s clips in batches of 16, on 1 thread
//                                 and on all threads, beside the Python references
//                                 (scripts/bench/frontend_reference.py: openai-whisper's
//                                 log_mel_spectrogram algorithm, torchaudio's kaldi fbank)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "pal/audio/decode.h"
#include "pal/audio/frontend.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/core/runtime.h"

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

std::optional<nlohmann::json> run_reference(const FrontendArgs& a, int threads) {
  char cmd[2048];
  std::snprintf(cmd, sizeof cmd,
                "%s %s --threads %d --batch %d --seconds %g --min-time %g --json 2>/dev/null",
                a.python.c_str(), a.reference_script.c_str(), threads, a.batch, a.seconds, a.min_time);
  FILE* pipe = popen(cmd, "r");
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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    pal::set_log_level(pal::LogLevel::warn);
    if (*frontend) return bench_frontend(f);
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
