// The probe analyses on a decoder arranged so that only layer 2 of 4 reads the audio
// (analyze_test_util.h): each measurement must find that layer, in every fusion mode.
#include "pal/analyze/probe_analysis.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "analyze_test_util.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::analyze {
namespace {

using models::FusionMode;

constexpr int64_t kLayers = 4, kReader = 2, kVocab = 24, kAudio = 24, kEnd = 20, kClasses = 4;
const std::vector<int64_t> kClassTokens = {10, 11, 12, 13};
const std::vector<FusionMode> kModes = {FusionMode::prefix, FusionMode::delayed, FusionMode::probe,
                                        FusionMode::pal};

models::FusionDecoder arranged_decoder(FusionMode mode, int64_t start_layer = 1) {
  models::LlamaForCausalLM llm(test::arranged_config(kLayers, kVocab));
  test::arrange(*llm, {kReader, kClassTokens, kEnd});
  models::FusionConfig c;
  c.mode = mode;
  c.start_layer = start_layer;
  return models::FusionDecoder(llm, c, kAudio);
}

// Example i: class i % 4, 3 to 5 audio tokens, prompts of two lengths.
AnalysisExample example(int64_t i, FusionMode mode) {
  const int64_t cls = i % kClasses, n = 3 + i % 3;
  AnalysisExample e;
  e.ids = {1, 2, kAudio, 3, 4, 5};
  if (i % 2) e.ids.push_back(6);
  e.is_answer.assign(e.ids.size(), 0);
  for (int64_t t : {kClassTokens[static_cast<size_t>(cls)], kEnd}) {
    e.ids.push_back(t);
    e.is_answer.push_back(1);
  }
  e.reference = std::to_string(kClassTokens[static_cast<size_t>(cls)]);
  e.task = cls == 0 ? "class0" : "other";
  const torch::Tensor mask = torch::ones({1, n}, torch::kBool);
  e.audio.probe = {test::class_audio(cls, n), mask};
  if (mode == FusionMode::pal)  // a summary token the prefix way, the sequence the probe way
    e.audio.prefix = {test::class_audio(cls, 1), torch::ones({1, 1}, torch::kBool)};
  return e;
}

std::vector<AnalysisExample> batch(FusionMode mode, int64_t first, int64_t count) {
  std::vector<AnalysisExample> out;
  for (int64_t i = first; i < first + count; ++i) out.push_back(example(i, mode));
  return out;
}

models::Detokenizer ids_as_text() {
  return [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
    return s;
  };
}

models::GenerationOptions greedy() {
  models::GenerationOptions g;
  g.max_new_tokens = 4;
  g.stop_token_ids = {kEnd};
  return g;
}

TEST(ProbeAnalysis, AttentionToAudioIsFoundInTheReaderLayerOnly) {
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    models::FusionDecoder decoder = arranged_decoder(mode);
    AttentionAnalysis attention(*decoder);
    attention.add(batch(mode, 0, 3));
    attention.add(batch(mode, 3, 5));
    const AttentionResult& r = attention.result();
    ASSERT_EQ(r.layers, kLayers);
    ASSERT_EQ(r.heads, 4);
    EXPECT_EQ(r.examples, 8);
    for (const AttentionShares* s : {&r.question, &r.answer}) {
      for (int64_t l = 0; l < kLayers; ++l) {
        EXPECT_EQ(s->examples[static_cast<size_t>(l)], 8);
        for (int64_t h = 0; h < 4; ++h) {
          const double share = s->share[static_cast<size_t>(l)][static_cast<size_t>(h)];
          if (l == kReader && h < 2)  // the query heads of kv head 0
            EXPECT_GT(share, 0.99) << "layer " << l << " head " << h;
          else
            EXPECT_LT(share, 0.01) << "layer " << l << " head " << h;
          EXPECT_GE(share, 0.0);
        }
      }
      // Uniform attention would give audio a real share wherever a layer sees audio keys.
      EXPECT_GT(s->uniform[kReader][0], 0.1);
    }
    // Layers that see no audio keys: below start_layer in delayed / probe.
    if (mode == FusionMode::delayed || mode == FusionMode::probe) {
      EXPECT_EQ(r.question.uniform[0][0], 0.0);
    }
  }
}

