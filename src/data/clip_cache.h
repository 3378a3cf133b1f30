// Decoding the audio of an example, optionally through an on-disk cache of decoded clips.
//
// A cache entry is the clip as 16 kHz mono float32, under
//   cache_dir/<2 hex>/<16 hex>.pcm      (hex: FNV-1a 64 of the key)
// where the key is the audio file's absolute path, size and modification time, the
// example's start and end, and max_audio_seconds. A file:
//   "PALPCM01" | uint32 key length | key bytes | int64 sample count | float32 samples
// in the machine's byte order. Entries are written atomically (pal::write_file_atomic);
// an entry that does not read back exactly (truncated, another key, foreign) is a miss,
// decoded again and rewritten.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <string>

#include "pal/data/manifest.h"

namespace pal::data::detail {

// The example's window, cut to `max_seconds`, as float32 [samples] at 16 kHz. Throws
// pal::AudioError when the audio does not decode.
at::Tensor load_clip(const Example& example, double max_seconds);

class ClipCache {
 public:
  // Creates `folder`; throws pal::DataError when that fails.
  ClipCache(std::filesystem::path folder, double max_seconds);

  // load_clip() through the cache; `hit` tells whether the entry was read. Throws
  // pal::AudioError when the audio does not decode, pal::DataError when the entry cannot
  // be written.
  at::Tensor load(const Example& example, bool& hit) const;

  // The entry's file for `example` (the audio file must exist).
  std::filesystem::path entry(const Example& example) const;

 private:
  std::string key(const Example& example) const;
  std::filesystem::path entry_for(const std::string& key) const;
  std::filesystem::path folder_;
  double max_seconds_;
};

}  // namespace pal::data::detail
