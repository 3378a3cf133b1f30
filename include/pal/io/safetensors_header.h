// The safetensors header: tensor names, dtypes, shapes and byte ranges, parsed and
// validated without LibTorch (see safetensors.h for reading the tensors themselves).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pal/io/dtype.h"

namespace pal::io {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer, [begin, end)
  uint64_t end = 0;

  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in file order of their data
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data buffer (8 + header length)
};

// Largest header accepted, as in the reference implementation (100 MB).
constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// Parses and validates the header of a complete file image of `size` bytes: length in
// bounds, JSON well-formed, known dtypes, shapes non-negative, byte sizes equal to shape
// x dtype, offsets in bounds and tiling the data buffer without overlap or gap, no
// duplicate names. `file` names the file in messages. Does not need LibTorch.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& file);

}  // namespace pal::io