TEST(ProbeAnalysis, AttentionIsTheSameInAnyBatching) {
  for (FusionMode mode : {FusionMode::prefix, FusionMode::pal}) {
    SCOPED_TRACE(config::enum_name(mode));
    models::FusionDecoder decoder = arranged_decoder(mode);
    AttentionAnalysis together(*decoder), alone(*decoder);
    together.add(batch(mode, 0, 5));
    for (int64_t i = 0; i < 5; ++i) alone.add(batch(mode, i, 1));
    for (int64_t l = 0; l < kLayers; ++l)
      for (int64_t h = 0; h < 4; ++h) {
        EXPECT_NEAR(together.result().question.share[l][h], alone.result().question.share[l][h], 1e-6);
        EXPECT_NEAR(together.result().answer.uniform[l][h], alone.result().answer.uniform[l][h], 1e-6);
      }
  }
}

TEST(ProbeAnalysis, LogitLensRankJumpsAtTheReaderLayer) {
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    models::FusionDecoder decoder = arranged_decoder(mode);
    LogitLensAnalysis lens(*decoder);
    lens.add(batch(mode, 0, 4));
    lens.add(batch(mode, 4, 4));
    const LogitLensResult r = lens.result();
    ASSERT_EQ(r.layers, kLayers);
    ASSERT_EQ(r.first_token.size(), static_cast<size_t>(kLayers + 1));
    EXPECT_EQ(r.examples, 8);
    EXPECT_EQ(r.first_token[0].positions, 8);
    EXPECT_EQ(r.all_tokens[0].positions, 16);  // class token + end token
    // Taps 0..kReader (embeddings up to the reader's input): the four class tokens tie, so
    // ranks are 1..4 (mean 2.5) and a quarter are on top; from the reader's output: rank 1.
    for (int64_t i = 0; i <= kReader; ++i) {
      EXPECT_NEAR(r.first_token[static_cast<size_t>(i)].rank, 2.5, 1e-9) << "tap " << i;
      EXPECT_NEAR(r.first_token[static_cast<size_t>(i)].top1, 0.25, 1e-9) << "tap " << i;
      EXPECT_LT(r.first_token[static_cast<size_t>(i)].probability, 0.3) << "tap " << i;
    }
    for (int64_t i = kReader + 1; i <= kLayers; ++i) {
      EXPECT_EQ(r.first_token[static_cast<size_t>(i)].rank, 1.0) << "tap " << i;
      EXPECT_EQ(r.first_token[static_cast<size_t>(i)].top1, 1.0) << "tap " << i;
      EXPECT_GT(r.first_token[static_cast<size_t>(i)].probability, 0.3) << "tap " << i;
    }
    // The end token is predicted from the answer flag alone, at every layer.
    EXPECT_EQ(r.all_tokens[kLayers].rank, 1.0);
  }
}

