#include "planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>

#include "log.h"
#include "pal/audio/decode.h"
#include "pal/core/error.h"

namespace pal::data::detail {
namespace {

using nlohmann::json;

constexpr const char* kCursorFormat = "pal-data-cursor";
constexpr int kCursorVersion = 1;

uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string percent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100 * fraction);
  return buf;
}

[[noreturn]] void bad_cursor(const std::string& why) {
  throw DataError("cannot restore the data cursor: " + why);
}

// A field of the cursor, with a DataError (not a JSON exception) when it is missing or
// has another type.
template <class T>
T field(const json& object, const char* key) {
  if (!object.is_object() || !object.contains(key)) bad_cursor(std::string("it has no '") + key + "'");
  try {
    return object.at(key).get<T>();
  } catch (const json::exception&) {
    bad_cursor(std::string("its '") + key + "' has the wrong type");
  }
}

json counts_to_json(const RecordCounts& c) {
  return {{"seen", c.seen}, {"bad", c.bad}, {"pass_done", c.pass_done}, {"first_bad", c.first_bad}};
}

RecordCounts counts_from_json(const json& j) {
  RecordCounts c;
  c.seen = field<int64_t>(j, "seen");
  c.bad = field<int64_t>(j, "bad");
  c.pass_done = field<bool>(j, "pass_done");
  c.first_bad = field<std::vector<std::string>>(j, "first_bad");
  return c;
}

json item_to_json(const PlannedExample& e) {
  return json::array({e.source, e.offset, e.line, e.epoch, e.seconds});
}

}  // namespace

// ---- CountingRandom ------------------------------------------------------------------------

CountingRandom::CountingRandom(uint64_t seed) : key_(splitmix64(seed + kGolden)) {}

uint64_t CountingRandom::next() {
  ++draws_;
  return splitmix64(key_ + draws_ * kGolden);
}

uint64_t CountingRandom::below(uint64_t n) {
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  const uint64_t limit = max - max % n;  // values >= limit would favour small results
  uint64_t x;
  do x = next();
  while (x >= limit);
  return x % n;
}

double CountingRandom::uniform() {
  return static_cast<double>(next() >> 11) * 0x1.0p-53;
}

// ---- bad records ---------------------------------------------------------------------------

void RecordCounts::add_bad(std::string where_and_why) {
  ++bad;
  if (first_bad.size() < kKeptReasons) first_bad.push_back(std::move(where_and_why));
}

void check_bad_fraction(const std::string& manifest, int64_t seen, int64_t bad, bool pass_done,
                        const std::vector<std::string>& first_bad, double max_fraction) {
  constexpr int64_t kMinSeen = 50;
  if (bad == 0 || (seen < kMinSeen && !pass_done)) return;
  if (static_cast<double>(bad) <= max_fraction * static_cast<double>(seen)) return;
  std::string message =
      "manifest '" + manifest + "': " + std::to_string(bad) + " of " + std::to_string(seen) +
      " records are bad (" + percent(static_cast<double>(bad) / seen) +
      "), more than data.max_bad_fraction = " + number(max_fraction) + " allows. First bad lines:";
  for (const auto& line : first_bad) message += "\n  " + line;
  message += "\nFix or remove them, or raise data.max_bad_fraction.";
  throw DataError(message);
}

// ---- Planner -------------------------------------------------------------------------------

Planner::Stream::Stream(std::filesystem::path p, std::string n, double w)
    : path(std::move(p)), dir(path.parent_path()), name(std::move(n)), weight(w), reader(path) {}

Planner::Planner(const std::vector<ManifestSpec>& specs, const std::vector<std::filesystem::path>& manifests,
                 const DataConfig& config, const LoaderOptions& options)
    : specs_(specs), config_(config), options_(options), random_(options.seed) {
  for (size_t i = 0; i < manifests.size(); ++i) {
    streams_.emplace_back(manifests[i], manifests[i].string(), specs[i].weight);
    ManifestReader::Line line;
    if (!streams_.back().reader.next(line))
      throw DataError("manifest '" + streams_.back().name + "' is empty: it holds no records");
    streams_.back().reader.rewind();
    total_weight_ += specs[i].weight;
  }
}

bool Planner::bucketing() const {
  return options_.shuffle && config_.bucket_batches > 1;
}

