#include "pal/models/ensemble.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "pal/models/projector.h"
#include "test_util.h"

namespace pal::models {
namespace {

// A fake encoder output: hidden [B, T, width] random, the first lengths[b] steps valid.
EncoderOutput fake_output(const std::vector<int64_t>& lengths, int64_t width, bool with_cls = false) {
  const int64_t batch = static_cast<int64_t>(lengths.size());
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  EncoderOutput out;
  out.hidden = torch::randn({batch, longest, width});
  out.mask = torch::arange(longest).unsqueeze(0) < torch::tensor(lengths).unsqueeze(1);
  if (with_cls) out.cls = torch::randn({batch, width});
  return out;
}

// Row `b` of an EncoderOutput, cut to its valid length: the example alone.
EncoderOutput alone(const EncoderOutput& out, int64_t b, int64_t length) {
  EncoderOutput one;
  one.hidden = out.hidden.narrow(0, b, 1).narrow(1, 0, length);
  one.mask = out.mask.narrow(0, b, 1).narrow(1, 0, length);
  if (out.cls.defined()) one.cls = out.cls.narrow(0, b, 1);
  return one;
}

EnsembleConfig two_streams(EnsembleFusion fusion, TimeAlignment align) {
  EnsembleConfig c;
  c.width = 16;
  c.frames_per_second = 25;
  c.fusion = fusion;
  c.streams.resize(2);
  for (auto& s : c.streams) s.align = align;
  return c;
}

const std::vector<EnsembleInput> kWhisperAndAst = {{"encoders[0] (whisper)", 12, 50.0},
                                                   {"encoders[1] (ast)", 8, 25.0}};

TEST(Ensemble, PoolingAndStackingAlignTimeAndIgnorePadding) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  for (TimeAlignment align : {TimeAlignment::pool, TimeAlignment::stack}) {
    SCOPED_TRACE(config::enum_name(align));
    EncoderEnsemble ensemble(two_streams(EnsembleFusion::concat_time, align), kWhisperAndAst);
    // Stacking feeds 2 whisper frames side by side into the projection.
    EXPECT_EQ(ensemble->streams[0]->named_parameters()["proj.weight"].size(1),
              align == TimeAlignment::stack ? 24 : 12);
    EncoderOutput whisper = fake_output({9, 5}, 12), ast = fake_output({5, 3}, 8);
    EnsembleOutput both = ensemble->forward({whisper, ast});
    EXPECT_TRUE(both.prefix.empty());
    // concat_time: ceil(9 / 2) = 5 whisper steps, then 5 ast steps.
    ASSERT_EQ(both.probe.tokens.sizes(), (std::vector<int64_t>{2, 10, 16}));
    EXPECT_TRUE(
        torch::equal(both.probe.mask[1], torch::tensor({1, 1, 1, 0, 0, 1, 1, 1, 0, 0}).to(torch::kBool)));
    // The short example's valid tokens equal those of the example alone.
    EnsembleOutput one = ensemble->forward({alone(whisper, 1, 5), alone(ast, 1, 3)});
    ASSERT_EQ(one.probe.tokens.size(1), 6);
    torch::Tensor valid = both.probe.tokens[1].index({both.probe.mask[1]});
    EXPECT_TRUE(torch::allclose(valid, one.probe.tokens[0], 1e-5, 1e-6));
  }
}

TEST(Ensemble, TypeEmbeddingTellsStreamsApart) {
  torch::NoGradGuard no_grad;
  EnsembleConfig c = two_streams(EnsembleFusion::concat_time, TimeAlignment::pool);
  EncoderEnsemble ensemble(c, std::vector<EnsembleInput>{{"a", 8, 25.0}, {"b", 8, 25.0}});
  // Same weights in both streams, same input: the two halves differ by the type embeddings.
  auto params = ensemble->named_parameters();
  for (const char* name : {"norm.weight", "norm.bias", "proj.weight", "proj.bias"})
    params[std::string("streams.1.") + name].copy_(params[std::string("streams.0.") + name]);
  EncoderOutput x = fake_output({4}, 8);
  torch::Tensor out = ensemble->forward({x, x}).probe.tokens[0];
  torch::Tensor difference = out.narrow(0, 4, 4) - out.narrow(0, 0, 4);
  EXPECT_TRUE(torch::allclose(
      difference, (ensemble->type_embedding[1] - ensemble->type_embedding[0]).expand({4, 16}), 1e-5, 1e-6));
}

TEST(Ensemble, SumAndChannelFusionAlignLengthsAndCombineMasks) {
  torch::NoGradGuard no_grad;
  for (EnsembleFusion fusion : {EnsembleFusion::sum, EnsembleFusion::concat_channel}) {
    SCOPED_TRACE(config::enum_name(fusion));
    EncoderEnsemble ensemble(two_streams(fusion, TimeAlignment::pool), kWhisperAndAst);
    EncoderOutput whisper = fake_output({8, 2}, 12), ast = fake_output({5, 3}, 8);
    EnsembleOutput out = ensemble->forward({whisper, ast});
    ASSERT_EQ(out.probe.tokens.sizes(), (std::vector<int64_t>{2, 5, 16}));  // max(ceil(8 / 2), 5)
    EXPECT_TRUE(torch::equal(out.probe.mask[1], torch::tensor({1, 1, 1, 0, 0}).to(torch::kBool)));
    EXPECT_EQ(ensemble->named_parameters().contains("channel_mix.probe.weight"),
              fusion == EnsembleFusion::concat_channel);
  }
}

TEST(Ensemble, RoutesAndSummaryTokens) {
  torch::NoGradGuard no_grad;
  EnsembleConfig c = two_streams(EnsembleFusion::concat_time, TimeAlignment::pool);
  c.streams[0].route = AudioRoute::probe;
  c.streams[0].summary_token = true;  // whisper has no CLS: the mean of its valid frames
  c.streams[1].route = AudioRoute::probe;
  c.streams[1].summary_token = true;
  c.summary_route = AudioRoute::prefix;  // the paper's `pal` hybrid
  EncoderEnsemble ensemble(c, kWhisperAndAst);
  EnsembleOutput out =
      ensemble->forward({fake_output({6, 6}, 12), fake_output({3, 3}, 8, /*with_cls=*/true)});
  ASSERT_EQ(out.prefix.tokens.sizes(), (std::vector<int64_t>{2, 2, 16}));  // one summary per encoder
  ASSERT_EQ(out.probe.tokens.sizes(), (std::vector<int64_t>{2, 6, 16}));
  EXPECT_TRUE(out.prefix.mask.all().item<bool>());

  c.streams[0].route = AudioRoute::prefix;
  c.streams[1].summary_token = false;
  EncoderEnsemble split(c, kWhisperAndAst);
  out = split->forward({fake_output({6, 6}, 12), fake_output({3, 3}, 8)});
  ASSERT_EQ(out.prefix.tokens.sizes(), (std::vector<int64_t>{2, 4, 16}));  // summary first, then whisper's 3
  ASSERT_EQ(out.probe.tokens.sizes(), (std::vector<int64_t>{2, 3, 16}));
}

TEST(Ensemble, ConfigErrorsNameTheProblem) {
  EnsembleConfig c = two_streams(EnsembleFusion::concat_time, TimeAlignment::pool);
  c.frames_per_second = 20;  // divides 50? no: 2.5
  std::string msg = test::error_message<ConfigError>([&] { EncoderEnsemble(c, kWhisperAndAst); });
  EXPECT_NE(msg.find("20 frames/s does not divide encoders[0] (whisper)'s 50 frames/s"), std::string::npos)
      << msg;
  c.frames_per_second = 25;
  c.streams.resize(3);
  msg = test::error_message<ConfigError>([&] { EncoderEnsemble(c, kWhisperAndAst); });
  EXPECT_NE(msg.find("ensemble.streams: 3 entries for 2 encoders"), std::string::npos) << msg;
  msg = test::error_message<ConfigError>(
      [&] { config::parse<EnsembleConfig>("width: 8\nfusion: sum\n", "ensemble.yaml"); });
  EXPECT_NE(msg.find("frames_per_second"), std::string::npos) << msg;
  msg = test::error_message<ConfigError>(
      [&] { config::parse<EnsembleConfig>("width: 8\nfusion: add\n", "ensemble.yaml"); });
  EXPECT_NE(msg.find("concat_time"), std::string::npos) << msg;  // lists the choices
  // An encoder output of the wrong width.
  c.streams.resize(2);
  EncoderEnsemble ensemble(c, kWhisperAndAst);
  std::string shape = test::error_message<ModelError>([&] {
    ensemble->forward({fake_output({4}, 10), fake_output({2}, 8)});
  });
  EXPECT_NE(shape.find("encoders[0] (whisper) output has shape [1, 4, 10], expected [batch, time, 12]"),
            std::string::npos)
      << shape;
}

TEST(Projector, MlpKeepsTokensLatentGivesFixedCount) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  AudioTokens audio{torch::randn({2, 7, 16}),
                    torch::arange(7).unsqueeze(0) < torch::tensor({7, 4}).unsqueeze(1)};
  ProjectorConfig c;
  auto mlp = make_projector(c, 16, 32);
  AudioTokens out = mlp->forward(audio);
  EXPECT_EQ(out.tokens.sizes(), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_TRUE(torch::equal(out.mask, audio.mask));

  c.type = "latent";
  c.queries = 5;
  c.heads = 4;
  auto latent = make_projector(c, 16, 32);
  out = latent->forward(audio);
  EXPECT_EQ(out.tokens.sizes(), (std::vector<int64_t>{2, 5, 32}));
  EXPECT_TRUE(out.mask.all().item<bool>());
  // Padded audio steps are invisible: the short example alone gives the same tokens.
  AudioTokens second{audio.tokens.narrow(0, 1, 1).narrow(1, 0, 4),
                     audio.mask.narrow(0, 1, 1).narrow(1, 0, 4)};
  EXPECT_TRUE(torch::allclose(latent->forward(second).tokens[0], out.tokens[1], 1e-5, 1e-6));
  // Gradients reach the learned queries.
  torch::AutoGradMode grad(true);
  latent->forward(audio).tokens.sum().backward();
  EXPECT_GT(latent->named_parameters()["queries"].grad().abs().sum().item<double>(), 0);
}

TEST(Projector, UnknownTypeListsTheKnownOnes) {
  ProjectorConfig c;
  c.type = "qformer";
  std::string msg =
      test::error_message<ConfigError>([&] { make_projector(c, 8, 8, "model.projector.type"); });
  EXPECT_NE(msg.find("model.projector.type: unknown projector type 'qformer' (known: latent, mlp)"),
            std::string::npos)
      << msg;
  c.type = "latent";
  c.heads = 3;
  msg = test::error_message<ConfigError>([&] { make_projector(c, 8, 8); });
  EXPECT_NE(msg.find("projector.heads: 3 does not divide the latent width 8"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::models
