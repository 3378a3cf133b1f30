#include "pal/models/fusion.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "test_util.h"

namespace pal::models {
namespace {

constexpr int64_t kAudio = 96;  // the placeholder: one past the tiny vocabulary, never embedded
const std::vector<FusionMode> kModes = {FusionMode::prefix, FusionMode::delayed, FusionMode::probe,
                                        FusionMode::pal};

LlamaForCausalLM tiny_llm() {
  return load_llama(test::fixtures() / "llm" / "tiny_llama");
}  // 3 layers, width 64

FusionDecoder decoder(FusionMode mode, int64_t start_layer = 1, AudioRope rope = AudioRope::prefix,
                      int64_t adapter_rank = 0) {
  FusionConfig c;
  c.mode = mode;
  c.start_layer = start_layer;
  c.audio_rope = rope;
  c.adapter_rank = adapter_rank;
  return FusionDecoder(tiny_llm(), c, kAudio);
}

// Audio tokens [B, N, 64], the first lengths[b] valid, routed `probe` (pal mode reads
// routes; the others re-route everything).
EnsembleOutput audio(const std::vector<int64_t>& lengths, uint64_t seed = 0) {
  torch::manual_seed(seed);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  EnsembleOutput out;
  out.probe = {torch::randn({static_cast<int64_t>(lengths.size()), longest, 64}),
               torch::arange(longest).unsqueeze(0) < torch::tensor(lengths).unsqueeze(1)};
  return out;
}

// A pal-mode split: `summary` tokens routed prefix, the rest probe.
EnsembleOutput pal_audio(const std::vector<int64_t>& lengths, uint64_t seed = 0) {
  EnsembleOutput a = audio(lengths, seed);
  a.prefix = {a.probe.tokens.narrow(1, 0, 1).clone(), a.probe.mask.narrow(1, 0, 1).clone()};
  return a;
}

struct Batch {
  torch::Tensor ids, valid;
};
Batch batch(const std::vector<std::vector<int64_t>>& prompts) {
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  Batch b{torch::zeros({static_cast<int64_t>(prompts.size()), static_cast<int64_t>(longest)}, torch::kInt64),
          torch::zeros({static_cast<int64_t>(prompts.size()), static_cast<int64_t>(longest)}, torch::kBool)};
  for (size_t i = 0; i < prompts.size(); ++i)
    for (size_t t = 0; t < prompts[i].size(); ++t) {
      b.ids[static_cast<int64_t>(i)][static_cast<int64_t>(t)] = prompts[i][t];
      b.valid[static_cast<int64_t>(i)][static_cast<int64_t>(t)] = true;
    }
  return b;
}

// Rows of `x` [B, L, ...] at the text elements of `layout` for example b, in input order.
torch::Tensor text_rows(const torch::Tensor& x, const FusedLayout& layout, int64_t b) {
  torch::Tensor where = layout.text_index[b];
  return x[b].index_select(0, where.masked_select(where >= 0));
}

const std::vector<int64_t> kPrompt = {5, 9, 17, kAudio, 30, 41, 7, 12};

TEST(Fusion, WithoutAudioEveryModeIsThePlainLlm) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> text = {5, 9, 17, 30, 41, 7, 12};
  torch::Tensor plain = tiny_llm()->forward(torch::tensor(text).unsqueeze(0)).logits;
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    Batch b = batch({text});
    FusionOutput out = decoder(mode)->forward(b.ids, b.valid, {});
    EXPECT_TRUE(torch::allclose(out.logits, plain, 1e-5, 1e-5));
  }
}

TEST(Fusion, LayersBelowStartSeeNoAudio) {
  torch::NoGradGuard no_grad;
  const int64_t k = 2;
  std::vector<int64_t> text = {5, 9, 17, 30, 41, 7, 12};
  LlamaOutput plain = tiny_llm()->forward(torch::tensor(text).unsqueeze(0));
  for (FusionMode mode : {FusionMode::probe, FusionMode::delayed}) {
    SCOPED_TRACE(config::enum_name(mode));
    FusionDecoder model = decoder(mode, k);
    Batch b = batch({kPrompt});
    FusionOutput one = model->forward(b.ids, b.valid, audio({6}, 1), {}, /*taps=*/true);
    FusionOutput two = model->forward(b.ids, b.valid, audio({6}, 2), {}, /*taps=*/true);
    // hidden_states[l] is the input of layer l: the same for any audio up to layer k ...
    for (int64_t l = 0; l <= k; ++l)
      EXPECT_TRUE(torch::allclose(text_rows(one.hidden_states[l], one.layout, 0),
                                  text_rows(two.hidden_states[l], two.layout, 0), 1e-5, 1e-5))
          << "layer input " << l;
    // ... and changed by it after layer k reads it.
    EXPECT_FALSE(torch::allclose(text_rows(one.hidden_states[k + 1], one.layout, 0),
                                 text_rows(two.hidden_states[k + 1], two.layout, 0), 1e-3, 1e-3));
    if (mode == FusionMode::probe) {
      // RoPE is relative: text after 6 audio positions matches the text-only LLM, and
      // the sequence holds text only, so no FFN ever sees an audio position.
      EXPECT_EQ(one.hidden_states[0].size(1), static_cast<int64_t>(text.size()));
      for (int64_t l = 0; l <= k; ++l)
        EXPECT_TRUE(torch::allclose(text_rows(one.hidden_states[l], one.layout, 0), plain.hidden_states[l][0],
                                    1e-4, 1e-4))
            << "layer input " << l;
    } else {
      EXPECT_EQ(one.hidden_states[0].size(1), static_cast<int64_t>(text.size()) + 6);
    }
  }
}

