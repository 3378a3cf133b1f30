// Internal: PAL's spdlog logger, for library sources only (spdlog is a private
// dependency; public headers use pal/core/logging.h).
#pragma once

#include <spdlog/spdlog.h>

namespace pal {

spdlog::logger& logger();

}  // namespace pal
