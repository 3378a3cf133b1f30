// The evaluation loop on a tiny random model (tests/infer/infer_test_util.h): candidate
// scores against a manual teacher-forced forward, manifest planning (kinds, skipped lines,
// --limit, open-task references), metrics and reports; then the pal-eval binary (E2E).
#include "pal/eval/evaluate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../infer/infer_test_util.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/eval/metrics.h"
#include "pal/text/prompt.h"

namespace pal {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

PipelineOptions two_threads() {
  PipelineOptions o;
  o.threads = 2;
  return o;
}

// log p(answer | audio, question) by one unbatched forward with labels: the mean
// cross-entropy over the answer's tokens times their count.
double manual_log_likelihood(Pipeline& pipeline, const Pipeline::Audio& clip, const std::string& question,
                             const std::string& answer) {
  models::PalModelImpl& model = pipeline.model();
  const text::PromptBuilder::Example ex = model.prompts()->example(question, answer, !clip.empty());
  const int64_t T = static_cast<int64_t>(ex.ids.size());
  torch::Tensor ids = torch::tensor(ex.ids).unsqueeze(0);
  torch::Tensor labels = torch::tensor(std::vector<int64_t>(ex.is_answer.begin(), ex.is_answer.end()))
                             .to(torch::kBool)
                             .unsqueeze(0);
  c10::InferenceMode inference;
  models::EnsembleOutput audio;
  if (!clip.empty()) audio = clip.encoded().tokens;
  models::FusionOutput out = model.decoder->forward(ids, torch::ones({1, T}, torch::kBool), audio, labels);
  return -out.loss.item<double>() * static_cast<double>(labels.sum().item<int64_t>());
}

TEST(PipelineScore, EqualsTheLogLikelihoodOfAManualForward) {
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  const Pipeline::Audio clip = pipeline.encode(test::speech_clip());
  const std::vector<std::string> candidates = {"seven", "kick drum", "a dog barks in the background", "no"};
  const std::vector<double> batched = pipeline.score(clip, "What is it?", candidates);
  const std::vector<double> chunked = pipeline.score(clip, "What is it?", candidates, /*batch_size=*/3);
  ASSERT_EQ(batched.size(), candidates.size());
  double total = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    SCOPED_TRACE(candidates[i]);
    const double manual = manual_log_likelihood(pipeline, clip, "What is it?", candidates[i]);
    EXPECT_LT(manual, 0);
    EXPECT_NEAR(batched[i], manual, 1e-4 * std::abs(manual));
    EXPECT_NEAR(chunked[i], batched[i], 1e-4 * std::abs(manual));
    total += std::exp(batched[i]);
  }
  EXPECT_LE(total, 1.0);  // probabilities of distinct answers
  // Without audio, and the errors.
  const double text_only = pipeline.score({}, "What is it?", {"seven"}).front();
  EXPECT_NEAR(text_only, manual_log_likelihood(pipeline, {}, "What is it?", "seven"),
              1e-4 * std::abs(text_only));
  EXPECT_TRUE(pipeline.score(clip, "What is it?", {}).empty());
  EXPECT_THROW(pipeline.score(clip, " ", {"a"}), GenerationError);
  EXPECT_THROW(pipeline.score(clip, "What?", {""}), GenerationError);
}

TEST(PipelineScore, IsTheSameOnEveryFusionMode) {
  for (const std::string mode : {"prefix", "delayed", "pal"}) {
    SCOPED_TRACE(mode);
    Pipeline pipeline = Pipeline::load(test::tiny_model(mode), two_threads());
    const Pipeline::Audio clip = pipeline.encode(test::speech_clip());
    const std::vector<double> s = pipeline.score(clip, "Which digit?", {"one", "twenty two"});
    for (size_t i = 0; i < s.size(); ++i) {
      const double manual = manual_log_likelihood(pipeline, clip, "Which digit?", i ? "twenty two" : "one");
      EXPECT_NEAR(s[i], manual, 1e-4 * std::abs(manual));
    }
  }
}

