#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace pal::train {
namespace {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s % 3600 / 60));
  else
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string stage, int64_t total_steps, bool enabled)
    : stage_(std::move(stage)), total_(total_steps), active_(enabled && ::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(const StepMetrics& m) {
  if (!active_) return;
  const auto now = std::chrono::steady_clock::now();
  if (first_step_ < 0) {
    first_step_ = m.step - 1;
    start_ = now;
  }
  // At most 10 redraws a second, and always the last step.
  if (m.step != total_ && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double done = total_ > 0 ? static_cast<double>(m.step) / static_cast<double>(total_) : 1.0;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const int64_t steps_here = m.step - first_step_;
  const double eta = steps_here > 0 ? elapsed / static_cast<double>(steps_here) * static_cast<double>(total_ - m.step) : -1;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(done * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r\033[K[%s] %lld/%lld %s %3d%% | loss %.4f | lr %.2e | %.0f tok/s | %.1f audio s/s | ETA %s",
               stage_.c_str(), static_cast<long long>(m.step), static_cast<long long>(total_), bar.c_str(),
               static_cast<int>(done * 100), m.loss, m.lr, m.tokens_per_second, m.audio_seconds_per_second,
               format_duration(eta).c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::note(const std::string& text) {
  if (!active_) return;
  std::fprintf(stderr, "\r\033[K[%s] %s\n", stage_.c_str(), text.c_str());
  drawn_ = false;
}

void ProgressBar::finish() {
  if (active_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace pal::train
