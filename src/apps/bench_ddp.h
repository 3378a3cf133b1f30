// pal-bench ddp: data-parallel training throughput on this machine: the same stage trained
// by 1 process and by N processes (Gloo on the CPU, NCCL on CUDA), each rank with its own
// batch (the global batch grows with N) and cores / N intra-op threads, and the share of
// the step spent in the gradient all-reduce.
#pragma once

#include <cstdint>
#include <string>

namespace pal::bench {

struct DdpBenchArgs {
  std::string folder = "/tmp/pal-bench-ddp";  // model config, stage and runs (rewritten)
  int64_t processes = 2;                      // the multi-process run's ranks
  int64_t batch = 4;                          // examples per rank and step
  int64_t steps = 10;                         // timed optimizer steps (after 2 warm-up steps)
  int64_t hidden = 256;  // LLM width (trained: its gradients are what the ranks all-reduce)
  int64_t layers = 4;    // LLM layers
  std::string device = "cpu";
  bool json = false;
  // Internal: this process is one rank of a run (the environment says which).
  bool worker = false;
  int64_t threads = 0;
};

int bench_ddp(const DdpBenchArgs& args, const std::string& self_exe);

}  // namespace pal::bench