TEST(ProbeAnalysis, LastLensLayerIsTheModelsOwnPrediction) {
  models::FusionDecoder decoder = arranged_decoder(FusionMode::probe);
  test::arrange(*decoder->llm, {kReader, kClassTokens, kEnd});
  torch::manual_seed(1);
  {  // perturb every weight so that probabilities are not saturated
    torch::NoGradGuard no_grad;
    for (auto& p : decoder->llm->parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  LogitLensAnalysis lens(*decoder);
  const std::vector<AnalysisExample> b = batch(FusionMode::probe, 0, 2);
  lens.add(b);
  // The model's own probabilities of the answer tokens, from forward with labels.
  torch::NoGradGuard no_grad;
  double expected = 0;
  int64_t count = 0;
  for (const auto& e : b) {
    const int64_t T = static_cast<int64_t>(e.ids.size());
    torch::Tensor ids = torch::tensor(e.ids).view({1, T});
    torch::Tensor labels = torch::tensor(std::vector<int64_t>(e.is_answer.begin(), e.is_answer.end()))
                               .view({1, T})
                               .to(torch::kBool);
    models::FusionOutput out = decoder->forward(ids, torch::ones({1, T}, torch::kBool), e.audio, labels);
    torch::Tensor probs = torch::softmax(out.logits, -1);
    int64_t row = 0;
    for (int64_t t = 0; t < T; ++t)
      if (e.is_answer[static_cast<size_t>(t)]) {
        expected += probs[row++][e.ids[static_cast<size_t>(t)]].item<double>();
        ++count;
      }
  }
  EXPECT_NEAR(lens.result().all_tokens[kLayers].probability, expected / static_cast<double>(count), 1e-5);
}

TEST(ProbeAnalysis, WithholdingAudioFromTheReaderDropsAccuracyToChance) {
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    models::FusionDecoder decoder = arranged_decoder(mode);
    AblationAnalysis ablation(*decoder, ablation_conditions(kLayers, 1, {{kReader, kReader}}, true, {}),
                              greedy(), ids_as_text());
    ablation.add(batch(mode, 0, 3));
    ablation.add(batch(mode, 3, 5));
    int64_t checked = 0;
    for (const AblationPoint& p : ablation.result().points) {
      SCOPED_TRACE(p.condition.name);
      EXPECT_EQ(p.examples, 8);
      const bool reads = p.condition.first < 0 || p.condition.first > kReader || p.condition.last < kReader;
      // Without the reader the class tokens tie and the lowest id wins: class 0, a quarter.
      EXPECT_DOUBLE_EQ(p.accuracy(), reads ? 1.0 : 1.0 / kClasses);
      ASSERT_EQ(p.by_task.size(), 2u);
      EXPECT_EQ(p.by_task.at("class0").examples, 2);
      EXPECT_DOUBLE_EQ(p.by_task.at("class0").accuracy(), 1.0);
      EXPECT_EQ(p.by_task.at("other").examples, 6);
      EXPECT_DOUBLE_EQ(p.by_task.at("other").accuracy(), reads ? 1.0 : 0.0);
      ++checked;
    }
    EXPECT_EQ(checked,
              7);  // baseline, all layers, the 4 one-layer blocks, from start_layer (the rest duplicate)
  }
}

TEST(ProbeAnalysis, HooksOffLeaveTheDecoderUnchanged) {
  torch::NoGradGuard no_grad;
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    models::FusionDecoder decoder = arranged_decoder(mode);
    torch::manual_seed(2);
    for (auto& p : decoder->llm->parameters()) p.add_(torch::randn_like(p) * 0.1);
    std::vector<AnalysisExample> b = batch(mode, 0, 2);
    const AnalysisExample& e = b[1];
    const int64_t T = static_cast<int64_t>(e.ids.size());
    torch::Tensor ids = torch::tensor(e.ids).view({1, T}), valid = torch::ones({1, T}, torch::kBool);
    const models::FusionOutput plain = decoder->forward(ids, valid, e.audio);
    // An analysis that withholds nothing and records nothing changes nothing, bit for bit.
    models::FusionAnalysis idle;
    decoder->set_analysis(&idle);
    const models::FusionOutput same = decoder->forward(ids, valid, e.audio);
    EXPECT_TRUE(torch::equal(plain.logits, same.logits));
    const auto tokens =
        decoder->generate({std::vector<int64_t>(e.ids.begin(), e.ids.end() - 2)}, e.audio, greedy());
    decoder->set_analysis(nullptr);
    EXPECT_EQ(
        tokens.tokens,
        decoder->generate({std::vector<int64_t>(e.ids.begin(), e.ids.end() - 2)}, e.audio, greedy()).tokens);
    // Recording attention computes it explicitly: the same output up to rounding, and
    // probabilities that sum to 1 over the keys of every valid query.
    models::FusionAnalysis recording;
    int64_t layers = 0;
    recording.on_attention = [&](const models::LayerAttention& a) {
      ++layers;
      torch::Tensor rows = a.probabilities.sum(-1);
      EXPECT_TRUE(torch::allclose(rows, torch::ones_like(rows), 1e-5, 1e-5));
      EXPECT_EQ(a.audio_keys.size(1), a.probabilities.size(3));
    };
    decoder->set_analysis(&recording);
    const models::FusionOutput recorded = decoder->forward(ids, valid, e.audio);
    decoder->set_analysis(nullptr);
    EXPECT_EQ(layers, kLayers);
    EXPECT_TRUE(torch::allclose(plain.logits, recorded.logits, 1e-5, 1e-5));
  }
}

