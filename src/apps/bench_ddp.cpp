#include "bench_ddp.h"

#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/train/distributed.h"
#include "pal/train/trainer.h"

namespace pal::bench {
namespace fs = std::filesystem;
namespace {

constexpr int64_t kWarmup = 2;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The stage: the tiny encoders and clips of tests/fixtures, an LLM of hidden x layers
// with random weights, trained with the audio path (prefix fusion), so that the ranks
// all-reduce the LLM's gradients every step.
void prepare(const DdpBenchArgs& a) {
  const fs::path folder(a.folder);
  const fs::path source(PAL_SOURCE_DIR);
  const fs::path tiny = source / "tests" / "fixtures" / "llm" / "tiny_chat";
  fs::create_directories(folder / "llm");
  nlohmann::json config = nlohmann::json::parse(read_file(tiny / "config.json"));
  config["hidden_size"] = a.hidden;
  config["intermediate_size"] = a.hidden * 8 / 3 / 64 * 64;
  config["num_hidden_layers"] = a.layers;
  config["num_attention_heads"] = std::max<int64_t>(1, a.hidden / 64);
  config["num_key_value_heads"] = std::max<int64_t>(1, a.hidden / 128);
  config["head_dim"] = 64;
  write_file_atomic(folder / "llm" / "config.json", config.dump(2));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    write_file_atomic(folder / "llm" / f, read_file(tiny / f));
  const fs::path fixtures = source / "tests" / "fixtures" / "encoders";
  const std::string stage =
      "name: bench-ddp\n"
      "model:\n"
      "  llm: llm\n"
      "  llm_weights: random\n"
      "  encoders: [{type: whisper, checkpoint: " +
      (fixtures / "tiny_whisper").string() +
      "}]\n"
      "  ensemble: {width: 64, frames_per_second: 10}\n"
      "  projector: {type: mlp}\n"
      "  fusion: {mode: prefix}\n"
      "  prompt: {max_tokens: 128}\n"
      "output_dir: run\n"
      "trainable: [ensemble, projector, llm]\n"
      "data: {train: [{path: " +
      (source / "configs" / "tiny" / "data" / "train.jsonl").string() +
      "}], shuffle_buffer: 0, bucket_batches: 1, workers: 1}\n"
      "optim: {lr: 1e-4, weight_decay: 0.01, clip_grad_norm: 1.0}\n"
      "steps: 1\n"
      "checkpoint: {every: 0}\n"
      "log_every: 1000\n";
  write_file_atomic(folder / "stage.yaml", stage);
}

// One rank of a run (or the single process): trains, and rank 0 writes result-<W>.json.
int run_worker(const DdpBenchArgs& a) {
  const auto env = train::DistributedEnv::from_environment();
  const int64_t world = env ? env->world_size : 1;
  const fs::path folder(a.folder);
  train::StageConfig config = train::load_stage_config(
      folder / "stage.yaml",
      {"steps=" + std::to_string(kWarmup + a.steps), "threads=" + std::to_string(a.threads),
       "batch_size=" + std::to_string(a.batch), "device=" + a.device,
       "output_dir=" + (folder / ("run-" + std::to_string(world))).string()});
  train::TrainOptions options;
  options.progress_bar = false;
  if (world > 1) options.process_group = std::make_shared<train::ProcessGroup>(*env);
  std::vector<double> step_s, allreduce_s, compute_s;
  int64_t seen = 0;
  auto last = std::chrono::steady_clock::now();
  options.on_step = [&](const train::StepMetrics& m) {
    const auto now = std::chrono::steady_clock::now();
    if (++seen > kWarmup) {
      step_s.push_back(std::chrono::duration<double>(now - last).count());
      allreduce_s.push_back(m.allreduce_seconds);
      compute_s.push_back(m.compute_seconds);
    }
    last = now;
  };
  train::Trainer trainer(config, options);
  last = std::chrono::steady_clock::now();
  const train::TrainResult r = trainer.run();
  if (env && env->rank != 0) return 0;
  const auto state = nlohmann::json::parse(read_file(r.checkpoint / "trainer_state.json"));
  const double tokens_per_step =
      static_cast<double>(state["tokens_seen"].get<int64_t>()) / static_cast<double>(kWarmup + a.steps);
  const double step = median(step_s), allreduce = median(allreduce_s);
  nlohmann::json result = {{"processes", world},
                           {"threads_per_process", a.threads},
                           {"global_batch", a.batch * world},
                           {"text_tokens_per_step", tokens_per_step},
                           {"step_s", step},
                           {"forward_backward_s", median(compute_s)},
                           {"allreduce_s", allreduce},
                           {"allreduce_share", step > 0 ? allreduce / step : 0.0},
                           {"tokens_per_s", tokens_per_step / step},
                           {"backend", world > 1 ? options.process_group->backend_name() : "none"}};
  write_file_atomic(folder / ("result-" + std::to_string(world) + ".json"), result.dump(2));
  return 0;
}

int free_port() {
  std::random_device rd;
  return 20000 + static_cast<int>(rd() % 20000);
}

// Starts `world` workers of this executable and waits for them; throws on a failure.
void run_processes(const DdpBenchArgs& a, int64_t world, int64_t threads, const std::string& self_exe) {
  const std::string port = std::to_string(free_port());
  std::vector<pid_t> pids;
  for (int64_t r = 0; r < world; ++r) {
    const pid_t pid = fork();
    if (pid < 0) throw Error("pal-bench ddp: fork failed");
    if (pid == 0) {
      if (world > 1) {
        setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
        setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
        setenv("RANK", std::to_string(r).c_str(), 1);
        setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
        setenv("MASTER_ADDR", "127.0.0.1", 1);
        setenv("MASTER_PORT", port.c_str(), 1);
      } else {
        for (const char* v : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS"}) unsetenv(v);
      }
      const std::vector<std::string> args = {self_exe,
                                             "ddp",
                                             "--worker",
                                             "--folder",
                                             a.folder,
                                             "--batch",
                                             std::to_string(a.batch),
                                             "--steps",
                                             std::to_string(a.steps),
                                             "--threads",
                                             std::to_string(threads),
                                             "--device",
                                             a.device};
      std::vector<char*> argv;
      for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
      argv.push_back(nullptr);
      execv(self_exe.c_str(), argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  if (failed > 0)
    throw Error("pal-bench ddp: " + std::to_string(failed) + " of " + std::to_string(world) +
                " worker process(es) failed (their errors are above)");
}

}  // namespace

int bench_ddp(const DdpBenchArgs& args, const std::string& self_exe) {
  if (args.worker) return run_worker(args);
  DdpBenchArgs a = args;
  prepare(a);
  const int cores = available_cores();
  nlohmann::json runs = nlohmann::json::array();
  for (const int64_t world : {int64_t{1}, a.processes}) {
    fs::remove_all(fs::path(a.folder) / ("run-" + std::to_string(world)));
    // The machine's cores shared out among the ranks.
    const int64_t threads = std::max<int64_t>(1, cores / world);
    run_processes(a, world, threads, self_exe);
    runs.push_back(
        nlohmann::json::parse(read_file(fs::path(a.folder) / ("result-" + std::to_string(world) + ".json"))));
  }
  const double speedup = runs[1]["tokens_per_s"].get<double>() / runs[0]["tokens_per_s"].get<double>();
  nlohmann::json summary = {{"benchmark", "ddp"},
                            {"torch_version", runtime_info().torch_version},
                            {"device", a.device},
                            {"cores", cores},
                            {"batch_per_rank", a.batch},
                            {"timed_steps", a.steps},
                            {"llm", {{"hidden", a.hidden}, {"layers", a.layers}}},
                            {"runs", runs},
                            {"speedup", speedup}};
  if (a.json) {
    std::printf("%s\n", summary.dump(2).c_str());
  } else {
    std::printf("data-parallel training, %lld examples per rank and step, %d cores\n",
                static_cast<long long>(a.batch), cores);
    for (const auto& r : runs)
      std::printf(
          "  %lld process(es) x %lld thread(s): %8.3f s/step  %8.0f tokens/s  all-reduce %.3f s (%.1f%%)\n",
          static_cast<long long>(r["processes"].get<int64_t>()),
          static_cast<long long>(r["threads_per_process"].get<int64_t>()), r["step_s"].get<double>(),
          r["tokens_per_s"].get<double>(), r["allreduce_s"].get<double>(),
          100 * r["allreduce_share"].get<double>());
    std::printf("  speed-up %.2fx\n", speedup);
  }
  return 0;
}

}  // namespace pal::bench
