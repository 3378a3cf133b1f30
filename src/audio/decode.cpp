#include "pal/audio/decode.h"

#include <ATen/ATen.h>
#include <sndfile.h>
#include <soxr.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "pal/core/error.h"

namespace pal::audio {
namespace {

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& reason) {
  throw AudioError("cannot decode '" + file.string() + "': " + reason);
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f s", s);
  return buf;
}

std::string format_name(int format) {
  std::string out;
  SF_FORMAT_INFO major{};
  major.format = format & SF_FORMAT_TYPEMASK;
  if (sf_command(nullptr, SFC_GET_FORMAT_INFO, &major, sizeof major) == 0 && major.name) out = major.name;
  SF_FORMAT_INFO sub{};
  sub.format = format & SF_FORMAT_SUBMASK;
  if (sf_command(nullptr, SFC_GET_FORMAT_INFO, &sub, sizeof sub) == 0 && sub.name)
    out += std::string(" / ") + sub.name;
  return out;
}

// Rejects a header libsndfile opened but that describes no usable stream (the caller
// closes `snd`).
void check_header(const std::filesystem::path& file, const SF_INFO& info) {
  if (info.channels <= 0 || info.samplerate <= 0)
    fail(file, "header has " + std::to_string(info.channels) + " channels at " +
                   std::to_string(info.samplerate) + " Hz");
}

// Opens `file` with libsndfile, turning every failure into an AudioError with a reason.
SNDFILE* open_sndfile(const std::filesystem::path& file, SF_INFO& info) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) fail(file, "no such file");
  if (std::filesystem::is_directory(file, ec)) fail(file, "it is a folder, not an audio file");
  if (std::filesystem::file_size(file, ec) == 0 && !ec) fail(file, "the file is empty (0 bytes)");
  std::memset(&info, 0, sizeof info);
  SNDFILE* snd = sf_open(file.c_str(), SFM_READ, &info);
  if (!snd) fail(file, std::string(sf_strerror(nullptr)) + " (not a format libsndfile reads, or corrupt)");
  try {
    check_header(file, info);
  } catch (...) {
    sf_close(snd);
    throw;
  }
  return snd;
}

// Bytes in memory as a read-only libsndfile virtual file.
struct MemoryFile {
  const std::string* bytes = nullptr;
  sf_count_t position = 0;
};

sf_count_t memory_length(void* user) {
  return static_cast<sf_count_t>(static_cast<MemoryFile*>(user)->bytes->size());
}

sf_count_t memory_seek(sf_count_t offset, int whence, void* user) {
  auto* m = static_cast<MemoryFile*>(user);
  const sf_count_t size = static_cast<sf_count_t>(m->bytes->size());
  sf_count_t to = whence == SEEK_SET ? offset : whence == SEEK_CUR ? m->position + offset : size + offset;
  m->position = std::clamp<sf_count_t>(to, 0, size);
  return m->position;
}

sf_count_t memory_read(void* out, sf_count_t count, void* user) {
  auto* m = static_cast<MemoryFile*>(user);
  const sf_count_t n =
      std::clamp<sf_count_t>(static_cast<sf_count_t>(m->bytes->size()) - m->position, 0, count);
  std::memcpy(out, m->bytes->data() + m->position, static_cast<size_t>(n));
  m->position += n;
  return n;
}

sf_count_t memory_write(const void*, sf_count_t, void*) {
  return 0;
}

sf_count_t memory_tell(void* user) {
  return static_cast<MemoryFile*>(user)->position;
}

// libsndfile reads a WAV whose data chunk is cut short without complaint (it shortens
// the frame count to what is there) and only notes it in its log as
// "data : DECLARED (should be ACTUAL)". A declared size of 0 or 0xFFFFFFFF is the
// placeholder of streamed WAVs (e.g. written to a pipe) and is accepted.
void reject_truncated_data_chunk(const std::filesystem::path& file, SNDFILE* snd, int block_align) {
  char log[8192] = {0};
  sf_command(snd, SFC_GET_LOG_INFO, log, sizeof log - 1);
  const char* line = std::strstr(log, "\ndata : ");
  if (!line) return;
  unsigned long long declared = 0, actual = 0;
  if (std::sscanf(line, "\ndata : %llu (should be %llu)", &declared, &actual) != 2) return;
  if (declared == 0 || declared >= 0xFFFFFFF0ull) return;
  if (declared > actual + static_cast<unsigned long long>(block_align)) {
    fail(file, "truncated: its header declares " + std::to_string(declared) +
                   " bytes of audio data but only " + std::to_string(actual) + " are in the file");
  }
}

}  // namespace

