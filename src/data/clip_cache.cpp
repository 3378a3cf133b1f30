#include "clip_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "pal/audio/decode.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"

namespace pal::data::detail {
namespace {

constexpr char kMagic[8] = {'P', 'A', 'L', 'P', 'C', 'M', '0', '1'};

uint64_t fnv1a64(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// The entry's samples when it exists and matches `key` exactly; an undefined tensor otherwise.
at::Tensor read_entry(const std::filesystem::path& file, const std::string& key) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return {};
  char magic[sizeof kMagic];
  uint32_t key_size = 0;
  if (!in.read(magic, sizeof magic) || std::memcmp(magic, kMagic, sizeof kMagic) != 0) return {};
  if (!in.read(reinterpret_cast<char*>(&key_size), sizeof key_size) || key_size != key.size()) return {};
  std::string stored(key_size, '\0');
  if (!in.read(stored.data(), key_size) || stored != key) return {};
  int64_t samples = -1;
  if (!in.read(reinterpret_cast<char*>(&samples), sizeof samples) || samples <= 0) return {};
  std::error_code ec;
  const auto expected = sizeof kMagic + sizeof key_size + key_size + sizeof samples +
                        static_cast<uintmax_t>(samples) * sizeof(float);
  if (std::filesystem::file_size(file, ec) != expected || ec) return {};
  at::Tensor clip = at::empty({samples}, at::kFloat);
  if (!in.read(reinterpret_cast<char*>(clip.data_ptr<float>()),
               static_cast<std::streamsize>(samples * sizeof(float))))
    return {};
  return clip;
}

}  // namespace

at::Tensor load_clip(const Example& example, double max_seconds) {
  audio::LoadOptions options;
  options.start = example.start;
  options.end = example.start + max_seconds;
  if (example.end >= 0) options.end = std::min(example.end, *options.end);
  return audio::load_audio(example.audio, options);
}

ClipCache::ClipCache(std::filesystem::path folder, double max_seconds)
    : folder_(std::move(folder)), max_seconds_(max_seconds) {
  std::error_code ec;
  std::filesystem::create_directories(folder_, ec);
  if (ec || !std::filesystem::is_directory(folder_))
    throw DataError("cannot create the audio cache folder '" + folder_.string() + "' (data.cache_dir)" +
                    (ec ? ": " + ec.message() : std::string(": a file of that name is in the way")));
}

std::string ClipCache::key(const Example& example) const {
  const std::filesystem::path file = std::filesystem::absolute(example.audio).lexically_normal();
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) throw AudioError("cannot decode '" + example.audio + "': " + ec.message());
  const auto mtime = std::filesystem::last_write_time(file, ec);
  if (ec) throw AudioError("cannot decode '" + example.audio + "': " + ec.message());
  return file.string() + "\n" + std::to_string(size) + "\n" +
         std::to_string(mtime.time_since_epoch().count()) + "\n" + exact(example.start) + "\n" +
         exact(example.end) + "\n" + exact(max_seconds_);
}

std::filesystem::path ClipCache::entry(const Example& example) const {
  return entry_for(key(example));
}

std::filesystem::path ClipCache::entry_for(const std::string& key) const {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a64(key)));
  return folder_ / std::string(hex, 2) / (std::string(hex) + ".pcm");
}

at::Tensor ClipCache::load(const Example& example, bool& hit) const {
  const std::string k = key(example);
  const std::filesystem::path file = entry_for(k);
  if (at::Tensor clip = read_entry(file, k); clip.defined()) {
    hit = true;
    return clip;
  }
  hit = false;
  at::Tensor clip = load_clip(example, max_seconds_).contiguous();
  const auto samples = static_cast<int64_t>(clip.numel());
  const auto key_size = static_cast<uint32_t>(k.size());
  std::string bytes;
  bytes.reserve(sizeof kMagic + sizeof key_size + k.size() + sizeof samples + samples * sizeof(float));
  bytes.append(kMagic, sizeof kMagic);
  bytes.append(reinterpret_cast<const char*>(&key_size), sizeof key_size);
  bytes.append(k);
  bytes.append(reinterpret_cast<const char*>(&samples), sizeof samples);
  bytes.append(reinterpret_cast<const char*>(clip.data_ptr<float>()), samples * sizeof(float));
  try {
    std::filesystem::create_directories(file.parent_path());
    write_file_atomic(file, bytes);
  } catch (const std::exception& e) {
    throw DataError("cannot write the audio cache entry '" + file.string() + "' for " + example.source +
                    ": " + e.what() + " (fix data.cache_dir, or set it to \"\" to decode without a cache)");
  }
  return clip;
}

}  // namespace pal::data::detail
