// Model folders and clips for the inference tests: the tiny Whisper and AST encoders of
// the parity fixtures and the tiny_chat Llama (Llama 3 tokenizer and chat template),
// with seeded random weights saved in full, so that every load gives the same model.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "../audio/audio_test_util.h"
#include "pal/core/config.h"
#include "pal/models/generation.h"
#include "pal/models/pal_checkpoint.h"
#include "test_util.h"

namespace pal::test {

// The model.yaml of a tiny PAL model. Windows: Whisper 5 s (250 positions), AST 0.655 s
// (64 fbank frames, a hop of 0.5 s). `fusion` adds keys to the fusion entry
// (", audio_rope: none").
inline std::string tiny_model_yaml(const std::string& mode, const std::string& fusion = "") {
  const auto f = fixtures();
  return "llm: " + (f / "llm" / "tiny_chat").string() +
         "\n"
         "llm_weights: random\n"
         "encoders:\n"
         "  - {type: whisper, checkpoint: " +
         (f / "encoders" / "tiny_whisper").string() +
         "}\n"
         "  - {type: ast, checkpoint: " +
         (f / "encoders" / "tiny_ast").string() +
         "}\n"
         "ensemble: {width: 32, frames_per_second: 10, streams: [{summary_token: true}, {summary_token: "
         "true}]}\n"
         "projector: {type: mlp}\n"
         "fusion: {mode: " +
         mode + ", start_layer: 2" + fusion + "}\n";
}

// Writes a model folder (model.yaml + every weight) into `dir`.
inline void write_tiny_model(const std::filesystem::path& dir, const std::string& mode = "probe",
                             const std::string& fusion = "", uint64_t seed = 0) {
  torch::manual_seed(seed);
  models::PalModel model(config::parse<models::PalModelConfig>(tiny_model_yaml(mode, fusion), "model.yaml"),
                         dir);
  models::save_pal_model(*model, dir, /*trainable_only=*/false);
}

// One model folder per (mode, fusion), made once per process.
inline std::filesystem::path tiny_model(const std::string& mode = "probe", const std::string& fusion = "") {
  static std::map<std::string, std::unique_ptr<TempDir>> folders;
  auto& dir = folders[mode + "|" + fusion];
  if (!dir) {
    dir = std::make_unique<TempDir>();
    write_tiny_model(dir->path() / "model", mode, fusion);
  }
  return dir->path() / "model";
}

// A mono 16 kHz WAV: a chirp-like mix of tones, `seconds` long.
inline std::filesystem::path write_clip(const std::filesystem::path& file, double seconds, double hz = 440) {
  std::vector<float> a = sine(hz, 16000, seconds, 0.3), b = sine(hz * 2.7, 16000, seconds, 0.2);
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  write_audio(file, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 16000, 1, a);
  return file;
}

inline std::filesystem::path speech_clip() {
  return fixtures() / "audio" / "clips" / "speech_8k_mono.wav";
}

// Generation options that stop after `n` new tokens.
inline models::GenerationOptions max_tokens(int64_t n) {
  models::GenerationOptions g;
  g.max_new_tokens = n;
  return g;
}

}  // namespace pal::test