// The next good record of this rank in manifest `s`; nullopt at the end of a
// non-repeating pass. Bad records are counted, logged (first pass) and skipped.
std::optional<PlannedExample> Planner::read_from(size_t s) {
  Stream& stream = streams_[s];
  ManifestReader::Line line;
  while (true) {
    if (cancel_ && cancel_->load(std::memory_order_relaxed)) throw Cancelled{};
    if (!stream.reader.next(line)) {
      stream.counts.pass_done = true;
      check_bad_fraction(stream.name, stream.counts.seen, stream.counts.bad, true, stream.counts.first_bad,
                         config_.max_bad_fraction);
      if (!options_.repeat) return std::nullopt;
      if (stream.accepted == 0)
        throw DataError(
            "manifest '" + stream.name + "' has no usable record" +
            (options_.world_size > 1
                 ? " for rank " + std::to_string(options_.rank) + " of " + std::to_string(options_.world_size)
                 : std::string()) +
            (stream.counts.seen > 0 ? " (all " + std::to_string(stream.counts.seen) + " read were bad)"
             : !specs_[s].tasks.empty()
                 ? " (none of its records has one of its tasks: " + json(specs_[s].tasks).dump() + ")"
                 : std::string(" (none of its records falls to this rank)")));
      ++stream.epoch;
      stream.record = 0;
      stream.accepted = 0;
      stream.reader.rewind();
      continue;
    }
    if (stream.record++ % options_.world_size != options_.rank) continue;
    ++stream.counts.seen;
    const std::string source = stream.name + ":" + std::to_string(line.number);
    PlannedExample item;
    item.source = static_cast<int>(s);
    item.offset = line.offset;
    item.line = line.number;
    item.epoch = stream.epoch;
    try {
      item.example = parse_record(line.text, stream.dir, source, config_.require_audio);
      const Example& e = item.example;
      if (!specs_[s].wants(e.task)) {  // not in the mix: neither seen nor bad
        --stream.counts.seen;
        continue;
      }
      if (!e.audio.empty()) {
        std::error_code ec;
        if (!std::filesystem::exists(e.audio, ec)) throw DataError("audio file '" + e.audio + "' not found");
        if (bucketing()) {
          double seconds = e.end - e.start;
          if (e.end < 0) {
            const double total = audio::probe_audio(e.audio).seconds();
            if (e.start >= total)
              throw DataError("'start' (" + number(e.start) + " s) is at or past the end of '" + e.audio +
                              "' (" + number(total) + " s)");
            seconds = total - e.start;
          }
          item.seconds = std::min(seconds, config_.max_audio_seconds);
        }
      }
    } catch (const Error& e) {  // DataError from the record, AudioError from the header
      if (stream.epoch == 0) pal::detail::log_warn(source, ": skipped bad record: ", e.what());
      stream.counts.add_bad(source + ": " + e.what());
      check_bad_fraction(stream.name, stream.counts.seen, stream.counts.bad, stream.counts.pass_done,
                         stream.counts.first_bad, config_.max_bad_fraction);
      continue;
    }
    ++stream.accepted;
    check_bad_fraction(stream.name, stream.counts.seen, stream.counts.bad, stream.counts.pass_done,
                       stream.counts.first_bad, config_.max_bad_fraction);
    return item;
  }
}

// The next example of the mix: by weight when repeating, else the manifests in order.
std::optional<PlannedExample> Planner::read_mixed() {
  if (options_.repeat) {
    if (streams_.size() == 1) return read_from(0);
    const double u = random_.uniform() * total_weight_;
    double sum = 0;
    size_t s = 0;
    for (; s + 1 < streams_.size(); ++s) {
      sum += streams_[s].weight;
      if (u < sum) break;
    }
    return read_from(s);
  }
  for (; current_ < streams_.size(); ++current_)
    if (auto item = read_from(current_)) return item;
  return std::nullopt;
}

// Through the shuffle buffer: keep it full, emit a random element.
std::optional<PlannedExample> Planner::read_shuffled() {
  const auto capacity = static_cast<size_t>(config_.shuffle_buffer);
  if (!options_.shuffle || capacity <= 1) return read_mixed();
  while (shuffle_buffer_.size() < capacity) {
    std::optional<PlannedExample> item = read_mixed();
    if (!item) break;
    shuffle_buffer_.push_back(std::move(*item));
  }
  if (shuffle_buffer_.empty()) return std::nullopt;
  const size_t j = random_.below(shuffle_buffer_.size());
  std::swap(shuffle_buffer_[j], shuffle_buffer_.back());
  PlannedExample out = std::move(shuffle_buffer_.back());
  shuffle_buffer_.pop_back();
  return out;
}