// A manifest in `dir` with clips: digit (closed, 3 classes), yes/no (closed QA) and
// caption (open, one clip with two reference lines), plus bad lines.
fs::path write_manifest(const fs::path& dir) {
  fs::create_directories(dir / "clips");
  for (int i = 0; i < 3; ++i)
    test::write_clip(dir / "clips" / ("c" + std::to_string(i) + ".wav"), 0.5, 300 + 200 * i);
  const std::string lines =
      R"({"audio": "clips/c0.wav", "instruction": "Which digit?", "output": "one", "task": "digit"}
{"audio": "clips/c1.wav", "instruction": "Which digit?", "output": "two", "task": "digit"}
not json
{"audio": "clips/c2.wav", "instruction": "Which digit?", "output": "Three.", "task": "digit"}
{"audio": "clips/c0.wav", "instruction": "Is it loud?", "output": "yes", "task": "loud"}

{"audio": "clips/c1.wav", "instruction": "Is it loud?", "output": "no", "task": "loud"}
{"audio": "clips/c2.wav", "instruction": "Is it loud?", "output": "yes", "task": "loud"}
{"audio": "clips/c0.wav", "instruction": "Caption it.", "output": "a low tone", "task": "caption"}
{"audio": "clips/c0.wav", "instruction": "Caption it.", "output": "a tone plays", "task": "caption"}
{"audio": "clips/c1.wav", "instruction": "Caption it.", "task": "caption"}
{"audio": "clips/c1.wav", "instruction": "Caption it.", "output": "a middle tone", "task": "caption"}
)";
  write_file_atomic(dir / "test.jsonl", lines);
  return dir / "test.jsonl";
}

TEST(EvaluatePlan, InfersKindsSkipsBadLinesAndMergesOpenReferences) {
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path());
  const eval::EvalPlan plan = eval::plan_evaluation(manifest);
  EXPECT_EQ(plan.examples.size(), 9u);
  EXPECT_EQ(plan.skipped_lines, 2);  // "not json" and the caption without output
  ASSERT_EQ(plan.warnings.size(), 2u);
  EXPECT_NE(plan.warnings[0].find("test.jsonl:3"), std::string::npos) << plan.warnings[0];
  EXPECT_NE(plan.warnings[1].find("test.jsonl:11"), std::string::npos) << plan.warnings[1];
  // digit: 3 distinct answers, none repeated -> open when inferred; loud: repeated -> closed QA.
  EXPECT_EQ(plan.tasks.at("digit").kind, eval::TaskKind::open);
  EXPECT_EQ(plan.tasks.at("loud").kind, eval::TaskKind::closed_qa);
  EXPECT_EQ(plan.tasks.at("loud").classes, (std::vector<std::string>{"no", "yes"}));
  EXPECT_EQ(plan.tasks.at("loud").kind_from, "inferred");
  EXPECT_EQ(plan.tasks.at("caption").kind, eval::TaskKind::open);
  // The two c0 caption lines are one item with two references.
  size_t captions = 0;
  for (const auto& item : plan.items)
    if (item.task == "caption") {
      ++captions;
      if (item.audio.filename() == "c0.wav") {
        EXPECT_EQ(item.references, (std::vector<std::string>{"a low tone", "a tone plays"}));
        EXPECT_EQ(item.lines, (std::vector<int64_t>{9, 10}));
      }
    }
  EXPECT_EQ(captions, 2u);
  EXPECT_EQ(plan.items.size(), 8u);

  // A tasks file names digit's classes; loud is not in it (inferred, with a warning).
  write_file_atomic(dir / "stats.json",
                    R"({"tasks": {"digit": {"closed": true, "classes": ["one", "two", "three", "four"]},
                                  "caption": {"closed": false}}})");
  const eval::EvalPlan with_file = eval::plan_evaluation(manifest, dir / "stats.json", /*limit=*/5);
  EXPECT_EQ(with_file.examples.size(), 5u);
  EXPECT_EQ(with_file.tasks.at("digit").kind, eval::TaskKind::classification);
  EXPECT_EQ(with_file.tasks.at("digit").kind_from, "tasks file");
  EXPECT_EQ(with_file.tasks.at("digit").classes.size(), 4u);
  EXPECT_EQ(with_file.tasks.at("loud").kind_from, "inferred");
  EXPECT_EQ(with_file.tasks.count("caption"), 0u);  // past the limit

  write_file_atomic(dir / "bad.json", R"({"tasks": {"digit": {"kind": "ranking"}}})");
  try {
    eval::plan_evaluation(manifest, dir / "bad.json");
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("tasks.digit.kind"), std::string::npos) << e.what();
  }
  EXPECT_THROW(eval::plan_evaluation(dir / "missing.jsonl"), IoError);
}

