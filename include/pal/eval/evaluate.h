// Evaluation of a model on a test manifest, per task, as pal-eval runs it:
//
//   eval::EvalPlan plan = eval::plan_evaluation("data/demo/test.jsonl", "data/demo/stats.json");
//   pal::Pipeline pipeline = pal::Pipeline::load("runs/instruct/final");
//   eval::ModelResult r = eval::evaluate(pipeline, plan, {});
//   std::cout << eval::markdown_table(plan, {r});
//
// Manifest lines: {"audio": "clips/x.wav", "instruction": "...", "output": "...", "task":
// "digit"} ("audio_id" for "audio", "question" for "instruction", "answer" for "output";
// optional "start"/"end" seconds; audio relative to the manifest; no "task": "default").
//
// Task kinds and their metrics (every answer is greedy unless the options sample):
//   classification  closed, > 2 classes   accuracy (exact match), mAP over the classes
//   closed_qa       closed, <= 2 classes  accuracy (exact match), mAP
//   open            captions, ...         accuracy (exact match with any reference), BLEU-4, CIDEr-D
// Exact match compares normalize_answer() forms (pal/eval/metrics.h). mAP ranks the test
// examples for each class by Pipeline::score of the class label as the answer (sum of
// token log-probabilities; per class every example scores the same tokens, so length
// normalisation would not change the ranking), AP per class, mean over the classes with
// positives. Open-task lines sharing audio, window and question are one item whose
// outputs are its references.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pal/pipeline.h"

namespace pal::eval {

enum class TaskKind { classification, closed_qa, open };
const char* task_kind_name(TaskKind kind);  // "classification", "closed_qa", "open"

struct TaskSpec {
  TaskKind kind = TaskKind::open;
  std::vector<std::string> classes;  // closed tasks: the labels scored for mAP
  std::string kind_from;             // "tasks file" or "inferred" (from the manifest's answers)
};
using TaskSpecs = std::map<std::string, TaskSpec>;

// One manifest line.
struct EvalExample {
  int64_t line = 0;  // 1-based
  std::string task;
  std::filesystem::path audio;  // resolved against the manifest's folder
  double start = 0;
  std::optional<double> end;
  std::string question;
  std::string answer;  // the reference
};

// One question the model answers: a line, or the open-task lines it stands for.
struct EvalItem {
  std::string task;
  std::filesystem::path audio;
  double start = 0;
  std::optional<double> end;
  std::string question;
  std::vector<std::string> references;  // one per line
  std::vector<int64_t> lines;
};

struct EvalPlan {
  std::filesystem::path manifest, tasks_file;  // tasks_file empty: kinds inferred
  std::vector<EvalExample> examples;
  int64_t skipped_lines = 0;          // lines that are not usable examples (warned)
  std::vector<std::string> warnings;  // "manifest:line: why", and tasks the file does not name
  TaskSpecs tasks;                    // every task of the examples
  std::vector<EvalItem> items;
};

// Reads the first `limit` usable lines of `manifest` (0: all); a line that is not a JSON
// object with audio, question and output is skipped with a warning naming manifest:line.
// `tasks_file` (stats.json's form, {"tasks": {name: {"closed": bool, "classes": [...],
// "kind": "classification" | "closed_qa" | "open"}}}) gives the kinds; a task it does not
// name, and every task without it, is inferred: closed when its distinct normalised
// answers number <= 32 and some repeat (classes: those answers), else open. A closed task
// without classes takes them from the manifest. Throws IoError for files that cannot be
// read, DataError naming the file and key for a malformed tasks file, and DataError when
// no line is usable.
EvalPlan plan_evaluation(const std::filesystem::path& manifest, const std::filesystem::path& tasks_file = {},
                         int64_t limit = 0);
TaskSpecs read_task_specs(const std::filesystem::path& tasks_file);

struct EvalOptions {
  int64_t batch_size = 8;         // questions per batched generation (>= 1)
  GenerationOptions generation;   // greedy unless sample; max_new_tokens per answer
  bool score_classes = true;      // closed tasks: score every class (mAP); false: accuracy only
  int64_t score_batch_size = 32;  // candidates per scoring forward

  void validate() const;  // throws ConfigError naming the field
};

struct ItemResult {
  std::string prediction;            // the generated answer
  bool correct = false;              // exact match with a reference
  std::vector<double> class_scores;  // closed tasks: log-likelihood of each TaskSpec::classes entry
  std::string error;                 // non-empty: the item could not be evaluated (e.g. its audio)
};

struct Metric {
  std::string name;  // accuracy, mAP, BLEU-4, CIDEr-D
  double value = 0;  // NaN when undefined (e.g. mAP without positives)
};

struct TaskResult {
  int64_t n = 0;       // items evaluated
  int64_t failed = 0;  // items with an error
  std::vector<Metric> metrics;
  std::vector<Metric> class_ap;  // with mAP: each class's average precision (NaN: no positives)
};

struct ModelResult {
  std::string name;         // the column's label
  std::string folder;       // the model folder
  std::string description;  // Pipeline::describe()
  std::map<std::string, TaskResult> tasks;
  TaskResult all;                 // accuracy over every item
  std::vector<ItemResult> items;  // by EvalPlan::items
  double seconds = 0;
  int64_t failed = 0;
};

struct EvalProgress {
  int64_t done = 0, total = 0, failed = 0;
  double seconds = 0;
};

// Answers (and scores) every item of `plan`; an item whose audio cannot be read gets an
// error and counts as failed, outside the metrics. `progress` is called after each batch.
ModelResult evaluate(Pipeline& pipeline, const EvalPlan& plan, const EvalOptions& options,
                     const std::function<void(const EvalProgress&)>& progress = {});
// The metrics of `items` (by plan.items): what evaluate() fills in.
void compute_metrics(const EvalPlan& plan, ModelResult& result);

// The chance column: every item answered with its task's most frequent answer in
// `train_manifest` (answers counted after normalize_answer(); a tie goes to the answer met
// first; given in its first spelling), scored as evaluate() scores a model, without mAP (a
// constant answer ranks nothing). This is what a model that ignores the audio and the
// question's details reaches, for the open tasks' BLEU-4 and CIDEr-D too. A task of `plan`
// without an answer in `train_manifest` is answered "" and named in `warnings`; so are the
// training manifest's unusable lines. description lists the answers. Throws IoError when
// `train_manifest` cannot be read.
ModelResult majority_baseline(const EvalPlan& plan, const std::filesystem::path& train_manifest,
                              std::vector<std::string>* warnings = nullptr);

// Reports. JSON: the plan (manifest, kinds, counts) and per model per task n and metrics
// (NaN as null). Markdown: one row per task x metric, one column per model.
std::string results_json(const EvalPlan& plan, const std::vector<ModelResult>& results);
std::string markdown_table(const EvalPlan& plan, const std::vector<ModelResult>& results);
// One JSON line per model per item: model, task, lines, audio, question, references,
// prediction, correct, scores ({class: log-likelihood}), error.
std::string predictions_jsonl(const EvalPlan& plan, const std::vector<ModelResult>& results);

}  // namespace pal::eval
