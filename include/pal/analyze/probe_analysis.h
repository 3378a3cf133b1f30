// How the LLM of a PAL model reads audio: three measurements over batches of
// teacher-forced examples (prompt + reference answer), accumulated as sums so that memory
// stays bounded whatever the number of examples.
//
//   AttentionAnalysis   per layer and head, the share of attention mass that the question
//                       and answer tokens put on audio keys (against text keys), averaged
//                       over examples. Audio keys are, per fusion mode, the audio positions
//                       of the sequence (prefix, delayed from layer k, pal's prefix route)
//                       and the probe keys of probe layers (probe, pal).
//   LogitLensAnalysis   per layer, the hidden state at each answer position decoded through
//                       the final norm and the LM head: probability and rank of the reference
//                       answer token it should predict (teacher-forced).
//   AblationAnalysis    exact-match accuracy of greedy answers against the references
//                       (normalised) when the audio is withheld from ranges of layers
//                       (FusionAnalysis::withhold_audio) or, for ensembles, when one
//                       encoder's stream is removed (EncoderEnsembleImpl::set_removed_streams).
//
// Every example of a batch has audio (its prompt holds the placeholder). The decoder is
// instrumented only during add() (FusionDecoderImpl::set_analysis) and left as it was.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "pal/models/fusion.h"

namespace pal::analyze {

// One teacher-forced example.
struct AnalysisExample {
  std::vector<int64_t> ids;        // prompt (with the audio placeholder), then the answer tokens
  std::vector<uint8_t> is_answer;  // 1 at the answer's tokens (end marker included)
  std::string reference;           // the reference answer text (AblationAnalysis)
  std::string task;                // the manifest's task (AblationAnalysis reports accuracy per task)
  models::EnsembleOutput audio;    // the clip's audio tokens by route: [1, N, hidden], mask [1, N]
  // AblationAnalysis of ensembles: the same clip encoded with encoder i's stream removed,
  // one per encoder (empty: no stream ablation).
  std::vector<models::EnsembleOutput> audio_without_stream;
};

// The batch's audio of one route: each example's tokens padded to the longest and masked.
models::EnsembleOutput stack_audio(const std::vector<const models::EnsembleOutput*>& audio);

// ---- attention to audio -------------------------------------------------------------------

// One query group's numbers, [layers][heads].
struct AttentionShares {
  std::vector<std::vector<double>> share;  // mean attention mass on audio keys, in [0, 1]
  std::vector<std::vector<double>>
      uniform;                    // what uniform attention over the keys each query sees would give
  std::vector<int64_t> examples;  // per layer: examples that have queries of this group
};

struct AttentionResult {
  int64_t layers = 0, heads = 0;
  // question: the prompt's text tokens after the audio placeholder (the question and the
  // template's end of the user turn); answer: the reference answer's tokens.
  AttentionShares question, answer;
  int64_t examples = 0;
};

class AttentionAnalysis {
 public:
  explicit AttentionAnalysis(models::FusionDecoderImpl& decoder);
  void add(const std::vector<AnalysisExample>& batch);
  const AttentionResult& result() const { return result_; }  // means over the examples added so far

 private:
  models::FusionDecoderImpl& decoder_;
  AttentionResult result_;
  std::vector<std::vector<double>> sums_[2][2];  // [group][share / uniform][layer][head]
  std::vector<int64_t> counts_[2];               // [group][layer]
};

// ---- logit lens -----------------------------------------------------------------------------

struct LensPoint {
  double probability = 0;  // mean probability of the reference token
  double rank = 0;         // mean rank (1: greedy decoding would pick it; ties go to the lower id, as argmax)
  double top1 = 0;         // share of positions where the rank is 1
  int64_t positions = 0;   // answer positions averaged over
};

struct LogitLensResult {
  int64_t layers = 0;
  // [layers + 1]: index 0 is the embeddings, index l + 1 the output of layer l (the last
  // one is the model's own prediction).
  std::vector<LensPoint> all_tokens;   // every answer token (end marker included)
  std::vector<LensPoint> first_token;  // the first answer token of each example
  int64_t examples = 0;
};

class LogitLensAnalysis {
 public:
  explicit LogitLensAnalysis(models::FusionDecoderImpl& decoder);
  void add(const std::vector<AnalysisExample>& batch);
  LogitLensResult result() const;

 private:
  struct Sums {
    double probability = 0, rank = 0, top1 = 0;
    int64_t positions = 0;
  };
  models::FusionDecoderImpl& decoder_;
  std::vector<Sums> all_, first_;
  int64_t examples_ = 0;
};

// ---- ablations ------------------------------------------------------------------------------

// One condition: which layers have the audio withheld, or which encoder's stream is removed.
struct AblationCondition {
  std::string name;               // e.g. "layers 4-7", "without encoder 1 (ast)"
  std::vector<bool> withheld;     // per layer; all false: the audio is read everywhere
  int64_t removed_stream = -1;    // >= 0: AnalysisExample::audio_without_stream[i] is used
  int64_t first = -1, last = -1;  // the withheld range (inclusive), -1 when not a range
};

// The standard set for a decoder of `layers` layers that reads audio from `start_layer`:
// none withheld (the baseline), all withheld, the four blocks of layers/4, below and from
// start_layer (when 0 < start_layer < layers), `ranges` ({first, last} inclusive), each
// layer alone when `each_layer`, and each encoder removed when there are 2 or more.
// Throws ConfigError naming a range that is out of bounds.
std::vector<AblationCondition> ablation_conditions(int64_t layers, int64_t start_layer,
                                                   const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                   bool each_layer, const std::vector<std::string>& encoders);

// Lower case, ASCII punctuation to spaces, runs of white space to one, trimmed.
std::string normalize_answer(const std::string& text);

struct AblationCount {
  int64_t correct = 0, examples = 0;
  double accuracy() const {
    return examples > 0 ? static_cast<double>(correct) / static_cast<double>(examples) : 0.0;
  }
};

struct AblationPoint : AblationCount {
  AblationCondition condition;
  std::map<std::string, AblationCount> by_task;  // the same per AnalysisExample::task
};

struct AblationResult {
  std::vector<AblationPoint> points;  // in the conditions' order
  int64_t layers = 0;
};

class AblationAnalysis {
 public:
  // `generation`: greedy options (max_new_tokens, stop tokens); `detokenize` turns the
  // new tokens into text (special tokens dropped).
  AblationAnalysis(models::FusionDecoderImpl& decoder, std::vector<AblationCondition> conditions,
                   models::GenerationOptions generation, models::Detokenizer detokenize);
  void add(const std::vector<AnalysisExample>& batch);
  const AblationResult& result() const { return result_; }

 private:
  models::FusionDecoderImpl& decoder_;
  models::GenerationOptions generation_;
  models::Detokenizer detokenize_;
  AblationResult result_;
};

}  // namespace pal::analyze
