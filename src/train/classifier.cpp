#include "classifier.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/data/manifest.h"
#include "pal/io/safetensors.h"

namespace pal::train::internal {
namespace fs = std::filesystem;

namespace {

constexpr const char* kWeightsFile = "classifier.safetensors";
constexpr const char* kClassesFile = "classes.json";

void index_classes(AnswerClasses& c) {
  c.lookup.clear();
  for (size_t i = 0; i < c.classes.size(); ++i) c.lookup[c.classes[i]] = static_cast<int64_t>(i);
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
  return s;
}

}  // namespace

AnswerClasses AnswerClasses::from_manifests(const std::vector<data::ManifestSpec>& manifests,
                                            const ClassifyConfig& config) {
  std::map<std::string, std::set<std::string>> answers;  // task -> answers
  for (const auto& m : manifests) {
    data::ManifestReader reader(m.path);
    const fs::path dir = fs::path(m.path).parent_path();
    data::ManifestReader::Line line;
    while (reader.next(line)) {
      data::Example e;
      try {
        e = data::parse_record(line.text, dir, m.path, /*require_audio=*/false);
      } catch (const DataError&) {
        continue;  // the loader reports bad records as it meets them
      }
      if (!e.audio.empty() && m.wants(e.task)) answers[e.task].insert(e.output);
    }
  }
  AnswerClasses c;
  const std::set<std::string> named(config.tasks.begin(), config.tasks.end());
  for (const auto& task : named) {
    const auto it = answers.find(task);
    if (it == answers.end())
      throw ConfigError("classify.tasks: no audio record of the train manifests has the task '" + task + "'");
    if (static_cast<int64_t>(it->second.size()) > config.max_answers)
      throw ConfigError("classify.tasks: the task '" + task + "' has " + std::to_string(it->second.size()) +
                        " distinct answers in the train manifests, more than classify.max_answers (" +
                        std::to_string(config.max_answers) + ")");
  }
  for (const auto& [task, set] : answers) {
    const bool closed =
        named.empty() ? static_cast<int64_t>(set.size()) <= config.max_answers : named.count(task) > 0;
    if (!closed) {
      c.open_tasks.push_back(task.empty() ? "(no task)" : task);
      continue;
    }
    for (const auto& answer : set) c.classes.emplace_back(task, answer);
  }
  if (c.classes.empty())
    throw ConfigError(
        "objective: classify, but no task of the train manifests is closed (at most classify.max_answers = " +
        std::to_string(config.max_answers) + " distinct answers); open tasks: " + join(c.open_tasks));
  index_classes(c);
  return c;
}

std::string AnswerClasses::to_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [task, answer] : classes) j.push_back({{"task", task}, {"answer", answer}});
  return nlohmann::json{{"classes", j}, {"open_tasks", open_tasks}}.dump(1) + "\n";
}

AnswerClasses AnswerClasses::from_json(const std::string& text, const std::string& source) {
  AnswerClasses c;
  try {
    const auto j = nlohmann::json::parse(text);
    for (const auto& e : j.at("classes"))
      c.classes.emplace_back(e.at("task").get<std::string>(), e.at("answer").get<std::string>());
    c.open_tasks = j.at("open_tasks").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw TrainError(source + ": not a class list (" + e.what() + ")");
  }
  index_classes(c);
  return c;
}

int64_t AnswerClasses::index(const std::string& task, const std::string& answer) const {
  const auto it = lookup.find({task, answer});
  return it == lookup.end() ? -1 : it->second;
}

std::vector<std::string> AnswerClasses::tasks() const {
  std::set<std::string> t;
  for (const auto& c : classes) t.insert(c.first);
  return {t.begin(), t.end()};
}

AnswerClassifier::AnswerClassifier(AnswerClasses classes, int64_t width)
    : classes_(std::move(classes)),
      queries_(torch::zeros({kQueries, width}).set_requires_grad(true)),
      head_(torch::nn::LinearOptions(kQueries * width, static_cast<int64_t>(classes_.classes.size()))) {}

