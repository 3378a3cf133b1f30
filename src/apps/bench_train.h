// pal-bench train: training throughput of the C++ trainer against an equivalent PyTorch
// training loop in Python (scripts/bench/train_reference.py), same model and batch, same run.
#pragma once

#include <cstdint>
#include <string>

namespace pal::bench {

struct TrainBenchArgs {
  std::string folder = "/tmp/pal-bench-train";  // the model folder and clips (written if new)
  int64_t batch = 8;
  int64_t steps = 12;       // timed optimizer steps (after 3 warm-up steps)
  double seconds = 5.0;     // audio per example (the tiny Whisper's window is 5 s)
  int64_t hidden = 384;     // LLM width
  int64_t layers = 6;       // LLM layers
  int threads = 0;          // 0: every core
  bool json = false;
  bool reference = true;
  std::string python;       // default: build/pip/venv/bin/python when present, else python3
  std::string reference_script;
};

int bench_train(const TrainBenchArgs& args);

}  // namespace pal::bench