TEST(ProbeAnalysis, WithheldGenerationMatchesWithheldForward) {
  // The cached generation and the full forward hide the same keys in a withheld layer.
  torch::NoGradGuard no_grad;
  for (FusionMode mode : kModes) {
    SCOPED_TRACE(config::enum_name(mode));
    models::FusionDecoder decoder = arranged_decoder(mode);
    torch::manual_seed(3);
    for (auto& p : decoder->llm->parameters()) p.add_(torch::randn_like(p) * 0.2);
    const AnalysisExample e = example(1, mode);
    std::vector<int64_t> prompt(e.ids.begin(), e.ids.end() - 2);
    models::FusionAnalysis withhold;
    withhold.withhold_audio = {false, true, true, false};
    decoder->set_analysis(&withhold);
    models::GenerationOptions g;
    g.max_new_tokens = 5;
    const auto cached = decoder->generate({prompt}, e.audio, g).tokens[0];
    std::vector<int64_t> recomputed;
    for (int64_t s = 0; s < 5; ++s) {
      const int64_t T = static_cast<int64_t>(prompt.size());
      models::FusionOutput o =
          decoder->forward(torch::tensor(prompt).view({1, T}), torch::ones({1, T}, torch::kBool), e.audio);
      const int64_t next = o.logits[0][o.layout.valid[0].sum().item<int64_t>() - 1].argmax().item<int64_t>();
      recomputed.push_back(next);
      prompt.push_back(next);
    }
    decoder->set_analysis(nullptr);
    EXPECT_EQ(cached, recomputed);
  }
}

TEST(ProbeAnalysis, AblationConditionsAndTheirErrors) {
  const auto c = ablation_conditions(8, 4, {{5, 6}}, false, {"whisper", "ast"});
  std::vector<std::string> names;
  for (const auto& x : c) names.push_back(x.name);
  const std::vector<std::string> expected = {
      "baseline (audio in every layer)", "no audio (all layers withheld)", "block 1/4: layers 0-1",
      "block 2/4: layers 2-3",           "block 3/4: layers 4-5",          "block 4/4: layers 6-7",
      "below start_layer: layers 0-3",   "from start_layer: layers 4-7",   "layers 5-6",
      "without encoder 0 (whisper)",     "without encoder 1 (ast)"};
  EXPECT_EQ(names, expected);
  EXPECT_EQ(c[8].withheld, std::vector<bool>({false, false, false, false, false, true, true, false}));
  EXPECT_EQ(c[10].removed_stream, 1);
  std::string msg = test::error_message<ConfigError>([] { ablation_conditions(4, 1, {{2, 4}}, false, {}); });
  EXPECT_NE(msg.find("layer range 2-4 is out of bounds: the decoder has 4 layers (0-3)"), std::string::npos)
      << msg;
  msg = test::error_message<ConfigError>([] { ablation_conditions(4, 1, {{3, 1}}, false, {}); });
  EXPECT_NE(msg.find("3-1"), std::string::npos) << msg;
  EXPECT_EQ(normalize_answer("  A Dog,  barking!\n"), "a dog barking");
  EXPECT_EQ(normalize_answer("Dog-barking."), "dog barking");
}