TEST(EvaluateMetrics, FromPredictions) {
  test::TempDir dir;
  write_file_atomic(dir / "stats.json",
                    R"({"tasks": {"digit": {"closed": true, "classes": ["one", "two", "three"]},
                                  "loud": {"closed": true, "classes": ["yes", "no"]}}})");
  const eval::EvalPlan plan = eval::plan_evaluation(write_manifest(dir.path()), dir / "stats.json");
  eval::ModelResult r;
  r.items.resize(plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const auto& item = plan.items[i];
    auto& x = r.items[i];
    x.prediction = item.task == "digit" ? "one" : item.references.front();
    x.correct = eval::answers_match(x.prediction, item.references.front());
    if (item.task == "digit") {
      // Perfect ranking: the true class scores highest.
      for (const auto& c : plan.tasks.at("digit").classes)
        x.class_scores.push_back(eval::answers_match(c, item.references.front()) ? -1.0 : -5.0);
    } else if (item.task == "loud") {
      x.class_scores = {-2.0, -2.0};
    }
  }
  r.items[2].error = "clips/c2.wav: unreadable";  // the third digit
  eval::compute_metrics(plan, r);
  const auto& digit = r.tasks.at("digit");
  EXPECT_EQ(digit.n, 2);
  EXPECT_EQ(digit.failed, 1);
  ASSERT_EQ(digit.metrics.size(), 2u);
  EXPECT_EQ(digit.metrics[0].name, "accuracy");
  EXPECT_DOUBLE_EQ(digit.metrics[0].value, 0.5);
  EXPECT_EQ(digit.metrics[1].name, "mAP");
  EXPECT_DOUBLE_EQ(digit.metrics[1].value, 1.0);
  const auto& caption = r.tasks.at("caption");
  EXPECT_EQ(caption.metrics[1].name, "BLEU-4");
  EXPECT_EQ(caption.metrics[2].name, "CIDEr-D");
  EXPECT_DOUBLE_EQ(caption.metrics[0].value, 1.0);
  EXPECT_EQ(r.failed, 1);
  EXPECT_EQ(r.all.n, static_cast<int64_t>(plan.items.size()) - 1);

  r.name = "a";
  eval::ModelResult b = r;
  b.name = "b|c";
  const std::string md = eval::markdown_table(plan, {r, b});
  EXPECT_NE(md.find("| task | kind | n | metric | a | b\\|c |"), std::string::npos) << md;
  EXPECT_NE(md.find("| digit | classification | 3 | mAP | 1.0000 | 1.0000 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| loud | closed_qa | 3 | accuracy |"), std::string::npos) << md;
  const json j = json::parse(eval::results_json(plan, {r, b}));
  EXPECT_EQ(j["models"].size(), 2u);
  EXPECT_EQ(j["models"][0]["tasks"]["digit"]["n"], 2);
  EXPECT_EQ(j["models"][0]["tasks"]["digit"]["class_ap"]["two"], 1.0);
  EXPECT_TRUE(j["models"][0]["tasks"]["digit"]["class_ap"]["three"].is_null());  // no positive scored
  EXPECT_EQ(j["tasks"]["caption"]["kind"], "open");
  EXPECT_EQ(j["tasks"]["digit"]["kind_from"], "tasks file");
  EXPECT_EQ(j["skipped_lines"], 2);
}

TEST(Evaluate, RunsTheModelOnEveryItem) {
  test::TempDir dir;
  write_file_atomic(dir / "stats.json",
                    R"({"tasks": {"digit": {"closed": true, "classes": ["one", "two", "three"]}}})");
  const eval::EvalPlan plan = eval::plan_evaluation(write_manifest(dir.path()), dir / "stats.json");
  Pipeline pipeline = Pipeline::load(test::tiny_model(), two_threads());
  eval::EvalOptions options;
  options.batch_size = 3;
  options.generation.max_new_tokens = 3;
  std::vector<int64_t> done;
  eval::ModelResult r = eval::evaluate(pipeline, plan, options, [&](const eval::EvalProgress& p) {
    done.push_back(p.done);
    EXPECT_EQ(p.total, static_cast<int64_t>(plan.items.size()));
  });
  EXPECT_EQ(done, (std::vector<int64_t>{3, 6, 8}));
  ASSERT_EQ(r.items.size(), plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const auto& item = plan.items[i];
    EXPECT_TRUE(r.items[i].error.empty()) << r.items[i].error;
    if (item.task == "caption") {
      EXPECT_TRUE(r.items[i].class_scores.empty());
    } else {
      const auto& classes = plan.tasks.at(item.task).classes;
      ASSERT_EQ(r.items[i].class_scores.size(), classes.size());
      // The scores are Pipeline::score's.
      const std::vector<double> again = pipeline.score(pipeline.encode(item.audio), item.question, classes);
      for (size_t c = 0; c < classes.size(); ++c)
        EXPECT_NEAR(r.items[i].class_scores[c], again[c], 1e-4 * std::abs(again[c]));
    }
  }
  EXPECT_EQ(r.tasks.size(), 3u);
  EXPECT_EQ(r.failed, 0);
  EXPECT_GT(r.seconds, 0);
}

