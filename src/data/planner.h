// The deterministic half of the data pipeline: decides which examples form each batch.
//
// All random choices (which manifest to draw from, which shuffle-buffer slot to emit, the
// order of the batches cut from a bucket window) are made here, in order, from a
// counter-based generator, so the batch sequence is a function of the manifests, the
// config, the seed and the rank alone. Its whole state fits in a JSON cursor; examples
// waiting in the shuffle buffer or a bucket window are stored as (manifest, byte offset,
// line) and re-read on restore.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pal/data/loader.h"
#include "pal/data/manifest.h"

namespace pal::data::detail {

// Random numbers with a random-access state: draw k is splitmix64's k-th output for a
// state derived from the seed, so the generator's state is just the count of draws.
class CountingRandom {
 public:
  explicit CountingRandom(uint64_t seed);
  uint64_t next();
  uint64_t below(uint64_t n);  // uniform in [0, n), n > 0 (rejection sampling, no bias)
  double uniform();            // uniform in [0, 1), 53 bits
  uint64_t draws() const { return draws_; }
  void set_draws(uint64_t draws) { draws_ = draws; }

 private:
  uint64_t key_;
  uint64_t draws_ = 0;
};

struct PlannedExample {
  Example example;
  double seconds = 0;  // duration for length bucketing (0 when bucketing is off)
  int source = 0;      // index of the manifest
  int64_t offset = 0;  // byte offset of its line
  int64_t line = 0;    // its line number
  int64_t epoch = 0;   // its manifest's epoch when it was read
};

// Record counts of one manifest, for the bad-record limit.
struct RecordCounts {
  int64_t seen = 0;                    // records read (this rank's shard, repeats included)
  int64_t bad = 0;                     // of which bad
  bool pass_done = false;              // the first pass over the manifest is complete
  std::vector<std::string> first_bad;  // "file:line: reason" of the first few bad records
  static constexpr size_t kKeptReasons = 5;
  void add_bad(std::string where_and_why);
};

// Throws pal::DataError naming `manifest`, the counts and the first bad lines when `bad`
// exceeds `max_fraction` of `seen`, once at least 50 records were seen or the first pass
// is complete.
void check_bad_fraction(const std::string& manifest, int64_t seen, int64_t bad, bool pass_done,
                        const std::vector<std::string>& first_bad, double max_fraction);

struct PlannedBatch {
  std::vector<PlannedExample> examples;
  int64_t epoch = 0;                  // epoch of manifest 0 after forming it
  nlohmann::json cursor;              // planner state right after this batch
  std::vector<RecordCounts> records;  // per manifest, right after this batch
};

class Planner {
 public:
  // `manifests`: resolved paths and weights. Throws pal::DataError on a missing or empty
  // manifest.
  Planner(const std::vector<ManifestSpec>& specs, const std::vector<std::filesystem::path>& manifests,
          const DataConfig& config, const LoaderOptions& options);

  // The next batch; nullopt once a non-repeating pass is over. Throws pal::DataError
  // (bad-record limit, a manifest without a usable record for this rank).
  std::optional<PlannedBatch> next();

  // Replaces the state with the one in `cursor` (the "planner" part of a Batch::cursor).
  // Throws pal::DataError when it is malformed or was made with another configuration.
  void restore(const nlohmann::json& cursor);

  // Makes next() throw Cancelled between records once `*flag` is set (for a prompt stop);
  // the planner is unusable after that.
  void cancel_on(const std::atomic<bool>* flag) { cancel_ = flag; }
  struct Cancelled {};

  // Per manifest, as of now.
  std::vector<RecordCounts> records() const;

  size_t manifest_count() const { return streams_.size(); }
  const std::string& manifest_name(size_t i) const { return streams_[i].name; }

 private:
  struct Stream {
    std::filesystem::path path;
    std::filesystem::path dir;  // resolves the records' audio paths
    std::string name;           // for messages and Example::source
    double weight = 1;
    ManifestReader reader;
    int64_t record = 0;    // index of the next record within the pass (for sharding)
    int64_t epoch = 0;     // completed passes
    int64_t accepted = 0;  // good records of this rank in the current pass
    RecordCounts counts;
    Stream(std::filesystem::path p, std::string n, double w);
  };

  std::optional<PlannedExample> read_mixed();
  std::optional<PlannedExample> read_from(size_t s);
  std::optional<PlannedExample> read_shuffled();
  void cut_window();
  bool bucketing() const;
  PlannedExample reread(const nlohmann::json& item);
  nlohmann::json state() const;
  nlohmann::json fingerprint() const;

  std::vector<ManifestSpec> specs_;
  DataConfig config_;
  LoaderOptions options_;
  std::vector<Stream> streams_;
  CountingRandom random_;
  double total_weight_ = 0;
  size_t current_ = 0;  // non-repeating pass: the manifest being read
  std::vector<PlannedExample> shuffle_buffer_;
  std::vector<PlannedExample> window_;                   // a bucket window being filled
  std::deque<std::vector<PlannedExample>> cut_batches_;  // cut from a window, to emit in order
  int64_t batches_ = 0;
  const std::atomic<bool>* cancel_ = nullptr;
};

}  // namespace pal::data::detail
