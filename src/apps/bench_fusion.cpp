// pal-bench fusion: what each fusion mode costs, on one model and batch.
//
// For every mode, in a child process of its own (so that peak memory is the mode's
// alone): one training step of the LLM part (frozen decoder, a trainable projector
// from given audio features, cross-entropy on the answer tokens, AdamW) and one greedy
// generation of 16 tokens. Reported beside the FLOPs the mode should cost (an analytic
// count of the matrix products, forward + backward), all as ratios to `prefix`.
//
// With --encoders the step starts from audio: frozen encoders compute the frames. On
// CUDA (--device cuda) memory is the caching allocator's peak of bytes held by tensors,
// and --mfu relates each step's FLOPs to the dense matmul rate of --dtype measured on the
// same card in the same run (bench_device.h).
#include "bench_fusion.h"

#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "../train/autocast.h"
#include "bench_device.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/models/ast_encoder.h"
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
  if (!a.llm_preset.empty()) return llm_preset(a.llm_preset);
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

// A frozen encoder of the step, by name.
struct EncoderShape {
  bool whisper = true;  // else AST
  int64_t width = 0, layers = 0, heads = 0, ffn = 0, mels = 0;
};

EncoderShape encoder_shape(const std::string& name) {
  if (name == "whisper-base") return {true, 512, 6, 8, 2048, 80};
  if (name == "whisper-test") return {true, 64, 2, 4, 128, 80};
  if (name == "ast-base") return {false, 768, 12, 12, 3072, 128};
  if (name == "ast-test") return {false, 64, 2, 4, 128, 128};
  throw Error("--encoders: '" + name + "' is not whisper-base, ast-base, whisper-test or ast-test");
}

std::vector<std::string> step_encoders(const FusionBenchArgs& a) {
  if (!a.encoders.empty()) return a.encoders;
  if (a.whole) return {"whisper-base"};
  return {};
}

// AST's input: 1024 fbank frames of 128 bins, 16 x 16 patches at stride 10 in both axes.
constexpr int64_t kAstFrames = 1024, kAstPatches = 12 * 101, kAstTokens = kAstPatches + 2;

// Forward FLOPs of one encoder over one clip of Na / 50 seconds.
double encoder_flops(const EncoderShape& e, double Na) {
  const double d = static_cast<double>(e.width), ffn = static_cast<double>(e.ffn),
               mels = static_cast<double>(e.mels), layers = static_cast<double>(e.layers);
  if (e.whisper) {
    // Two convolutions (k 3) over 2 Na mel frames, then blocks over Na frames.
    const double convs = 2 * (2 * Na) * mels * d * 3 + 2 * Na * d * d * 3;
    return convs + layers * (2 * Na * (4 * d * d + 2 * d * ffn) + 4 * Na * Na * d);
  }
  const double T = static_cast<double>(kAstTokens);
  const double patches = 2 * static_cast<double>(kAstPatches) * 16 * 16 * d;
  return patches + layers * (2 * T * (4 * d * d + 2 * d * ffn) + 4 * T * T * d);
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
  // The MLP projector (features F wide -> H -> H): forward, then the weight gradients of
  // both layers and the input gradient of the second (the features need none).
  double F = H, encoder = 0;  // the encoders run forward only (frozen)
  const std::vector<std::string> encoders = step_encoders(a);
  if (!encoders.empty()) F = 0;
  for (const auto& name : encoders) {
    const EncoderShape e = encoder_shape(name);
    F += static_cast<double>(e.width);
    encoder += encoder_flops(e, Na);
  }
  const double projector = 2 * Na * (F * H + H * H) + 2 * Na * (F * H + 2 * H * H);
  return B * (forward + backward + 2 * head + projector + encoder);
}

std::shared_ptr<models::AudioEncoder> make_encoder(const std::string& name, int64_t audio_frames) {
  const EncoderShape e = encoder_shape(name);
  if (e.whisper) {
    models::WhisperEncoderConfig wc;
    wc.d_model = e.width;
    wc.encoder_layers = e.layers;
    wc.encoder_attention_heads = e.heads;
    wc.encoder_ffn_dim = e.ffn;
    wc.num_mel_bins = e.mels;
    wc.max_source_positions = std::max<int64_t>(1500, audio_frames);
    return std::make_shared<models::WhisperEncoderImpl>(wc);
  }
  models::AstEncoderConfig ac;
  ac.hidden_size = e.width;
  ac.num_hidden_layers = e.layers;
  ac.num_attention_heads = e.heads;
  ac.intermediate_size = e.ffn;
  ac.num_mel_bins = e.mels;
  ac.max_length = kAstFrames;
  ac.target_length = kAstFrames;
  return std::make_shared<models::AstEncoderImpl>(ac);
}

