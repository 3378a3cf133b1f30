// libFuzzer target: any byte string is either a valid safetensors header or a
// pal::WeightsError; never a crash, a hang or an out-of-bounds read.
#include <cstddef>
#include <cstdint>

#include "pal/core/error.h"
#include "pal/io/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto header = pal::io::parse_safetensors_header(data, size, "fuzz.safetensors");
    // Every accepted tensor must lie inside the input.
    for (const auto& t : header.tensors)
      if (header.data_start + t.end > size || t.end < t.begin) __builtin_trap();
  } catch (const pal::WeightsError&) {
  }
  return 0;
}
