// Element types of the safetensors format, independent of LibTorch.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace pal::io {

enum class DType { BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2 };

// The format's name ("F32", "BF16", ...).
std::string_view dtype_name(DType dtype);
// Bytes per element.
size_t dtype_size(DType dtype);
// Parses a format name; nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name);

}  // namespace pal::io
