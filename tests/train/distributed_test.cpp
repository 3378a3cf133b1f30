// Multi-process training (src/train/distributed.cpp, the trainer's data parallelism):
// the launch environment, and pal-train run as 2 ranks (Gloo on the CPU, loopback) the
// way a user launches it: scripts/launch_local.sh, torchrun, or by hand.
#include "pal/train/distributed.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "pal/train/checkpoint.h"
#include "pal/train/trainer.h"
#include "test_util.h"

namespace pal::train {
namespace {
namespace fs = std::filesystem;

const fs::path kConfigs = test::fixtures() / ".." / ".." / "configs" / "tiny";
const fs::path kLaunchLocal = test::fixtures() / ".." / ".." / "scripts" / "launch_local.sh";
const std::string kPalTrain = PAL_TRAIN_EXE;
// PyPI's torchrun (torch >= 2: the launcher of the issue), from the virtual environment
// `scripts/setup.sh --torch pip` makes, or $PAL_TORCHRUN. Looked up when the test runs, so
// CI's Debian stage uses the environment its PyPI stage made. Debian's own
// /usr/bin/torchrun (python3-torch 1.13) is not used: it fails on Python 3.11.
std::string torchrun() {
  if (const char* env = std::getenv("PAL_TORCHRUN"); env && *env) return env;
  const fs::path venv = test::fixtures() / ".." / ".." / "build" / "pip" / "venv" / "bin" / "torchrun";
  return fs::exists(venv) ? venv.string() : std::string();
}

// ---- the launch environment --------------------------------------------------------------

// Sets environment variables for one test and restores the previous values after it.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::optional<std::string>>& vars) {
    for (const char* name :
         {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
          "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
          "SLURM_LAUNCH_NODE_IPADDR", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID",
          "TORCHELASTIC_RESTART_COUNT"}) {
      const char* old = std::getenv(name);
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
      unsetenv(name);
    }
    for (const auto& [name, value] : vars)
      if (value) setenv(name.c_str(), value->c_str(), 1);
  }
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_) {
      if (value)
        setenv(name.c_str(), value->c_str(), 1);
      else
        unsetenv(name.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(DistributedEnv, NoLauncherMeansOneProcess) {
  ScopedEnv env({});
  EXPECT_FALSE(DistributedEnv::from_environment().has_value());
}

TEST(DistributedEnv, ReadsTorchrunsVariables) {
  ScopedEnv env({{"WORLD_SIZE", "4"},
                 {"RANK", "3"},
                 {"LOCAL_RANK", "1"},
                 {"LOCAL_WORLD_SIZE", "2"},
                 {"MASTER_ADDR", "10.0.0.7"},
                 {"MASTER_PORT", "29611"},
                 {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                 {"TORCHELASTIC_RUN_ID", "none"},
                 {"TORCHELASTIC_RESTART_COUNT", "2"}});
  const auto e = DistributedEnv::from_environment();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->rank, 3);
  EXPECT_EQ(e->world_size, 4);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_world_size, 2);
  EXPECT_EQ(e->master_addr, "10.0.0.7");
  EXPECT_EQ(e->master_port, 29611);
  EXPECT_TRUE(e->agent_store);
  EXPECT_EQ(e->restart_count, 2);
  EXPECT_EQ(e->launcher, "torchrun");
}

TEST(DistributedEnv, ReadsSlurmsVariables) {
  ScopedEnv env({{"SLURM_NTASKS", "8"},
                 {"SLURM_PROCID", "5"},
                 {"SLURM_LOCALID", "1"},
                 {"SLURM_NTASKS_PER_NODE", "4"},
                 {"SLURM_LAUNCH_NODE_IPADDR", "10.1.2.3"}});
  const auto e = DistributedEnv::from_environment();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->rank, 5);
  EXPECT_EQ(e->world_size, 8);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_world_size, 4);
  EXPECT_EQ(e->master_addr, "10.1.2.3");
  EXPECT_EQ(e->master_port, 29500);
  EXPECT_FALSE(e->agent_store);
}

