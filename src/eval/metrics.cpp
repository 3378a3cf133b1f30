#include "pal/eval/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

namespace pal::eval {
namespace {

bool ascii_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool ascii_punctuation(unsigned char c) {
  return c < 0x80 && std::ispunct(c);
}

// n-gram -> count, for n = 1..max_n; an n-gram is its words joined by '\x1f' (a byte that
// normalize_answer never leaves in a token).
using NgramCounts = std::unordered_map<std::string, int64_t>;

std::array<NgramCounts, 4> count_ngrams(const Tokens& words) {
  std::array<NgramCounts, 4> counts;
  for (size_t n = 1; n <= 4; ++n)
    for (size_t i = 0; i + n <= words.size(); ++i) {
      std::string gram = words[i];
      for (size_t k = 1; k < n; ++k) gram += '\x1f' + words[i + k];
      ++counts[n - 1][gram];
    }
  return counts;
}

void check_sizes(size_t hypotheses, size_t references, const char* what) {
  if (hypotheses != references)
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(hypotheses) + " hypotheses but " +
                                std::to_string(references) + " reference sets");
}

}  // namespace

std::string normalize_answer(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool space = false;
  for (unsigned char c : text) {
    if (ascii_space(c)) {
      space = !out.empty();
      continue;
    }
    if (ascii_punctuation(c)) continue;
    if (space) out += ' ';
    space = false;
    out += static_cast<char>(c < 0x80 ? std::tolower(c) : c);
  }
  return out;
}

