#include "pal/io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"

namespace pal::io {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

struct SafetensorsFile::Mapping {
  std::filesystem::path path;
  uint8_t* base = nullptr;
  size_t size = 0;
  SafetensorsHeader header;
  std::map<std::string, size_t> index;  // name -> position in header.tensors

  ~Mapping() {
    if (base) ::munmap(base, size);
  }
};

namespace {

std::optional<at::ScalarType> torch_dtype(DType dtype) {
  switch (dtype) {
    case DType::BOOL: return at::kBool;
    case DType::U8: return at::kByte;
    case DType::I8: return at::kChar;
    case DType::I16: return at::kShort;
    case DType::I32: return at::kInt;
    case DType::I64: return at::kLong;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::F32: return at::kFloat;
    case DType::F64: return at::kDouble;
    default: return std::nullopt;
  }
}

std::optional<DType> format_dtype(at::ScalarType type) {
  switch (type) {
    case at::kBool: return DType::BOOL;
    case at::kByte: return DType::U8;
    case at::kChar: return DType::I8;
    case at::kShort: return DType::I16;
    case at::kInt: return DType::I32;
    case at::kLong: return DType::I64;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    default: return std::nullopt;
  }
}

}  // namespace

// ---- SafetensorsFile -------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& file) {
  auto m = std::make_shared<Mapping>();
  m->path = file;
  const std::string name = file.string();
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError("cannot open '" + name + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError("cannot read '" + name + "': not a regular file");
  }
  m->size = static_cast<size_t>(st.st_size);
  if (m->size > 0) {
    // Private, writable pages: a caller that writes into a returned view gets its own
    // copy of the page; the file is never modified.
    void* p = ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw IoError("cannot map '" + name + "': " + std::strerror(err));
    }
    m->base = static_cast<uint8_t*>(p);
  }
  ::close(fd);
  static const uint8_t empty[1] = {0};
  m->header = parse_safetensors_header(m->base ? m->base : empty, m->size, name);
  for (size_t i = 0; i < m->header.tensors.size(); ++i) m->index[m->header.tensors[i].name] = i;
  SafetensorsFile f;
  f.mapping_ = std::move(m);
  return f;
}

const std::filesystem::path& SafetensorsFile::path() const {
  return mapping_->path;
}
const std::vector<TensorInfo>& SafetensorsFile::tensors() const {
  return mapping_->header.tensors;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return mapping_->header.metadata;
}
bool SafetensorsFile::contains(const std::string& name) const {
  return mapping_->index.count(name) > 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = mapping_->index.find(name);
  if (it == mapping_->index.end())
    throw WeightsError(mapping_->path.string() + ": no tensor named '" + name + "'");
  return mapping_->header.tensors[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& t = info(name);
  auto type = torch_dtype(t.dtype);
  if (!type)
    throw WeightsError(mapping_->path.string() + ": tensor '" + name + "': dtype " +
                       std::string(dtype_name(t.dtype)) + " is not supported by this LibTorch");
  auto options = at::TensorOptions().dtype(*type).device(at::kCPU);
  if (t.numel() == 0) return at::empty(t.shape, options);
  uint8_t* data = mapping_->base + mapping_->header.data_start + t.begin;
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(t.dtype) == 0) {
    std::shared_ptr<const Mapping> keep = mapping_;
    return at::from_blob(
        data, t.shape, [keep](void*) {}, options);
  }
  at::Tensor copy = at::empty(t.shape, options);
  std::memcpy(copy.data_ptr(), data, t.nbytes());
  return copy;
}

// ---- SafetensorsCheckpoint -------------------------------------------------------------

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string folder_listing(const std::filesystem::path& folder) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(folder, ec))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  std::string out;
  for (size_t i = 0; i < names.size() && i < 12; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 12) out += ", ...";
  return out.empty() ? "nothing" : out;
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::filesystem::path& path) {
  SafetensorsCheckpoint c;
  c.path_ = path;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw IoError("'" + path.string() + "' does not exist");

  auto add_file = [&](const std::filesystem::path& file) -> size_t {
    c.files_.push_back(SafetensorsFile::open(file));
    return c.files_.size() - 1;
  };

  // One file holds every tensor and the metadata.
  auto single_file = [&](const std::filesystem::path& file) {
    size_t i = add_file(file);
    for (const auto& t : c.files_[i].tensors()) c.where_[t.name] = i;
    c.metadata_ = c.files_[i].metadata();
    return c;
  };

  if (!std::filesystem::is_directory(path, ec)) return single_file(path);

  const auto index_path = path / kIndexName;
  if (std::filesystem::exists(index_path, ec)) {
    const std::string index_name = index_path.string();
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(read_file(index_path));
    } catch (const nlohmann::json::exception& e) {
      throw WeightsError(index_name + ": not valid JSON: " + e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      throw WeightsError(index_name + ": missing object 'weight_map'");
    if (index.contains("metadata") && index["metadata"].is_object())
      for (auto it = index["metadata"].begin(); it != index["metadata"].end(); ++it)
        c.metadata_[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    std::map<std::string, size_t> shard_index;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw WeightsError(index_name + ": weight_map entry '" + it.key() + "' is not a file name");
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        throw WeightsError(index_name + ": weight_map entry '" + it.key() + "' names '" + shard +
                           "', which is not a file name in the checkpoint folder");
      auto found = shard_index.find(shard);
      if (found == shard_index.end()) {
        if (!std::filesystem::exists(path / shard, ec))
          throw WeightsError(index_name + ": shard '" + shard + "' (holding '" + it.key() + "') is missing");
        found = shard_index.emplace(shard, add_file(path / shard)).first;
      }
      if (!c.files_[found->second].contains(it.key()))
        throw WeightsError(index_name + ": tensor '" + it.key() + "' should be in shard '" + shard +
                           "' but is not there");
      c.where_[it.key()] = found->second;
    }
    return c;
  }

  const auto single = path / kSingleName;
  if (std::filesystem::exists(single, ec)) return single_file(single);
  std::string hint;
  if (std::filesystem::exists(path / "pytorch_model.bin", ec))
    hint = " (pytorch_model.bin checkpoints are not read; save the model with safetensors)";
  throw WeightsError("'" + path.string() + "' holds neither " + kSingleName + " nor " + kIndexName + hint +
                     "; found: " + folder_listing(path));
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

bool SafetensorsCheckpoint::contains(const std::string& name) const {
  return where_.count(name) > 0;
}

const TensorInfo& SafetensorsCheckpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw WeightsError(path_.string() + ": no tensor named '" + name + "'");
  return files_[it->second].info(name);
}

at::Tensor SafetensorsCheckpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw WeightsError(path_.string() + ": no tensor named '" + name + "'");
  return files_[it->second].tensor(name);
}

