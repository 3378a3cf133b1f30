#include "pal/core/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "log.h"
#include "pal/core/error.h"

namespace pal {
namespace {

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::trace: return spdlog::level::trace;
    case LogLevel::debug: return spdlog::level::debug;
    case LogLevel::info: return spdlog::level::info;
    case LogLevel::warn: return spdlog::level::warn;
    case LogLevel::error: return spdlog::level::err;
    case LogLevel::off: return spdlog::level::off;
  }
  return spdlog::level::info;
}

std::shared_ptr<spdlog::logger> make_logger() {
  // Messages go to stderr so that tools can print results on stdout.
  auto logger = spdlog::stderr_color_mt("pal");
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  LogLevel level = LogLevel::info;
  if (const char* env = std::getenv("PAL_LOG_LEVEL")) {
    try {
      level = parse_log_level(env);
    } catch (const ConfigError& e) {
      logger->warn("ignoring PAL_LOG_LEVEL: {}", e.what());
    }
  }
  logger->set_level(to_spdlog(level));
  return logger;
}

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger();
  return *instance;
}

}  // namespace

namespace detail {
bool log_enabled(LogLevel level) {
  return logger().should_log(to_spdlog(level));
}
}  // namespace detail

LogLevel parse_log_level(const std::string& name) {
  if (name == "trace") return LogLevel::trace;
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warn" || name == "warning") return LogLevel::warn;
  if (name == "error") return LogLevel::error;
  if (name == "off") return LogLevel::off;
  throw ConfigError("unknown log level '" + name + "' (expected trace, debug, info, warn, error or off)");
}

void set_log_level(LogLevel level) {
  logger().set_level(to_spdlog(level));
}

void add_log_file(const std::string& path) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
    sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
    logger().sinks().push_back(sink);
  } catch (const spdlog::spdlog_ex& e) {
    throw IoError("cannot open log file '" + path + "': " + e.what());
  }
}

void log_message(LogLevel level, const std::string& message) {
  logger().log(to_spdlog(level), "{}", message);
}

}  // namespace pal
