// Internal logging helpers for library sources: log_info("loaded ", n, " tensors").
//
// spdlog stays inside logging.cpp, which is compiled without LibTorch's include folders:
// the PyPI LibTorch ships its own, newer {fmt} headers, which would shadow the {fmt} that
// Debian's spdlog was built against.
#pragma once

#include <sstream>
#include <string>

#include "pal/core/logging.h"

namespace pal::detail {

bool log_enabled(LogLevel level);

template <class... Args>
void log(LogLevel level, const Args&... args) {
  if (!log_enabled(level)) return;
  std::ostringstream text;
  (text << ... << args);
  log_message(level, text.str());
}

template <class... Args>
void log_debug(const Args&... args) {
  log(LogLevel::debug, args...);
}
template <class... Args>
void log_info(const Args&... args) {
  log(LogLevel::info, args...);
}
template <class... Args>
void log_warn(const Args&... args) {
  log(LogLevel::warn, args...);
}
template <class... Args>
void log_error(const Args&... args) {
  log(LogLevel::error, args...);
}

}  // namespace pal::detail
