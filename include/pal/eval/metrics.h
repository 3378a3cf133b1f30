// The metrics of pal-eval: exact match, average precision, corpus BLEU-4 and CIDEr-D.
// Pure functions over strings and numbers (no model), each compared in tests against
// fixtures from its reference implementation (scripts/make_eval_fixtures.py).
//
//   normalize_answer("  The Dog, barking! ")  -> "the dog barking"
//   corpus_bleu({{"a", "dog"}}, {{{"a", "dog", "barks"}}}).score
//   cider_d(hypotheses, references).score
//   average_precision({0.9, 0.2, 0.4}, {1, 0, 1})
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pal::eval {

using Tokens = std::vector<std::string>;

// Answers are compared after this: ASCII letters lower-cased, ASCII punctuation removed
// (as SQuAD's normalize_answer: "it's" -> "its", "kick-drum" -> "kickdrum"), whitespace
// runs collapsed to one space, leading and trailing whitespace dropped. Bytes >= 0x80
// (UTF-8) are kept as they are.
std::string normalize_answer(std::string_view text);
// normalize_answer split at spaces: the tokens BLEU and CIDEr-D count.
Tokens tokenize_answer(std::string_view text);
// normalize_answer(a) == normalize_answer(b).
bool answers_match(std::string_view a, std::string_view b);

struct BleuScore {
  double score = 0;                    // 0..1
  std::array<double, 4> precisions{};  // modified n-gram precisions p1..p4 (0..1)
  double brevity_penalty = 0;          // 0..1
  int64_t hypothesis_length = 0;       // tokens over the corpus
  int64_t reference_length = 0;        // closest reference length, summed
};

// Corpus-level BLEU-4 (Papineni et al. 2002): clipped n-gram counts summed over the
// corpus, uniform weights 1/4, brevity penalty exp(1 - r/c) against the closest reference
// length (ties: the shorter). No smoothing: when some order has no match, BLEU is 0.
// hypothesis i is scored against references[i] (one or more). An empty hypothesis
// counts 0 tokens. ref: nltk corpus_bleu (default SmoothingFunction().method0) and
// sacrebleu corpus_bleu(smooth_method="none", tokenize="none"), which agree.
BleuScore corpus_bleu(const std::vector<Tokens>& hypotheses,
                      const std::vector<std::vector<Tokens>>& references);

struct CiderScore {
  double score = 0;                 // the mean of per_example
  std::vector<double> per_example;  // per hypothesis
};

// CIDEr-D (Vedantam et al. 2015, as coco-caption computes it): n-grams n = 1..4 as tf-idf
// vectors, document frequency over the reference sets of this corpus (idf = log(#sets) -
// log(max(1, df))); per n the clipped cosine sum_g min(h_g, r_g) r_g / (|h| |r|), times
// the Gaussian length penalty exp(-(lh - lr)^2 / (2 sigma^2)) where the "length" is the
// bigram count (as in the reference code); mean over n, mean over references, x10.
// ref: pycocoevalcap 1.2 pycocoevalcap/cider/cider_scorer.py (CiderScorer, the CIDEr-D
// variant with clipping and the penalty, from vrama91/cider ciderD_scorer.py).
CiderScore cider_d(const std::vector<Tokens>& hypotheses, const std::vector<std::vector<Tokens>>& references,
                   double sigma = 6.0);

// Average precision of one class: scores[i] ranks example i, positive[i] says whether it
// belongs to the class. Tied scores form one threshold. NaN when nothing is positive.
// ref: sklearn.metrics.average_precision_score (sum over thresholds of (R_k - R_k-1) P_k).
double average_precision(const std::vector<double>& scores, const std::vector<uint8_t>& positive);

// The mean of average_precision over the classes (columns of scores[example][class])
// that have positives; labels[i] is example i's class index (-1: none of them).
// per_class gets each class's AP (NaN for classes without positives). NaN when no class
// has positives.
double mean_average_precision(const std::vector<std::vector<double>>& scores,
                              const std::vector<int64_t>& labels, std::vector<double>* per_class = nullptr);

}  // namespace pal::eval
