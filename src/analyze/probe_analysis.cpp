#include "pal/analyze/probe_analysis.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <set>

#include "pal/core/error.h"
#include "pal/models/audio_batch.h"

namespace pal::analyze {
namespace {

using models::FusionDecoderImpl;

// Instruments the decoder for the scope of one measurement.
class AnalysisScope {
 public:
  AnalysisScope(FusionDecoderImpl& decoder, models::FusionAnalysis* analysis) : decoder_(decoder) {
    decoder_.set_analysis(analysis);
  }
  ~AnalysisScope() { decoder_.set_analysis(nullptr); }
  AnalysisScope(const AnalysisScope&) = delete;
  AnalysisScope& operator=(const AnalysisScope&) = delete;

 private:
  FusionDecoderImpl& decoder_;
};

enum Group { kOther = 0, kQuestion = 1, kAnswer = 2 };

// A batch as the decoder's forward takes it (right padded), with the query group of
// every element of the fused sequence.
struct Prepared {
  torch::Tensor ids, valid, labels;  // [B, T]
  models::EnsembleOutput audio;
  models::FusedLayout layout;
  torch::Tensor group;  // [B, L] int64: Group of each fused element
};

void check_batch(const std::vector<AnalysisExample>& batch) {
  if (batch.empty()) throw ModelError("analysis: an empty batch");
  for (size_t i = 0; i < batch.size(); ++i) {
    const AnalysisExample& e = batch[i];
    if (e.ids.empty() || e.ids.size() != e.is_answer.size())
      throw ModelError("analysis: example " + std::to_string(i) + " has " + std::to_string(e.ids.size()) +
                       " ids and " + std::to_string(e.is_answer.size()) + " answer flags");
    if (std::find(e.is_answer.begin(), e.is_answer.end(), 1) == e.is_answer.end())
      throw ModelError("analysis: example " + std::to_string(i) + " has no answer tokens");
    if (e.audio.prefix.empty() && e.audio.probe.empty())
      throw ModelError("analysis: example " + std::to_string(i) + " has no audio");
  }
}

Prepared prepare(FusionDecoderImpl& decoder, const std::vector<AnalysisExample>& batch,
                 int64_t audio_token_id) {
  check_batch(batch);
  const int64_t n = static_cast<int64_t>(batch.size());
  size_t longest = 0;
  for (const auto& e : batch) longest = std::max(longest, e.ids.size());
  const int64_t T = static_cast<int64_t>(longest);
  std::vector<int64_t> ids(static_cast<size_t>(n * T), 0), valid(ids.size(), 0), labels(ids.size(), 0),
      group(ids.size(), kOther);
  for (int64_t b = 0; b < n; ++b) {
    const AnalysisExample& e = batch[static_cast<size_t>(b)];
    bool after_audio = false;
    for (size_t t = 0; t < e.ids.size(); ++t) {
      const size_t at = static_cast<size_t>(b * T) + t;
      ids[at] = e.ids[t];
      valid[at] = 1;
      labels[at] = e.is_answer[t];
      if (e.ids[t] == audio_token_id) {
        after_audio = true;
        continue;
      }
      group[at] = e.is_answer[t] ? kAnswer : after_audio ? kQuestion : kOther;
    }
  }
  const torch::Device device = decoder.llm->model->embed_tokens->weight.device();
  auto tensor = [&](const std::vector<int64_t>& v) { return torch::tensor(v).view({n, T}).to(device); };
  Prepared p;
  p.ids = tensor(ids);
  p.valid = tensor(valid).to(torch::kBool);
  p.labels = tensor(labels).to(torch::kBool);
  std::vector<const models::EnsembleOutput*> audio;
  for (const auto& e : batch) audio.push_back(&e.audio);
  p.audio = stack_audio(audio);
  const models::EnsembleOutput routed = decoder.route(p.audio);
  p.layout = decoder.layout(p.ids, p.valid, routed.prefix, routed.probe, /*left_pad=*/false);
  // The group of each fused element: scattered from the input tokens' places.
  torch::Tensor where = p.layout.text_index;  // [B, T], -1 at the placeholder and padding
  torch::Tensor fused = torch::zeros({n, p.layout.ids.size(1) + 1}, where.options());
  fused.scatter_(1, torch::where(where >= 0, where, torch::full_like(where, fused.size(1) - 1)),
                 tensor(group));
  p.group = fused.narrow(1, 0, p.layout.ids.size(1)).clone();
  return p;
}

std::vector<std::vector<double>> zeros(int64_t rows, int64_t cols) {
  return std::vector<std::vector<double>>(static_cast<size_t>(rows),
                                          std::vector<double>(static_cast<size_t>(cols)));
}

}  // namespace

models::EnsembleOutput stack_audio(const std::vector<const models::EnsembleOutput*>& audio) {
  models::EnsembleOutput out;
  for (const bool prefix : {true, false}) {
    std::vector<const models::AudioTokens*> parts;
    for (const auto* a : audio) {
      const models::AudioTokens& t = prefix ? a->prefix : a->probe;
      if (!t.empty()) parts.push_back(&t);
    }
    if (parts.empty()) continue;
    if (parts.size() != audio.size())
      throw ModelError("analysis: the examples of a batch have audio of different routes");
    (prefix ? out.prefix : out.probe) = models::stack_audio_tokens(parts);
  }
  return out;
}

// ---- attention ------------------------------------------------------------------------------

AttentionAnalysis::AttentionAnalysis(FusionDecoderImpl& decoder) : decoder_(decoder) {
  const auto& c = decoder_.llm->config();
  result_.layers = c.num_hidden_layers;
  result_.heads = c.num_attention_heads;
  for (auto& group : sums_)
    for (auto& s : group) s = zeros(result_.layers, result_.heads);
  for (auto& count : counts_) count.assign(static_cast<size_t>(result_.layers), 0);
  for (AttentionShares* s : {&result_.question, &result_.answer}) {
    s->share = s->uniform = zeros(result_.layers, result_.heads);
    s->examples.assign(static_cast<size_t>(result_.layers), 0);
  }
}

void AttentionAnalysis::add(const std::vector<AnalysisExample>& batch) {
  c10::InferenceMode inference;
  const Prepared p = prepare(decoder_, batch, decoder_.audio_token_id());
  models::FusionAnalysis analysis;
  analysis.on_attention = [&](const models::LayerAttention& a) {
    const torch::Tensor probs = a.probabilities;                                             // [B, H, Q, S]
    const torch::Tensor audio = a.audio_keys.to(torch::kFloat32).unsqueeze(1).unsqueeze(1);  // [B, 1, 1, S]
    const torch::Tensor mass = (probs * audio).sum(-1);                                      // [B, H, Q]
    const torch::Tensor seen = (probs > 0).to(torch::kFloat32);
    const torch::Tensor uniform = (seen * audio).sum(-1) / seen.sum(-1).clamp_min(1);
    const torch::Tensor group =
        p.group.gather(1, a.query_element.clamp_min(0)).masked_fill(a.query_element < 0, kOther);  // [B, Q]
    const size_t l = static_cast<size_t>(a.layer);
    for (const int g : {kQuestion, kAnswer}) {
      const torch::Tensor select = (group == g).to(torch::kFloat32);  // [B, Q]
      const torch::Tensor count = select.sum(-1);                     // [B]
      const torch::Tensor has = (count > 0).to(torch::kFloat32).unsqueeze(1);
      const torch::Tensor denominator = count.clamp_min(1).unsqueeze(1);
      for (const int kind : {0, 1}) {
        const torch::Tensor per_example =
            ((kind == 0 ? mass : uniform) * select.unsqueeze(1)).sum(-1) / denominator;
        const torch::Tensor sum = (per_example * has).sum(0).to(torch::kCPU, torch::kFloat64).contiguous();
        auto& row = sums_[g - 1][kind][l];
        for (size_t h = 0; h < row.size(); ++h) row[h] += sum.data_ptr<double>()[h];
      }
      counts_[g - 1][l] += static_cast<int64_t>(has.sum().item<double>());
    }
  };
  {
    AnalysisScope scope(decoder_, &analysis);
    decoder_.forward(p.ids, p.valid, p.audio, p.labels);
  }
  result_.examples += static_cast<int64_t>(batch.size());
  AttentionShares* groups[2] = {&result_.question, &result_.answer};
  for (int g = 0; g < 2; ++g)
    for (int64_t l = 0; l < result_.layers; ++l) {
      const int64_t n = counts_[g][static_cast<size_t>(l)];
      groups[g]->examples[static_cast<size_t>(l)] = n;
      for (int64_t h = 0; h < result_.heads; ++h) {
        groups[g]->share[static_cast<size_t>(l)][static_cast<size_t>(h)] =
            n > 0 ? sums_[g][0][static_cast<size_t>(l)][static_cast<size_t>(h)] / static_cast<double>(n)
                  : 0.0;
        groups[g]->uniform[static_cast<size_t>(l)][static_cast<size_t>(h)] =
            n > 0 ? sums_[g][1][static_cast<size_t>(l)][static_cast<size_t>(h)] / static_cast<double>(n)
                  : 0.0;
      }
    }
}

// ---- logit lens -----------------------------------------------------------------------------

LogitLensAnalysis::LogitLensAnalysis(FusionDecoderImpl& decoder) : decoder_(decoder) {
  const size_t taps = static_cast<size_t>(decoder_.llm->config().num_hidden_layers + 1);
  all_.resize(taps);
  first_.resize(taps);
}

void LogitLensAnalysis::add(const std::vector<AnalysisExample>& batch) {
  c10::InferenceMode inference;
  const Prepared p = prepare(decoder_, batch, decoder_.audio_token_id());
  const models::FusionOutput out = decoder_.forward(p.ids, p.valid, p.audio, p.labels, /*taps=*/true);
  const int64_t n = p.ids.size(0), T = p.ids.size(1), L = out.layout.ids.size(1);
  // The element before each answer token predicts it (right padding: the one before it).
  const torch::Tensor where = out.layout.text_index.to(torch::kCPU).contiguous();
  std::vector<int64_t> rows, targets, first;
  for (int64_t b = 0; b < n; ++b) {
    const AnalysisExample& e = batch[static_cast<size_t>(b)];
    bool seen = false;
    for (int64_t t = 0; t < static_cast<int64_t>(e.ids.size()); ++t) {
      const int64_t at = where.data_ptr<int64_t>()[b * T + t];
      if (!e.is_answer[static_cast<size_t>(t)] || at <= 0) continue;
      rows.push_back(b * L + at - 1);
      targets.push_back(e.ids[static_cast<size_t>(t)]);
      first.push_back(seen ? 0 : 1);
      seen = true;
    }
  }
  if (rows.empty()) return;
  const torch::Device device = out.hidden_states.front().device();
  const torch::Tensor row_index = torch::tensor(rows).to(device), target = torch::tensor(targets).to(device);
  const torch::Tensor is_first = torch::tensor(first).to(torch::kFloat64);
  const size_t taps = out.hidden_states.size();
  for (size_t i = 0; i < taps; ++i) {
    const torch::Tensor& tap = out.hidden_states[i];
    torch::Tensor h = tap.reshape({-1, tap.size(2)}).index_select(0, row_index);
    if (i + 1 < taps) h = decoder_.llm->model->norm(h);  // the last tap is normed already
    const torch::Tensor logits = decoder_.llm->logits(h).to(torch::kFloat32);  // [R, vocab]
    const torch::Tensor own = logits.gather(1, target.unsqueeze(1));           // [R, 1]
    const torch::Tensor probability = torch::softmax(logits, -1).gather(1, target.unsqueeze(1)).squeeze(1);
    const torch::Tensor lower_id =
        torch::arange(logits.size(1), target.options()).unsqueeze(0) < target.unsqueeze(1);
    const torch::Tensor rank =
        1 + (logits > own).sum(1) + (logits == own).logical_and(lower_id).sum(1);  // argmax's tie order
    const torch::Tensor prob64 = probability.to(torch::kCPU, torch::kFloat64);
    const torch::Tensor rank64 = rank.to(torch::kCPU, torch::kFloat64);
    const torch::Tensor top64 = (rank == 1).to(torch::kCPU, torch::kFloat64);
    all_[i].probability += prob64.sum().item<double>();
    all_[i].rank += rank64.sum().item<double>();
    all_[i].top1 += top64.sum().item<double>();
    all_[i].positions += static_cast<int64_t>(rows.size());
    first_[i].probability += (prob64 * is_first).sum().item<double>();
    first_[i].rank += (rank64 * is_first).sum().item<double>();
    first_[i].top1 += (top64 * is_first).sum().item<double>();
    first_[i].positions += static_cast<int64_t>(is_first.sum().item<double>());
  }
  examples_ += n;
}

LogitLensResult LogitLensAnalysis::result() const {
  LogitLensResult r;
  r.layers = static_cast<int64_t>(all_.size()) - 1;
  r.examples = examples_;
  auto mean = [](const Sums& s) {
    LensPoint p;
    p.positions = s.positions;
    if (s.positions > 0) {
      const double n = static_cast<double>(s.positions);
      p.probability = s.probability / n;
      p.rank = s.rank / n;
      p.top1 = s.top1 / n;
    }
    return p;
  };
  for (const auto& s : all_) r.all_tokens.push_back(mean(s));
  for (const auto& s : first_) r.first_token.push_back(mean(s));
  return r;
}

// ---- ablations ------------------------------------------------------------------------------

std::vector<AblationCondition> ablation_conditions(int64_t layers, int64_t start_layer,
                                                   const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                   bool each_layer,
                                                   const std::vector<std::string>& encoders) {
  if (layers <= 0) throw ConfigError("ablation: the decoder has no layers");
  std::vector<AblationCondition> out;
  std::set<std::pair<int64_t, int64_t>> seen;
  auto range = [&](const std::string& name, int64_t first, int64_t last) {
    if (first > last || !seen.insert({first, last}).second) return;
    AblationCondition c;
    c.name = name;
    c.first = first;
    c.last = last;
    c.withheld.assign(static_cast<size_t>(layers), false);
    for (int64_t l = first; l <= last; ++l) c.withheld[static_cast<size_t>(l)] = true;
    out.push_back(std::move(c));
  };
  auto span = [](int64_t a, int64_t b) {
    return a == b ? "layer " + std::to_string(a) : "layers " + std::to_string(a) + "-" + std::to_string(b);
  };
  AblationCondition baseline;
  baseline.name = "baseline (audio in every layer)";
  baseline.withheld.assign(static_cast<size_t>(layers), false);
  out.push_back(baseline);
  range("no audio (all layers withheld)", 0, layers - 1);
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t a = i * layers / 4, b = (i + 1) * layers / 4 - 1;
    if (b >= a) range("block " + std::to_string(i + 1) + "/4: " + span(a, b), a, b);
  }
  if (start_layer > 0 && start_layer < layers) {
    range("below start_layer: " + span(0, start_layer - 1), 0, start_layer - 1);
    range("from start_layer: " + span(start_layer, layers - 1), start_layer, layers - 1);
  }
  for (const auto& [first, last] : ranges) {
    if (first < 0 || last < first || last >= layers)
      throw ConfigError("layer range " + std::to_string(first) + "-" + std::to_string(last) +
                        " is out of bounds: the decoder has " + std::to_string(layers) + " layers (0-" +
                        std::to_string(layers - 1) + ")");
    range(span(first, last), first, last);
  }
  if (each_layer)
    for (int64_t l = 0; l < layers; ++l) range(span(l, l), l, l);
  if (encoders.size() >= 2)
    for (size_t i = 0; i < encoders.size(); ++i) {
      AblationCondition c;
      c.name = "without encoder " + std::to_string(i) + " (" + encoders[i] + ")";
      c.withheld.assign(static_cast<size_t>(layers), false);
      c.removed_stream = static_cast<int64_t>(i);
      out.push_back(std::move(c));
    }
  return out;
}

