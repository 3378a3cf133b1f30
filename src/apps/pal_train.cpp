// pal-train: trains a PAL model, one stage or a whole curriculum (DESIGN.md section 4).
//
//   pal-train --config configs/tiny/stage1_align.yaml --set optim.lr=5e-4
//   pal-train --curriculum configs/paper/curriculum_probe.yaml
//
// A run resumes from its output_dir's newest checkpoint; finished stages are skipped.
// SIGINT / SIGTERM write a checkpoint and stop (a second signal stops at once).
//
// Several processes (data parallel; README, "Multi-process training"):
//   torchrun --no-python --nproc-per-node 2 pal-train --config stage.yaml
//   scripts/launch_local.sh 2 pal-train --config stage.yaml      (no torchrun at hand)
// Each rank reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (or Slurm's
// SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID); only rank 0 logs at info level and writes.
// Exit codes: 0 finished (or stopped by --stop-after), 1 training failed (data, NaN loss,
// I/O), 2 bad usage or config, 130 / 143 stopped by SIGINT / SIGTERM with a checkpoint saved.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <string>

#include "pal/core/config.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/train/trainer.h"

int main(int argc, char** argv) {
  CLI::App app{"pal-train: train a PAL model through one stage config or a curriculum of stages"};
  std::string config_file, curriculum_file, log_level = "info";
  std::vector<std::string> overrides;
  pal::train::TrainOptions options;
  bool print_config = false, no_progress = false;
  auto* config_opt = app.add_option("--config,-c", config_file, "a stage YAML")->check(CLI::ExistingFile);
  app.add_option("--curriculum", curriculum_file, "a curriculum YAML listing stage configs")
      ->check(CLI::ExistingFile)
      ->excludes(config_opt);
  app.add_option("--set", overrides, "override a config key: --set optim.lr=2e-4 (repeatable)");
  app.add_flag("--print-config", print_config,
               "print the resolved stage config (with --curriculum: every stage's) and exit");
  app.add_flag("--no-progress", no_progress, "log lines instead of a progress bar");
  app.add_option("--stop-after", options.stop_after_steps,
                 "stop (with a checkpoint) after N optimizer steps of this invocation")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.footer(
      "Exit codes: 0 finished, 1 training failed, 2 bad usage or config, 130/143 stopped by SIGINT/SIGTERM "
      "(checkpoint saved; run again to resume).");
  try {
    app.parse(argc, argv);
    if (config_file.empty() && curriculum_file.empty()) throw CLI::RequiredError("--config or --curriculum");
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  options.progress_bar = !no_progress;
  // A file-size limit (ulimit -f) shows as a write error, not a kill.
  std::signal(SIGXFSZ, SIG_IGN);
  std::string rank_label;  // " (rank 1/2)" in multi-process runs
  try {
    pal::set_log_level(pal::parse_log_level(log_level));
    if (const auto env = pal::train::DistributedEnv::from_environment(); env && env->world_size > 1) {
      rank_label = " (rank " + std::to_string(env->rank) + "/" + std::to_string(env->world_size) + ")";
      options.process_group = std::make_shared<pal::train::ProcessGroup>(*env);
      // One log, rank 0's: the others say only warnings and errors.
      if (env->rank != 0 && pal::parse_log_level(log_level) < pal::LogLevel::warn)
        pal::set_log_level(pal::LogLevel::warn);
    }
    if (print_config) {
      if (curriculum_file.empty()) {
        std::fputs(pal::config::to_yaml(pal::train::load_stage_config(config_file, overrides)).c_str(), stdout);
        return 0;
      }
      // One YAML document per stage, as the curriculum would train it.
      const auto stages = pal::train::load_curriculum(curriculum_file, overrides);
      for (size_t i = 0; i < stages.size(); ++i)
        std::printf("--- # stage %zu/%zu: %s\n%s", i + 1, stages.size(), stages[i].name.c_str(),
                    pal::config::to_yaml(stages[i]).c_str());
      return 0;
    }
    pal::train::install_stop_signal_handlers();
    const pal::train::TrainResult result =
        curriculum_file.empty()
            ? pal::train::Trainer(pal::train::load_stage_config(config_file, overrides), options).run()
            : pal::train::run_curriculum(curriculum_file, overrides, options);
    if (result.interrupted && pal::train::stop_signal() != 0) return 128 + pal::train::stop_signal();
    return 0;
  } catch (const pal::ConfigError& e) {
    std::fprintf(stderr, "pal-train%s: config error: %s\n", rank_label.c_str(), e.what());
    return 2;
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "pal-train%s: error: %s\n", rank_label.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pal-train%s: error: %s\n", rank_label.c_str(), e.what());
    return 1;
  }
}