// ---- the pal-eval binary ----------------------------------------------------------------------

const std::string kPalEval = PAL_EVAL_EXE;

std::string quote(const fs::path& p) {
  return "'" + p.string() + "'";
}

// The chance column: a task's most frequent training answer for every item.
fs::path write_train_manifest(const fs::path& dir) {
  write_file_atomic(dir / "train.jsonl",
                    R"({"audio": "clips/c0.wav", "instruction": "Which digit?", "output": "two", "task": "digit"}
{"audio": "clips/c1.wav", "instruction": "Which digit?", "output": "one", "task": "digit"}
{"audio": "clips/c2.wav", "instruction": "Which digit?", "output": "One.", "task": "digit"}
{"audio": "clips/c0.wav", "instruction": "Which digit?", "output": "Two", "task": "digit"}
{"audio": "clips/c0.wav", "instruction": "Caption it.", "output": "A low tone.", "task": "caption"}
{"audio": "clips/c1.wav", "instruction": "Caption it.", "output": "a middle tone", "task": "caption"}
{"audio": "clips/c2.wav", "instruction": "Caption it.", "output": "a low tone", "task": "caption"}
{"audio": "clips/c2.wav", "instruction": "Caption it.", "task": "caption"}
)");
  return dir / "train.jsonl";
}

TEST(EvaluateMajority, AnswersEachTasksMostFrequentTrainingAnswer) {
  test::TempDir dir;
  write_file_atomic(dir / "stats.json",
                    R"({"tasks": {"digit": {"closed": true, "classes": ["one", "two", "three"]}}})");
  const eval::EvalPlan plan = eval::plan_evaluation(write_manifest(dir.path()), dir / "stats.json");
  std::vector<std::string> warnings;
  const eval::ModelResult r = eval::majority_baseline(plan, write_train_manifest(dir.path()), &warnings);
  EXPECT_EQ(r.name, "majority");
  // digit: "two" and "one" twice each (normalised); the tie goes to "two", met first.
  // caption: "a low tone" twice, in its first spelling. loud: not in the training manifest.
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const std::string& task = plan.items[i].task;
    const std::string want = task == "digit" ? "two" : task == "caption" ? "A low tone." : "";
    EXPECT_EQ(r.items[i].prediction, want) << task;
  }
  EXPECT_NE(r.description.find("digit 'two'"), std::string::npos) << r.description;
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find("train.jsonl: 1 lines without a usable answer"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find("no answer for task 'loud'"), std::string::npos) << warnings[1];

  auto metric = [&](const std::string& task, const std::string& name) {
    for (const auto& m : r.tasks.at(task).metrics)
      if (m.name == name) return m.value;
    return std::nan("");
  };
  EXPECT_DOUBLE_EQ(metric("digit", "accuracy"), 1.0 / 3.0);  // one, two, Three.
  EXPECT_TRUE(std::isnan(metric("digit", "mAP")));           // a constant answer ranks nothing
  EXPECT_DOUBLE_EQ(metric("loud", "accuracy"), 0.0);
  // caption: c0 (references "a low tone", "a tone plays") right, c1 ("a middle tone") wrong.
  EXPECT_DOUBLE_EQ(metric("caption", "accuracy"), 0.5);
  EXPECT_GT(metric("caption", "CIDEr-D"), 0.0);
  EXPECT_DOUBLE_EQ(metric("caption", "BLEU-4"), 0.0);  // three words: no 4-gram
  EXPECT_EQ(r.all.n, static_cast<int64_t>(plan.items.size()));

  EXPECT_THROW(eval::majority_baseline(plan, dir / "missing.jsonl"), IoError);
}

