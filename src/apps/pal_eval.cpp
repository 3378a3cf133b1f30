// pal-eval: score trained PAL models on a test manifest, per task, side by side.
//
//   pal-eval --model runs/a/final --model runs/b/final --manifest data/demo/test.jsonl
//            --tasks data/demo/stats.json --json eval.json --markdown eval.md
//   pal-eval --majority data/demo/train.jsonl --manifest data/demo/test.jsonl ...   # chance alone
//
// Metrics (pal/eval/evaluate.h): accuracy (exact match) for every task, mAP for closed
// tasks, BLEU-4 and CIDEr-D for open ones. The Markdown table (on stdout, and in the
// --markdown file) has a row per task x metric and a column per model; with --majority a
// first column "majority": chance, each task answered with its most frequent training answer.
//
// Exit codes: 0 success; 1 bad input (a model folder that does not load, a manifest or
// tasks file that cannot be read; the message names it); 2 bad usage; 3 finished, but
// some items could not be evaluated (unreadable audio; see --predictions).
#include <unistd.h>

#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/eval/evaluate.h"
#include "pal/pipeline.h"

namespace {

struct Args {
  std::vector<std::string> models, names;
  std::string manifest, tasks, json, markdown, predictions, majority;
  int64_t limit = 0;
  std::string device = "cpu", dtype, log_level = "warn";
  int threads = 0;
  int64_t progress_every = 0;
  bool no_map = false;
  pal::eval::EvalOptions eval;
};

std::string duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s / 60 % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%llds", s);
  return buf;
}

