#include "io/file.h"
#include "qkv/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <random>

namespace qkv::io {

namespace {

std::string errno_string(int err) {
  return detail::str(std::strerror(err), " (errno ", err, ")");
}

// Closes a descriptor on scope exit unless released.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // close() can report a deferred write error (NFS, quotas), so the writer checks it.
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// A name no other writer (another process, or another thread of this one)
// will pick; O_EXCL guards against the rest.
std::string temp_name_for(const std::filesystem::path& target) {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          static_cast<uint64_t>(::getpid())};
  return (target.parent_path() /
          detail::str(".", target.filename().string(), ".tmp.", ::getpid(), ".", std::hex, rng()))
      .string();
}

void fsync_directory(const std::filesystem::path& dir, const std::string& target) {
  Fd fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  QKV_CHECK(fd.get() >= 0, "write_file_atomically: cannot open directory ", dir, " of '", target,
            "' to sync it: ", errno_string(errno));
  QKV_CHECK(::fsync(fd.get()) == 0, "write_file_atomically: fsync of directory ", dir, " of '",
            target, "' failed: ", errno_string(errno));
}

}  // namespace

std::shared_ptr<Storage> map_file(const std::string& path, const char* what) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  QKV_CHECK(fd.get() >= 0, what, ": cannot open '", path, "': ", errno_string(errno));
  struct stat st{};
  QKV_CHECK(::fstat(fd.get(), &st) == 0, what, ": cannot stat '", path, "': ", errno_string(errno));
  QKV_CHECK(S_ISREG(st.st_mode), what, ": '", path, "' is not a regular file");
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) return Storage::allocate(0);
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
  QKV_CHECK(data != MAP_FAILED, what, ": cannot map '", path, "' (", size,
            " bytes): ", errno_string(errno));
  // The mapping stays valid after the descriptor is closed.
  return Storage::wrap(data, size, [data, size] { ::munmap(data, size); });
}

void FileSink::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    QKV_CHECK(n > 0, "write_file_atomically: writing ", size, " bytes at offset ", written_,
              " of '", temp_path_, "' failed: ", n < 0 ? errno_string(errno) : "wrote nothing");
    p += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

void write_file_atomically(const std::string& path, const std::function<void(FileSink&)>& produce) {
  const std::filesystem::path target(path);
  QKV_CHECK(!target.filename().empty(), "write_file_atomically: '", path, "' names no file");
  const std::string temp = temp_name_for(target);
  // 0666 so the umask decides, as for any newly created file.
  Fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  QKV_CHECK(fd.get() >= 0, "write_file_atomically: cannot create '", temp, "' to write '", path,
            "': ", errno_string(errno));
  try {
    FileSink sink(fd.get(), temp);
    produce(sink);
    QKV_CHECK(::fsync(fd.get()) == 0, "write_file_atomically: fsync of '", temp,
              "' failed: ", errno_string(errno));
    QKV_CHECK(fd.close() == 0, "write_file_atomically: closing '", temp,
              "' failed: ", errno_string(errno));
    QKV_CHECK(::rename(temp.c_str(), path.c_str()) == 0, "write_file_atomically: renaming '", temp,
              "' to '", path, "' failed: ", errno_string(errno));
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
  // The new file is in place; a failure here only means the rename may not
  // yet be durable, which the caller should still hear about.
  fsync_directory(target.parent_path(), path);
}

void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes) {
  write_file_atomically(path, [bytes](FileSink& sink) { sink.write(bytes.data(), bytes.size()); });
}

}  // namespace qkv::io

namespace qkv {

void write_file_atomically(const std::string& path, std::string_view bytes) {
  io::write_file_atomically(
      path, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

std::string read_file(const std::string& path, std::string_view what) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  QKV_CHECK(std::filesystem::exists(status), what, ": cannot open '", path,
            "': it does not exist");
  QKV_CHECK(std::filesystem::is_regular_file(status), what, ": cannot open '", path,
            "': it is not a regular file");
  std::ifstream in(path, std::ios::binary);
  QKV_CHECK(in, what, ": cannot open '", path, "': ", std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  QKV_CHECK(!in.bad(), what, ": cannot read '", path, "'");
  return buffer.str();
}

}  // namespace qkv