AudioInfo probe_audio(const std::filesystem::path& file) {
  SF_INFO info;
  SNDFILE* snd = open_sndfile(file, info);
  sf_close(snd);
  return {static_cast<int64_t>(info.frames), info.samplerate, info.channels, format_name(info.format)};
}

struct AudioStream::State {
  std::filesystem::path file;  // the file, or the name of in-memory audio
  std::string memory;          // in-memory audio's bytes
  MemoryFile memory_file;
  SF_INFO sf_info{};
  LoadOptions options;
  AudioInfo info;
  SNDFILE* snd = nullptr;
  soxr_t soxr = nullptr;
  int64_t next_frame = 0;   // index of the next frame to decode (for messages)
  int64_t frames_left = 0;  // frames of the window not yet decoded
  bool flushed = false;
  std::vector<float> interleaved, mono, resampled;

  ~State() {
    if (soxr) soxr_delete(soxr);
    if (snd) sf_close(snd);
  }

  // Runs `n` mono samples (or, with n == 0, the flush) through the resampler into `out`.
  void resample(const float* in, size_t n, std::vector<float>& out) {
    const double ratio = static_cast<double>(options.sample_rate) / info.sample_rate;
    resampled.resize(static_cast<size_t>(std::ceil(std::max<size_t>(n, 4096) * ratio)) + 256);
    size_t consumed = 0;
    while (true) {
      size_t idone = 0, odone = 0;
      soxr_error_t err = soxr_process(soxr, n ? in + consumed : nullptr, n - consumed, &idone,
                                      resampled.data(), resampled.size(), &odone);
      if (err) fail(file, std::string("resampling failed: ") + err);
      out.insert(out.end(), resampled.begin(), resampled.begin() + static_cast<std::ptrdiff_t>(odone));
      consumed += idone;
      if (n ? consumed >= n : odone == 0) break;
      if (n && idone == 0 && odone == 0) break;
    }
  }
};

AudioStream::AudioStream(const std::filesystem::path& file, const LoadOptions& options)
    : AudioStream(
          [&] {
            auto s = std::make_unique<State>();
            s->file = file;
            s->snd = open_sndfile(file, s->sf_info);
            return s;
          }(),
          options) {}

AudioStream AudioStream::from_memory(std::string bytes, const std::string& name, const LoadOptions& options) {
  auto s = std::make_unique<State>();
  s->file = name;
  if (bytes.empty()) fail(name, "the audio data is empty (0 bytes)");
  s->memory = std::move(bytes);
  s->memory_file.bytes = &s->memory;
  static SF_VIRTUAL_IO io = {memory_length, memory_seek, memory_read, memory_write, memory_tell};
  s->snd = sf_open_virtual(&io, SFM_READ, &s->sf_info, &s->memory_file);
  if (!s->snd) fail(name, std::string(sf_strerror(nullptr)) + " (not a format libsndfile reads, or corrupt)");
  check_header(name, s->sf_info);  // ~State closes s->snd
  return AudioStream(std::move(s), options);
}

AudioStream::AudioStream(std::unique_ptr<State> state, const LoadOptions& options)
    : state_(std::move(state)) {
  State& s = *state_;
  const std::filesystem::path& file = s.file;
  s.options = options;
  if (options.sample_rate <= 0)
    fail(file, "output sample rate must be > 0, got " + std::to_string(options.sample_rate));
  if (options.chunk_frames <= 0) fail(file, "chunk_frames must be > 0");
  const SF_INFO& info = s.sf_info;
  reject_truncated_data_chunk(file, s.snd, info.channels * 4);
  s.info = {static_cast<int64_t>(info.frames), info.samplerate, info.channels, format_name(info.format)};
  if (s.info.frames <= 0) fail(file, "it holds no audio samples");

  if (!std::isfinite(options.start) || options.start < 0)
    fail(file, "window start must be a finite number of seconds >= 0, got " + std::to_string(options.start));
  const double duration = s.info.seconds();
  const int64_t start = static_cast<int64_t>(std::llround(options.start * s.info.sample_rate));
  if (start >= s.info.frames)
    fail(file, "window start " + seconds_text(options.start) + " is at or past the end of the audio (" +
                   seconds_text(duration) + ")");
  int64_t end = s.info.frames;
  if (options.end) {
    if (!std::isfinite(*options.end) || *options.end <= options.start)
      fail(file, "window end " + std::to_string(*options.end) + " s must be after its start " +
                     std::to_string(options.start) + " s");
    end = std::min<int64_t>(end, std::llround(*options.end * s.info.sample_rate));
  }
  if (start > 0 && sf_seek(s.snd, start, SEEK_SET) < 0)
    fail(file, "cannot seek to " + seconds_text(options.start) + ": " + sf_strerror(s.snd));
  s.next_frame = start;
  s.frames_left = end - start;

  if (s.info.sample_rate != options.sample_rate) {
    soxr_error_t err = nullptr;
    soxr_quality_spec_t quality = soxr_quality_spec(SOXR_HQ, 0);
    soxr_runtime_spec_t runtime = soxr_runtime_spec(1);
    s.soxr = soxr_create(s.info.sample_rate, options.sample_rate, 1, &err, nullptr, &quality, &runtime);
    if (err || !s.soxr)
      fail(file, std::string("cannot create the resampler: ") + (err ? err : "unknown error"));
  }
}