// ---- writing ---------------------------------------------------------------------------

namespace {

struct Prepared {
  std::string name;
  DType dtype;
  at::Tensor data;  // contiguous, CPU
};

// Larger elements first, so each tensor's offset is a multiple of its element size.
bool by_alignment(const Prepared& a, const Prepared& b) {
  size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
  return sa != sb ? sa > sb : a.name < b.name;
}

std::vector<Prepared> prepare(const std::filesystem::path& file, const NamedTensors& tensors) {
  std::set<std::string> names;
  std::vector<Prepared> out;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty()) throw WeightsError(file.string() + ": a tensor has an empty name");
    if (name == "__metadata__")
      throw WeightsError(file.string() + ": '__metadata__' is reserved, not a tensor name");
    if (!names.insert(name).second) throw WeightsError(file.string() + ": tensor '" + name + "' given twice");
    if (!tensor.defined()) throw WeightsError(file.string() + ": tensor '" + name + "' is undefined");
    auto dtype = format_dtype(tensor.scalar_type());
    if (!dtype)
      throw WeightsError(file.string() + ": tensor '" + name + "' has dtype " +
                         std::string(c10::toString(tensor.scalar_type())) +
                         ", which safetensors cannot store");
    out.push_back({name, *dtype, tensor.detach().to(at::kCPU).contiguous()});
  }
  std::sort(out.begin(), out.end(), by_alignment);
  return out;
}

uint64_t byte_size(const at::Tensor& t) {
  return static_cast<uint64_t>(t.numel()) * t.element_size();
}

void write_prepared(const std::filesystem::path& file, const std::vector<Prepared>& tensors,
                    const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t n = byte_size(t.data);
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.data.sizes().vec()},
                      {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data buffer starts 8-aligned
  uint8_t length[8];
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(len >> (8 * i));

  AtomicFile out(file);
  out.write(length, sizeof length);
  out.write(text);
  for (const auto& t : tensors) out.write(t.data.data_ptr(), byte_size(t.data));
  out.commit();
}

}  // namespace

void save_safetensors(const std::filesystem::path& file, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_prepared(file, prepare(file, tensors), metadata);
}

void save_safetensors_sharded(const std::filesystem::path& folder, const NamedTensors& tensors,
                              uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  if (max_shard_bytes == 0) throw WeightsError("max_shard_bytes must be > 0");
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw IoError("cannot create folder '" + folder.string() + "': " + ec.message());

  std::vector<Prepared> all = prepare(folder / kSingleName, tensors);
  uint64_t total = 0;
  for (const auto& t : all) total += byte_size(t.data);
  if (total <= max_shard_bytes) {
    write_prepared(folder / kSingleName, all, metadata);
    std::filesystem::remove(folder / kIndexName, ec);  // a stale index would shadow the new file
    return;
  }
  // Greedy split in name order (the order of HF's own sharding).
  std::sort(all.begin(), all.end(), [](const Prepared& a, const Prepared& b) { return a.name < b.name; });
  std::vector<std::vector<Prepared>> shards(1);
  uint64_t current = 0;
  for (auto& t : all) {
    uint64_t n = byte_size(t.data);
    if (!shards.back().empty() && current + n > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(std::move(t));
    current += n;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    auto& shard = shards[i];
    std::sort(shard.begin(), shard.end(), by_alignment);
    write_prepared(folder / name, shard, metadata);
    for (const auto& t : shard) weight_map[t.name] = name;
  }
  nlohmann::json index_metadata = nlohmann::json::object();
  for (const auto& [k, v] : metadata) index_metadata[k] = v;
  index_metadata["total_size"] = total;
  nlohmann::json index = {{"metadata", index_metadata}, {"weight_map", weight_map}};
  write_file_atomic(folder / kIndexName, index.dump(2) + "\n");
  std::filesystem::remove(folder / kSingleName, ec);  // would be ignored beside an index anyway
}

}  // namespace pal::io
