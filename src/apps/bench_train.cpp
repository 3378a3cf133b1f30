#include "bench_train.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench_fusion.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/train/trainer.h"

namespace pal::bench {
namespace fs = std::filesystem;
namespace {

// 16-bit PCM mono WAV.
void write_wav(const fs::path& file, const std::vector<float>& samples, int rate) {
  std::string out = "RIFF";
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  auto u16 = [&](uint16_t v) {
    out.push_back(static_cast<char>(v & 0xff));
    out.push_back(static_cast<char>(v >> 8));
  };
  const uint32_t bytes = static_cast<uint32_t>(samples.size() * 2);
  u32(36 + bytes);
  out += "WAVEfmt ";
  u32(16);
  u16(1);
  u16(1);
  u32(static_cast<uint32_t>(rate));
  u32(static_cast<uint32_t>(rate * 2));
  u16(2);
  u16(16);
  out += "data";
  u32(bytes);
  for (float s : samples) {
    const auto v = static_cast<int16_t>(std::lround(std::clamp(s, -1.0f, 1.0f) * 32767.0f));
    u16(static_cast<uint16_t>(v));
  }
  write_file_atomic(file, out);
}

// The benchmark's model and data: an LLM config (random weights, the tiny_chat tokenizer),
// `batch` tone clips and a manifest whose questions and answers have fixed lengths.
void prepare(const TrainBenchArgs& a) {
  const fs::path folder(a.folder);
  const fs::path fixtures = fs::path(PAL_SOURCE_DIR) / "tests" / "fixtures";
  fs::create_directories(folder / "llm");
  fs::create_directories(folder / "clips");
  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                           {"model_type", "llama"},
                           {"vocab_size", 1500},
                           {"hidden_size", a.hidden},
                           {"intermediate_size", a.hidden * 8 / 3 / 64 * 64},
                           {"num_hidden_layers", a.layers},
                           {"num_attention_heads", a.hidden / 64},
                           {"num_key_value_heads", std::max<int64_t>(1, a.hidden / 128)},
                           {"head_dim", 64},
                           {"max_position_embeddings", 2048},
                           {"rms_norm_eps", 1e-5},
                           {"rope_theta", 10000.0},
                           {"tie_word_embeddings", true},
                           {"initializer_range", 0.02},
                           {"bos_token_id", 0},
                           {"eos_token_id", 6}};
  write_file_atomic(folder / "llm" / "config.json", config.dump(2));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    write_file_atomic(folder / "llm" / f, read_file(fixtures / "llm" / "tiny_chat" / f));
  std::string manifest;
  const int rate = 16000;
  const auto n = static_cast<size_t>(a.seconds * rate);
  for (int64_t i = 0; i < a.batch; ++i) {
    std::vector<float> s(n);
    const double f = 220.0 * (1 + static_cast<double>(i));
    for (size_t t = 0; t < n; ++t) s[t] = 0.3f * static_cast<float>(std::sin(2 * M_PI * f * static_cast<double>(t) / rate));
    const std::string name = "tone" + std::to_string(i) + ".wav";
    write_wav(folder / "clips" / name, s, rate);
    manifest += nlohmann::json({{"audio", "clips/" + name},
                                {"instruction", "Which tone is this, and how high is its pitch compared with a "
                                                "piano's middle C? Answer briefly."},
                                {"output", "A steady sine tone at " + std::to_string(static_cast<int>(f)) +
                                               " hertz, higher than middle C."},
                                {"task", "cla"}})
                    .dump() +
                "\n";
  }
  write_file_atomic(folder / "train.jsonl", manifest);
  // prefix fusion, one frozen Whisper encoder, the LLM and the audio path trained.
  const std::string stage =
      "name: bench\n"
      "model:\n"
      "  llm: llm\n"
      "  llm_weights: random\n"
      "  encoders: [{type: whisper, checkpoint: " + (fixtures / "encoders" / "tiny_whisper").string() + "}]\n"
      "  ensemble: {width: 64, frames_per_second: 10}\n"
      "  projector: {type: mlp}\n"
      "  fusion: {mode: prefix}\n"
      "  prompt: {max_tokens: 256}\n"
      "output_dir: run\n"
      "trainable: [ensemble, projector, llm]\n"
      "data: {train: [{path: train.jsonl}], shuffle_buffer: 0, bucket_batches: 1, workers: 1}\n"
      "optim: {lr: 1e-4, weight_decay: 0.01, clip_grad_norm: 1.0}\n"
      "steps: 1\n"
      "batch_size: " + std::to_string(a.batch) + "\n"
      "checkpoint: {every: 0}\n"
      "log_every: 1000\n";
  write_file_atomic(folder / "stage.yaml", stage);
}

}  // namespace