// A line per `every` items, or one line redrawn in place on a terminal.
class ProgressLine {
 public:
  ProgressLine(std::string name, int64_t every) : name_(std::move(name)), every_(every), tty_(isatty(2)) {}
  void operator()(const pal::eval::EvalProgress& p) {
    const double rate = p.seconds > 0 ? static_cast<double>(p.done) / p.seconds : 0;
    const double eta = rate > 0 ? static_cast<double>(p.total - p.done) / rate : 0;
    char line[256];
    std::snprintf(line, sizeof line, "pal-eval: [%s] %lld/%lld items, %.2f items/s, %s, ETA %s%s",
                  name_.c_str(), static_cast<long long>(p.done), static_cast<long long>(p.total), rate,
                  duration(p.seconds).c_str(), duration(eta).c_str(),
                  p.failed ? (", " + std::to_string(p.failed) + " failed").c_str() : "");
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line);
      if (p.done == p.total) std::fprintf(stderr, "\n");
    } else if (p.done == p.total || p.done >= next_) {
      std::fprintf(stderr, "%s\n", line);
      while (next_ <= p.done) next_ += every_;
    }
  }

 private:
  std::string name_;
  int64_t every_;
  bool tty_;
  int64_t next_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pal-eval: per-task accuracy, mAP, BLEU-4 and CIDEr-D of PAL models on a test manifest"};
  app.footer(
      "Exit codes: 0 success, 1 bad input (model folder, manifest, tasks file), 2 bad usage, 3 some items "
      "could not be evaluated (unreadable audio).");
  Args a;
  app.add_option("--model", a.models, "model folder (model.yaml + model.safetensors); repeat to compare");
  app.add_option("--majority", a.majority,
                 "training manifest: add a first column 'majority' (chance), every task answered with its "
                 "most frequent answer there");
  app.add_option("--name", a.names, "a column label per --model (default: the folder as given)");
  app.add_option("--manifest", a.manifest, "test JSONL: {audio, instruction, output, task} lines")
      ->required();
  app.add_option("--tasks", a.tasks, "task kinds and classes (stats.json form); default: inferred");
  app.add_option("--json", a.json, "write every result as JSON here");
  app.add_option("--markdown", a.markdown, "write the Markdown table here (default: stdout)");
  app.add_option("--predictions", a.predictions, "write each model's answer to each item as JSONL here");
  app.add_option("--limit", a.limit, "evaluate the first N examples only (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", a.eval.batch_size, "questions per batched generation")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-new-tokens", a.eval.generation.max_new_tokens, "most tokens per answer (default 64)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-map", a.no_map, "skip class scoring (mAP) for closed tasks");
  app.add_option("--device", a.device, "cpu, cuda or cuda:N");
  app.add_option("--dtype", a.dtype, "weights and activations (default: the model's)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  app.add_option("--threads", a.threads, "LibTorch intra-op threads (0: all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--progress-every", a.progress_every,
                 "without a terminal: a progress line every N items (default: every 10%)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", a.log_level, "trace, debug, info, warn, error or off");
  a.eval.generation.max_new_tokens = 64;
  try {
    app.parse(argc, argv);
    if (a.models.empty() && a.majority.empty())
      throw CLI::ValidationError("--model", "give a --model to evaluate (or --majority for the chance column)");
    if (!a.names.empty() && a.names.size() != a.models.size())
      throw CLI::ValidationError("--name", "give one --name per --model (" + std::to_string(a.models.size()) +
                                               " models, " + std::to_string(a.names.size()) + " names)");
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  a.eval.score_classes = !a.no_map;

  try {
    pal::set_log_level(pal::parse_log_level(a.log_level));
    pal::PipelineOptions options;
    try {
      options.device = c10::Device(a.device);
    } catch (const c10::Error&) {
      std::fprintf(stderr, "pal-eval: --device: '%s' is not a device (cpu, cuda, cuda:N)\n",
                   a.device.c_str());
      return 2;
    }
    if (!a.dtype.empty())
      options.dtype = a.dtype == "float32"    ? pal::models::ModelDtype::float32
                      : a.dtype == "bfloat16" ? pal::models::ModelDtype::bfloat16
                                              : pal::models::ModelDtype::float16;
    options.threads = a.threads;
    a.eval.validate();
    // The output folders are made (or found unwritable) now, not after the evaluation.
    for (const std::string* file : {&a.json, &a.predictions, &a.markdown}) {
      if (file->empty()) continue;
      const std::filesystem::path parent = std::filesystem::path(*file).parent_path();
      std::error_code ec;
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
      if (ec || (!parent.empty() && !std::filesystem::is_directory(parent)))
        throw pal::IoError("cannot make the folder '" + parent.string() + "' for '" + *file +
                           "': " + (ec ? ec.message() : "not a folder"));
    }

    const pal::eval::EvalPlan plan = pal::eval::plan_evaluation(a.manifest, a.tasks, a.limit);
    for (const auto& w : plan.warnings) std::fprintf(stderr, "pal-eval: warning: %s\n", w.c_str());
    std::string kinds;
    for (const auto& [name, spec] : plan.tasks)
      kinds += (kinds.empty() ? "" : ", ") + name + " " + pal::eval::task_kind_name(spec.kind) +
               (spec.kind_from == "inferred" ? " (inferred)" : "");
    std::fprintf(stderr, "pal-eval: %zu examples (%zu items), %lld lines skipped; tasks: %s\n",
                 plan.examples.size(), plan.items.size(), static_cast<long long>(plan.skipped_lines),
                 kinds.c_str());

    std::vector<pal::eval::ModelResult> results;
    if (!a.majority.empty()) {
      std::vector<std::string> warnings;
      results.push_back(pal::eval::majority_baseline(plan, a.majority, &warnings));
      for (const auto& w : warnings) std::fprintf(stderr, "pal-eval: warning: %s\n", w.c_str());
      std::fprintf(stderr, "pal-eval: [majority] %s\n", results.back().description.c_str());
    }
    for (size_t m = 0; m < a.models.size(); ++m) {
      const std::string name = a.names.empty() ? a.models[m] : a.names[m];
      pal::Pipeline pipeline = [&] {
        try {
          return pal::Pipeline::load(a.models[m], options);
        } catch (const pal::Error& e) {
          throw pal::IoError("cannot load the model folder " + a.models[m] + ": " + e.what());
        }
      }();
      std::fprintf(stderr, "pal-eval: [%s] %s\n", name.c_str(), pipeline.describe().c_str());
      const int64_t total = static_cast<int64_t>(plan.items.size());
      ProgressLine progress(name, a.progress_every > 0 ? a.progress_every : std::max<int64_t>(1, total / 10));
      pal::eval::ModelResult r = pal::eval::evaluate(pipeline, plan, a.eval, std::ref(progress));
      r.name = name;
      results.push_back(std::move(r));
    }

    const std::string table = pal::eval::markdown_table(plan, results);
    if (!a.json.empty()) pal::write_file_atomic(a.json, pal::eval::results_json(plan, results));
    if (!a.predictions.empty())
      pal::write_file_atomic(a.predictions, pal::eval::predictions_jsonl(plan, results));
    if (!a.markdown.empty()) pal::write_file_atomic(a.markdown, table);
    std::cout << table << std::flush;
    for (const char* what : {"json", "predictions", "markdown"}) {
      const std::string& file = what[0] == 'j' ? a.json : what[0] == 'p' ? a.predictions : a.markdown;
      if (!file.empty()) std::fprintf(stderr, "pal-eval: wrote %s\n", file.c_str());
    }
    int64_t failed = 0;
    for (const auto& r : results) failed += r.failed;
    if (failed > 0) {
      std::fprintf(stderr,
                   "pal-eval: items that could not be evaluated: %lld (see \"error\" in --predictions)\n",
                   static_cast<long long>(failed));
      return 3;
    }
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-eval: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
