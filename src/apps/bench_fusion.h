// pal-bench fusion: step time, memory and FLOPs of each fusion mode (bench_fusion.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pal/models/fusion.h"

namespace pal::bench {

struct FusionBenchArgs {
  std::vector<int64_t> audio_lengths = {300, 750, 1500};  // Na
  std::vector<int64_t> text_lengths = {64, 256};          // Nt
  int64_t batch = 2;
  int64_t layers = 12;
  int64_t width = 512;
  int64_t start_layer = 4;
  int64_t answer = 16;  // answer tokens (the loss) at the end of the text
  int repeats = 3;
  int threads = 0;
  bool json = false;
  bool whole = false;  // include a frozen Whisper-base encoder in the step (Na = 50 frames per second)
  // A single run in this process (what the parent starts per mode).
  bool single_run = false;
  models::FusionMode single = models::FusionMode::prefix;
  int64_t audio = 750, text = 128;
};

// Resident memory of this process now, and its peak so far, in MiB.
double resident_mib();
double peak_resident_mib();

// self_exe: this program, to run each mode in a child process.
int bench_fusion(const FusionBenchArgs& args, const std::string& self_exe);

}  // namespace pal::bench