TEST(Fusion, DelayedFromLayerZeroIsPrefix) {
  torch::NoGradGuard no_grad;
  Batch b = batch({kPrompt, {3, kAudio, 4}});
  EnsembleOutput a = audio({5, 3});
  FusionOutput prefix = decoder(FusionMode::prefix)->forward(b.ids, b.valid, a);
  FusionOutput delayed = decoder(FusionMode::delayed, 0)->forward(b.ids, b.valid, a);
  EXPECT_TRUE(torch::allclose(prefix.logits, delayed.logits, 1e-6, 1e-6));
  FusionOutput later = decoder(FusionMode::delayed, 1)->forward(b.ids, b.valid, a);
  EXPECT_FALSE(torch::allclose(prefix.logits, later.logits, 1e-3, 1e-3));
}

TEST(Fusion, PaddedBatchEqualsEachExampleAlone) {
  torch::NoGradGuard no_grad;
  std::vector<std::vector<int64_t>> prompts = {kPrompt, {3, kAudio, 4, 8}};
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    FusionDecoder model = decoder(mode);
    EnsembleOutput both = mode == FusionMode::pal ? pal_audio({6, 3}) : audio({6, 3});
    Batch b = batch(prompts);
    FusionOutput together = model->forward(b.ids, b.valid, both);
    for (int64_t i = 0; i < 2; ++i) {
      EnsembleOutput mine;
      for (auto [from, to] : {std::pair{&both.prefix, &mine.prefix}, std::pair{&both.probe, &mine.probe}})
        if (!from->empty()) {
          const int64_t n = from->mask[i].sum().item<int64_t>();
          *to = {from->tokens.narrow(0, i, 1).narrow(1, 0, n), from->mask.narrow(0, i, 1).narrow(1, 0, n)};
        }
      Batch alone = batch({prompts[static_cast<size_t>(i)]});
      FusionOutput single = model->forward(alone.ids, alone.valid, mine);
      torch::Tensor rows = together.logits[i].index({together.layout.valid[i]});
      EXPECT_TRUE(torch::allclose(rows, single.logits[0], 1e-4, 1e-4)) << "example " << i;
    }
  }
}

// Greedy decoding by running the whole sequence again for every token.
std::vector<int64_t> greedy_without_cache(FusionDecoder& model, std::vector<int64_t> prompt,
                                          const EnsembleOutput& a, int64_t steps) {
  std::vector<int64_t> out;
  for (int64_t s = 0; s < steps; ++s) {
    Batch b = batch({prompt});
    FusionOutput o = model->forward(b.ids, b.valid, a);
    const int64_t last = o.layout.valid[0].sum().item<int64_t>() - 1;
    const int64_t next = o.logits[0][last].argmax().item<int64_t>();
    out.push_back(next);
    prompt.push_back(next);
  }
  return out;
}

TEST(Fusion, CachedGenerationEqualsRecomputing) {
  torch::NoGradGuard no_grad;
  GenerationOptions options;
  options.max_new_tokens = 10;
  for (FusionMode mode : kModes) {
    for (AudioRope rope : {AudioRope::prefix, AudioRope::none}) {
      SCOPED_TRACE(config::enum_name(mode) + " audio_rope " + config::enum_name(rope));
      FusionDecoder model = decoder(mode, 1, rope, /*adapter_rank=*/4);
      EnsembleOutput both = mode == FusionMode::pal ? pal_audio({7, 4}) : audio({7, 4});
      std::vector<std::vector<int64_t>> prompts = {kPrompt, {3, kAudio, 4}};
      GenerationResult cached = model->generate(prompts, both, options);
      for (int64_t i = 0; i < 2; ++i) {
        EnsembleOutput mine;
        for (auto [from, to] : {std::pair{&both.prefix, &mine.prefix}, std::pair{&both.probe, &mine.probe}})
          if (!from->empty()) {
            const int64_t n = from->mask[i].sum().item<int64_t>();
            *to = {from->tokens.narrow(0, i, 1).narrow(1, 0, n), from->mask.narrow(0, i, 1).narrow(1, 0, n)};
          }
        EXPECT_EQ(cached.tokens[static_cast<size_t>(i)],
                  greedy_without_cache(model, prompts[static_cast<size_t>(i)], mine, 10))
            << "prompt " << i;
      }
    }
  }
}

