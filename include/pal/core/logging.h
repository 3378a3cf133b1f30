// Process-wide logging setup. PAL logs through spdlog internally; this header keeps
// spdlog out of the public API so that consumers of pal::pal need not find it.
#pragma once

#include <string>

namespace pal {

enum class LogLevel { trace, debug, info, warn, error, off };

// Parses "trace", "debug", "info", "warn", "error" or "off"; throws pal::ConfigError
// naming the value and the accepted ones otherwise.
LogLevel parse_log_level(const std::string& name);

// Sets the level of PAL's logger (default: info, or $PAL_LOG_LEVEL when set).
void set_log_level(LogLevel level);

// Also appends every message to `path` (created if missing). Throws pal::IoError when
// the file cannot be opened.
void add_log_file(const std::string& path);

// Logs one message at the given level through PAL's logger; for apps and consumers that
// want their lines in the same stream and format as the library's.
void log_message(LogLevel level, const std::string& message);

}  // namespace pal
