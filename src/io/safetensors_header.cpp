// Header parsing and validation for safetensors. Kept free of LibTorch so that the
// fuzz target can build it alone.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

#include "pal/core/error.h"
#include "pal/io/dtype.h"
#include "pal/io/safetensors_header.h"

namespace pal::io {
namespace {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},           {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},   {DType::U16, "U16", 2},         {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},   {DType::I64, "I64", 8},         {DType::U64, "U64", 8},
    {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},       {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},   {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

const DTypeEntry& entry(DType dtype) {
  for (const auto& e : kDTypes)
    if (e.dtype == dtype) return e;
  return kDTypes[0];
}

[[noreturn]] void fail(const std::string& file, const std::string& message) {
  throw WeightsError(file + ": " + message);
}

[[noreturn]] void fail_tensor(const std::string& file, const std::string& tensor,
                              const std::string& message) {
  throw WeightsError(file + ": tensor '" + tensor + "': " + message);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Reads a non-negative integer that fits uint64_t; false otherwise.
bool as_u64(const nlohmann::json& j, uint64_t& out) {
  if (j.is_number_unsigned()) return out = j.get<uint64_t>(), true;
  if (j.is_number_integer() && j.get<int64_t>() >= 0)
    return out = static_cast<uint64_t>(j.get<int64_t>()), true;
  return false;
}

}  // namespace

std::string_view dtype_name(DType dtype) {
  return entry(dtype).name;
}
size_t dtype_size(DType dtype) {
  return entry(dtype).size;
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& e : kDTypes)
    if (e.name == name) return e.dtype;
  return std::nullopt;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& file) {
  if (size < 8)
    fail(file, "file is " + std::to_string(size) +
                   " bytes, too short for a safetensors header (needs at least 8); truncated?");
  const uint64_t header_len = read_u64_le(data);
  if (header_len > kMaxSafetensorsHeader)
    fail(file, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(kMaxSafetensorsHeader) + " bytes; not a safetensors file?");
  if (header_len > size - 8)
    fail(file, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(size) + " bytes); truncated?");
  if (header_len == 0 || data[8] != '{')
    fail(file, "header does not start with '{'; not a safetensors file?");

  const char* text = reinterpret_cast<const char*>(data + 8);
  // Detect duplicate top-level names, which a JSON object would silently collapse.
  std::set<std::string> top_keys;
  std::string duplicate;
  auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      if (!top_keys.insert(parsed.get<std::string>()).second && duplicate.empty())
        duplicate = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, text + header_len, on_event);
  } catch (const nlohmann::json::exception& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) fail_tensor(file, duplicate, "appears twice in the header");
  if (!header.is_object()) fail(file, "header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + header_len;
  const uint64_t data_size = size - out.data_start;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) fail(file, "__metadata__ is not a JSON object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) fail(file, "__metadata__ entry '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) fail_tensor(file, name, "entry is not a JSON object");
    TensorInfo info;
    info.name = name;

    auto dtype_it = value.find("dtype");
    if (dtype_it == value.end() || !dtype_it->is_string()) fail_tensor(file, name, "missing string 'dtype'");
    auto dtype = parse_dtype(dtype_it->get<std::string>());
    if (!dtype) fail_tensor(file, name, "unknown dtype '" + dtype_it->get<std::string>() + "'");
    info.dtype = *dtype;

    auto shape_it = value.find("shape");
    if (shape_it == value.end() || !shape_it->is_array()) fail_tensor(file, name, "missing array 'shape'");
    // Element count with overflow checks: a hostile shape must not wrap around.
    uint64_t numel = 1;
    for (const auto& d : *shape_it) {
      uint64_t dim = 0;
      if (!as_u64(d, dim) || dim > static_cast<uint64_t>(INT64_MAX))
        fail_tensor(file, name,
                    "shape " + shape_it->dump() + " has a dimension that is not a non-negative integer");
      if (dim != 0 && numel > UINT64_MAX / dim)
        fail_tensor(file, name, "shape " + shape_it->dump() + " overflows");
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const uint64_t elem = dtype_size(info.dtype);
    if (numel > UINT64_MAX / elem) fail_tensor(file, name, "shape " + shape_it->dump() + " overflows");
    const uint64_t expected_bytes = numel * elem;

    auto off_it = value.find("data_offsets");
    if (off_it == value.end() || !off_it->is_array() || off_it->size() != 2 ||
        !as_u64((*off_it)[0], info.begin) || !as_u64((*off_it)[1], info.end))
      fail_tensor(file, name, "'data_offsets' must be two non-negative integers [begin, end]");
    if (info.end < info.begin)
      fail_tensor(file, name,
                  "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                      "] end before they begin");
    if (info.end - info.begin != expected_bytes)
      fail_tensor(file, name,
                  "holds " + std::to_string(info.end - info.begin) + " bytes but dtype " +
                      std::string(dtype_name(info.dtype)) + " x shape " + shape_it->dump() + " needs " +
                      std::to_string(expected_bytes));
    if (info.end > data_size)
      fail_tensor(file, name,
                  "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                      ") run past the data buffer (" + std::to_string(data_size) +
                      " bytes); truncated file?");
    out.tensors.push_back(std::move(info));
  }

  // The tensors must tile the data buffer: sorted by offset, each starts where the
  // previous one ended, and the last ends at the end of the file.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t position = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : out.tensors) {
    if (t.begin < position)
      fail_tensor(file, t.name,
                  "data [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ") overlaps tensor '" +
                      previous->name + "' [" + std::to_string(previous->begin) + ", " +
                      std::to_string(previous->end) + ")");
    if (t.begin > position)
      fail_tensor(file, t.name,
                  "data starts at " + std::to_string(t.begin) + " but the previous tensor ends at " +
                      std::to_string(position) + " (a gap in the data buffer)");
    position = t.end;
    previous = &t;
  }
  if (position != data_size)
    fail(file, std::to_string(data_size - position) +
                   " bytes at the end of the data buffer belong to no tensor (the file is longer than its "
                   "header says)");
  return out;
}

}  // namespace pal::io
