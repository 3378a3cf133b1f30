// libFuzzer target: any text loaded as a config (with one override taken from its first
// line) either yields a config or a pal::ConfigError; resolved configs round-trip.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/example_config.h"
#include "pal/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::string override_line = text.substr(0, text.find('\n'));
  try {
    auto document = pal::config::Document::from_string(text, "fuzz.yaml");
    if (override_line.find('=') != std::string::npos) document.apply_override(override_line);
    auto c = pal::config::read<pal::test::StageConfig>(document);
    std::string yaml = pal::config::to_yaml(c);
    auto back = pal::config::parse<pal::test::StageConfig>(yaml, "resolved.yaml");
    if (pal::config::to_yaml(back) != yaml) __builtin_trap();
  } catch (const pal::ConfigError&) {
  }
  return 0;
}
