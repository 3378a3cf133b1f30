// pal-bench fusion: what each fusion mode costs, on one model and batch.
//
// For every mode, in a child process of its own (so that peak memory is the mode's
// alone): one training step of the LLM part (frozen decoder, a trainable projector
// from given audio features, cross-entropy on the answer tokens, AdamW) and one greedy
// generation of 16 tokens. Reported beside the FLOPs the mode should cost (an analytic
// count of the matrix products, forward + backward), all as ratios to `prefix`.
#include "bench_fusion.h"

#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/models/fusion.h"
#include "pal/models/projector.h"
#include "pal/models/whisper_encoder.h"

namespace pal::bench {

double resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

double peak_resident_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

namespace {

using Clock = std::chrono::steady_clock;
using models::FusionMode;

models::LlamaConfig bench_llm(const FusionBenchArgs& a) {
  models::LlamaConfig c;
  c.vocab_size = 32000;
  c.hidden_size = a.width;
  c.intermediate_size = a.width * 11 / 4;
  c.num_hidden_layers = a.layers;
  c.num_attention_heads = a.width / 64;
  c.num_key_value_heads = std::max<int64_t>(1, a.width / 128);
  c.head_dim = 64;
  c.max_position_embeddings = 8192;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = true;
  return c;
}

// Multiply-adds x 2 of the matrix products of one step, forward and backward. With a
// frozen decoder the backward pass computes activation gradients only (one product per
// forward product; two for attention's), from the first layer that sees audio on.
double step_flops(FusionMode mode, const FusionBenchArgs& a, const models::LlamaConfig& c) {
  const double H = static_cast<double>(c.hidden_size),
               Hkv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double I = static_cast<double>(c.intermediate_size), Na = static_cast<double>(a.audio),
               Nt = static_cast<double>(a.text), B = static_cast<double>(a.batch);
  const int64_t k = mode == FusionMode::prefix ? 0 : a.start_layer;
  auto linear = [&](double rows) { return 2 * rows * (2 * H * H + 2 * H * Hkv + 3 * H * I); };
  auto attention = [&](double queries, double keys) { return 4 * queries * keys * H; };
  const double summary = mode == FusionMode::pal ? 1 : 0;
  double forward = 0, backward = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    double lin = 0, att = 0;
    const bool reads_audio = l >= k;
    switch (mode) {
      case FusionMode::prefix: lin = linear(Na + Nt), att = attention(Na + Nt, Na + Nt); break;
      case FusionMode::delayed:
        lin = linear(reads_audio ? Na + Nt : Nt),
        att = reads_audio ? attention(Na + Nt, Na + Nt) : attention(Nt, Nt);
        break;
      case FusionMode::probe:
      case FusionMode::pal:
        lin = linear(Nt + summary);
        att = attention(Nt + summary, (reads_audio ? Na : 0) + Nt + summary);
        if (reads_audio) lin += 2 * Na * 2 * H * Hkv;  // the audio's keys and values
        break;
    }
    forward += lin + att;
    if (reads_audio || mode == FusionMode::pal) backward += lin + 2 * att;
  }
  const double head = 2 * static_cast<double>(a.answer) * H * static_cast<double>(c.vocab_size);
  const double projector = 2 * Na * H * H;
  double encoder = 0;  // --whole: Whisper-base forward over Na frames (no backward: frozen)
  if (a.whole) {
    const double d = 512, ffn = 2048, mels = 80;
    encoder = 2 * (2 * Na) * mels * d * 3 + 2 * Na * d * d * 3;             // the two convolutions
    encoder += 6 * (2 * Na * (4 * d * d + 2 * d * ffn) + 4 * Na * Na * d);  // six blocks
  }
  return B * (forward + backward + 2 * head + 3 * projector + encoder);
}

// One mode, in this process: prints one JSON object.
int run_one(const FusionBenchArgs& a) {
  const FusionMode mode = a.single;
  at::manual_seed(0);
  const models::LlamaConfig c = bench_llm(a);
  models::LlamaForCausalLM llm(c);
  for (auto& p : llm->parameters()) p.set_requires_grad(false);
  models::FusionConfig fc;
  fc.mode = mode;
  fc.start_layer = a.start_layer;
  const int64_t placeholder = c.vocab_size;  // one past the vocabulary, as a tokenizer's added token
  models::FusionDecoder model(llm, fc, placeholder);
  // The whole step: a frozen Whisper-base encoder (random weights) turns a.audio / 50
  // seconds of audio into a.audio frames of width 512 in every step.
  models::WhisperEncoder encoder{nullptr};
  int64_t feature_width = a.width;
  if (a.whole) {
    models::WhisperEncoderConfig wc;
    wc.d_model = 512;
    wc.encoder_layers = 6;
    wc.encoder_attention_heads = 8;
    wc.encoder_ffn_dim = 2048;
    wc.num_mel_bins = 80;
    wc.max_source_positions = std::max<int64_t>(1500, a.audio);
    encoder = models::WhisperEncoder(wc);
    encoder->train_last_blocks(0);
    encoder->eval();
    feature_width = 512;
  }
  models::ProjectorConfig pc;
  pc.hidden = a.width;
  auto projector = models::make_projector(pc, feature_width, a.width);
  torch::optim::AdamW optimizer(projector->parameters(), torch::optim::AdamWOptions(1e-4));

  torch::Tensor features = torch::randn({a.batch, a.audio, feature_width});
  torch::Tensor audio_mask = torch::ones({a.batch, a.audio}, torch::kBool);
  const int64_t samples = a.audio * 320;  // 50 frames per second at 16 kHz
  torch::Tensor waveforms = torch::randn({a.batch, samples}) * 0.1;
  torch::Tensor lengths = torch::full({a.batch}, samples, torch::kInt64);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {a.batch, a.text + 1}, torch::kInt64);
  ids.select(1, a.text / 4).fill_(placeholder);
  torch::Tensor valid = torch::ones({a.batch, a.text + 1}, torch::kBool);
  torch::Tensor labels = torch::zeros({a.batch, a.text + 1}, torch::kBool);
  labels.narrow(1, a.text + 1 - a.answer, a.answer).fill_(true);
  auto audio_tokens = [&] {
    if (a.whole) {
      torch::NoGradGuard no_grad;
      models::EncoderOutput encoded = encoder->encode(waveforms, lengths);
      features = encoded.hidden;
      audio_mask = encoded.mask;
    }
    models::AudioTokens tokens = projector->forward({features, audio_mask});
    models::EnsembleOutput out;
    out.probe = tokens;
    if (mode == FusionMode::pal)  // one summary token the prefix way, the sequence the probe way
      out.prefix = {tokens.tokens.mean(1, /*keepdim=*/true), audio_mask.narrow(1, 0, 1)};
    return out;
  };
  auto step = [&] {
    optimizer.zero_grad();
    models::FusionOutput out = model->forward(ids, valid, audio_tokens(), labels);
    out.loss.backward();
    optimizer.step();
  };
  BlasThreadingGuard blas_threading;
  const double rss_before = resident_mib();
  step();  // warm-up
  std::vector<double> seconds;
  for (int r = 0; r < a.repeats; ++r) {
    const auto start = Clock::now();
    step();
    seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double step_memory = peak_resident_mib() - rss_before;

  models::GenerationOptions g;
  g.max_new_tokens = 16;
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t b = 0; b < a.batch; ++b) {
    torch::Tensor row = ids[b].narrow(0, 0, a.text + 1 - a.answer).contiguous();
    prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
  }
  double generate_seconds = 0;
  {
    torch::NoGradGuard no_grad;
    models::EnsembleOutput audio = audio_tokens();
    model->generate(prompts, audio, g);  // warm-up
    const auto start = Clock::now();
    model->generate(prompts, audio, g);
    generate_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }
  nlohmann::json out = {{"mode", config::enum_name(mode)},
                        {"step_seconds", seconds[seconds.size() / 2]},
                        {"step_memory_mib", step_memory},
                        {"generate_seconds", generate_seconds},
                        {"step_gflop", step_flops(mode, a, c) / 1e9}};
  std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

int bench_fusion(const FusionBenchArgs& a, const std::string& self_exe) {
  const int threads = a.threads > 0 ? a.threads : available_cores();
  configure_threads({threads, 0});
  if (a.single_run) return run_one(a);

  nlohmann::json runs = nlohmann::json::array();
  for (int64_t audio : a.audio_lengths)
    for (int64_t text : a.text_lengths) {
      nlohmann::json row = {{"audio_tokens", audio}, {"text_tokens", text}};
      nlohmann::json modes = nlohmann::json::object();
      for (FusionMode mode : {FusionMode::prefix, FusionMode::delayed, FusionMode::probe, FusionMode::pal}) {
        char cmd[1024];
        std::snprintf(
            cmd, sizeof cmd,
            "'%s' fusion --single %s --audio %lld --text %lld --batch %lld --layers %lld --width %lld "
            "--start-layer %lld --answer %lld --repeats %d --threads %d%s",
            self_exe.c_str(), config::enum_name(mode).c_str(), static_cast<long long>(audio),
            static_cast<long long>(text), static_cast<long long>(a.batch), static_cast<long long>(a.layers),
            static_cast<long long>(a.width), static_cast<long long>(a.start_layer),
            static_cast<long long>(a.answer), a.repeats, threads, a.whole ? " --whole" : "");
        FILE* pipe = popen(cmd, "r");
        std::string text_out;
        char buf[4096];
        size_t n;
        while (pipe && (n = fread(buf, 1, sizeof buf, pipe)) > 0) text_out.append(buf, n);
        if (!pipe || pclose(pipe) != 0)
          throw Error(std::string("pal-bench fusion: the run '") + cmd + "' failed");
        modes[config::enum_name(mode)] = nlohmann::json::parse(text_out);
      }
      const nlohmann::json& base = modes["prefix"];
      for (auto& [name, m] : modes.items()) {
        m["step_time_ratio"] = m["step_seconds"].get<double>() / base["step_seconds"].get<double>();
        m["step_memory_ratio"] = m["step_memory_mib"].get<double>() / base["step_memory_mib"].get<double>();
        m["flop_ratio"] = m["step_gflop"].get<double>() / base["step_gflop"].get<double>();
        m["generate_time_ratio"] =
            m["generate_seconds"].get<double>() / base["generate_seconds"].get<double>();
      }
      row["modes"] = modes;
      runs.push_back(row);
      if (!a.json)
        for (auto& [name, m] : modes.items())
          std::printf(
              "Na %5lld Nt %4lld %-8s step %7.3f s (x%.2f, FLOPs x%.2f)  memory %7.1f MiB (x%.2f)  "
              "generate %6.3f s (x%.2f)\n",
              static_cast<long long>(audio), static_cast<long long>(text), name.c_str(),
              m["step_seconds"].get<double>(), m["step_time_ratio"].get<double>(),
              m["flop_ratio"].get<double>(), m["step_memory_mib"].get<double>(),
              m["step_memory_ratio"].get<double>(), m["generate_seconds"].get<double>(),
              m["generate_time_ratio"].get<double>());
    }
  if (a.json) {
    nlohmann::json summary = {
        {"benchmark", "fusion"},
        {"part", a.whole ? "whole step: frozen Whisper-base encoder (random weights) + "
                           "trainable MLP projector + frozen decoder"
                         : "LLM (audio features given; trainable MLP projector; frozen decoder)"},
        {"torch_version", runtime_info().torch_version},
        {"threads", threads},
        {"batch", a.batch},
        {"layers", a.layers},
        {"width", a.width},
        {"start_layer", a.start_layer},
        {"answer_tokens", a.answer},
        {"runs", runs}};
    std::cout << summary.dump(2) << "\n";
  }
  return 0;
}

}  // namespace pal::bench
