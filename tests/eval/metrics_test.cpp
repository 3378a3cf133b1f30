// pal-eval's metrics against fixtures of their reference implementations, written by
// scripts/make_eval_fixtures.py: BLEU-4 from sacrebleu 2.6 (corpus_bleu, smooth_method
// none, tokenize none; nltk 3.10's corpus_bleu agrees where hypotheses have >= 4 tokens),
// CIDEr-D from pycocoevalcap 1.2's CiderScorer (n 4, sigma 6: coco-caption's CIDEr-D),
// average precision from scikit-learn 1.9's average_precision_score. Tolerance 1e-9
// absolute (both sides compute in double).
#include "pal/eval/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace pal::eval {
namespace {

using nlohmann::json;
constexpr double kTolerance = 1e-9;

json fixture(const std::string& name) {
  std::ifstream in(test::fixtures() / "eval" / name);
  EXPECT_TRUE(in.good()) << name;
  return json::parse(in);
}

std::vector<Tokens> tokens_of(const json& texts) {
  std::vector<Tokens> out;
  for (const auto& t : texts) out.push_back(tokenize_answer(t.get<std::string>()));
  return out;
}

std::vector<std::vector<Tokens>> reference_tokens(const json& sets) {
  std::vector<std::vector<Tokens>> out;
  for (const auto& set : sets) out.push_back(tokens_of(set));
  return out;
}

TEST(EvalMetrics, NormalizesAnswers) {
  EXPECT_EQ(normalize_answer("  The Dog, barking!  "), "the dog barking");
  EXPECT_EQ(normalize_answer("Kick drum."), "kick drum");
  EXPECT_EQ(normalize_answer("it's\ta\n\n  DOG"), "its a dog");
  EXPECT_EQ(normalize_answer("..."), "");
  EXPECT_EQ(normalize_answer(""), "");
  EXPECT_EQ(normalize_answer("Ça VA"), "Ça va");  // bytes >= 0x80 stay
  EXPECT_TRUE(answers_match("Seven.", " seven"));
  EXPECT_FALSE(answers_match("seven", "seventy"));
  EXPECT_EQ(tokenize_answer("A dog  barks!"), (Tokens{"a", "dog", "barks"}));
  EXPECT_TRUE(tokenize_answer(" ! ").empty());
}

TEST(ParityEvalMetrics, CorpusBleuMatchesSacrebleu) {
  const json f = fixture("bleu.json");
  ASSERT_GE(f["cases"].size(), 8u);
  for (const auto& c : f["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const BleuScore b = corpus_bleu(tokens_of(c["hypotheses"]), reference_tokens(c["references"]));
    EXPECT_NEAR(b.score, c["bleu"].get<double>(), kTolerance);
    EXPECT_NEAR(b.brevity_penalty, c["brevity_penalty"].get<double>(), kTolerance);
    EXPECT_EQ(b.hypothesis_length, c["hypothesis_length"].get<int64_t>());
    EXPECT_EQ(b.reference_length, c["reference_length"].get<int64_t>());
    for (size_t n = 0; n < 4; ++n) EXPECT_NEAR(b.precisions[n], c["precisions"][n].get<double>(), kTolerance);
  }
}

TEST(EvalMetrics, CorpusBleuEdgeCases) {
  EXPECT_EQ(corpus_bleu({}, {}).score, 0.0);
  const BleuScore same = corpus_bleu({{"a", "b", "c", "d"}}, {{{"a", "b", "c", "d"}}});
  EXPECT_DOUBLE_EQ(same.score, 1.0);
  EXPECT_THROW(corpus_bleu({{"a"}}, {}), std::invalid_argument);
}

TEST(ParityEvalMetrics, CiderDMatchesPycocoevalcap) {
  const json f = fixture("cider_d.json");
  ASSERT_GE(f["cases"].size(), 7u);
  for (const auto& c : f["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const CiderScore s = cider_d(tokens_of(c["hypotheses"]), reference_tokens(c["references"]));
    EXPECT_NEAR(s.score, c["cider_d"].get<double>(), kTolerance);
    ASSERT_EQ(s.per_example.size(), c["per_example"].size());
    for (size_t i = 0; i < s.per_example.size(); ++i)
      EXPECT_NEAR(s.per_example[i], c["per_example"][i].get<double>(), kTolerance) << "example " << i;
  }
}

TEST(EvalMetrics, CiderDEdgeCases) {
  EXPECT_EQ(cider_d({}, {}).score, 0.0);
  // One reference set: every idf is log(1) - log(1) = 0.
  EXPECT_EQ(cider_d({{"a", "dog"}}, {{{"a", "dog"}}}).score, 0.0);
  EXPECT_THROW(cider_d({{"a"}}, {{}}), std::invalid_argument);
}

TEST(ParityEvalMetrics, AveragePrecisionMatchesSklearn) {
  const json f = fixture("average_precision.json");
  for (const auto& c : f["ap_cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    EXPECT_NEAR(
        average_precision(c["scores"].get<std::vector<double>>(), c["positive"].get<std::vector<uint8_t>>()),
        c["ap"].get<double>(), kTolerance);
  }
  for (const auto& c : f["map_cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<double> per_class;
    const double map = mean_average_precision(c["scores"].get<std::vector<std::vector<double>>>(),
                                              c["labels"].get<std::vector<int64_t>>(), &per_class);
    EXPECT_NEAR(map, c["map"].get<double>(), kTolerance);
    ASSERT_EQ(per_class.size(), c["per_class"].size());
    for (size_t k = 0; k < per_class.size(); ++k) {
      if (c["per_class"][k].is_null())
        EXPECT_TRUE(std::isnan(per_class[k])) << "class " << k;
      else
        EXPECT_NEAR(per_class[k], c["per_class"][k].get<double>(), kTolerance) << "class " << k;
    }
  }
}

TEST(EvalMetrics, AveragePrecisionWithoutPositivesIsNaN) {
  EXPECT_TRUE(std::isnan(average_precision({0.1, 0.2}, {0, 0})));
  EXPECT_TRUE(std::isnan(mean_average_precision({{0.1}, {0.2}}, {-1, -1})));
  EXPECT_THROW(average_precision({0.1}, {1, 0}), std::invalid_argument);
}

}  // namespace
}  // namespace pal::eval