// Sorts the window by duration, cuts it into batches and queues them in random order.
void Planner::cut_window() {
  std::stable_sort(window_.begin(), window_.end(),
                   [](const PlannedExample& a, const PlannedExample& b) { return a.seconds < b.seconds; });
  std::vector<std::vector<PlannedExample>> batches;
  const auto size = static_cast<size_t>(options_.batch_size);
  for (size_t i = 0; i < window_.size(); i += size)
    batches.emplace_back(std::make_move_iterator(window_.begin() + static_cast<std::ptrdiff_t>(i)),
                         std::make_move_iterator(window_.begin() + static_cast<std::ptrdiff_t>(
                                                                       std::min(i + size, window_.size()))));
  window_.clear();
  for (size_t i = batches.size(); i > 1; --i) std::swap(batches[i - 1], batches[random_.below(i)]);
  for (auto& b : batches) cut_batches_.push_back(std::move(b));
}

std::optional<PlannedBatch> Planner::next() {
  PlannedBatch batch;
  if (bucketing()) {
    const auto window = static_cast<size_t>(options_.batch_size * config_.bucket_batches);
    while (cut_batches_.empty()) {
      std::optional<PlannedExample> item = read_shuffled();
      if (item) window_.push_back(std::move(*item));
      if (window_.empty()) return std::nullopt;
      if (!item || window_.size() == window) cut_window();
    }
    batch.examples = std::move(cut_batches_.front());
    cut_batches_.pop_front();
  } else {
    while (batch.examples.size() < static_cast<size_t>(options_.batch_size)) {
      std::optional<PlannedExample> item = read_shuffled();
      if (!item) break;
      batch.examples.push_back(std::move(*item));
    }
    if (batch.examples.empty()) return std::nullopt;
  }
  ++batches_;
  batch.epoch = streams_[0].epoch;
  batch.cursor = state();
  batch.records = records();
  return batch;
}

std::vector<RecordCounts> Planner::records() const {
  std::vector<RecordCounts> out;
  for (const auto& s : streams_) out.push_back(s.counts);
  return out;
}

// ---- cursor ----------------------------------------------------------------------------------

// What must match between the loader that wrote a cursor and the one restoring it.
json Planner::fingerprint() const {
  json manifests = json::array();
  for (const auto& spec : specs_) {
    json m = {{"path", spec.path}, {"weight", spec.weight}};
    if (!spec.tasks.empty()) m["tasks"] = spec.tasks;  // absent without a filter, as before it existed
    manifests.push_back(std::move(m));
  }
  return {{"seed", options_.seed},
          {"batch_size", options_.batch_size},
          {"shuffle", options_.shuffle},
          {"repeat", options_.repeat},
          {"rank", options_.rank},
          {"world_size", options_.world_size},
          {"shuffle_buffer", config_.shuffle_buffer},
          {"bucket_batches", config_.bucket_batches},
          {"max_audio_seconds", config_.max_audio_seconds},
          {"require_audio", config_.require_audio},
          {"manifests", manifests}};
}

json Planner::state() const {
  json streams = json::array();
  for (const auto& s : streams_) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(s.path, ec);
    streams.push_back({{"offset", s.reader.offset()},
                       {"line", s.reader.next_line_number()},
                       {"record", s.record},
                       {"epoch", s.epoch},
                       {"accepted", s.accepted},
                       {"size", ec ? -1 : static_cast<int64_t>(size)},
                       {"counts", counts_to_json(s.counts)}});
  }
  json shuffle = json::array(), window = json::array(), cut = json::array();
  for (const auto& e : shuffle_buffer_) shuffle.push_back(item_to_json(e));
  for (const auto& e : window_) window.push_back(item_to_json(e));
  for (const auto& b : cut_batches_) {
    json items = json::array();
    for (const auto& e : b) items.push_back(item_to_json(e));
    cut.push_back(std::move(items));
  }
  return {{"format", kCursorFormat},       {"version", kCursorVersion},
          {"config", fingerprint()},       {"batches", batches_},
          {"draws", random_.draws()},      {"current", current_},
          {"streams", std::move(streams)}, {"shuffle_buffer", std::move(shuffle)},
          {"window", std::move(window)},   {"cut_batches", std::move(cut)}};
}

