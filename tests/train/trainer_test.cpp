#include "pal/train/trainer.h"

#include <fnmatch.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "pal/models/pal_checkpoint.h"
#include "pal/train/checkpoint.h"
#include "test_util.h"

namespace pal::train {
namespace {
namespace fs = std::filesystem;

const fs::path kConfigs = test::fixtures() / ".." / ".." / "configs" / "tiny";
const std::string kPalTrain = PAL_TRAIN_EXE;

// The tiny stage configs (real fixture clips, a random 4-layer LLM, tiny encoders),
// writing to `out`.
StageConfig tiny_stage(const std::string& file, const fs::path& out, const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> all = {"output_dir=" + out.string(), "init_from=''", "threads=2"};
  all.insert(all.end(), overrides.begin(), overrides.end());
  return load_stage_config(kConfigs / file, all);
}

double mean(const std::vector<double>& v, size_t from, size_t n) {
  double s = 0;
  for (size_t i = from; i < from + n; ++i) s += v.at(i);
  return s / static_cast<double>(n);
}

TEST(E2ETrainer, TinyCurriculumLossFallsInEveryStage) {
  test::TempDir dir;
  write_file_atomic(dir / "curriculum.yaml",
                    "output_dir: " + (dir / "run").string() +
                        "\n"
                        "set: [threads=2]\n"
                        "stages:\n"
                        "  - {name: align, config: " + (kConfigs / "stage1_align.yaml").string() + "}\n"
                        "  - {name: probe, config: " + (kConfigs / "stage2_probe.yaml").string() + "}\n"
                        "  - {name: instruct, config: " + (kConfigs / "stage3_instruct.yaml").string() + "}\n");
  std::vector<std::vector<double>> stages;
  TrainOptions options;
  options.progress_bar = false;
  options.on_step = [&](const StepMetrics& m) {
    if (m.step == 1) stages.emplace_back();
    stages.back().push_back(m.loss);
  };
  const TrainResult r = run_curriculum(dir / "curriculum.yaml", {}, options);
  ASSERT_TRUE(r.finished);
  ASSERT_EQ(stages.size(), 3u);
  for (size_t s = 0; s < 3; ++s) {
    ASSERT_EQ(stages[s].size(), 30u);
    const double first = mean(stages[s], 0, 5), last = mean(stages[s], 25, 5);
    EXPECT_LT(last, first - 0.02) << "stage " << s << ": loss " << first << " -> " << last;
  }
  // Each stage's final checkpoint is a model folder; the last one carries LoRA and
  // loads on its own.
  for (const char* stage : {"align", "probe", "instruct"}) EXPECT_TRUE(stage_finished(dir / "run" / stage)) << stage;
  models::PalModel model = models::load_pal_model(dir / "run" / "instruct" / "final");
  EXPECT_EQ(model->config().lora.rank, 4);
  EXPECT_TRUE(fs::exists(dir / "run" / "instruct" / "final" / "tokenizer.json"));

  // Run again: every stage is finished, nothing trains.
  stages.clear();
  const TrainResult again = run_curriculum(dir / "curriculum.yaml", {}, options);
  EXPECT_TRUE(again.finished);
  EXPECT_TRUE(stages.empty());
}

TEST(E2ETrainer, ResumeGivesTheLossesOfAnUninterruptedRun) {
  test::TempDir dir;
  // LoRA dropout draws from the generator and the data are shuffled and bucketed by two
  // workers: a resume must restore all of it to match.
  const std::vector<std::string> set = {"steps=8", "model.lora.dropout=0.1", "data.workers=2",
                                        "data.bucket_batches=2", "grad_accum=2", "checkpoint.every=0",
                                        "eval.every=0"};
  TrainOptions options;
  options.progress_bar = false;
  std::vector<double> straight, resumed;
  options.on_step = [&](const StepMetrics& m) { straight.push_back(m.loss); };
  TrainResult a = Trainer(tiny_stage("stage2_probe.yaml", dir / "a", set), options).run();
  ASSERT_TRUE(a.finished);
  ASSERT_EQ(straight.size(), 8u);

  options.on_step = [&](const StepMetrics& m) { resumed.push_back(m.loss); };
  options.stop_after_steps = 3;
  TrainResult b1 = Trainer(tiny_stage("stage2_probe.yaml", dir / "b", set), options).run();
  EXPECT_TRUE(b1.interrupted);
  EXPECT_EQ(b1.step, 3);
  EXPECT_TRUE(is_complete_checkpoint(dir / "b" / "step-000003"));
  options.stop_after_steps = 0;
  TrainResult b2 = Trainer(tiny_stage("stage2_probe.yaml", dir / "b", set), options).run();
  ASSERT_TRUE(b2.finished);
  ASSERT_EQ(resumed.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(resumed[i], straight[i]) << "step " << i + 1;

  // The final weights are identical too.
  auto wa = io::SafetensorsFile::open(dir / "a" / "final" / "model.safetensors");
  auto wb = io::SafetensorsFile::open(dir / "b" / "final" / "model.safetensors");
  ASSERT_EQ(wa.tensors().size(), wb.tensors().size());
  for (const auto& info : wa.tensors())
    EXPECT_TRUE(torch::equal(wa.tensor(info.name), wb.tensor(info.name))) << info.name;
  // metrics.jsonl has each step once.
  std::ifstream metrics(dir / "b" / "metrics.jsonl");
  std::string line;
  int train_lines = 0;
  while (std::getline(metrics, line)) train_lines += line.find("\"train\"") != std::string::npos ? 1 : 0;
  EXPECT_EQ(train_lines, 2);  // log_every 5 on 8 steps: step 5 and the last
}

// objective: classify. A linear head over the ensemble's mean learns the closed tasks'
// answers: its loss falls, a stopped run resumes to the same losses and head, and the
// head stays out of model.safetensors, so that the next stage starts from the model alone.
TEST(E2ETrainer, ClassifyObjectiveTrainsTheAudioSideAndResumesExactly) {
  test::TempDir dir;
  // max_answers 6: cla (5 answers), closed_qa (2) and open_qa (4) are closed; caption (7) is open.
  const std::vector<std::string> set = {"objective=classify", "trainable=[encoders, ensemble]", "classify.max_answers=6",
                                        "data.train=[{path: " + (kConfigs / "data" / "train.jsonl").string() + "}]",
                                        "steps=24", "optim.lr=3e-3", "checkpoint.every=0", "eval.every=0",
                                        "data.workers=2", "data.bucket_batches=2"};
  TrainOptions options;
  options.progress_bar = false;
  std::vector<double> straight, resumed;
  options.on_step = [&](const StepMetrics& m) { straight.push_back(m.loss); };
  ASSERT_TRUE(Trainer(tiny_stage("stage1_align.yaml", dir / "a", set), options).run().finished);
  ASSERT_EQ(straight.size(), 24u);
  EXPECT_LT(mean(straight, 19, 5), mean(straight, 0, 5) - 0.1) << straight.front() << " -> " << straight.back();

  const auto classes = nlohmann::json::parse(read_file(dir / "a" / "final" / "classes.json"));
  EXPECT_EQ(classes["classes"].size(), 11u);
  EXPECT_EQ(classes["open_tasks"], nlohmann::json::array({"caption"}));
  // The eval set (cla and closed_qa questions) is scored per task.
  std::string eval_line;
  for (std::ifstream in(dir / "a" / "metrics.jsonl"); std::getline(in, eval_line);)
    if (eval_line.find("\"eval\"") != std::string::npos) break;
  const auto eval = nlohmann::json::parse(eval_line);
  ASSERT_TRUE(eval.contains("eval_accuracy")) << eval_line;
  EXPECT_TRUE(eval["eval_accuracy_by_task"].contains("cla")) << eval_line;
  EXPECT_TRUE(eval["eval_accuracy_by_task"].contains("closed_qa")) << eval_line;

  options.on_step = [&](const StepMetrics& m) { resumed.push_back(m.loss); };
  options.stop_after_steps = 5;
  ASSERT_TRUE(Trainer(tiny_stage("stage1_align.yaml", dir / "b", set), options).run().interrupted);
  options.stop_after_steps = 0;
  ASSERT_TRUE(Trainer(tiny_stage("stage1_align.yaml", dir / "b", set), options).run().finished);
  ASSERT_EQ(resumed.size(), 24u);
  for (size_t i = 0; i < 24; ++i) EXPECT_EQ(resumed[i], straight[i]) << "step " << i + 1;
  auto ha = io::SafetensorsFile::open(dir / "a" / "final" / "classifier.safetensors");
  auto hb = io::SafetensorsFile::open(dir / "b" / "final" / "classifier.safetensors");
  EXPECT_TRUE(torch::equal(ha.tensor("classifier.weight"), hb.tensor("classifier.weight")));

  // Resuming with other classes (cla now has too many answers) is refused, naming the file.
  options.stop_after_steps = 2;
  ASSERT_TRUE(Trainer(tiny_stage("stage1_align.yaml", dir / "c", set), options).run().interrupted);
  std::vector<std::string> fewer = set;
  fewer.push_back("classify.max_answers=4");
  std::string msg = test::error_message<TrainError>([&] { Trainer(tiny_stage("stage1_align.yaml", dir / "c", fewer), options).run(); });
  EXPECT_NE(msg.find("classes.json"), std::string::npos) << msg;

  // The model folder holds no classifier tensor; the next (lm) stage starts from it.
  const auto weights = io::SafetensorsFile::open(dir / "a" / "final" / "model.safetensors");
  for (const auto& info : weights.tensors())
    EXPECT_EQ(info.name.find("classifier"), std::string::npos) << info.name;
  options.stop_after_steps = 0;
  EXPECT_TRUE(Trainer(tiny_stage("stage1_align.yaml", dir / "next",
                                 {"init_from=" + (dir / "a" / "final").string(), "steps=2", "checkpoint.every=0"}),
                      options)
                  .run()
                  .finished);
}

TEST(Trainer, ClassifyMistakesAreNamed) {
  test::TempDir dir;
  std::string msg = test::error_message<ConfigError>([&] {
    Trainer(tiny_stage("stage1_align.yaml", dir / "o", {"objective=classify", "trainable=[ensemble, projector]"})).run();
  });
  EXPECT_NE(msg.find("projector"), std::string::npos) << msg;
  EXPECT_NE(msg.find("objective: classify"), std::string::npos) << msg;
  msg = test::error_message<ConfigError>([&] {
    Trainer(tiny_stage("stage1_align.yaml", dir / "o",
                       {"objective=classify", "trainable=[ensemble]", "classify.tasks=[speaker]"}))
        .run();
  });
  EXPECT_NE(msg.find("classify.tasks"), std::string::npos) << msg;
  EXPECT_NE(msg.find("speaker"), std::string::npos) << msg;
  // align.jsonl: cla has 5 answers, caption 6: nothing is closed at max_answers 4.
  msg = test::error_message<ConfigError>([&] {
    Trainer(tiny_stage("stage1_align.yaml", dir / "o",
                       {"objective=classify", "trainable=[ensemble]", "classify.max_answers=4"}))
        .run();
  });
  EXPECT_NE(msg.find("no task"), std::string::npos) << msg;
  EXPECT_NE(msg.find("caption"), std::string::npos) << msg;
  msg = test::error_message<ConfigError>([&] { tiny_stage("stage1_align.yaml", dir / "o", {"objective=regress"}); });
  EXPECT_NE(msg.find("objective"), std::string::npos) << msg;
}

// loss_mean: examples weighs each answer the same: the first step's loss (same weights,
// same batch) differs from the token mean, as the tiny set's answers differ in length.
TEST(Trainer, LossMeanOverExamples) {
  test::TempDir dir;
  std::map<std::string, double> first_loss;
  for (const std::string mean : {"tokens", "examples"}) {
    TrainOptions options;
    options.progress_bar = false;
    options.on_step = [&](const StepMetrics& m) {
      if (m.step == 1) first_loss[mean] = m.loss;
    };
    EXPECT_TRUE(Trainer(tiny_stage("stage1_align.yaml", dir / mean, {"loss_mean=" + mean, "steps=2"}), options)
                    .run()
                    .finished);
  }
  ASSERT_EQ(first_loss.size(), 2u);
  EXPECT_TRUE(std::isfinite(first_loss["examples"]));
  EXPECT_GT(std::abs(first_loss["examples"] - first_loss["tokens"]), 1e-4)
      << first_loss["examples"] << " vs " << first_loss["tokens"];
  std::string msg =
      test::error_message<ConfigError>([&] { tiny_stage("stage1_align.yaml", dir / "o", {"loss_mean=answers"}); });
  EXPECT_NE(msg.find("loss_mean"), std::string::npos) << msg;
  EXPECT_NE(msg.find("answers"), std::string::npos) << msg;
  msg = test::error_message<ConfigError>([&] {
    tiny_stage("stage1_align.yaml", dir / "o", {"objective=classify", "loss_mean=examples"});
  });
  EXPECT_NE(msg.find("loss_mean"), std::string::npos) << msg;
}

TEST(Trainer, ConfigMistakesAreNamed) {
  test::TempDir dir;
  std::string msg = test::error_message<ConfigError>([&] { tiny_stage("stage1_align.yaml", dir / "o", {"optim.lrr=1"}); });
  EXPECT_NE(msg.find("optim.lrr"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'lr'"), std::string::npos) << msg;

  msg = test::error_message<ConfigError>([&] {
    Trainer(tiny_stage("stage2_probe.yaml", dir / "o", {"init_from=" + (dir / "nowhere").string()})).run();
  });
  EXPECT_NE(msg.find("init_from"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nowhere"), std::string::npos) << msg;

  msg = test::error_message<ConfigError>(
      [&] { Trainer(tiny_stage("stage1_align.yaml", dir / "o", {"trainable=[projector, 'decoder.nothing.*']"})).run(); });
  EXPECT_NE(msg.find("decoder.nothing.*"), std::string::npos) << msg;

  // A group the model lacks (prefix mode has no probe adapters) is skipped, so one stage
  // file serves every fusion mode; when nothing else is left to train it is an error.
  EXPECT_NO_THROW(Trainer(tiny_stage("stage1_align.yaml", dir / "prefix",
                                     {"model.fusion.mode=prefix", "steps=1", "checkpoint.every=0"}))
                      .run());
  msg = test::error_message<ConfigError>([&] {
    Trainer(tiny_stage("stage1_align.yaml", dir / "o", {"model.fusion.mode=prefix", "trainable=[probe_adapters]"}))
        .run();
  });
  EXPECT_NE(msg.find("no parameter is trainable"), std::string::npos) << msg;

  msg = test::error_message<ConfigError>(
      [&] { Trainer(tiny_stage("stage1_align.yaml", dir / "o", {"precision.amp=bf16", "device=cpu"})).run(); });
  EXPECT_NE(msg.find("precision.amp"), std::string::npos) << msg;

  msg = test::error_message<ConfigError>([&] { tiny_stage("stage1_align.yaml", dir / "o", {"epochs=2"}); });
  EXPECT_NE(msg.find("steps"), std::string::npos) << msg;
}

TEST(E2ETrainer, AManifestWithThirtyPercentBadLinesStops) {
  test::TempDir dir;
  const fs::path clips = test::fixtures() / "audio" / "clips";
  std::string lines;
  for (int i = 0; i < 20; ++i) {
    if (i % 10 < 3) {
      lines += i % 3 == 0 ? "{not json\n" : i % 3 == 1 ? "{\"audio\": \"missing.wav\", \"instruction\": \"q\", \"output\": \"a\"}\n"
                                                        : "{\"audio\": \"" + (clips / "tone_11k_u8.wav").string() + "\", \"instruction\": \"q\", \"output\": \"\"}\n";
    } else {
      lines += "{\"audio\": \"" + (clips / "tone_11k_u8.wav").string() + "\", \"instruction\": \"q\", \"output\": \"tone\"}\n";
    }
  }
  write_file_atomic(dir / "bad.jsonl", lines);
  const std::string msg = test::error_message<DataError>([&] {
    Trainer(tiny_stage("stage1_align.yaml", dir / "o", {"data.train=[{path: " + (dir / "bad.jsonl").string() + "}]", "data.eval=[]"}))
        .run();
  });
  EXPECT_NE(msg.find("bad.jsonl"), std::string::npos) << msg;
}

// ---- pal-train as a user runs it ----------------------------------------------------------

std::string stage_args(const fs::path& out, const std::string& extra = "") {
  return kPalTrain + " --no-progress --config " + (kConfigs / "stage1_align.yaml").string() +
         " --set output_dir=" + out.string() + " --set threads=1 " + extra;
}

TEST(E2EPalTrain, SigtermSavesACheckpointAndTheRerunFinishes) {
  test::TempDir dir;
  const std::string cmd = stage_args(dir / "run", "--set steps=4000 --set eval.every=0 --set checkpoint.every=0");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >" + (dir / "log").string() + " 2>&1").c_str(), nullptr);
    _exit(127);
  }
  // Wait until it trains (a first metrics line), then ask it to stop.
  for (int i = 0; i < 300 && !fs::exists(dir / "run" / "metrics.jsonl"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << read_file(dir / "log");
  EXPECT_EQ(WEXITSTATUS(status), 143) << read_file(dir / "log");
  const auto ckpt = find_resume_checkpoint(dir / "run");
  ASSERT_TRUE(ckpt.has_value()) << read_file(dir / "log");
  EXPECT_NE(read_file(dir / "log").find("run the same command again to resume"), std::string::npos);
  const TrainerState st = trainer_state_from_json(read_file(*ckpt / "trainer_state.json"), "state");
  EXPECT_GT(st.step, 0);
  EXPECT_LT(st.step, 4000);
  // The rerun continues from there (a short run this time).
  auto r = test::run_command(stage_args(dir / "run", "--set steps=4000 --stop-after 2"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
}

TEST(E2EPalTrain, KillsDuringSavesNeverLoseTheLastCheckpoint) {
  test::TempDir dir;
  // A checkpoint after every step, killed at moments spread over the run.
  const std::string cmd = stage_args(dir / "run", "--set steps=400 --set checkpoint.every=1 --set checkpoint.keep=2 --set eval.every=0");
  int kills_with_checkpoint = 0;
  for (int attempt = 0; attempt < 5; ++attempt) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>&1").c_str(), nullptr);
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1200 + 170 * attempt));
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    const auto ckpt = find_resume_checkpoint(dir / "run");
    if (!ckpt) continue;  // killed before the first save
    ++kills_with_checkpoint;
    EXPECT_TRUE(is_complete_checkpoint(*ckpt));
    // It loads as a model and as a training state.
    EXPECT_NO_THROW(models::load_pal_model(*ckpt)) << *ckpt;
    EXPECT_NO_THROW(trainer_state_from_json(read_file(*ckpt / "trainer_state.json"), "state"));
  }
  EXPECT_GE(kills_with_checkpoint, 3);
  auto r = test::run_command(stage_args(dir / "run", "--set steps=400 --set checkpoint.every=1 --stop-after 1"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(E2EPalTrain, ADiskFullSaveFailsClearlyAndKeepsThePreviousCheckpoint) {
  test::TempDir dir;
  auto r = test::run_command(stage_args(dir / "run", "--set steps=50 --stop-after 2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto before = find_resume_checkpoint(dir / "run");
  ASSERT_TRUE(before.has_value());
  // Files above 64 KiB cannot be written (ulimit -f counts 1 KiB blocks): the next
  // checkpoint's model.safetensors fails like a full disk would.
  r = test::run_command("ulimit -f 64; " + stage_args(dir / "run", "--set steps=50 --stop-after 2"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("safetensors"), std::string::npos) << r.output;
  EXPECT_EQ(find_resume_checkpoint(dir / "run"), before);
  EXPECT_NO_THROW(models::load_pal_model(*before));
  for (const auto& e : fs::directory_iterator(dir / "run"))
    EXPECT_EQ(e.path().filename().string().rfind(".tmp-", 0), std::string::npos) << e.path();
}

TEST(E2EPalTrain, ADivergingRunStopsWithAClearMessage) {
  test::TempDir dir;
  auto r = test::run_command(
      stage_args(dir / "run", "--set steps=50 --set optim.lr=1e12 --set optim.clip_grad_norm=0 --set schedule.warmup_steps=0"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const bool named = r.output.find("the loss is") != std::string::npos ||
                     r.output.find("gradient norm is not finite") != std::string::npos;
  EXPECT_TRUE(named) << r.output;
  const auto ckpt = find_resume_checkpoint(dir / "run");
  ASSERT_TRUE(ckpt.has_value()) << r.output;
  EXPECT_NE(r.output.find(ckpt->string()), std::string::npos) << r.output;
}

TEST(PalTrain, UsageAndConfigErrorsExitWithTwo) {
  test::TempDir dir;
  auto r = test::run_command(kPalTrain);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = test::run_command(stage_args(dir / "run", "--set optim.lrr=1"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("optim.lrr"), std::string::npos) << r.output;
  r = test::run_command(stage_args(dir / "run", "--print-config"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("clip_grad_norm: 1"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace pal::train

namespace pal::train {
namespace {

// Every shipped curriculum and stage config reads without error (unknown keys, types,
// ranges) with the curriculum's overrides applied, and selects the mode it is named after.
TEST(Configs, ShippedCurriculaParse) {
  int curricula = 0;
  for (const char* folder : {"paper", "tiny"}) {
    const fs::path dir = kConfigs.parent_path() / folder;
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("curriculum", 0) != 0) continue;
      ++curricula;
      const auto c = config::load<CurriculumConfig>(entry.path());
      ASSERT_EQ(c.stages.size(), 3u) << name;
      for (const auto& stage : c.stages) {
        StageConfig s;
        ASSERT_NO_THROW(s = load_stage_config(dir / stage.config, c.set)) << name << ": " << stage.config;
        const std::string mode = config::enum_name(s.model.fusion.mode);
        if (name.rfind("curriculum_", 0) == 0) {
          EXPECT_EQ(name.substr(11, mode.size()), mode) << name;
        }
      }
    }
  }
  EXPECT_EQ(curricula, 6);
}

// A curriculum resolves every stage before any trains: the chain of init_from, the entry's
// `set`, the command line's overrides (output_dir moves the whole run); a bad key in the
// last stage stops the run before the first stage writes anything. `pal-train
// --print-config` prints the same, one YAML document per stage.
TEST(Configs, CurriculumResolvesEveryStageFirst) {
  test::TempDir dir;
  const auto curriculum = [&](const std::string& probe_set) {
    return "output_dir: " + (dir / "unused").string() +
           "\n"
           "set: [threads=2]\n"
           "stages:\n"
           "  - {name: align, config: " + (kConfigs / "stage1_align.yaml").string() + "}\n"
           "  - {name: probe, config: " + (kConfigs / "stage2_probe.yaml").string() + ", set: [" + probe_set + "]}\n"
           "  - {name: instruct, config: " + (kConfigs / "stage3_instruct.yaml").string() + "}\n";
  };
  write_file_atomic(dir / "good.yaml", curriculum("steps=7"));
  const fs::path out = dir / "run";
  const auto stages = load_curriculum(dir / "good.yaml", {"output_dir=" + out.string(), "seed=5"});
  ASSERT_EQ(stages.size(), 3u);
  EXPECT_EQ(stages[0].name, "align");
  EXPECT_EQ(fs::path(stages[0].output_dir), out / "align");
  EXPECT_EQ(fs::path(stages[1].init_from), out / "align" / "final");
  EXPECT_EQ(fs::path(stages[2].init_from), out / "probe" / "final");
  EXPECT_EQ(stages[1].steps, 7);
  EXPECT_NE(stages[0].steps, 7);
  for (const auto& s : stages) EXPECT_EQ(s.seed, 5u) << s.name;
  EXPECT_FALSE(fs::exists(out));  // resolving writes nothing

  write_file_atomic(dir / "bad.yaml", curriculum("optim.lrr=1"));
  try {
    run_curriculum(dir / "bad.yaml", {"output_dir=" + out.string()});
    ADD_FAILURE() << "a bad key in stage 2 was not reported";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("optim.lrr"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out / "align")) << "stage 1 trained before stage 2's config was checked";

  const auto r = test::run_command(kPalTrain + " --curriculum " + (dir / "good.yaml").string() + " --set output_dir=" +
                                   out.string() + " --print-config");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--- # stage 2/3: probe"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("init_from: " + (out / "align" / "final").string()), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
}

// The demo's curriculum (scripts/demo.sh): every stage reads; the tone encoder (encoders.0)
// is trained by `classify` in `tones` and by no later stage; the two main encoders are
// pre-trained by `classify` before the LLM reads them, then frozen until instruct; the
// audio stages average the loss over examples; the model is the hybrid `pal`.
TEST(Configs, DemoCurriculumPretrainsTheEncoders) {
  const fs::path dir = kConfigs.parent_path() / "demo";
  const auto c = config::load<CurriculumConfig>(dir / "curriculum.yaml");
  std::vector<std::string> names;
  std::map<std::string, StageConfig> stages;
  for (const auto& stage : c.stages) {
    ASSERT_NO_THROW(stages[stage.name] = load_stage_config(dir / stage.config, c.set)) << stage.config;
    names.push_back(stage.name);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"text", "tones", "encoders", "align", "probe", "instruct"}));
  EXPECT_EQ(stages["tones"].objective, Objective::classify);
  EXPECT_EQ(stages["encoders"].objective, Objective::classify);
  const auto trains = [&](const std::string& stage, const std::string& parameter) {
    for (const auto& pattern : stages[stage].trainable)
      if (pattern == "encoders" || fnmatch(pattern.c_str(), parameter.c_str(), 0) == 0) return true;
    return false;
  };
  const std::string tone_encoder = "encoders.0.layers.0.fc1.weight";
  const std::string main_encoders[] = {"encoders.1.layers.0.fc1.weight", "encoders.2.layers.0.fc1.weight"};
  EXPECT_TRUE(trains("tones", tone_encoder));
  for (const auto& p : main_encoders) EXPECT_FALSE(trains("tones", p)) << p;
  for (const char* later : {"encoders", "align", "probe", "instruct"})
    EXPECT_FALSE(trains(later, tone_encoder)) << later;
  for (const auto& p : main_encoders) {
    EXPECT_TRUE(trains("encoders", p)) << p;
    EXPECT_TRUE(trains("instruct", p)) << p;
    EXPECT_FALSE(trains("align", p)) << p;
    EXPECT_FALSE(trains("probe", p)) << p;
  }
  for (const char* lm : {"align", "probe", "instruct"}) EXPECT_EQ(stages[lm].objective, Objective::lm) << lm;
  // Every stage builds PAL's hybrid: one summary token per encoder as a prefix, the full
  // sequences through the probes (scripts/study.py turns the summary tokens off elsewhere).
  for (const auto& [name, s] : stages) {
    EXPECT_EQ(config::enum_name(s.model.fusion.mode), "pal") << name;
    ASSERT_EQ(s.model.ensemble.streams.size(), s.model.encoders.size()) << name;
    for (const auto& stream : s.model.ensemble.streams) EXPECT_TRUE(stream.summary_token) << name;
    EXPECT_EQ(config::enum_name(s.model.ensemble.summary_route), "prefix") << name;
  }
  // Each answer weighs the same in the audio stages: a one-word answer as much as a caption.
  for (const char* audio : {"align", "probe", "instruct"})
    EXPECT_EQ(stages[audio].loss_mean, LossMean::examples) << audio;
}

// The study (scripts/study.sh) trains the demo's stages at a longer schedule: its curriculum
// may differ from the demo's in the step counts (and the evaluation interval) alone.
TEST(Configs, StudyCurriculumIsTheDemosAtALongerSchedule) {
  const fs::path dir = kConfigs.parent_path() / "demo";
  const std::vector<std::string> out = {"output_dir=/run"};
  std::vector<StageConfig> demo, study;
  ASSERT_NO_THROW(demo = load_curriculum(dir / "curriculum.yaml", out));
  ASSERT_NO_THROW(study = load_curriculum(dir / "study.yaml", out));
  ASSERT_EQ(study.size(), demo.size());
  int64_t demo_steps = 0, study_steps = 0;
  for (size_t i = 0; i < demo.size(); ++i) {
    EXPECT_GE(study[i].steps, demo[i].steps) << study[i].name;
    demo_steps += demo[i].steps;
    study_steps += study[i].steps;
    StageConfig same = study[i];
    same.steps = demo[i].steps;
    same.eval.every = demo[i].eval.every;
    EXPECT_EQ(config::to_yaml(same), config::to_yaml(demo[i])) << study[i].name;
  }
  EXPECT_GT(study_steps, demo_steps);
  EXPECT_EQ(study[2].name, "encoders");
  EXPECT_EQ(study[2].steps, 600);
  EXPECT_EQ(study[3].steps, 600);
  EXPECT_EQ(study[4].steps, 600);
}

}  // namespace
}  // namespace pal::train
