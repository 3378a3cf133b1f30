#include "pal/core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "pal/core/error.h"

namespace pal {
namespace {

std::string errno_text() {
  return std::strerror(errno);
}

std::filesystem::path temporary_name(const std::filesystem::path& target) {
  static std::atomic<unsigned> counter{0};
  std::string name = "." + target.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                     std::to_string(counter.fetch_add(1));
  return target.parent_path() / name;
}

void fsync_folder(const std::filesystem::path& folder) {
  int fd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some file systems refuse to open folders
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path target)
    : target_(std::move(target)), temporary_(temporary_name(target_)) {
  if (target_.filename().empty()) throw IoError("cannot write '" + target_.string() + "': not a file name");
  fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw IoError("cannot create '" + temporary_.string() + "' (to write '" + target_.string() +
                  "'): " + errno_text());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temporary_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  if (fd_ < 0) throw IoError("write to '" + target_.string() + "' after it was committed");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError("cannot write '" + temporary_.string() + "': " + errno_text());
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw IoError("'" + target_.string() + "' was already committed");
  if (::fsync(fd_) != 0) throw IoError("cannot flush '" + temporary_.string() + "': " + errno_text());
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw IoError("cannot close '" + temporary_.string() + "': " + errno_text());
  if (::rename(temporary_.c_str(), target_.c_str()) != 0)
    throw IoError("cannot rename '" + temporary_.string() + "' to '" + target_.string() +
                  "': " + errno_text());
  committed_ = true;
  fsync_folder(target_.parent_path());
}

void write_file_atomic(const std::filesystem::path& target, std::string_view bytes) {
  AtomicFile file(target);
  file.write(bytes);
  file.commit();
}

std::string read_file(const std::filesystem::path& file) {
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec))
    throw IoError("cannot read '" + file.string() + "': it is a folder");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError("cannot open '" + file.string() + "': " + errno_text());
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) throw IoError("cannot read '" + file.string() + "'");
  return out.str();
}

}  // namespace pal
