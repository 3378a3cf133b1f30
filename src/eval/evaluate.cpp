#include "pal/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "pal/core/error.h"
#include "pal/data/manifest.h"
#include "pal/eval/metrics.h"

namespace pal::eval {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kMaxInferredClasses = 32;

double nan() {
  return std::numeric_limits<double>::quiet_NaN();
}

// Exact match of `prediction` with any of the item's references.
bool matches_a_reference(const std::string& prediction, const EvalItem& item) {
  return std::any_of(item.references.begin(), item.references.end(),
                     [&](const std::string& ref) { return answers_match(prediction, ref); });
}

double mean(const std::vector<uint8_t>& flags) {
  if (flags.empty()) return nan();
  int64_t sum = 0;
  for (uint8_t f : flags) sum += f;
  return static_cast<double>(sum) / static_cast<double>(flags.size());
}

TaskKind closed_kind(const std::vector<std::string>& classes) {
  return classes.size() > 2 ? TaskKind::classification : TaskKind::closed_qa;
}

// The distinct answers of a task's examples, by normalised form, each as first written;
// sorted by that form. `repeated`: some normalised answer occurs twice.
std::vector<std::string> distinct_answers(const std::vector<const EvalExample*>& examples, bool* repeated) {
  std::map<std::string, std::string> by_normal;
  *repeated = false;
  for (const EvalExample* e : examples) {
    const auto [it, inserted] = by_normal.emplace(normalize_answer(e->answer), e->answer);
    if (!inserted) *repeated = true;
  }
  std::vector<std::string> out;
  for (const auto& entry : by_normal) out.push_back(entry.second);
  return out;
}

json number_or_null(double v) {
  return std::isnan(v) ? json(nullptr) : json(v);
}

std::string escape_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

}  // namespace

const char* task_kind_name(TaskKind kind) {
  switch (kind) {
    case TaskKind::classification: return "classification";
    case TaskKind::closed_qa: return "closed_qa";
    case TaskKind::open: return "open";
  }
  return "open";
}

void EvalOptions::validate() const {
  if (batch_size < 1) throw ConfigError("batch_size: must be >= 1, got " + std::to_string(batch_size));
  if (score_batch_size < 1)
    throw ConfigError("score_batch_size: must be >= 1, got " + std::to_string(score_batch_size));
  generation.validate();
}