AudioStream::~AudioStream() = default;
AudioStream::AudioStream(AudioStream&&) noexcept = default;
AudioStream& AudioStream::operator=(AudioStream&&) noexcept = default;

const AudioInfo& AudioStream::info() const {
  return state_->info;
}

bool AudioStream::read(std::vector<float>& out) {
  State& s = *state_;
  if (s.frames_left == 0) {
    if (s.soxr && !s.flushed) {
      s.resample(nullptr, 0, out);
      s.flushed = true;
      return true;
    }
    return false;
  }
  const int64_t want = std::min(s.frames_left, s.options.chunk_frames);
  const int channels = s.info.channels;
  s.interleaved.resize(static_cast<size_t>(want * channels));
  const sf_count_t got = sf_readf_float(s.snd, s.interleaved.data(), want);
  if (got < want) {
    std::string why = sf_error(s.snd) ? std::string(": ") + sf_strerror(s.snd) : std::string();
    fail(s.file, "truncated or corrupt: the header promises " + std::to_string(s.info.frames) +
                     " frames but decoding stopped at frame " + std::to_string(s.next_frame + got) + why);
  }
  s.mono.resize(static_cast<size_t>(got));
  const float scale = 1.0f / static_cast<float>(channels);
  for (sf_count_t i = 0; i < got; ++i) {
    const float* frame = s.interleaved.data() + i * channels;
    float sum = 0;
    for (int c = 0; c < channels; ++c) sum += frame[c];
    const float v = channels == 1 ? sum : sum * scale;
    if (!std::isfinite(v)) {
      const int64_t at = s.next_frame + i;
      fail(s.file, std::string("sample ") + std::to_string(at) + " (at " +
                       seconds_text(static_cast<double>(at) / s.info.sample_rate) + ") is " +
                       (std::isnan(v) ? "NaN" : "infinite"));
    }
    s.mono[static_cast<size_t>(i)] = v;
  }
  s.next_frame += got;
  s.frames_left -= got;
  if (s.soxr)
    s.resample(s.mono.data(), s.mono.size(), out);
  else
    out.insert(out.end(), s.mono.begin(), s.mono.end());
  return true;
}

namespace {

at::Tensor read_all(AudioStream& stream, const std::filesystem::path& name, int sample_rate) {
  std::vector<float> samples;
  const double ratio = static_cast<double>(sample_rate) / stream.info().sample_rate;
  samples.reserve(static_cast<size_t>(static_cast<double>(stream.info().frames) * ratio) + 1024);
  while (stream.read(samples)) {
  }
  if (samples.empty()) fail(name, "the window holds no audio samples");
  at::Tensor out = at::empty({static_cast<int64_t>(samples.size())}, at::kFloat);
  std::memcpy(out.data_ptr<float>(), samples.data(), samples.size() * sizeof(float));
  return out;
}

}  // namespace

at::Tensor load_audio(const std::filesystem::path& file, const LoadOptions& options) {
  AudioStream stream(file, options);
  return read_all(stream, file, options.sample_rate);
}

at::Tensor load_audio_from_memory(std::string bytes, const std::string& name, const LoadOptions& options) {
  AudioStream stream = AudioStream::from_memory(std::move(bytes), name, options);
  return read_all(stream, name, options.sample_rate);
}

std::vector<std::string> supported_audio_formats() {
  int count = 0;
  sf_command(nullptr, SFC_GET_FORMAT_MAJOR_COUNT, &count, sizeof count);
  std::vector<std::string> names;
  for (int i = 0; i < count; ++i) {
    SF_FORMAT_INFO info{};
    info.format = i;
    if (sf_command(nullptr, SFC_GET_FORMAT_MAJOR, &info, sizeof info) == 0 && info.name) {
      std::string name = info.name;
      if (info.extension) name += std::string(" (.") + info.extension + ")";
      names.push_back(name);
    }
  }
  return names;
}

}  // namespace pal::audio
