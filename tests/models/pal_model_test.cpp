#include "pal/models/pal_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/audio/decode.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::models {
namespace {

// Whisper + AST encoders and the Llama decoder of the parity fixtures (tiny, random).
std::string model_yaml(const std::string& mode) {
  return "llm: llm/tiny_llama\n"
         "encoders:\n"
         "  - {type: whisper, checkpoint: encoders/tiny_whisper}\n"
         "  - {type: ast, checkpoint: encoders/tiny_ast}\n"
         "ensemble: {width: 32, frames_per_second: 10, fusion: concat_time,\n"
         "           streams: [{summary_token: true}, {summary_token: true}]}\n"
         "projector: {type: mlp}\n"
         "fusion: {mode: " +
         mode + ", start_layer: 1, adapter_rank: 4}\n";
}

PalModel build(const std::string& mode) {
  return PalModel(config::parse<PalModelConfig>(model_yaml(mode), "model.yaml"), test::fixtures());
}

struct Clip {
  torch::Tensor waveforms, lengths;
};
Clip real_clip() {
  torch::Tensor w = audio::load_audio(test::fixtures() / "audio" / "clips" / "speech_8k_mono.wav");
  return {w.unsqueeze(0), torch::tensor({w.size(0)}, torch::kInt64)};
}

TEST(E2EPalModel, EveryModeTrainsAndGeneratesOnARealClip) {
  Clip clip = real_clip();
  for (const std::string mode : {"prefix", "delayed", "probe", "pal"}) {
    SCOPED_TRACE(mode);
    PalModel model = build(mode);
    const int64_t audio = model->audio_token_id();
    EXPECT_EQ(audio, 96);  // no tokenizer in the fixture: one past the vocabulary
    auto groups = model->parameter_groups();
    for (auto& p : groups["llm"]) p.set_requires_grad(false);
    for (const char* g : {"ensemble", "projector", "encoders"}) EXPECT_FALSE(groups[g].empty()) << g;
    EXPECT_EQ(groups["probe_adapters"].empty(), mode == "prefix" || mode == "delayed");  // probe layers only

    std::vector<int64_t> prompt = {5, 9, audio, 17, 30, 41, 7, 12};
    torch::Tensor ids = torch::tensor(prompt).unsqueeze(0);
    torch::Tensor valid = torch::ones_like(ids, torch::kBool);
    torch::Tensor labels = torch::zeros_like(valid);
    labels.narrow(1, 5, 3).fill_(true);
    torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-3));
    FusionOutput out = model->forward(clip.waveforms, clip.lengths, ids, valid, labels);
    ASSERT_TRUE(std::isfinite(out.loss.item<double>()));
    out.loss.backward();
    // Frozen encoders and decoder get no gradient; ensemble and projector do.
    for (auto& p : groups["encoders"]) EXPECT_FALSE(p.grad().defined());
    for (auto& p : groups["llm"]) EXPECT_FALSE(p.grad().defined());
    double projector_grad = 0;
    for (auto& p : groups["projector"]) projector_grad += p.grad().abs().sum().item<double>();
    EXPECT_GT(projector_grad, 0);
    const double before = out.loss.item<double>();
    optimizer.step();
    for (int i = 0; i < 5; ++i) {
      optimizer.zero_grad();
      FusionOutput again = model->forward(clip.waveforms, clip.lengths, ids, valid, labels);
      again.loss.backward();
      optimizer.step();
    }
    EXPECT_LT(model->forward(clip.waveforms, clip.lengths, ids, valid, labels).loss.item<double>(), before);

    GenerationOptions g;
    g.max_new_tokens = 6;
    GenerationResult result = model->generate(clip.waveforms, clip.lengths, {prompt}, g);
    EXPECT_EQ(result.tokens[0].size(), 6u);
  }
}

TEST(PalModel, ConfigErrorsNameTheKey) {
  std::string yaml = model_yaml("probe");
  auto replace = [](std::string s, const std::string& from, const std::string& to) {
    return s.replace(s.find(from), from.size(), to);
  };
  std::string msg = test::error_message<ConfigError>([&] {
    PalModel(config::parse<PalModelConfig>(replace(yaml, "type: ast", "type: beats"), "model.yaml"),
             test::fixtures());
  });
  EXPECT_NE(msg.find("model.encoders.1.type: unknown encoder type 'beats' (known: ast, eat, whisper)"),
            std::string::npos)
      << msg;
  msg = test::error_message<ConfigError>(
      [&] { config::parse<PalModelConfig>(replace(yaml, "mode: probe", "mode: cross"), "model.yaml"); });
  EXPECT_NE(msg.find("fusion.mode"), std::string::npos) << msg;
  // A checkpoint of another architecture where an encoder was expected.
  std::string wrong = replace(yaml, "checkpoint: encoders/tiny_whisper", "checkpoint: llm/tiny_llama");
  msg = test::error_message<Error>(
      [&] { PalModel(config::parse<PalModelConfig>(wrong, "model.yaml"), test::fixtures()); });
  EXPECT_NE(msg.find("tiny_llama"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::models