bool extended(const FusionBenchArgs& a) {
  return a.device != "cpu" || a.dtype != "float32" || !a.llm_preset.empty() || !a.encoders.empty() || a.mfu;
}

// One mode, in this process: prints one JSON object.
int run_one(const FusionBenchArgs& a) {
  const FusionMode mode = a.single;
  const c10::Device device = parse_device(a.device);
  const at::ScalarType dtype = parse_dtype(a.dtype);
  // bf16 weights for the frozen parts; the trainable projector keeps float32 master weights
  // and, on CUDA, the step runs under autocast as the trainer's AMP does.
  const bool autocast = device.is_cuda() && dtype != at::kFloat;
  at::manual_seed(0);
  const models::LlamaConfig c = bench_llm(a);
  models::LlamaForCausalLM llm(c);
  for (auto& p : llm->parameters()) p.set_requires_grad(false);
  llm->to(device, dtype);
  models::FusionConfig fc;
  fc.mode = mode;
  fc.start_layer = a.start_layer;
  const int64_t placeholder = c.vocab_size;  // one past the vocabulary, as a tokenizer's added token
  models::FusionDecoder model(llm, fc, placeholder);
  // The whole step: frozen encoders (random weights) turn a.audio / 50 seconds of audio
  // into a.audio frames in every step.
  std::vector<std::shared_ptr<models::AudioEncoder>> encoders;
  int64_t feature_width = 0;
  for (const auto& name : step_encoders(a)) {
    encoders.push_back(make_encoder(name, a.audio));
    encoders.back()->train_last_blocks(0);
    encoders.back()->eval();
    encoders.back()->to(device, dtype);
    feature_width += encoders.back()->width();
  }
  if (encoders.empty()) feature_width = c.hidden_size;
  models::ProjectorConfig pc;
  pc.hidden = c.hidden_size;
  auto projector = models::make_projector(pc, feature_width, c.hidden_size);
  projector->to(device);
  torch::optim::AdamW optimizer(projector->parameters(), torch::optim::AdamWOptions(1e-4));

  const auto on_device = torch::TensorOptions().device(device);
  torch::Tensor features = torch::randn({a.batch, a.audio, feature_width}).to(device);
  torch::Tensor audio_mask = torch::ones({a.batch, a.audio}, on_device.dtype(torch::kBool));
  const int64_t samples = a.audio * 320;  // 50 frames per second at 16 kHz
  torch::Tensor waveforms = (torch::randn({a.batch, samples}) * 0.1).to(device);
  torch::Tensor lengths = torch::full({a.batch}, samples, torch::kInt64).to(device);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {a.batch, a.text + 1}, torch::kInt64);
  ids.select(1, a.text / 4).fill_(placeholder);
  torch::Tensor valid = torch::ones({a.batch, a.text + 1}, torch::kBool);
  torch::Tensor labels = torch::zeros({a.batch, a.text + 1}, torch::kBool);
  labels.narrow(1, a.text + 1 - a.answer, a.answer).fill_(true);
  const torch::Tensor ids_d = ids.to(device), valid_d = valid.to(device), labels_d = labels.to(device);
  auto audio_tokens = [&] {
    if (!encoders.empty()) {
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> frames;
      for (auto& encoder : encoders) {
        models::EncoderOutput encoded = encoder->encode(waveforms, lengths);
        torch::Tensor h = encoded.hidden;
        if (h.size(1) != a.audio)  // AST's 10 Hz patches: to Na frames, linearly in time
          h = torch::nn::functional::interpolate(h.transpose(1, 2).to(torch::kFloat),
                                                 torch::nn::functional::InterpolateFuncOptions()
                                                     .size(std::vector<int64_t>{a.audio})
                                                     .mode(torch::kLinear)
                                                     .align_corners(false))
                  .transpose(1, 2);
        frames.push_back(h.to(torch::kFloat));
      }
      features = frames.size() == 1 ? frames[0] : torch::cat(frames, -1);
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
    models::FusionOutput out;
    {
      train::CudaAutocastGuard amp(autocast, dtype);
      out = model->forward(ids_d, valid_d, audio_tokens(), labels_d);
    }
    out.loss.backward();
    optimizer.step();
  };
  BlasThreadingGuard blas_threading;
  synchronize(device);
  const double memory_before = memory_now_mib(device);
  reset_peak_memory(device);
  step();  // warm-up
  synchronize(device);
  std::vector<double> seconds;
  for (int r = 0; r < a.repeats; ++r) {
    const auto start = Clock::now();
    step();
    seconds.push_back(seconds_since(start, device));
  }
  std::sort(seconds.begin(), seconds.end());
  const double peak_memory = memory_peak_mib(device);
  const double step_memory = peak_memory - memory_before;

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
    models::EnsembleOutput audio;
    {
      train::CudaAutocastGuard amp(autocast, dtype);
      audio = audio_tokens();
    }
    model->generate(prompts, audio, g);  // warm-up
    synchronize(device);
    const auto start = Clock::now();
    model->generate(prompts, audio, g);
    generate_seconds = seconds_since(start, device);
  }
  nlohmann::json out = {{"mode", config::enum_name(mode)},
                        {"step_seconds", seconds[seconds.size() / 2]},
                        {"step_memory_mib", step_memory},
                        {"generate_seconds", generate_seconds},
                        {"step_gflop", step_flops(mode, a, c) / 1e9}};
  if (extended(a)) {
    out["peak_memory_mib"] = peak_memory;      // everything held at the peak, weights included
    out["memory_before_mib"] = memory_before;  // weights and inputs before the first step
  }
  std::cout << out.dump() << "\n";
  return 0;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ",") + s;
  return out;
}

}  // namespace