int bench_train(const TrainBenchArgs& args) {
  TrainBenchArgs a = args;
  const int threads = a.threads > 0 ? a.threads : available_cores();
  if (a.python.empty())
    a.python = fs::exists(PAL_SOURCE_DIR "/build/pip/venv/bin/python") ? PAL_SOURCE_DIR "/build/pip/venv/bin/python"
                                                                        : "python3";
  if (a.reference_script.empty()) a.reference_script = PAL_SOURCE_DIR "/scripts/bench/train_reference.py";
  prepare(a);
  const fs::path folder(a.folder);
  fs::remove_all(folder / "run");

  const int64_t warmup = 3;
  train::StageConfig config = train::load_stage_config(
      folder / "stage.yaml", {"steps=" + std::to_string(warmup + a.steps), "threads=" + std::to_string(threads)});
  train::TrainOptions options;
  options.progress_bar = false;
  auto last = std::chrono::steady_clock::now();
  std::vector<double> step_seconds;
  double data = 0, compute = 0, update = 0;
  int64_t seen = 0;
  options.on_step = [&](const train::StepMetrics& m) {
    if (++seen > warmup) {
      data += m.data_seconds;
      compute += m.compute_seconds;
      update += m.update_seconds;
    }
    const auto now = std::chrono::steady_clock::now();
    step_seconds.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
  };
  train::Trainer trainer(config, options);
  last = std::chrono::steady_clock::now();
  trainer.run();
  // Text tokens per step: read from the trainer's own count.
  nlohmann::json metrics;
  {
    std::ifstream in(folder / "run" / "final" / "trainer_state.json");
    in >> metrics;
  }
  const double tokens_per_step =
      static_cast<double>(metrics["tokens_seen"].get<int64_t>()) / static_cast<double>(warmup + a.steps);
  std::vector<double> timed(step_seconds.begin() + warmup, step_seconds.end());
  std::sort(timed.begin(), timed.end());
  const double median = timed[timed.size() / 2];
  const double pal_tokens_per_s = tokens_per_step / median;

  nlohmann::json reference;
  if (a.reference) {
    char cmd[4096];
    std::snprintf(cmd, sizeof cmd,
                  "%s %s --folder '%s' --threads %d --batch %lld --steps %lld --warmup %lld --seconds %g "
                  "--text-tokens %lld --json 2>/dev/null",
                  a.python.c_str(), a.reference_script.c_str(), a.folder.c_str(), threads,
                  static_cast<long long>(a.batch), static_cast<long long>(a.steps), static_cast<long long>(warmup),
                  a.seconds, static_cast<long long>(std::llround(tokens_per_step / static_cast<double>(a.batch))));
    FILE* pipe = popen(cmd, "r");
    std::string out;
    if (pipe) {
      char buf[4096];
      size_t got;
      while ((got = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, got);
      const int status = pclose(pipe);
      auto j = nlohmann::json::parse(out, nullptr, false);
      if (status == 0 && j.is_object()) reference = j;
    }
    if (!reference.is_object())
      reference = "unavailable: '" + a.python + " " + a.reference_script + "' failed (needs python3 with torch and transformers)";
  }
  nlohmann::json summary = {{"benchmark", "train"},
                            {"torch_version", runtime_info().torch_version},
                            {"threads", threads},
                            {"batch", a.batch},
                            {"audio_seconds", a.seconds},
                            {"llm", {{"hidden", a.hidden}, {"layers", a.layers}}},
                            {"text_tokens_per_step", tokens_per_step},
                            {"timed_steps", a.steps},
                            {"pal_step_s", median},
                            {"pal_step_parts_s",
                             {{"data_wait", data / static_cast<double>(a.steps)},
                              {"forward_backward", compute / static_cast<double>(a.steps)},
                              {"optimizer", update / static_cast<double>(a.steps)}}},
                            {"pal_tokens_per_s", pal_tokens_per_s},
                            {"pal_peak_rss_mib", peak_resident_mib()},
                            {"reference", reference}};
  if (reference.is_object()) {
    summary["reference_tokens_per_s"] = reference["tokens_per_s"];
    summary["ratio_vs_pytorch"] = pal_tokens_per_s / reference["tokens_per_s"].get<double>();
  }
  if (a.json) {
    std::printf("%s\n", summary.dump(2).c_str());
  } else {
    std::printf("training step, batch %lld x (%.0f text tokens + %.0f s audio), %d threads\n",
                static_cast<long long>(a.batch), tokens_per_step / static_cast<double>(a.batch), a.seconds, threads);
    std::printf("  PAL (C++)       %8.3f s/step  %8.0f tokens/s\n", median, pal_tokens_per_s);
    if (reference.is_object())
      std::printf("  PyTorch (Python) %7.3f s/step  %8.0f tokens/s   ratio %.2fx\n",
                  reference["step_s"].get<double>(), reference["tokens_per_s"].get<double>(),
                  summary["ratio_vs_pytorch"].get<double>());
    else
      std::printf("  reference: %s\n", reference.get<std::string>().c_str());
  }
  return 0;
}

}  // namespace pal::bench