Tokens tokenize_answer(std::string_view text) {
  const std::string normal = normalize_answer(text);
  Tokens out;
  size_t start = 0;
  while (start < normal.size()) {
    size_t end = normal.find(' ', start);
    if (end == std::string::npos) end = normal.size();
    out.push_back(normal.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

bool answers_match(std::string_view a, std::string_view b) {
  return normalize_answer(a) == normalize_answer(b);
}

// ref: nltk/translate/bleu_score.py corpus_bleu, modified_precision, closest_ref_length,
// brevity_penalty.
BleuScore corpus_bleu(const std::vector<Tokens>& hypotheses,
                      const std::vector<std::vector<Tokens>>& references) {
  check_sizes(hypotheses.size(), references.size(), "corpus_bleu");
  std::array<int64_t, 4> matched{}, total{};
  BleuScore out;
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    const Tokens& hyp = hypotheses[i];
    const auto hyp_counts = count_ngrams(hyp);
    std::array<NgramCounts, 4> max_ref;  // per n-gram, its largest count in one reference
    int64_t closest = -1;
    const int64_t c = static_cast<int64_t>(hyp.size());
    for (const Tokens& ref : references[i]) {
      const auto ref_counts = count_ngrams(ref);
      for (size_t n = 0; n < 4; ++n)
        for (const auto& [gram, count] : ref_counts[n]) {
          int64_t& m = max_ref[n][gram];
          m = std::max(m, count);
        }
      const int64_t r = static_cast<int64_t>(ref.size());
      if (closest < 0 || std::abs(r - c) < std::abs(closest - c) ||
          (std::abs(r - c) == std::abs(closest - c) && r < closest))
        closest = r;
    }
    for (size_t n = 0; n < 4; ++n)
      for (const auto& [gram, count] : hyp_counts[n]) {
        auto it = max_ref[n].find(gram);
        matched[n] += std::min(count, it == max_ref[n].end() ? int64_t{0} : it->second);
        total[n] += count;
      }
    out.hypothesis_length += c;
    out.reference_length += std::max<int64_t>(closest, 0);
  }
  for (size_t n = 0; n < 4; ++n)
    out.precisions[n] = total[n] > 0 ? static_cast<double>(matched[n]) / static_cast<double>(total[n]) : 0.0;
  const double c = static_cast<double>(out.hypothesis_length), r = static_cast<double>(out.reference_length);
  out.brevity_penalty = c == 0 ? 0.0 : c > r ? 1.0 : std::exp(1.0 - r / c);
  if (std::any_of(matched.begin(), matched.end(), [](int64_t m) { return m == 0; })) return out;
  double log_sum = 0;
  for (size_t n = 0; n < 4; ++n) log_sum += 0.25 * std::log(out.precisions[n]);
  out.score = out.brevity_penalty * std::exp(log_sum);
  return out;
}

// ref: pycocoevalcap 1.2, cider/cider_scorer.py: precook, compute_doc_freq, counts2vec,
// sim, compute_cider.
CiderScore cider_d(const std::vector<Tokens>& hypotheses, const std::vector<std::vector<Tokens>>& references,
                   double sigma) {
  check_sizes(hypotheses.size(), references.size(), "cider_d");
  CiderScore out;
  if (hypotheses.empty()) return out;
  for (size_t i = 0; i < references.size(); ++i)
    if (references[i].empty())
      throw std::invalid_argument("cider_d: hypothesis " + std::to_string(i) + " has no reference");

  // Document frequency: in how many reference sets an n-gram occurs.
  std::vector<std::vector<std::array<NgramCounts, 4>>> ref_counts(references.size());
  std::unordered_map<std::string, double> document_frequency;
  for (size_t i = 0; i < references.size(); ++i) {
    std::map<std::string, bool> seen;
    for (const Tokens& ref : references[i]) {
      ref_counts[i].push_back(count_ngrams(ref));
      for (const auto& counts : ref_counts[i].back())
        for (const auto& entry : counts) seen[entry.first] = true;
    }
    for (const auto& entry : seen) document_frequency[entry.first] += 1;
  }
  const double log_sets = std::log(static_cast<double>(references.size()));

  struct Vector {
    std::array<std::unordered_map<std::string, double>, 4> weights;
    std::array<double, 4> norm{};
    int64_t length = 0;  // the bigram count, as counts2vec's `if n == 1: length += term_freq`
  };
  auto to_vector = [&](const std::array<NgramCounts, 4>& counts) {
    Vector v;
    for (size_t n = 0; n < 4; ++n) {
      for (const auto& [gram, tf] : counts[n]) {
        auto it = document_frequency.find(gram);
        const double df = std::log(std::max(1.0, it == document_frequency.end() ? 0.0 : it->second));
        const double w = static_cast<double>(tf) * (log_sets - df);
        v.weights[n][gram] = w;
        v.norm[n] += w * w;
        if (n == 1) v.length += tf;
      }
      v.norm[n] = std::sqrt(v.norm[n]);
    }
    return v;
  };

  out.per_example.reserve(hypotheses.size());
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    const Vector hyp = to_vector(count_ngrams(hypotheses[i]));
    std::array<double, 4> sum{};
    for (const auto& counts : ref_counts[i]) {
      const Vector ref = to_vector(counts);
      const double delta = static_cast<double>(hyp.length - ref.length);
      const double penalty = std::exp(-(delta * delta) / (2 * sigma * sigma));
      for (size_t n = 0; n < 4; ++n) {
        double value = 0;
        for (const auto& [gram, w] : hyp.weights[n]) {
          auto it = ref.weights[n].find(gram);
          if (it != ref.weights[n].end()) value += std::min(w, it->second) * it->second;
        }
        if (hyp.norm[n] != 0 && ref.norm[n] != 0) value /= hyp.norm[n] * ref.norm[n];
        sum[n] += value * penalty;
      }
    }
    const double mean = (sum[0] + sum[1] + sum[2] + sum[3]) / 4.0;
    out.per_example.push_back(mean / static_cast<double>(ref_counts[i].size()) * 10.0);
  }
  out.score = std::accumulate(out.per_example.begin(), out.per_example.end(), 0.0) /
              static_cast<double>(out.per_example.size());
  return out;
}

// ref: sklearn/metrics/_ranking.py _binary_clf_curve, precision_recall_curve,
// average_precision_score: AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds.
double average_precision(const std::vector<double>& scores, const std::vector<uint8_t>& positive) {
  if (scores.size() != positive.size())
    throw std::invalid_argument("average_precision: " + std::to_string(scores.size()) + " scores but " +
                                std::to_string(positive.size()) + " labels");
  const int64_t positives = std::count_if(positive.begin(), positive.end(), [](uint8_t p) { return p != 0; });
  if (positives == 0) return std::numeric_limits<double>::quiet_NaN();
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  double ap = 0, previous_recall = 0;
  int64_t tp = 0, seen = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    tp += positive[order[k]] != 0;
    ++seen;
    if (k + 1 < order.size() && scores[order[k + 1]] == scores[order[k]]) continue;  // a tie: one threshold
    const double recall = static_cast<double>(tp) / static_cast<double>(positives);
    const double precision = static_cast<double>(tp) / static_cast<double>(seen);
    ap += (recall - previous_recall) * precision;
    previous_recall = recall;
  }
  return ap;
}

double mean_average_precision(const std::vector<std::vector<double>>& scores,
                              const std::vector<int64_t>& labels, std::vector<double>* per_class) {
  if (scores.size() != labels.size())
    throw std::invalid_argument("mean_average_precision: " + std::to_string(scores.size()) +
                                " score rows but " + std::to_string(labels.size()) + " labels");
  const size_t classes = scores.empty() ? 0 : scores.front().size();
  for (const auto& row : scores)
    if (row.size() != classes)
      throw std::invalid_argument("mean_average_precision: score rows of different lengths");
  if (per_class) per_class->assign(classes, std::numeric_limits<double>::quiet_NaN());
  double sum = 0;
  int64_t counted = 0;
  for (size_t c = 0; c < classes; ++c) {
    std::vector<double> column(scores.size());
    std::vector<uint8_t> positive(scores.size());
    for (size_t i = 0; i < scores.size(); ++i) {
      column[i] = scores[i][c];
      positive[i] = labels[i] == static_cast<int64_t>(c);
    }
    const double ap = average_precision(column, positive);
    if (per_class) (*per_class)[c] = ap;
    if (std::isnan(ap)) continue;
    sum += ap;
    ++counted;
  }
  return counted > 0 ? sum / static_cast<double>(counted) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace pal::eval