AnswerClassifier::Result AnswerClassifier::forward(models::PalModelImpl& model, const data::Batch& batch,
                                                   const c10::Device& device) {
  const int64_t b = static_cast<int64_t>(batch.examples.size());
  const int64_t n = static_cast<int64_t>(classes_.classes.size());
  std::vector<int64_t> targets(static_cast<size_t>(b));
  // The softmax of an example runs over its own task's answers: the question says which
  // task it is, and a clip may serve several tasks.
  at::Tensor other_task = torch::ones({b, n}, torch::kBool);
  auto other = other_task.accessor<bool, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& e = batch.examples[static_cast<size_t>(i)];
    targets[static_cast<size_t>(i)] = e.audio.empty() ? -1 : classes_.index(e.task, e.output);
    for (int64_t k = 0; k < n; ++k) other[i][k] = classes_.classes[static_cast<size_t>(k)].first != e.task;
  }
  const models::EnsembleOutput audio =
      model.encode_ensemble(batch.waveforms.to(device), batch.lengths.to(device));
  // Attention pooling over every valid audio token, of both routes.
  std::vector<at::Tensor> tokens, masks;
  for (const models::AudioTokens* route : {&audio.prefix, &audio.probe}) {
    if (route->empty()) continue;
    tokens.push_back(route->tokens.to(torch::kFloat32));
    masks.push_back(route->mask);
  }
  const at::Tensor x = torch::cat(tokens, 1);     // [B, N, W]
  const at::Tensor valid = torch::cat(masks, 1);  // [B, N]
  const double scale = 1.0 / std::sqrt(static_cast<double>(x.size(2)));
  at::Tensor scores = torch::einsum("bnw,qw->bqn", {x, queries_}) * scale;  // [B, Q, N]
  scores = scores.masked_fill(valid.logical_not().unsqueeze(1), -std::numeric_limits<float>::infinity());
  // A clip without a valid token (never from the loader) pools zeros rather than NaN.
  const at::Tensor weights = torch::softmax(scores, -1).nan_to_num(0.0);
  const at::Tensor pooled = torch::matmul(weights, x).flatten(1);  // [B, Q * W]
  const at::Tensor logits =
      head_->forward(pooled).masked_fill(other_task.to(device), -std::numeric_limits<float>::infinity());
  const at::Tensor target = torch::tensor(targets, torch::kInt64).to(device);
  const at::Tensor keep = target >= 0;
  Result r;
  r.classified = keep.sum().item<int64_t>();
  if (r.classified == 0) {
    r.loss = logits.sum() * 0.0;  // keeps the graph: backward() is a no-op update
    return r;
  }
  const at::Tensor kept_logits = logits.index({keep});
  const at::Tensor kept_target = target.index({keep});
  r.loss = torch::nn::functional::cross_entropy(kept_logits, kept_target);
  const at::Tensor hit = (logits.argmax(-1) == target).cpu();
  const std::vector<std::string> tasks = classes_.tasks();
  r.correct_by_task.assign(tasks.size(), 0);
  r.classified_by_task.assign(tasks.size(), 0);
  for (int64_t i = 0; i < b; ++i) {
    if (targets[static_cast<size_t>(i)] < 0) continue;
    const std::string& task = batch.examples[static_cast<size_t>(i)].task;
    const size_t t = static_cast<size_t>(std::lower_bound(tasks.begin(), tasks.end(), task) - tasks.begin());
    ++r.classified_by_task[t];
    if (hit[i].item<bool>()) ++r.correct_by_task[t], ++r.correct;
  }
  return r;
}

std::vector<NamedParameter> AnswerClassifier::parameters() const {
  return {{"classifier.queries", queries_},
          {"classifier.weight", head_->weight},
          {"classifier.bias", head_->bias}};
}

void AnswerClassifier::to(const c10::Device& device) {
  head_->to(device);
  torch::NoGradGuard no_grad;
  queries_ = queries_.to(device).detach().set_requires_grad(true);
}

void AnswerClassifier::save(const fs::path& folder) const {
  io::NamedTensors tensors;
  for (auto& p : parameters()) tensors.emplace_back(p.name, p.tensor.detach().cpu());
  io::save_safetensors(folder / kWeightsFile, tensors);
  write_file_atomic(folder / kClassesFile, classes_.to_json());
}

void AnswerClassifier::load(const fs::path& folder) {
  const fs::path classes_file = folder / kClassesFile;
  if (!fs::is_regular_file(classes_file))
    throw TrainError(folder.string() + ": the checkpoint has no " + kClassesFile +
                     " (was it written by a stage with another objective?)");
  const AnswerClasses saved = AnswerClasses::from_json(read_file(classes_file), classes_file.string());
  if (saved.classes != classes_.classes)
    throw TrainError(classes_file.string() + ": the checkpoint's " + std::to_string(saved.classes.size()) +
                     " classes are not the " + std::to_string(classes_.classes.size()) +
                     " of this run's train manifests (did the data or classify settings change?)");
  const auto file = io::SafetensorsFile::open(folder / kWeightsFile);
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) {
    const at::Tensor t = file.tensor(p.name);
    if (t.sizes() != p.tensor.sizes())
      throw TrainError((folder / kWeightsFile).string() + ": '" + p.name + "' has shape " +
                       c10::str(t.sizes()) + ", expected " + c10::str(p.tensor.sizes()));
    p.tensor.copy_(t);
  }
}

}  // namespace pal::train::internal
