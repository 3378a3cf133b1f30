// The `classify` objective of a training stage (pal/train/stage_config.h): a linear head
// over the ensemble's output tokens pooled by a few learned attention queries, one class
// per (task, answer) of the closed tasks in the train manifests, with a softmax over the
// example's own task's answers. The queries start at zero, where each pools the plain
// mean over the valid tokens; as they learn, they can single out the early or the late
// part of a clip (the tokens carry their encoder's position embeddings), which a mean
// cannot: "which tone is louder, the first or the second?". Internal to the trainer.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pal/data/loader.h"
#include "pal/models/pal_model.h"
#include "pal/train/optimizer.h"
#include "pal/train/stage_config.h"

namespace pal::train::internal {

// The classes: closed tasks' answers, in a stable order (task, then answer).
struct AnswerClasses {
  std::vector<std::pair<std::string, std::string>> classes;  // (task, answer)
  std::vector<std::string> open_tasks;                       // skipped: too many answers (or not named)

  // From the train manifests. Throws ConfigError when no task is closed, or when
  // classify.tasks names a task that has no record or too many answers.
  static AnswerClasses from_manifests(const std::vector<data::ManifestSpec>& manifests,
                                      const ClassifyConfig& config);
  // classes.json of a checkpoint, and back (throws TrainError naming the file).
  std::string to_json() const;
  static AnswerClasses from_json(const std::string& text, const std::string& source);

  // The class of an example; -1 when its task is open or the answer was never seen in train.
  int64_t index(const std::string& task, const std::string& answer) const;
  std::vector<std::string> tasks() const;                         // the closed tasks, sorted
  std::map<std::pair<std::string, std::string>, int64_t> lookup;  // filled by from_*()
};

class AnswerClassifier {
 public:
  static constexpr int64_t kQueries = 4;
  AnswerClassifier(AnswerClasses classes, int64_t width);

  struct Result {
    at::Tensor loss;         // mean cross-entropy over the batch's classified examples (0 when none)
    int64_t correct = 0;     // argmax == target
    int64_t classified = 0;  // examples with a class
    std::vector<int64_t> correct_by_task, classified_by_task;  // indexed as classes().tasks()
  };
  Result forward(models::PalModelImpl& model, const data::Batch& batch, const c10::Device& device);

  // "classifier.queries", "classifier.weight", "classifier.bias"
  std::vector<NamedParameter> parameters() const;
  void to(const c10::Device& device);
  // classifier.safetensors + classes.json into a checkpoint folder; load() checks that the
  // folder's classes are this run's.
  void save(const std::filesystem::path& folder) const;
  void load(const std::filesystem::path& folder);

  const AnswerClasses& classes() const { return classes_; }

 private:
  AnswerClasses classes_;
  at::Tensor queries_;  // [kQueries, width]
  torch::nn::Linear head_{nullptr};
};

}  // namespace pal::train::internal