std::string normalize_answer(const std::string& text) {
  std::string out;
  bool space = false;
  for (const unsigned char c : text) {
    if (std::isspace(c) || (c < 128 && std::ispunct(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(static_cast<char>(c < 128 ? std::tolower(c) : c));
  }
  return out;
}

AblationAnalysis::AblationAnalysis(FusionDecoderImpl& decoder, std::vector<AblationCondition> conditions,
                                   models::GenerationOptions generation, models::Detokenizer detokenize)
    : decoder_(decoder), generation_(std::move(generation)), detokenize_(std::move(detokenize)) {
  generation_.sample = false;
  generation_.validate();
  if (!detokenize_) throw ModelError("ablation: a detokenizer is needed to compare answers");
  result_.layers = decoder_.llm->config().num_hidden_layers;
  for (auto& c : conditions) {
    if (static_cast<int64_t>(c.withheld.size()) != result_.layers)
      throw ModelError("ablation: condition '" + c.name + "' covers " + std::to_string(c.withheld.size()) +
                       " layers; the decoder has " + std::to_string(result_.layers));
    AblationPoint p;
    p.condition = std::move(c);
    result_.points.push_back(std::move(p));
  }
}

void AblationAnalysis::add(const std::vector<AnalysisExample>& batch) {
  check_batch(batch);
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::string> references;
  for (const auto& e : batch) {
    const auto answer = std::find(e.is_answer.begin(), e.is_answer.end(), 1) - e.is_answer.begin();
    prompts.emplace_back(e.ids.begin(), e.ids.begin() + answer);
    references.push_back(normalize_answer(e.reference));
  }
  std::vector<const models::EnsembleOutput*> audio;
  for (const auto& e : batch) audio.push_back(&e.audio);
  const models::EnsembleOutput full = stack_audio(audio);
  for (AblationPoint& point : result_.points) {
    const AblationCondition& c = point.condition;
    models::EnsembleOutput without;
    if (c.removed_stream >= 0) {
      std::vector<const models::EnsembleOutput*> parts;
      for (const auto& e : batch) {
        if (static_cast<int64_t>(e.audio_without_stream.size()) <= c.removed_stream)
          throw ModelError("ablation: condition '" + c.name + "' needs the audio encoded without stream " +
                           std::to_string(c.removed_stream));
        parts.push_back(&e.audio_without_stream[static_cast<size_t>(c.removed_stream)]);
      }
      without = stack_audio(parts);
    }
    models::FusionAnalysis analysis;
    analysis.withhold_audio = c.withheld;
    models::GenerationResult r;
    {
      AnalysisScope scope(decoder_, &analysis);
      r = decoder_.generate(prompts, c.removed_stream >= 0 ? without : full, generation_);
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      std::vector<int64_t> tokens = r.tokens[i];
      while (!tokens.empty() &&
             std::find(generation_.stop_token_ids.begin(), generation_.stop_token_ids.end(), tokens.back()) !=
                 generation_.stop_token_ids.end())
        tokens.pop_back();
      const bool correct = normalize_answer(detokenize_(tokens)) == references[i];
      point.correct += correct;
      ++point.examples;
      AblationCount& task = point.by_task[batch[i].task];
      task.correct += correct;
      ++task.examples;
    }
  }
}

}  // namespace pal::analyze