int bench_fusion(const FusionBenchArgs& a, const std::string& self_exe) {
  const int threads = a.threads > 0 ? a.threads : available_cores();
  configure_threads({threads, 0});
  if (a.single_run) return run_one(a);
  for (const auto& name : a.encoders) encoder_shape(name);  // bad names fail before any run
  const c10::Device device = parse_device(a.device);
  const at::ScalarType dtype = parse_dtype(a.dtype);

  // The denominator of MFU, measured before the modes run (this process then frees it).
  double peak_flops = 0;
  if (a.mfu) {
    peak_flops = matmul_flops_per_second(device, dtype, a.matmul_size, 2.0);
    release_cached_memory(device);
  }

  nlohmann::json runs = nlohmann::json::array();
  for (int64_t audio : a.audio_lengths)
    for (int64_t text : a.text_lengths) {
      nlohmann::json row = {{"audio_tokens", audio}, {"text_tokens", text}};
      nlohmann::json modes = nlohmann::json::object();
      for (FusionMode mode : {FusionMode::prefix, FusionMode::delayed, FusionMode::probe, FusionMode::pal}) {
        std::string cmd = "'" + self_exe + "' fusion --single " + config::enum_name(mode) + " --audio " +
                          std::to_string(audio) + " --text " + std::to_string(text) + " --batch " +
                          std::to_string(a.batch) + " --layers " + std::to_string(a.layers) + " --width " +
                          std::to_string(a.width) + " --start-layer " + std::to_string(a.start_layer) +
                          " --answer " + std::to_string(a.answer) + " --repeats " +
                          std::to_string(a.repeats) + " --threads " + std::to_string(threads) +
                          (a.whole ? " --whole" : "");
        if (extended(a)) {
          cmd += " --device " + a.device + " --dtype " + a.dtype;
          if (!a.llm_preset.empty()) cmd += " --llm-preset " + a.llm_preset;
          if (!a.encoders.empty()) cmd += " --encoders " + join(a.encoders);
        }
        FILE* pipe = popen(cmd.c_str(), "r");
        std::string text_out;
        char buf[4096];
        size_t n;
        while (pipe && (n = fread(buf, 1, sizeof buf, pipe)) > 0) text_out.append(buf, n);
        if (!pipe || pclose(pipe) != 0) throw Error("pal-bench fusion: the run '" + cmd + "' failed");
        modes[config::enum_name(mode)] = nlohmann::json::parse(text_out);
      }
      const nlohmann::json& base = modes["prefix"];
      for (auto& [name, m] : modes.items()) {
        m["step_time_ratio"] = m["step_seconds"].get<double>() / base["step_seconds"].get<double>();
        m["step_memory_ratio"] = m["step_memory_mib"].get<double>() / base["step_memory_mib"].get<double>();
        m["flop_ratio"] = m["step_gflop"].get<double>() / base["step_gflop"].get<double>();
        m["generate_time_ratio"] =
            m["generate_seconds"].get<double>() / base["generate_seconds"].get<double>();
        if (m.contains("peak_memory_mib"))
          m["peak_memory_ratio"] = m["peak_memory_mib"].get<double>() / base["peak_memory_mib"].get<double>();
        if (a.mfu) {
          const double achieved = m["step_gflop"].get<double>() * 1e9 / m["step_seconds"].get<double>();
          m["achieved_tflops"] = achieved / 1e12;
          m["mfu"] = achieved / peak_flops;
        }
      }
      row["modes"] = modes;
      runs.push_back(row);
      if (!a.json)
        for (auto& [name, m] : modes.items()) {
          std::printf(
              "Na %5lld Nt %4lld %-8s step %7.3f s (x%.2f, FLOPs x%.2f)  memory %7.1f MiB (x%.2f)  "
              "generate %6.3f s (x%.2f)",
              static_cast<long long>(audio), static_cast<long long>(text), name.c_str(),
              m["step_seconds"].get<double>(), m["step_time_ratio"].get<double>(),
              m["flop_ratio"].get<double>(), m["step_memory_mib"].get<double>(),
              m["step_memory_ratio"].get<double>(), m["generate_seconds"].get<double>(),
              m["generate_time_ratio"].get<double>());
          if (m.contains("peak_memory_mib"))
            std::printf("  peak %7.1f MiB (x%.2f)", m["peak_memory_mib"].get<double>(),
                        m["peak_memory_ratio"].get<double>());
          if (m.contains("mfu")) std::printf("  MFU %.1f%%", 100.0 * m["mfu"].get<double>());
          std::printf("\n");
        }
    }
  if (!a.json && a.mfu)
    std::printf("dense %s matmul peak on %s (%lld^3): %.1f TFLOP/s\n", a.dtype.c_str(),
                device_name(device).c_str(), static_cast<long long>(a.matmul_size), peak_flops / 1e12);
  if (a.json) {
    const std::vector<std::string> encoders = step_encoders(a);
    std::string part = "LLM (audio features given; trainable MLP projector; frozen decoder)";
    if (!a.encoders.empty())
      part = "whole step: frozen encoders " + join(encoders) +
             " (random weights) + trainable MLP projector + frozen decoder";
    else if (a.whole)
      part =
          "whole step: frozen Whisper-base encoder (random weights) + trainable MLP projector + frozen "
          "decoder";
    nlohmann::json summary = {{"benchmark", "fusion"},
                              {"part", part},
                              {"torch_version", runtime_info().torch_version},
                              {"threads", threads},
                              {"batch", a.batch},
                              {"layers", a.layers},
                              {"width", a.width},
                              {"start_layer", a.start_layer},
                              {"answer_tokens", a.answer},
                              {"runs", runs}};
    if (extended(a)) {
      const models::LlamaConfig c = bench_llm(a);
      summary["layers"] = c.num_hidden_layers;
      summary["width"] = c.hidden_size;
      summary["llm"] = a.llm_preset.empty() ? "custom" : a.llm_preset;
      summary["vocab"] = c.vocab_size;
      summary["encoders"] = encoders;
      summary["device"] = device.str();
      summary["device_name"] = device_name(device);
      summary["dtype"] = a.dtype;
      summary["precision"] = dtype == at::kFloat ? "float32"
                             : device.is_cuda()
                                 ? "bf16 frozen weights, float32 projector, CUDA autocast bf16"
                                 : "bf16 frozen weights, float32 projector (no autocast on CPU)";
      summary["memory"] = device.is_cuda() ? "CUDA caching allocator, bytes held by tensors" : "process RSS";
      if (a.mfu) {
        summary["matmul_size"] = a.matmul_size;
        summary["matmul_peak_tflops"] = peak_flops / 1e12;
      }
    }
    std::cout << summary.dump(2) << "\n";
  }
  return 0;
}

}  // namespace pal::bench