TEST(DistributedEnv, BadValuesAreNamed) {
  const auto message = [](const std::map<std::string, std::optional<std::string>>& vars) {
    ScopedEnv env(vars);
    return test::error_message<ConfigError>([] { DistributedEnv::from_environment(); });
  };
  std::string msg = message({{"WORLD_SIZE", "abc"}, {"RANK", "0"}, {"MASTER_PORT", "29500"}});
  EXPECT_NE(msg.find("WORLD_SIZE=abc"), std::string::npos) << msg;
  msg = message({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_PORT", "29500"}});
  EXPECT_NE(msg.find("RANK=2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("WORLD_SIZE=2"), std::string::npos) << msg;
  msg = message({{"WORLD_SIZE", "2"}, {"RANK", "0"}});
  EXPECT_NE(msg.find("MASTER_PORT"), std::string::npos) << msg;
  msg = message({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_PORT", "70000"}});
  EXPECT_NE(msg.find("MASTER_PORT=70000"), std::string::npos) << msg;
  msg = message({{"WORLD_SIZE", "2"}});
  EXPECT_NE(msg.find("RANK"), std::string::npos) << msg;
}

TEST(DistributedPalTrain, ABadLaunchEnvironmentExitsWithTwo) {
  test::TempDir dir;
  auto r = test::run_command("WORLD_SIZE=abc RANK=0 MASTER_PORT=29500 " + kPalTrain +
                             " --no-progress --config " + (kConfigs / "stage1_align.yaml").string() +
                             " --set output_dir=" + (dir / "o").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("WORLD_SIZE=abc"), std::string::npos) << r.output;
}

// ---- pal-train as 2 ranks ------------------------------------------------------------------

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// The first 8 records of the tiny align manifest with absolute audio paths, so that the
// test can reorder them into a manifest of its own.
std::vector<nlohmann::json> tiny_records() {
  std::ifstream in(kConfigs / "data" / "align.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (out.size() < 8 && std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    j["audio"] = fs::weakly_canonical(kConfigs / "data" / j["audio"].get<std::string>()).string();
    out.push_back(j);
  }
  return out;
}

void write_manifest(const fs::path& file, const std::vector<nlohmann::json>& records,
                    const std::vector<int>& order) {
  std::string text;
  for (int i : order) text += records.at(static_cast<size_t>(i)).dump() + "\n";
  write_file_atomic(file, text);
}

// pal-train on stage1_align with deterministic data: no shuffling, no bucketing.
std::string train_args(const fs::path& manifest, const fs::path& out, int64_t batch_size, int64_t grad_accum,
                       const std::string& extra = "") {
  return " --no-progress --config " + (kConfigs / "stage1_align.yaml").string() +
         " --set output_dir=" + out.string() + " --set 'data.train=[{path: " + manifest.string() +
         "}]' --set 'data.eval=[]'" +
         " --set data.shuffle_buffer=0 --set data.bucket_batches=1 --set data.workers=0 --set threads=1" +
         " --set batch_size=" + std::to_string(batch_size) +
         " --set grad_accum=" + std::to_string(grad_accum) +
         " --set log_every=1 --set checkpoint.every=0 --set eval.every=0 --set distributed.timeout_s=60 " +
         extra;
}

std::vector<nlohmann::json> metrics(const fs::path& out, const std::string& type) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == type) lines.push_back(j);
  }
  return lines;
}

// max |a - b| over the tensors of two model.safetensors (same names).
double max_difference(const fs::path& a, const fs::path& b, size_t* compared) {
  auto fa = io::SafetensorsFile::open(a / "model.safetensors");
  auto fb = io::SafetensorsFile::open(b / "model.safetensors");
  double worst = 0;
  *compared = 0;
  for (const auto& info : fa.tensors()) {
    const at::Tensor ta = fa.tensor(info.name), tb = fb.tensor(info.name);
    worst = std::max(worst, (ta.to(torch::kFloat64) - tb.to(torch::kFloat64)).abs().max().item<double>());
    ++*compared;
  }
  return worst;
}

TEST(E2EDistributed, TwoRanksMatchOneProcessWithTheSameGlobalBatch) {
  test::TempDir dir;
  const auto records = tiny_records();
  ASSERT_EQ(records.size(), 8u);
  // Rank r reads the records whose index % 2 == r, in order, 2 a batch: step 1 trains on
  // {0,2} (rank 0) and {1,3} (rank 1), step 2 on {4,6} and {5,7}, step 3 (the next
  // epoch) on {0,2} and {1,3} again. One process with grad_accum 2 sees the same
  // micro-batches from the reordered manifest.
  write_manifest(dir / "ddp.jsonl", records, {0, 1, 2, 3, 4, 5, 6, 7});
  write_manifest(dir / "one.jsonl", records, {0, 2, 1, 3, 4, 6, 5, 7});

  auto two = test::run_command(kLaunchLocal.string() + " 2 " + kPalTrain +
                               train_args(dir / "ddp.jsonl", dir / "two", 2, 1, "--set steps=3"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  auto one = test::run_command(kPalTrain + train_args(dir / "one.jsonl", dir / "one", 2, 2, "--set steps=3"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(two.output.find("data parallel over 2 ranks (gloo)"), std::string::npos) << two.output;

  // Every rank holds bit-identical parameters at the final checkpoint.
  const auto ranks = metrics(dir / "two", "ranks");
  ASSERT_EQ(ranks.size(), 1u) << two.output;
  const auto prints = ranks[0]["parameter_fingerprints"].get<std::vector<std::string>>();
  ASSERT_EQ(prints.size(), 2u);
  EXPECT_EQ(prints[0], prints[1]);
  EXPECT_EQ(ranks[0]["step"], 3);

  // The same losses (the mean over both ranks) and the same weights as one process.
  const auto l2 = metrics(dir / "two", "train"), l1 = metrics(dir / "one", "train");
  ASSERT_EQ(l2.size(), 3u);
  ASSERT_EQ(l1.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const double a = l2[i]["loss"].get<double>(), b = l1[i]["loss"].get<double>();
    EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << "step " << i + 1;
  }
  // Step 1's loss differs from step 2's (other records): the comparison is not vacuous.
  EXPECT_GT(std::abs(l1[0]["loss"].get<double>() - l1[1]["loss"].get<double>()), 1e-4);
  size_t compared = 0;
  const double diff = max_difference(dir / "two" / "final", dir / "one" / "final", &compared);
  EXPECT_GT(compared, 0u);
  EXPECT_LT(diff, 2e-5) << "max |two ranks - one process| over " << compared << " tensors";
  // And training moved them (lr 3e-3 for 3 steps), so equality means something.
  test::TempDir fresh;
  auto none =
      test::run_command(kPalTrain + train_args(dir / "one.jsonl", fresh / "o", 2, 2, "--set steps=1"));
  ASSERT_EQ(none.exit_code, 0) << none.output;
  EXPECT_GT(max_difference(fresh / "o" / "final", dir / "one" / "final", &compared), 1e-3);

  // Resume: 2 ranks stopped after step 1 and started again compute what the uninterrupted
  // run computed (each rank's data cursor is in the checkpoint).
  auto first =
      test::run_command(kLaunchLocal.string() + " 2 " + kPalTrain +
                        train_args(dir / "ddp.jsonl", dir / "again", 2, 1, "--set steps=3 --stop-after 1"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const TrainerState st =
      trainer_state_from_json(read_file(dir / "again" / "step-000001" / "trainer_state.json"), "state");
  EXPECT_EQ(st.world_size, 2);
  ASSERT_EQ(st.data_cursors.size(), 2u);
  EXPECT_NE(st.data_cursors[0], st.data_cursors[1]);
  fs::copy(dir / "again", dir / "other", fs::copy_options::recursive);
  auto rest = test::run_command(kLaunchLocal.string() + " 2 " + kPalTrain +
                                train_args(dir / "ddp.jsonl", dir / "again", 2, 1, "--set steps=3"));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  EXPECT_EQ(max_difference(dir / "again" / "final", dir / "two" / "final", &compared), 0.0);

  // At another world size (1 process) the run continues from the step, with a warning.
  auto alone =
      test::run_command(kPalTrain + train_args(dir / "ddp.jsonl", dir / "other", 2, 1, "--set steps=3"));
  ASSERT_EQ(alone.exit_code, 0) << alone.output;
  EXPECT_NE(alone.output.find("written by 2 rank(s), this run has 1"), std::string::npos) << alone.output;
  EXPECT_EQ(metrics(dir / "other", "train").size(), 3u);
  EXPECT_TRUE(stage_finished(dir / "other"));
}

// Starts `command` through sh with `env` before it; output to `log`.
pid_t spawn(const std::string& env, const std::string& command, const fs::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec env " + env + " " + command + " >" + log.string() + " 2>&1").c_str(),
          nullptr);
    _exit(127);
  }
  return pid;
}

// The exit status of `pid` once it ends within `seconds`; nullopt if it still runs.
std::optional<int> wait_for(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return std::nullopt;
}

struct TwoRanks {
  pid_t rank0 = -1, rank1 = -1;
  ~TwoRanks() {
    for (pid_t p : {rank0, rank1})
      if (p > 0) {
        kill(p, SIGKILL);
        waitpid(p, nullptr, 0);
      }
  }
};

TwoRanks start_two_ranks(const fs::path& dir, const std::string& timeout_s) {
  const std::string common = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) +
                             " PAL_DIST_TIMEOUT=" + timeout_s;
  const std::string cmd = kPalTrain + " --no-progress --config " + (kConfigs / "stage1_align.yaml").string() +
                          " --set output_dir=" + (dir / "run").string() +
                          " --set steps=4000 --set threads=1 --set log_every=1 --set checkpoint.every=0";
  TwoRanks ranks;
  ranks.rank0 = spawn(common + " RANK=0 LOCAL_RANK=0", cmd, dir / "rank0.log");
  ranks.rank1 = spawn(common + " RANK=1 LOCAL_RANK=1", cmd, dir / "rank1.log");
  return ranks;
}

bool wait_until_training(const fs::path& dir) {
  for (int i = 0; i < 600; ++i) {
    if (fs::exists(dir / "run" / "metrics.jsonl") && fs::file_size(dir / "run" / "metrics.jsonl") > 0)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

TEST(E2EDistributed, AKilledRankEndsTheRunWithAnError) {
  test::TempDir dir;
  TwoRanks ranks = start_two_ranks(dir.path(), "60");
  ASSERT_TRUE(wait_until_training(dir.path())) << read_file(dir / "rank0.log");
  kill(ranks.rank1, SIGKILL);
  waitpid(ranks.rank1, nullptr, 0);
  ranks.rank1 = -1;
  const auto start = std::chrono::steady_clock::now();
  const auto status = wait_for(ranks.rank0, 90);
  ASSERT_TRUE(status.has_value()) << "rank 0 still runs 90 s after rank 1 died";
  ranks.rank0 = -1;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = read_file(dir / "rank0.log");
  ASSERT_TRUE(WIFEXITED(*status)) << log;
  EXPECT_EQ(WEXITSTATUS(*status), 1) << log;
  EXPECT_NE(log.find("rank 0/2"), std::string::npos) << log;
  EXPECT_NE(log.find("failed"), std::string::npos) << log;
  // A dead peer's closed sockets end it at once, long before the 60 s timeout.
  EXPECT_LT(seconds, 30) << log;
}

TEST(E2EDistributed, AStalledRankEndsTheRunAfterTheTimeout) {
  test::TempDir dir;
  TwoRanks ranks = start_two_ranks(dir.path(), "4");
  ASSERT_TRUE(wait_until_training(dir.path())) << read_file(dir / "rank0.log");
  kill(ranks.rank1, SIGSTOP);  // alive (sockets open) but silent
  const auto start = std::chrono::steady_clock::now();
  const auto status = wait_for(ranks.rank0, 60);
  ASSERT_TRUE(status.has_value()) << "rank 0 still runs 60 s after rank 1 stalled (timeout 4 s)";
  ranks.rank0 = -1;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = read_file(dir / "rank0.log");
  ASSERT_TRUE(WIFEXITED(*status)) << log;
  EXPECT_EQ(WEXITSTATUS(*status), 1) << log;
  EXPECT_NE(log.find("rank 0/2"), std::string::npos) << log;
  EXPECT_NE(log.find("timeout 4 s"), std::string::npos) << log;
  EXPECT_GE(seconds, 3.0) << log;
  EXPECT_LT(seconds, 40) << log;
}

TEST(E2EDistributed, TorchrunLaunchesTwoRanks) {
  const std::string kTorchrun = torchrun();
  if (kTorchrun.empty())
    GTEST_SKIP() << "no torchrun: run scripts/setup.sh --torch pip (build/pip/venv) or set PAL_TORCHRUN";
  test::TempDir dir;
  auto r = test::run_command(kTorchrun + " --no_python --nproc_per_node 2 --master_port " +
                             std::to_string(free_port()) + " " + kPalTrain + " --no-progress --config " +
                             (kConfigs / "stage1_align.yaml").string() +
                             " --set output_dir=" + (dir / "run").string() +
                             " --set steps=3 --set threads=1 --set log_every=1 --set 'data.eval=[]'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(stage_finished(dir / "run")) << r.output;
  EXPECT_EQ(metrics(dir / "run", "train").size(), 3u) << r.output;
  const auto ranks = metrics(dir / "run", "ranks");
  ASSERT_EQ(ranks.size(), 1u) << r.output;
  const auto prints = ranks[0]["parameter_fingerprints"].get<std::vector<std::string>>();
  ASSERT_EQ(prints.size(), 2u);
  EXPECT_EQ(prints[0], prints[1]);
}

TEST(E2EDistributed, LaunchLocalReturnsTheFirstFailingRanksCode) {
  // Rank 1 fails at once with 3; rank 0 would sleep 60 s but is stopped.
  const auto start = std::chrono::steady_clock::now();
  auto r =
      test::run_command(kLaunchLocal.string() + " 2 sh -c 'if [ $RANK = 1 ]; then exit 3; fi; sleep 60'");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30);
}

}  // namespace
}  // namespace pal::train