TEST(Fusion, OnlyTrainableParametersGetGradients) {
  FusionDecoder model = decoder(FusionMode::probe, 1, AudioRope::prefix, /*adapter_rank=*/4);
  for (auto& p : model->llm->parameters()) p.set_requires_grad(false);
  EnsembleOutput a = audio({5});
  a.probe.tokens.set_requires_grad(true);  // stands for the projector's output
  Batch b = batch({kPrompt});
  torch::Tensor labels = torch::zeros_like(b.valid);
  labels.narrow(1, 5, 3).fill_(true);  // the last three tokens are the answer
  FusionOutput out = model->forward(b.ids, b.valid, a, labels);
  EXPECT_EQ(out.logits.size(0), 3);
  out.loss.backward();
  for (const auto& p : model->llm->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  for (const auto& p : model->probe_adapters->named_parameters())
    EXPECT_TRUE(p.value().grad().defined()) << p.key();
  EXPECT_GT(a.probe.tokens.grad().abs().sum().item<double>(), 0);
  // The loss is the cross-entropy of those three tokens alone.
  torch::NoGradGuard no_grad;
  FusionOutput all = model->forward(b.ids, b.valid, a);
  // Text only (no audio rows): 41, 7, 12 sit at 4, 5, 6 and are predicted from 3, 4, 5.
  torch::Tensor rows = all.logits[0].index_select(0, torch::tensor({3, 4, 5}));
  torch::Tensor expected = torch::nn::functional::cross_entropy(rows, torch::tensor({41, 7, 12}));
  EXPECT_NEAR(out.loss.item<double>(), expected.item<double>(), 1e-5);
}

TEST(Fusion, WeightedLabelsGiveTheWeightedMeanOfTheTokensLoss) {
  torch::NoGradGuard no_grad;
  FusionDecoder model = decoder(FusionMode::probe, 1);
  const EnsembleOutput a = audio({5, 3});
  const Batch b = batch({kPrompt, {5, 9, kAudio, 30, 41, 7}});
  // Example 0 answers with its last three tokens, example 1 with its last one.
  torch::Tensor mask = torch::zeros_like(b.valid);
  mask[0].narrow(0, 5, 3).fill_(true);
  mask[1][5] = true;
  const FusionOutput by_token = model->forward(b.ids, b.valid, a, mask);
  ASSERT_EQ(by_token.logits.size(0), 4);
  const torch::Tensor ce = torch::nn::functional::cross_entropy(
      by_token.logits, torch::tensor({41, 7, 12, 7}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  EXPECT_NEAR(by_token.loss.item<double>(), ce.mean().item<double>(), 1e-5);
  // Weights of 1 are the bool mask; 1/3 and 1 make each example's answer weigh the same.
  EXPECT_NEAR(model->forward(b.ids, b.valid, a, mask.to(torch::kFloat32)).loss.item<double>(),
              by_token.loss.item<double>(), 1e-6);
  torch::Tensor per_example = mask.to(torch::kFloat32);
  per_example[0] *= 1.0 / 3.0;
  const double expected = (ce.narrow(0, 0, 3).mean() + ce[3]).item<double>() / 2.0;
  EXPECT_NEAR(model->forward(b.ids, b.valid, a, per_example).loss.item<double>(), expected, 1e-5);
  EXPECT_GT(std::abs(expected - by_token.loss.item<double>()), 1e-4);  // the two means differ here
  per_example[1][5] = -1.0;
  const std::string msg =
      test::error_message<ModelError>([&] { model->forward(b.ids, b.valid, a, per_example); });
  EXPECT_NE(msg.find("label weights must be finite and not negative (got -1"), std::string::npos) << msg;
}

TEST(Fusion, BadRequestsAreNamed) {
  torch::NoGradGuard no_grad;
  Batch no_placeholder = batch({{5, 6, 7}});
  std::string msg = test::error_message<ModelError>(
      [&] { decoder(FusionMode::prefix)->forward(no_placeholder.ids, no_placeholder.valid, audio({3})); });
  EXPECT_NE(msg.find("prompt 0 has 0 audio placeholders (token id 96)"), std::string::npos) << msg;
  FusionConfig c;
  c.start_layer = 3;
  msg = test::error_message<ConfigError>([&] { FusionDecoder(tiny_llm(), c, kAudio); });
  EXPECT_NE(msg.find("fusion.start_layer: 3 is not below the LLM's 3 layers"), std::string::npos) << msg;
  GenerationOptions o;
  msg = test::error_message<GenerationError>([&] {
    std::vector<int64_t> long_prompt(249, 5);
    long_prompt.push_back(kAudio);  // 249 text + 8 audio positions > 256
    decoder(FusionMode::prefix)->generate({long_prompt}, audio({8}), o);
  });
  EXPECT_NE(msg.find("the prompt with its audio takes"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::models
