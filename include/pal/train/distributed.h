// Multi-process training on torch.distributed (c10d): the launch environment, the
// process group (TCPStore rendezvous, then NCCL on CUDA or Gloo on the CPU) and the few
// collectives the trainer needs. Every c10d call lives in src/train/distributed.cpp,
// since the c10d API differs between LibTorch 1.13 (ProcessGroup) and 2.x (Backend).
//
//   torchrun --no-python --nproc-per-node 2 pal-train --config stage.yaml
//
//   auto env = pal::train::DistributedEnv::from_environment();   // RANK, WORLD_SIZE, ...
//   auto group = std::make_shared<pal::train::ProcessGroup>(*env);
//   group->connect(/*cuda=*/false, config.distributed);           // rendezvous (collective)
//   group->all_reduce_sum(tensors, "gradients");                  // in place, every rank
//
// Failures: a collective that fails (a rank died: its sockets closed) or does not finish
// within the timeout throws DistributedError naming this rank, the operation and the
// backend's message, so that the surviving ranks exit instead of hanging.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pal/core/config.h"
#include "pal/core/error.h"

namespace pal::train {

// A collective or the rendezvous failed or timed out.
class DistributedError : public Error {
 public:
  using Error::Error;
};

// The `distributed:` section of a stage config (used only when the process was launched
// as one rank of several: torchrun, scripts/launch_local.sh, Slurm).
struct DistributedConfig {
  std::string backend = "auto";  // auto (NCCL on CUDA, Gloo on the CPU), nccl, gloo
  double timeout_s = 600;        // rendezvous and each collective; the env var
                                 // PAL_DIST_TIMEOUT (seconds), when set, replaces it
  double bucket_mb = 25;         // gradient all-reduce bucket size (MiB)

  template <class V>
  void visit(V& v) {
    v("backend", backend, config::Rule().one_of({"auto", "nccl", "gloo"}));
    v("timeout_s", timeout_s, config::Rule().greater_than(0));
    v("bucket_mb", bucket_mb, config::Rule().greater_than(0));
  }
};

// Where this process sits in the job, from the launcher's environment:
//   torchrun / launch_local.sh: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//     MASTER_ADDR, MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True: the store runs in
//     torchrun's agent and rank 0 is a client too; TORCHELASTIC_RESTART_COUNT)
//   Slurm (srun), when RANK is not set: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
//     SLURM_NTASKS_PER_NODE; MASTER_ADDR defaults to SLURM_LAUNCH_NODE_IPADDR,
//     MASTER_PORT to 29500.
struct DistributedEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;  // the device index on this node (cuda:local_rank)
  int64_t local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  bool agent_store = false;   // every rank is a TCPStore client (torchrun's agent store)
  int64_t restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: the store key prefix
  std::string launcher;       // "torchrun", "slurm": shown in messages

  // nullopt when neither WORLD_SIZE nor SLURM_NTASKS is set (a plain single process).
  // A malformed or inconsistent value (WORLD_SIZE=abc, RANK >= WORLD_SIZE, a missing
  // MASTER_PORT) is a ConfigError naming the variable and its value.
  static std::optional<DistributedEnv> from_environment();
  std::string describe() const;  // "rank 1/2 (local 1) via torchrun, store 127.0.0.1:29500"
};

// True when this build of PAL can create that backend (Gloo needs gloo's headers at
// build time; NCCL a CUDA LibTorch built with it, and nccl.h).
bool gloo_available();
bool nccl_available();

// One process group per process, shared by the stages of a curriculum. Unconnected until
// connect(); the collectives are called by every rank in the same order.
class ProcessGroup {
 public:
  explicit ProcessGroup(DistributedEnv env);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // The TCPStore rendezvous and the backend (config.backend; auto: NCCL when `cuda`,
  // else Gloo). Later calls check that the backend would be the same and return.
  // ConfigError when the backend is not built in; DistributedError when the rendezvous
  // does not complete within the timeout.
  void connect(bool cuda, const DistributedConfig& config);
  bool connected() const;

  int64_t rank() const;
  int64_t world_size() const;
  int64_t local_rank() const;
  const DistributedEnv& env() const;
  std::string backend_name() const;  // "gloo", "nccl" ("" before connect)
  std::chrono::milliseconds timeout() const;

  // In place on every rank; `what` names the operation in errors ("gradients, bucket 2/3").
  void broadcast(std::vector<at::Tensor>& tensors, int64_t root, const std::string& what);
  void all_reduce_sum(std::vector<at::Tensor>& tensors, const std::string& what);
  void barrier(const std::string& what);

  // Started collectives; wait() throws DistributedError like the blocking calls.
  class Pending {
   public:
    Pending();
    ~Pending();
    Pending(Pending&&) noexcept;
    Pending& operator=(Pending&&) noexcept;
    void wait();

   private:
    friend class ProcessGroup;
    struct Work;
    std::unique_ptr<Work> work_;
  };
  Pending all_reduce_sum_async(std::vector<at::Tensor>& tensors, const std::string& what);

  // Every rank's `value`, in rank order (through the store; for small strings such as
  // data cursors). `key` must be unique per call within the run.
  std::vector<std::string> all_gather_strings(const std::string& value, const std::string& key);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Data-parallel gradients: the trainable parameters' gradients packed into flat buckets
// of about bucket_mb (per dtype and device, in reverse registration order, as the
// backward pass produces them), summed over the ranks and divided by the world size.
// All buckets are started at once after the backward pass and waited in order
// (no overlap with the backward pass: see README, "Multi-process training").
// Parameters without a gradient on a rank count as zeros, so that every rank sends the
// same buckets.
class GradientBuckets {
 public:
  GradientBuckets(std::vector<at::Tensor> parameters, double bucket_mb);
  // Averages the gradients over the ranks, in place (defines missing ones as zeros).
  // Returns the seconds spent in the all-reduce (pack, collectives, unpack).
  double all_reduce_mean(ProcessGroup& group);
  size_t bucket_count() const { return buckets_.size(); }

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<std::vector<size_t>> buckets_;  // indices into parameters_
};

// Broadcasts `tensors` (parameters, buffers) from rank 0 in flat buckets of bucket_mb.
void broadcast_from_rank0(ProcessGroup& group, const std::vector<at::Tensor>& tensors, double bucket_mb,
                          const std::string& what);

}  // namespace pal::train
