// pal-features: a frontend's features for audio files, written as one safetensors file.
//
//   pal-features --frontend whisper_mel --n-mels 80 a.wav b.flac --out feats.safetensors
//   pal-features --frontend kaldi_fbank --preset ast clip.ogg --out ast.safetensors
//
// Each input becomes one float32 tensor [frames, n_mels] named by its file name (its path
// as given when two inputs share a name). The file's metadata records the frontend and
// its resolved options. Exit codes: 0 success, 1 bad input (nothing is written), 2 bad usage.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "pal/audio/decode.h"
#include "pal/audio/frontend.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/core/runtime.h"
#include "pal/io/safetensors.h"

namespace {

struct Args {
  std::string frontend;
  std::vector<std::string> inputs;
  std::string out;
  int n_mels = 0;  // 0: the frontend's default (80 whisper_mel, 128 kaldi_fbank)
  bool pad_to_30s = false;
  std::string preset = "none";
  std::string window;
  int64_t target_frames = -1;
  double start = 0;
  std::optional<double> end;
  int threads = 0;
};

// Tensor names: file names, or the paths as given where file names collide.
std::vector<std::string> tensor_names(const std::vector<std::string>& inputs) {
  std::map<std::string, int> count;
  for (const auto& in : inputs) ++count[std::filesystem::path(in).filename().string()];
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const auto& in : inputs) {
    std::string name = std::filesystem::path(in).filename().string();
    if (count[name] > 1) name = in;
    if (!seen.insert(name).second) throw pal::ConfigError("input '" + in + "' is given twice");
    names.push_back(name);
  }
  return names;
}

int run(const Args& a) {
  pal::configure_threads({a.threads, 0});
  std::function<pal::audio::Features(const at::Tensor&)> compute;
  std::string options_yaml;
  if (a.frontend == "whisper_mel") {
    if (a.preset != "none" || !a.window.empty() || a.target_frames >= 0)
      throw pal::ConfigError("--preset, --window and --target-frames apply to kaldi_fbank, not whisper_mel");
    pal::audio::WhisperMelOptions o;
    if (a.n_mels) o.n_mels = a.n_mels;
    o.pad_to_30s = a.pad_to_30s;
    auto frontend = std::make_shared<pal::audio::WhisperMelFrontend>(o);
    compute = [frontend](const at::Tensor& w) { return (*frontend)(w); };
    options_yaml = pal::config::to_yaml(o);
  } else {
    if (a.pad_to_30s)
      throw pal::ConfigError("--pad-to-30s applies to whisper_mel; use --target-frames for kaldi_fbank");
    pal::audio::KaldiFbankOptions o = a.preset == "ast"   ? pal::audio::KaldiFbankOptions::ast()
                                      : a.preset == "eat" ? pal::audio::KaldiFbankOptions::eat()
                                                          : pal::audio::KaldiFbankOptions();
    if (a.n_mels) o.n_mels = a.n_mels;
    if (!a.window.empty()) o.window = a.window;
    if (a.target_frames >= 0) o.target_frames = a.target_frames;
    auto frontend = std::make_shared<pal::audio::KaldiFbankFrontend>(o);
    compute = [frontend](const at::Tensor& w) { return (*frontend)(w); };
    options_yaml = pal::config::to_yaml(o);
  }

  pal::audio::LoadOptions load;
  load.start = a.start;
  load.end = a.end;
  const auto names = tensor_names(a.inputs);
  pal::io::NamedTensors tensors;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    at::Tensor waveform = pal::audio::load_audio(a.inputs[i], load);
    pal::audio::Features f;
    try {
      f = compute(waveform);
    } catch (const pal::Error& e) {
      throw pal::AudioError(a.inputs[i] + ": " + e.what());
    }
    // Padded/cropped outputs keep every frame (the model's input); others keep valid frames.
    const bool fixed = a.pad_to_30s || f.values.size(1) != f.lengths[0].item<int64_t>();
    at::Tensor values = fixed ? f.values[0] : f.values[0].narrow(0, 0, f.lengths[0].item<int64_t>());
    std::fprintf(stderr, "%s: %.2f s -> %lld x %lld\n", a.inputs[i].c_str(),
                 static_cast<double>(waveform.size(0)) / pal::audio::kSampleRate,
                 static_cast<long long>(values.size(0)), static_cast<long long>(values.size(1)));
    tensors.push_back({names[i], values.contiguous()});
  }
  pal::io::save_safetensors(a.out, tensors, {{"frontend", a.frontend}, {"options", options_yaml}});
  std::fprintf(stderr, "wrote %zu tensors to %s\n", tensors.size(), a.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pal-features: log-mel features of audio files (whisper_mel or kaldi_fbank), as safetensors"};
  Args a;
  double end = -1;
  app.add_option("inputs", a.inputs, "audio files (any format libsndfile reads)")->required();
  app.add_option("--frontend", a.frontend, "whisper_mel or kaldi_fbank")
      ->required()
      ->check(CLI::IsMember({"whisper_mel", "kaldi_fbank"}));
  app.add_option("--out,-o", a.out, "output .safetensors file")->required();
  app.add_option("--n-mels", a.n_mels, "mel bins (default: 80 whisper_mel, 128 kaldi_fbank)")
      ->check(CLI::Range(1, 512));
  app.add_flag("--pad-to-30s", a.pad_to_30s, "whisper_mel: pad or trim every clip to 30 s (3000 frames)");
  app.add_option("--preset", a.preset,
                 "kaldi_fbank settings: ast (HF ASTFeatureExtractor), eat (EAT/SSLAM), none")
      ->check(CLI::IsMember({"none", "ast", "eat"}));
  app.add_option("--window", a.window, "kaldi_fbank window: hanning, povey, hamming, rectangular")
      ->check(CLI::IsMember({"hanning", "povey", "hamming", "rectangular"}));
  app.add_option("--target-frames", a.target_frames, "kaldi_fbank: pad or crop to N frames (0: keep)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--start", a.start, "window start in seconds")->check(CLI::NonNegativeNumber);
  app.add_option("--end", end, "window end in seconds (default: end of file)")->check(CLI::PositiveNumber);
  app.add_option("--threads", a.threads, "LibTorch threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.footer("Exit codes: 0 success, 1 bad input (nothing written), 2 bad usage.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (end > 0) a.end = end;
  try {
    pal::set_log_level(pal::LogLevel::warn);
    return run(a);
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-features: error: %s\n", e.what());
    return 1;
  }
}