TEST(E2EPalEval, MajorityColumnAloneOrBesideAModel) {
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path());
  const fs::path train = write_train_manifest(dir.path());
  const std::string base = kPalEval + " --threads 2 --max-new-tokens 3 --manifest " + quote(manifest);
  auto r = test::run_command(base + " --majority " + quote(train) + " --json " + quote(dir / "chance.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("| task | kind | n | metric | majority |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no answer for task 'loud'"), std::string::npos) << r.output;
  const json j = json::parse(read_file(dir / "chance.json"));
  ASSERT_EQ(j["models"].size(), 1u);
  EXPECT_DOUBLE_EQ(j["models"][0]["tasks"]["caption"]["metrics"]["accuracy"].get<double>(), 0.5);

  r = test::run_command(base + " --majority " + quote(train) + " --model " + quote(test::tiny_model()) +
                        " --name tiny --limit 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("| task | kind | n | metric | majority | tiny |"), std::string::npos) << r.output;

  r = test::run_command(base + " --majority " + quote(dir / "none.jsonl"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "none.jsonl").string() + ": no such manifest"), std::string::npos) << r.output;
}

TEST(E2EPalEval, ComparesTwoModelsWithLimitJsonMarkdownAndPredictions) {
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path());
  write_file_atomic(dir / "stats.json",
                    R"({"tasks": {"digit": {"closed": true, "classes": ["one", "two", "three"]}}})");
  const std::string args =
      " --model " + quote(test::tiny_model()) + " --model " + quote(test::tiny_model("prefix")) +
      " --name probe --name prefix --manifest " + quote(manifest) + " --tasks " + quote(dir / "stats.json") +
      " --threads 2 --max-new-tokens 3 --batch-size 2 --limit 6" + " --json " + quote(dir / "out" / "eval.json") +
      " --markdown " + quote(dir / "eval.md") + " --predictions " + quote(dir / "predictions.jsonl");
  auto r = test::run_command(kPalEval + args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("test.jsonl:3: skipped"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("6/6 items"), std::string::npos) << r.output;
  const std::string md = read_file(dir / "eval.md");
  EXPECT_NE(
      md.find("| task | kind | n | metric | probe | prefix |\n| --- | --- | ---: | --- | ---: | ---: |\n"),
      std::string::npos)
      << md;
  EXPECT_NE(md.find("| digit | classification | 3 | mAP |"), std::string::npos) << md;
  EXPECT_NE(md.find("| loud | closed_qa* | 3 | accuracy |"), std::string::npos) << md;
  EXPECT_EQ(md.find("| caption"), std::string::npos) << md;  // past --limit 6
  EXPECT_NE(r.output.find(md), std::string::npos);           // printed too
  const json j = json::parse(read_file(dir / "out" / "eval.json"));  // the folder made by pal-eval
  EXPECT_EQ(j["examples"], 6);
  ASSERT_EQ(j["models"].size(), 2u);
  EXPECT_EQ(j["models"][1]["name"], "prefix");
  EXPECT_EQ(j["models"][0]["all"]["n"], 6);
  EXPECT_EQ(j["models"][0]["tasks"]["digit"]["n"], 3);
  EXPECT_TRUE(j["models"][0]["tasks"]["digit"]["metrics"].contains("mAP"));
  std::ifstream predictions(dir / "predictions.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(predictions, line)) {
    const json p = json::parse(line);
    EXPECT_TRUE(p.contains("prediction"));
    if (p["task"] == "digit") {
      EXPECT_EQ(p["scores"].size(), 3u);
    }
    ++lines;
  }
  EXPECT_EQ(lines, 12);  // 6 items x 2 models
}

TEST(E2EPalEval, ExitCodes) {
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path());
  const std::string base =
      kPalEval + " --threads 2 --max-new-tokens 2 --no-map --manifest " + quote(manifest);
  // A model folder that does not load: 1, naming it.
  auto r = test::run_command(base + " --model " + quote(dir / "no-model"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "no-model").string()), std::string::npos) << r.output;
  // Usage: 2.
  r = test::run_command(base + " --model " + quote(test::tiny_model()) + " --name a --name b");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = test::run_command(kPalEval + " --manifest " + quote(manifest));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  // An output folder that cannot be made: 1, naming it, before any model is loaded.
  write_file_atomic(dir / "blocker", "a file");
  r = test::run_command(base + " --model " + quote(dir / "no-model") + " --json " + quote(dir / "blocker" / "e.json"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot make the folder '" + (dir / "blocker").string() + "'"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("no-model"), std::string::npos) << r.output;
  // Unreadable audio: evaluated without it, 3.
  write_file_atomic(dir / "clips" / "c1.wav", "not audio");
  r = test::run_command(base + " --model " + quote(test::tiny_model()) + " --limit 4");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("items that could not be evaluated: 1"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace pal
