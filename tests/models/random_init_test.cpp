// Encoders with fresh weights (`weights: random`): built from config.json alone, with
// Hugging Face's initialisation, and trainable end to end.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "pal/models/ast_encoder.h"
#include "pal/models/pal_model.h"
#include "pal/models/whisper_encoder.h"
#include "test_util.h"

namespace pal::models {
namespace {

// The demo's encoder configs (configs/demo/encoders): config.json only, no weights.
std::filesystem::path demo_encoder(const std::string& name) {
  return test::fixtures() / ".." / ".." / "configs" / "demo" / "encoders" / name;
}

double std_of(const torch::Tensor& t) { return t.to(torch::kDouble).std().item<double>(); }

TEST(RandomEncoder, WhisperFromConfigAloneHasHuggingFaceInitialisation) {
  ASSERT_FALSE(std::filesystem::exists(demo_encoder("whisper") / "model.safetensors"));
  torch::manual_seed(3);
  WhisperEncoder w = init_whisper_encoder(demo_encoder("whisper"));
  const torch::Tensor fc1 = w->layers[0]->as<WhisperEncoderLayerImpl>()->fc1->weight;
  EXPECT_NEAR(std_of(fc1), 0.02 * 0.88, 0.003);  // N(0, 0.02) cut at 2 std: std 0.88 * 0.02
  EXPECT_LE(fc1.abs().max().item<double>(), 0.04 + 1e-7);
  EXPECT_EQ(w->layers[0]->as<WhisperEncoderLayerImpl>()->fc1->bias.abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(w->layer_norm->weight, torch::ones_like(w->layer_norm->weight)));
  // Sinusoidal positions: position 0 is sin(0) = 0 then cos(0) = 1; position p, channel 0: sin(p).
  const torch::Tensor pos = w->embed_positions->weight;
  const int64_t half = pos.size(1) / 2;
  EXPECT_EQ(pos[0].narrow(0, 0, half).abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::allclose(pos[0].narrow(0, half, half), torch::ones({half})));
  EXPECT_NEAR(pos[7][0].item<double>(), std::sin(7.0), 1e-6);
  // Frozen until told otherwise, like a loaded encoder; another seed gives other weights.
  for (const auto& p : w->parameters()) EXPECT_FALSE(p.requires_grad());
  torch::manual_seed(4);
  WhisperEncoder other = init_whisper_encoder(demo_encoder("whisper"));
  EXPECT_FALSE(torch::equal(fc1, other->layers[0]->as<WhisperEncoderLayerImpl>()->fc1->weight));
}

TEST(RandomEncoder, AstFromConfigAloneHasHuggingFaceInitialisation) {
  torch::manual_seed(5);
  AstEncoder a = init_ast_encoder(demo_encoder("ast"));
  const auto params = a->named_parameters();
  EXPECT_NEAR(std_of(params["embeddings.position_embeddings"]), 0.02 * 0.88, 0.003);
  EXPECT_GT(params["embeddings.cls_token"].abs().max().item<double>(), 0.0);
  EXPECT_EQ(params["encoder.layer.0.attention.attention.query.bias"].abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(params["layernorm.weight"], torch::ones_like(params["layernorm.weight"])));
}

// A random Whisper stem trained on a ragged batch: every gradient finite and equal to the
// sum of each clip's own gradient (Debian's LibTorch 1.13 GELU bug made these 1e20 / NaN).
TEST(RandomEncoder, RaggedBatchGradientsEqualTheSumOfPerClipGradients) {
  torch::manual_seed(6);
  WhisperEncoder w = init_whisper_encoder(demo_encoder("whisper"));
  w->train_last_blocks(2);
  for (auto& p : w->parameters()) p.set_requires_grad(true);
  const std::vector<int64_t> lengths = {161, 100, 57};
  // Zeros past each clip, as the mel frontend pads a batch.
  const torch::Tensor features =
      torch::randn({3, 161, 80}) * (torch::arange(161).unsqueeze(0) < torch::tensor(lengths).unsqueeze(1))
                                       .unsqueeze(-1)
                                       .to(torch::kFloat32);
  auto loss_of = [&](const torch::Tensor& f, const torch::Tensor& n) {
    WhisperEncoderTaps taps = w->forward_features(f, n);
    const torch::Tensor m = taps.mask.unsqueeze(-1).to(torch::kFloat32);
    return (taps.last_hidden_state * m).pow(2).sum();
  };
  w->zero_grad();
  loss_of(features, torch::tensor(lengths)).backward();
  std::vector<torch::Tensor> batched;
  for (const auto& p : w->parameters()) batched.push_back(p.grad().clone());
  w->zero_grad();
  for (size_t i = 0; i < lengths.size(); ++i)
    loss_of(features.narrow(0, static_cast<int64_t>(i), 1).narrow(1, 0, lengths[i]),
            torch::tensor({lengths[i]}))
        .backward();
  const auto params = w->named_parameters();
  for (size_t k = 0; k < params.size(); ++k) {
    const std::string& name = params[k].key();
    const torch::Tensor& single = params[k].value().grad();
    ASSERT_TRUE(torch::isfinite(batched[k]).all().item<bool>()) << name;
    EXPECT_LT((batched[k] - single).abs().max().item<double>(), 1e-4 * (1 + single.abs().max().item<double>()))
        << name;
  }
}

TEST(RandomEncoder, PalModelBuildsEncodersFromConfigsWithoutWeights) {
  const std::string yaml =
      "llm: llm/tiny_chat\nllm_weights: random\n"
      "encoders:\n"
      "  - {type: whisper, checkpoint: ../../configs/demo/encoders/whisper, weights: random}\n"
      "  - {type: ast, checkpoint: ../../configs/demo/encoders/ast, weights: random}\n"
      "ensemble: {width: 32, frames_per_second: 10}\n"
      "fusion: {mode: probe, start_layer: 2}\n";
  PalModel model(config::parse<PalModelConfig>(yaml, "model.yaml"), test::fixtures());
  EXPECT_EQ(model->encoders->size(), 2u);
  std::string wrong = yaml;
  wrong.replace(wrong.find("weights: random}"), 16, "weights: fresh}");
  const std::string bad =
      test::error_message<ConfigError>([&] { config::parse<PalModelConfig>(wrong, "model.yaml"); });
  EXPECT_NE(bad.find("weights"), std::string::npos) << bad;
  EXPECT_NE(bad.find("fresh"), std::string::npos) << bad;
}

}  // namespace
}  // namespace pal::models