TaskSpecs read_task_specs(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw IoError(file.string() + ": cannot read the tasks file");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw DataError(file.string() + ": not JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("tasks") || !j["tasks"].is_object())
    throw DataError(file.string() + ": expected an object with \"tasks\": {name: {closed, classes, kind}}");
  TaskSpecs specs;
  for (const auto& [name, t] : j["tasks"].items()) {
    const std::string where = file.string() + ": tasks." + name;
    if (!t.is_object()) throw DataError(where + ": expected an object");
    TaskSpec spec;
    spec.kind_from = "tasks file";
    if (t.contains("classes")) {
      if (!t["classes"].is_array()) throw DataError(where + ".classes: expected a list of strings");
      for (const auto& c : t["classes"]) {
        if (!c.is_string() || c.get<std::string>().empty())
          throw DataError(where + ".classes: expected non-empty strings, got " + c.dump());
        spec.classes.push_back(c.get<std::string>());
      }
    }
    bool closed = !spec.classes.empty();
    if (t.contains("closed")) {
      if (!t["closed"].is_boolean()) throw DataError(where + ".closed: expected true or false");
      closed = t["closed"].get<bool>();
    }
    spec.kind = closed ? closed_kind(spec.classes) : TaskKind::open;
    if (t.contains("kind")) {
      const std::string kind = t["kind"].is_string() ? t["kind"].get<std::string>() : t["kind"].dump();
      if (kind == "classification")
        spec.kind = TaskKind::classification;
      else if (kind == "closed_qa")
        spec.kind = TaskKind::closed_qa;
      else if (kind == "open")
        spec.kind = TaskKind::open;
      else
        throw DataError(where + ".kind: expected classification, closed_qa or open, got " + kind);
    }
    if (spec.kind == TaskKind::open) spec.classes.clear();
    specs[name] = std::move(spec);
  }
  return specs;
}

EvalPlan plan_evaluation(const fs::path& manifest, const fs::path& tasks_file, int64_t limit) {
  EvalPlan plan;
  plan.manifest = manifest;
  plan.tasks_file = tasks_file;
  if (!fs::is_regular_file(manifest)) throw IoError(manifest.string() + ": no such manifest");
  data::ManifestReader reader(manifest);
  data::ManifestReader::Line line;
  const fs::path dir = manifest.parent_path();
  while ((limit <= 0 || static_cast<int64_t>(plan.examples.size()) < limit) && reader.next(line)) {
    const std::string source = manifest.string() + ":" + std::to_string(line.number);
    try {
      data::Example e = data::parse_record(line.text, dir, source, /*require_audio=*/true);
      EvalExample x;
      x.line = line.number;
      x.task = e.task.empty() ? "default" : e.task;
      x.audio = e.audio;
      x.start = e.start;
      if (e.end >= 0) x.end = e.end;
      x.question = e.instruction;
      x.answer = e.output;
      if (x.question.find_first_not_of(" \t\r\n") == std::string::npos)
        throw DataError("the instruction is empty");
      plan.examples.push_back(std::move(x));
    } catch (const DataError& e) {
      ++plan.skipped_lines;
      plan.warnings.push_back(source + ": skipped: " + e.what());
    }
  }
  if (plan.examples.empty())
    throw DataError(manifest.string() + ": no usable example (" + std::to_string(plan.skipped_lines) +
                    " lines skipped)");

  // Kinds: the tasks file's, else inferred.
  TaskSpecs given;
  if (!tasks_file.empty()) given = read_task_specs(tasks_file);
  std::map<std::string, std::vector<const EvalExample*>> by_task;
  for (const auto& e : plan.examples) by_task[e.task].push_back(&e);
  for (const auto& [task, examples] : by_task) {
    bool repeated = false;
    const std::vector<std::string> answers = distinct_answers(examples, &repeated);
    auto it = given.find(task);
    TaskSpec spec;
    if (it != given.end()) {
      spec = it->second;
      if (spec.kind != TaskKind::open && spec.classes.empty()) spec.classes = answers;
    } else {
      if (!tasks_file.empty())
        plan.warnings.push_back(tasks_file.string() + ": no task '" + task + "'; its kind is inferred");
      spec.kind_from = "inferred";
      const bool closed = answers.size() <= kMaxInferredClasses && repeated;
      spec.kind = closed ? closed_kind(answers) : TaskKind::open;
      if (closed) spec.classes = answers;
    }
    plan.tasks[task] = std::move(spec);
  }

  // Items: a line each; open-task lines with the same audio, window and question merge.
  std::map<std::string, size_t> open_items;
  for (const auto& e : plan.examples) {
    const bool open = plan.tasks.at(e.task).kind == TaskKind::open;
    const std::string key = e.task + '\x1f' + e.audio.string() + '\x1f' + std::to_string(e.start) + '\x1f' +
                            (e.end ? std::to_string(*e.end) : "") + '\x1f' + e.question;
    if (open) {
      auto it = open_items.find(key);
      if (it != open_items.end()) {
        plan.items[it->second].references.push_back(e.answer);
        plan.items[it->second].lines.push_back(e.line);
        continue;
      }
      open_items[key] = plan.items.size();
    }
    plan.items.push_back({e.task, e.audio, e.start, e.end, e.question, {e.answer}, {e.line}});
  }
  return plan;
}

ModelResult evaluate(Pipeline& pipeline, const EvalPlan& plan, const EvalOptions& options,
                     const std::function<void(const EvalProgress&)>& progress) {
  options.validate();
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  ModelResult result;
  result.folder = pipeline.folder().string();
  result.description = pipeline.describe();
  result.items.resize(plan.items.size());
  EvalProgress p;
  p.total = static_cast<int64_t>(plan.items.size());
  const size_t batch = static_cast<size_t>(options.batch_size);
  for (size_t from = 0; from < plan.items.size(); from += batch) {
    const size_t to = std::min(plan.items.size(), from + batch);
    std::vector<Pipeline::Question> questions;
    std::vector<size_t> asked;
    for (size_t i = from; i < to; ++i) {
      const EvalItem& item = plan.items[i];
      try {
        Pipeline::Question q;
        q.audio = pipeline.encode(item.audio, item.start, item.end);
        q.question = item.question;
        questions.push_back(std::move(q));
        asked.push_back(i);
      } catch (const Error& e) {
        result.items[i].error = e.what();
      }
    }
    if (!questions.empty()) {
      std::vector<Answer> answers;
      try {
        answers = pipeline.ask_batch(questions, options.generation);
      } catch (const GenerationError&) {
        // One question that does not fit (e.g. too long for the context): ask one by one.
        answers.assign(questions.size(), Answer{});
        for (size_t j = 0; j < questions.size(); ++j) {
          try {
            answers[j] = pipeline.ask_batch({questions[j]}, options.generation).front();
          } catch (const GenerationError& e) {
            result.items[asked[j]].error = e.what();
          }
        }
      }
      for (size_t j = 0; j < asked.size(); ++j) {
        const size_t i = asked[j];
        const EvalItem& item = plan.items[i];
        ItemResult& r = result.items[i];
        if (!r.error.empty()) continue;
        r.prediction = answers[j].text;
        r.correct = matches_a_reference(r.prediction, item);
        const TaskSpec& spec = plan.tasks.at(item.task);
        if (options.score_classes && spec.kind != TaskKind::open && !spec.classes.empty())
          r.class_scores =
              pipeline.score(questions[j].audio, item.question, spec.classes, options.score_batch_size);
      }
    }
    for (size_t i = from; i < to; ++i) p.failed += !result.items[i].error.empty();
    p.done = static_cast<int64_t>(to);
    p.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (progress) progress(p);
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  compute_metrics(plan, result);
  return result;
}

void compute_metrics(const EvalPlan& plan, ModelResult& result) {
  if (result.items.size() != plan.items.size())
    throw DataError("compute_metrics: " + std::to_string(result.items.size()) + " results for " +
                    std::to_string(plan.items.size()) + " items");
  result.tasks.clear();
  result.failed = 0;
  std::vector<uint8_t> all_correct;
  for (const auto& [task, spec] : plan.tasks) {
    TaskResult t;
    std::vector<uint8_t> correct;
    std::vector<Tokens> hypotheses;
    std::vector<std::vector<Tokens>> references;
    std::vector<std::vector<double>> scores;
    std::vector<int64_t> labels;
    for (size_t i = 0; i < plan.items.size(); ++i) {
      const EvalItem& item = plan.items[i];
      if (item.task != task) continue;
      const ItemResult& r = result.items[i];
      if (!r.error.empty()) {
        ++t.failed;
        continue;
      }
      ++t.n;
      correct.push_back(r.correct);
      if (spec.kind == TaskKind::open) {
        hypotheses.push_back(tokenize_answer(r.prediction));
        references.emplace_back();
        for (const auto& ref : item.references) references.back().push_back(tokenize_answer(ref));
      } else if (r.class_scores.size() == spec.classes.size() && !spec.classes.empty()) {
        scores.push_back(r.class_scores);
        int64_t label = -1;
        for (size_t c = 0; c < spec.classes.size() && label < 0; ++c)
          if (answers_match(spec.classes[c], item.references.front())) label = static_cast<int64_t>(c);
        labels.push_back(label);
      }
    }
    all_correct.insert(all_correct.end(), correct.begin(), correct.end());
    t.metrics.push_back({"accuracy", mean(correct)});
    if (spec.kind == TaskKind::open) {
      t.metrics.push_back({"BLEU-4", hypotheses.empty() ? nan() : corpus_bleu(hypotheses, references).score});
      t.metrics.push_back({"CIDEr-D", hypotheses.empty() ? nan() : cider_d(hypotheses, references).score});
    } else if (!scores.empty() && static_cast<int64_t>(scores.size()) == t.n) {
      std::vector<double> per_class;
      t.metrics.push_back({"mAP", mean_average_precision(scores, labels, &per_class)});
      for (size_t c = 0; c < per_class.size(); ++c) t.class_ap.push_back({spec.classes[c], per_class[c]});
    }
    result.failed += t.failed;
    result.tasks[task] = std::move(t);
  }
  result.all = TaskResult{};
  result.all.n = static_cast<int64_t>(all_correct.size());
  result.all.failed = result.failed;
  result.all.metrics.push_back({"accuracy", mean(all_correct)});
}

ModelResult majority_baseline(const EvalPlan& plan, const fs::path& train_manifest,
                              std::vector<std::string>* warnings) {
  if (!fs::is_regular_file(train_manifest)) throw IoError(train_manifest.string() + ": no such manifest");
  struct Count {
    int64_t n = 0, first = 0;  // occurrences; order of the first one
    std::string spelling;      // as first written
  };
  std::map<std::string, std::map<std::string, Count>> counts;  // task -> normalised answer -> count
  data::ManifestReader reader(train_manifest);
  data::ManifestReader::Line line;
  int64_t order = 0, skipped = 0;
  while (reader.next(line)) {
    if (line.text.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const data::Example e = data::parse_record(line.text, train_manifest.parent_path(),
                                                 train_manifest.string() + ":" + std::to_string(line.number),
                                                 /*require_audio=*/false);
      Count& c = counts[e.task.empty() ? "default" : e.task][normalize_answer(e.output)];
      if (c.n++ == 0) {
        c.first = order++;
        c.spelling = e.output;
      }
    } catch (const DataError&) {
      ++skipped;
    }
  }
  if (skipped > 0 && warnings)
    warnings->push_back(train_manifest.string() + ": " + std::to_string(skipped) +
                        " lines without a usable answer, not counted");
  std::map<std::string, std::string> answer;  // task -> its most frequent answer
  std::string listed;
  for (const auto& entry : plan.tasks) {
    const std::string& task = entry.first;
    auto it = counts.find(task);
    if (it == counts.end()) {
      if (warnings)
        warnings->push_back(train_manifest.string() + ": no answer for task '" + task + "'; answered \"\"");
      answer[task] = "";
      continue;
    }
    const Count* best = nullptr;
    for (const auto& candidate : it->second) {
      const Count& c = candidate.second;
      if (!best || c.n > best->n || (c.n == best->n && c.first < best->first)) best = &c;
    }
    answer[task] = best->spelling;
    listed += (listed.empty() ? "" : ", ") + task + " '" + best->spelling + "'";
  }
  ModelResult result;
  result.name = "majority";
  result.folder = train_manifest.string();
  result.description = "the most frequent answer per task in " + train_manifest.string() + ": " + listed;
  result.items.resize(plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const EvalItem& item = plan.items[i];
    ItemResult& r = result.items[i];
    r.prediction = answer.at(item.task);
    r.correct = !r.prediction.empty() && matches_a_reference(r.prediction, item);
  }
  compute_metrics(plan, result);
  return result;
}

std::string results_json(const EvalPlan& plan, const std::vector<ModelResult>& results) {
  json j;
  j["manifest"] = plan.manifest.string();
  j["tasks_file"] = plan.tasks_file.empty() ? json(nullptr) : json(plan.tasks_file.string());
  j["examples"] = plan.examples.size();
  j["items"] = plan.items.size();
  j["skipped_lines"] = plan.skipped_lines;
  j["normalization"] =
      "lower case, ASCII punctuation removed, whitespace collapsed and trimmed (exact match, BLEU-4 and "
      "CIDEr-D tokens)";
  json tasks = json::object();
  for (const auto& [name, spec] : plan.tasks) {
    int64_t items = 0;
    for (const auto& item : plan.items) items += item.task == name;
    tasks[name] = {{"kind", task_kind_name(spec.kind)}, {"kind_from", spec.kind_from}, {"items", items}};
    if (spec.kind != TaskKind::open) tasks[name]["classes"] = spec.classes;
  }
  j["tasks"] = tasks;
  auto task_json = [](const TaskResult& t) {
    json metrics = json::object();
    for (const auto& m : t.metrics) metrics[m.name] = number_or_null(m.value);
    json out = {{"n", t.n}, {"failed", t.failed}, {"metrics", metrics}};
    if (!t.class_ap.empty()) {
      json ap = json::object();
      for (const auto& m : t.class_ap) ap[m.name] = number_or_null(m.value);
      out["class_ap"] = ap;
    }
    return out;
  };
  json models = json::array();
  for (const auto& r : results) {
    json m = {{"name", r.name},       {"folder", r.folder}, {"model", r.description},
              {"seconds", r.seconds}, {"failed", r.failed}, {"all", task_json(r.all)}};
    json per_task = json::object();
    for (const auto& [name, t] : r.tasks) per_task[name] = task_json(t);
    m["tasks"] = per_task;
    models.push_back(m);
  }
  j["models"] = models;
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string markdown_table(const EvalPlan& plan, const std::vector<ModelResult>& results) {
  std::ostringstream out;
  out << "| task | kind | n | metric |";
  for (const auto& r : results) out << " " << escape_cell(r.name) << " |";
  out << "\n| --- | --- | ---: | --- |";
  for (size_t i = 0; i < results.size(); ++i) out << " ---: |";
  out << "\n";
  auto row = [&](const std::string& task, const std::string& kind, int64_t n, const std::string& metric,
                 const std::function<const TaskResult*(const ModelResult&)>& pick) {
    out << "| " << escape_cell(task) << " | " << kind << " | " << n << " | " << metric << " |";
    for (const auto& r : results) {
      const TaskResult* t = pick(r);
      double v = nan();
      if (t)
        for (const auto& m : t->metrics)
          if (m.name == metric) v = m.value;
      out << " " << format_value(v) << " |";
    }
    out << "\n";
  };
  for (const auto& [name, spec] : plan.tasks) {
    int64_t n = 0;
    for (const auto& item : plan.items) n += item.task == name;
    std::vector<std::string> metrics = {"accuracy"};
    if (spec.kind == TaskKind::open) {
      metrics.push_back("BLEU-4");
      metrics.push_back("CIDEr-D");
    } else {
      for (const auto& r : results) {
        auto it = r.tasks.find(name);
        if (it != r.tasks.end() && std::any_of(it->second.metrics.begin(), it->second.metrics.end(),
                                               [](const Metric& m) { return m.name == "mAP"; })) {
          metrics.push_back("mAP");
          break;
        }
      }
    }
    const std::string kind =
        std::string(task_kind_name(spec.kind)) + (spec.kind_from == "inferred" ? "*" : "");
    for (const auto& metric : metrics)
      row(name, kind, n, metric, [&](const ModelResult& r) -> const TaskResult* {
        auto it = r.tasks.find(name);
        return it == r.tasks.end() ? nullptr : &it->second;
      });
  }
  row("all", "", static_cast<int64_t>(plan.items.size()), "accuracy",
      [](const ModelResult& r) { return &r.all; });
  out << "\n";
  bool inferred = false;
  for (const auto& entry : plan.tasks) inferred |= entry.second.kind_from == "inferred";
  if (inferred) out << "\\* kind inferred from the manifest's answers.\n";
  for (const auto& r : results)
    if (r.failed > 0)
      out << escape_cell(r.name)
          << ": items that could not be evaluated (left out of the metrics): " << r.failed << ".\n";
  if (plan.skipped_lines > 0) out << "Manifest lines skipped: " << plan.skipped_lines << ".\n";
  out << "Accuracy: exact match after normalisation; mAP: classes ranked by answer log-likelihood; "
         "BLEU-4: corpus-level, no smoothing (0..1); CIDEr-D: coco-caption's, sigma 6, x10.\n";
  return out.str();
}

std::string predictions_jsonl(const EvalPlan& plan, const std::vector<ModelResult>& results) {
  std::string out;
  for (const auto& r : results)
    for (size_t i = 0; i < plan.items.size() && i < r.items.size(); ++i) {
      const EvalItem& item = plan.items[i];
      const ItemResult& x = r.items[i];
      json j = {{"model", r.name},
                {"task", item.task},
                {"lines", item.lines},
                {"audio", item.audio.string()},
                {"question", item.question},
                {"references", item.references},
                {"prediction", x.prediction},
                {"correct", x.correct}};
      if (!x.class_scores.empty()) {
        const auto& classes = plan.tasks.at(item.task).classes;
        json scores = json::object();
        for (size_t c = 0; c < classes.size() && c < x.class_scores.size(); ++c)
          scores[classes[c]] = number_or_null(x.class_scores[c]);
        j["scores"] = scores;
      }
      if (!x.error.empty()) j["error"] = x.error;
      out += j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    }
  return out;
}

}  // namespace pal::eval
