// The progress bar of a training stage on stderr (when it is a terminal):
//   [align]  120/1000 ######......  12% | loss 2.314 | lr 9.8e-04 | 1520 tok/s | 35.2 audio s/s | ETA 4m12s
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "pal/train/trainer.h"

namespace pal::train {

class ProgressBar {
 public:
  // Draws only when `enabled` and stderr is a terminal; active() says whether it does.
  ProgressBar(std::string stage, int64_t total_steps, bool enabled);
  ~ProgressBar();
  bool active() const { return active_; }
  void update(const StepMetrics& m);
  // A message printed above the bar (e.g. an evaluation result).
  void note(const std::string& text);
  void finish();

 private:
  std::string stage_;
  int64_t total_;
  bool active_;
  bool drawn_ = false;
  int64_t first_step_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace pal::train
