// Atomic file writing: data goes to a temporary file beside the target, is flushed to
// disk, and replaces the target by rename(2), so a reader (or a resumed run after a
// crash) sees either the old file or the complete new one, never a torn write.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace pal {

// Streams bytes into `target` atomically. Nothing is visible at `target` until commit();
// if the object is destroyed without commit() (an exception, say), the temporary file
// is removed and `target` is untouched. Errors are pal::IoError naming the file.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync the data, rename over the target, fsync the folder.
  void commit();

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& temporary() const { return temporary_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temporary_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `bytes` to `target` atomically.
void write_file_atomic(const std::filesystem::path& target, std::string_view bytes);

// Reads a whole file; throws pal::IoError naming it when it cannot be read.
std::string read_file(const std::filesystem::path& file);

}  // namespace pal