TEST(ProbeAnalysis, BadBatchesAreNamed) {
  models::FusionDecoder decoder = arranged_decoder(FusionMode::probe);
  AttentionAnalysis attention(*decoder);
  std::vector<AnalysisExample> b = batch(FusionMode::probe, 0, 2);
  b[1].is_answer.assign(b[1].is_answer.size(), 0);
  std::string msg = test::error_message<ModelError>([&] { attention.add(b); });
  EXPECT_NE(msg.find("example 1 has no answer tokens"), std::string::npos) << msg;
  std::vector<AnalysisExample> mixed = {example(0, FusionMode::probe), example(1, FusionMode::pal)};
  msg = test::error_message<ModelError>([&] { attention.add(mixed); });
  EXPECT_NE(msg.find("audio of different routes"), std::string::npos) << msg;
  AblationAnalysis ablation(*decoder, ablation_conditions(kLayers, 1, {}, false, {"whisper", "ast"}),
                            greedy(), ids_as_text());
  msg = test::error_message<ModelError>([&] { ablation.add(batch(FusionMode::probe, 0, 1)); });
  EXPECT_NE(msg.find("needs the audio encoded without stream 0"), std::string::npos) << msg;
}

// ---- ensemble streams ----------------------------------------------------------------------

TEST(ProbeAnalysis, RemovedEnsembleStreamsAreMaskedOrZeroed) {
  torch::NoGradGuard no_grad;
  const std::vector<models::EnsembleInput> inputs = {{"a", 8, 10, 0}, {"b", 6, 10, 0}};
  std::vector<models::EncoderOutput> outputs(2);
  torch::manual_seed(4);
  outputs[0] = {torch::randn({2, 5, 8}), torch::ones({2, 5}, torch::kBool), {}};
  outputs[1] = {torch::randn({2, 3, 6}), torch::ones({2, 3}, torch::kBool), {}};
  {  // concat_time: the stream's time steps (and summary token) drop out
    models::EnsembleConfig c;
    c.width = 4;
    c.streams.resize(2);
    c.streams[1].summary_token = true;
    c.summary_route = models::AudioRoute::probe;
    models::EncoderEnsemble ensemble(c, inputs);
    const models::EnsembleOutput full = ensemble->forward(outputs);
    ASSERT_EQ(full.probe.tokens.size(1), 1 + 5 + 3);
    ensemble->set_removed_streams({false, true});
    const models::EnsembleOutput without = ensemble->forward(outputs);
    ensemble->set_removed_streams({});
    EXPECT_EQ(without.probe.mask.sum().item<int64_t>(), 2 * 5);           // stream 0's steps only
    EXPECT_FALSE(without.probe.mask.narrow(1, 0, 1).any().item<bool>());  // the summary token
    EXPECT_TRUE(torch::equal(without.probe.tokens.narrow(1, 1, 5), full.probe.tokens.narrow(1, 1, 5)));
    EXPECT_TRUE(torch::equal(ensemble->forward(outputs).probe.tokens, full.probe.tokens));  // reset
  }
  {  // sum: the shared steps stay, without the removed stream's features
    models::EnsembleConfig c;
    c.width = 4;
    c.frames_per_second = 10;
    c.fusion = models::EnsembleFusion::sum;
    models::EncoderEnsemble ensemble(c, inputs);
    ensemble->set_removed_streams({true, false});
    const models::EnsembleOutput without = ensemble->forward(outputs);
    ensemble->set_removed_streams({false, true});
    const models::EnsembleOutput only_first = ensemble->forward(outputs);
    ensemble->set_removed_streams({});
    const models::EnsembleOutput full = ensemble->forward(outputs);
    EXPECT_TRUE(torch::equal(without.probe.mask.narrow(1, 0, 3), torch::ones({2, 3}, torch::kBool)));
    EXPECT_FALSE(without.probe.mask.narrow(1, 3, 2).any().item<bool>());  // only stream 0 had them
    EXPECT_TRUE(
        torch::allclose(without.probe.tokens + only_first.probe.tokens, full.probe.tokens, 1e-6, 1e-6));
  }
}

}  // namespace
}  // namespace pal::analyze