// Re-reads the example an item of the cursor points at.
PlannedExample Planner::reread(const json& item) {
  if (!item.is_array() || item.size() != 5)
    bad_cursor("a pending example is not [manifest, offset, line, epoch, seconds]");
  PlannedExample e;
  try {
    e.source = item[0].get<int>();
    e.offset = item[1].get<int64_t>();
    e.line = item[2].get<int64_t>();
    e.epoch = item[3].get<int64_t>();
    e.seconds = item[4].get<double>();
  } catch (const json::exception&) {
    bad_cursor("a pending example has the wrong types");
  }
  if (e.source < 0 || static_cast<size_t>(e.source) >= streams_.size())
    bad_cursor("a pending example names manifest " + std::to_string(e.source));
  Stream& stream = streams_[static_cast<size_t>(e.source)];
  const std::string source = stream.name + ":" + std::to_string(e.line);
  ManifestReader::Line line;
  try {
    stream.reader.seek(e.offset, e.line);  // restore() puts the reader in place afterwards
    if (!stream.reader.next(line) || line.number != e.line) throw DataError("no record starts there");
    e.example = parse_record(line.text, stream.dir, source, config_.require_audio);
  } catch (const DataError& error) {
    bad_cursor("it refers to " + source + " (byte " + std::to_string(e.offset) +
               "), which is no longer that record: " + error.what() + " (was the manifest edited?)");
  }
  return e;
}

void Planner::restore(const json& cursor) {
  if (!cursor.is_object() || !cursor.contains("format") || cursor["format"] != kCursorFormat)
    bad_cursor("it is not a data cursor (Batch::cursor)");
  if (field<int>(cursor, "version") != kCursorVersion)
    bad_cursor("its version is " + cursor["version"].dump() + ", this build reads " +
               std::to_string(kCursorVersion));
  const json saved = field<json>(cursor, "config");
  const json here = fingerprint();
  for (auto it = here.begin(); it != here.end(); ++it) {
    const json was = saved.is_object() && saved.contains(it.key()) ? saved[it.key()] : json();
    if (was != it.value())
      throw DataError(
          "cannot restore the data cursor: it was made with " + it.key() + " = " + was.dump() +
          ", this loader has " + it.key() + " = " + it.value().dump() +
          " (a cursor continues only the same data config, seed, batch size, rank and manifests)");
  }

  const json streams = field<json>(cursor, "streams");
  if (!streams.is_array() || streams.size() != streams_.size())
    bad_cursor("it lists " + std::to_string(streams.size()) + " manifests, this loader has " +
               std::to_string(streams_.size()));
  for (size_t i = 0; i < streams_.size(); ++i) {
    Stream& s = streams_[i];
    const json& j = streams[i];
    std::error_code ec;
    const auto size = static_cast<int64_t>(std::filesystem::file_size(s.path, ec));
    if (ec || field<int64_t>(j, "size") != size)
      throw DataError("cannot restore the data cursor: manifest '" + s.name + "' has changed since (" +
                      std::to_string(field<int64_t>(j, "size")) + " bytes then, " +
                      (ec ? std::string("unreadable") : std::to_string(size) + " bytes") + " now)");
    s.record = field<int64_t>(j, "record");
    s.epoch = field<int64_t>(j, "epoch");
    s.accepted = field<int64_t>(j, "accepted");
    s.counts = counts_from_json(field<json>(j, "counts"));
  }
  random_.set_draws(field<uint64_t>(cursor, "draws"));
  batches_ = field<int64_t>(cursor, "batches");
  current_ = field<size_t>(cursor, "current");

  shuffle_buffer_.clear();
  window_.clear();
  cut_batches_.clear();
  for (const auto& item : field<json>(cursor, "shuffle_buffer")) shuffle_buffer_.push_back(reread(item));
  for (const auto& item : field<json>(cursor, "window")) window_.push_back(reread(item));
  for (const auto& batch : field<json>(cursor, "cut_batches")) {
    std::vector<PlannedExample> items;
    for (const auto& item : batch) items.push_back(reread(item));
    cut_batches_.push_back(std::move(items));
  }
  for (size_t i = 0; i < streams_.size(); ++i)
    streams_[i].reader.seek(field<int64_t>(streams[i], "offset"), field<int64_t>(streams[i], "line"));
}

}  // namespace pal::data::detail
