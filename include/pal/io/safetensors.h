// The safetensors format: reading (memory-mapped, zero-copy where aligned), validation,
// sharded checkpoints, and atomic writing.
//
// ref: the format spec of huggingface/safetensors: 8 bytes little-endian header length N,
// N bytes of UTF-8 JSON {"name": {"dtype", "shape", "data_offsets": [begin, end)}, ...,
// "__metadata__": {str: str}}, then the data buffer, which the tensors cover exactly.
//
// Every malformed file is a pal::WeightsError that names the file and, where there is
// one, the tensor: never a crash, never an out-of-bounds read.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pal/io/safetensors_header.h"

namespace pal::io {

// One memory-mapped .safetensors file. Cheap to copy (shares the mapping); tensors
// returned by tensor() keep the mapping alive.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& file);

  const std::filesystem::path& path() const;
  const std::vector<TensorInfo>& tensors() const;
  const std::map<std::string, std::string>& metadata() const;
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws WeightsError if absent

  // The tensor on CPU in its stored dtype. A zero-copy view of the mapping when the data
  // is aligned for its dtype (writes go to private copy-on-write pages, never to the
  // file); otherwise an aligned copy. F8 and unsigned types above 8 bits are rejected
  // with a WeightsError (LibTorch 1.13 has no such dtypes).
  at::Tensor tensor(const std::string& name) const;

 private:
  struct Mapping;
  std::shared_ptr<const Mapping> mapping_;
};

// A checkpoint's weights: a folder with model.safetensors, a folder with
// model.safetensors.index.json and its shards, or a single .safetensors file.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::filesystem::path& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // Metadata of the index (sharded) or of the single file.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
  std::map<std::string, std::string> metadata_;
  std::filesystem::path path_;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes `tensors` (any device, any layout; copied to contiguous CPU) to `file`
// atomically. Data is laid out by decreasing element size, then name, so every tensor is
// aligned for its dtype once the header is padded to 8 bytes. Throws WeightsError on
// duplicate names or dtypes the format lacks, IoError on write failure.
void save_safetensors(const std::filesystem::path& file, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes `tensors` into `folder` as model.safetensors, or, when they exceed
// `max_shard_bytes`, as model-0000i-of-0000n.safetensors shards plus
// model.safetensors.index.json (the Hugging Face layout). Each file is atomic; the
// index is written last.
void save_safetensors_sharded(const std::filesystem::path& folder, const NamedTensors& tensors,
                              uint64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace pal::io
