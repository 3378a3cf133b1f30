// Writes a checkpoint with the installed library, reads it back, loads a config; then
// makes a tiny PAL model folder from the test fixtures and asks it about a clip through
// pal::Pipeline, as an application would.
#include <pal/core/config.h>
#include <pal/core/error.h>
#include <pal/core/runtime.h>
#include <pal/io/safetensors.h>
#include <pal/models/pal_checkpoint.h>
#include <pal/pipeline.h>
#include <pal/version.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

struct AppConfig {
  int threads = 1;
  template <class V>
  void visit(V& v) {
    v("threads", threads, pal::config::Rule().at_least(1));
  }
};

// A model folder: the tiny_chat Llama (tokenizer and chat template) with the tiny Whisper
// encoder, random weights saved in full.
std::filesystem::path make_model(const std::filesystem::path& fixtures, const std::filesystem::path& dir) {
  const std::string yaml =
      "llm: " + (fixtures / "llm" / "tiny_chat").string() +
      "\nllm_weights: random\nencoders:\n  - {type: whisper, checkpoint: " +
      (fixtures / "encoders" / "tiny_whisper").string() +
      "}\nensemble: {width: 32, frames_per_second: 10}\nfusion: {mode: probe, start_layer: 2}\n";
  torch::manual_seed(0);
  pal::models::PalModel model(pal::config::parse<pal::models::PalModelConfig>(yaml, "model.yaml"), dir);
  pal::models::save_pal_model(*model, dir / "model", /*trainable_only=*/false);
  return dir / "model";
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::filesystem::path dir = argv[1], fixtures = argv[2];
  auto config = pal::config::parse<AppConfig>("threads: 2\n", "app.yaml");
  pal::configure_threads({config.threads, 0});
  auto weights = torch::arange(6, torch::kFloat).reshape({2, 3});
  pal::io::save_safetensors(dir / "w.safetensors", {{"w", weights}});
  auto back = pal::io::SafetensorsFile::open(dir / "w.safetensors").tensor("w");
  if (!torch::equal(back, weights)) return 1;
  try {
    pal::config::parse<AppConfig>("threads: 0\n", "app.yaml");
    return 1;
  } catch (const pal::ConfigError&) {
  }
  pal::Pipeline pipeline = pal::Pipeline::load(make_model(fixtures, dir), {});
  pal::GenerationOptions options;
  options.max_new_tokens = 5;
  std::string streamed;
  const pal::Answer answer = pipeline.ask(fixtures / "audio" / "clips" / "speech_8k_mono.wav",
                                          "What is said?", options, [&](const pal::TokenEvent& e) {
                                            streamed += e.text;
                                            return true;
                                          });
  if (answer.tokens.empty() || streamed != answer.text || answer.audio_tokens <= 0) return 1;
  std::printf("consumer OK: pal %s, LibTorch threads %d, answered %zu tokens about a %.1f s clip\n",
              PAL_VERSION_STRING, pal::runtime_info().intra_op_threads, answer.tokens.size(),
              pipeline.encode(fixtures / "audio" / "clips" / "speech_8k_mono.wav").seconds());
  return 0;
}
