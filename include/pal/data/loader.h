// The training data pipeline: weighted mixing of JSONL manifests, a shuffle buffer,
// length bucketing, audio decoding on worker threads, padded batches, and a cursor that
// resumes the exact batch sequence.
//
//   manifests --(mix by weight)--> shuffle buffer --> bucket window --> planned batches
//        (one planner thread: every random choice, in order)                  |
//                                                          workers decode audio (16 kHz)
//                                                                             |
//                                   next() <-- batches in plan order <--------+
//
// Determinism: one planner thread makes every random choice from the seed (a counter-based
// generator), so the batch sequence depends only on the manifests, the data config, the
// seed and the rank, never on the number of workers or on timing. Batch::cursor is the
// planner's state right after that batch; restore() continues from it with the batches
// an uninterrupted run would have given.
//
// Bad records (malformed JSON, a missing field, an empty output, a missing audio file, a
// start past the end of the audio, audio that does not decode) are logged as warnings
// with file:line (the first pass only), counted and skipped. Once a manifest has shown at
// least min(50, its records) records, more than max_bad_fraction bad ones is a
// pal::DataError naming the manifest, the counts and the first bad lines.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pal/core/config.h"
#include "pal/data/manifest.h"

namespace pal::data {

// The `data:` section of a stage config.
struct DataConfig {
  std::vector<ManifestSpec> train;  // required, non-empty
  std::vector<ManifestSpec> eval;   // optional
  int64_t shuffle_buffer = 2048;    // examples held for shuffling; 0 or 1: no shuffling
  int64_t bucket_batches = 8;       // length bucketing: a window of bucket_batches*batch_size
                                    // examples is sorted by duration and cut into batches,
                                    // whose order is then shuffled; 1: off
  int64_t workers = 2;              // audio decoding threads; 0: decode in next()'s thread
  int64_t prefetch_batches = 4;     // planned batches in flight (decoding or ready)
  std::string cache_dir;            // on-disk cache of decoded 16 kHz audio ("": off);
                                    // relative to the config's folder
  double max_bad_fraction = 0.01;   // bad records tolerated per manifest; beyond: DataError
  double max_audio_seconds = 30;    // longer clips are cut to this many seconds from `start`
  bool require_audio = true;        // false: records without audio are text-only examples
  template <class V>
  void visit(V& v) {
    using config::Rule;
    v("train", train, Rule().required().non_empty());
    v("eval", eval);
    v("shuffle_buffer", shuffle_buffer, Rule().at_least(0));
    v("bucket_batches", bucket_batches, Rule().at_least(1));
    v("workers", workers, Rule().at_least(0).at_most(256));
    v("prefetch_batches", prefetch_batches, Rule().at_least(1));
    v("cache_dir", cache_dir);
    v("max_bad_fraction", max_bad_fraction, Rule().at_least(0).at_most(1));
    v("max_audio_seconds", max_audio_seconds, Rule().greater_than(0));
    v("require_audio", require_audio);
  }
};

struct Batch {
  std::vector<Example> examples;  // examples whose audio did not decode are dropped, so
                                  // possibly fewer than batch_size; never empty
  at::Tensor waveforms;           // [B, N] float32, 16 kHz mono, zero-padded (N >= 1; all
                                  // zeros for text-only examples)
  at::Tensor lengths;             // [B] int64 valid samples (0 for text-only)
  int64_t epoch = 0;              // epoch of the first manifest when this batch was formed
  std::string cursor;             // JSON: the loader's state right after this batch;
                                  // restore() it to continue with the next batch
};

struct LoaderOptions {
  int64_t batch_size = 8;
  uint64_t seed = 0;
  bool shuffle = true;               // false (eval): manifest order, no bucketing
  bool repeat = true;                // true: endless, each manifest cycling through epochs;
                                     // false: each manifest once, in order, then nullopt
  int64_t rank = 0, world_size = 1;  // this rank sees the records whose index within their
                                     // manifest % world_size == rank
};

// Owns one planner thread and `workers` decoding threads, started by the first next().
// Call next() and restore() from one thread; stats() from any.
class DataLoader {
 public:
  // `manifests` (usually DataConfig::train or ::eval); relative manifest paths and
  // cache_dir are taken from `base_dir`. Checks at once that every manifest exists and
  // holds a record, and that the options make sense (pal::DataError otherwise); threads
  // start at the first next().
  DataLoader(std::vector<ManifestSpec> manifests, const DataConfig& config,
             const std::filesystem::path& base_dir, const LoaderOptions& options);
  ~DataLoader();  // stops and joins the threads (waits for at most the batches being decoded)
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch; blocks until it is decoded. nullopt at the end of a non-repeating
  // pass. Errors found by the planner or the workers (pal::DataError) are thrown here, in
  // plan order, and again by every later call.
  std::optional<Batch> next();

  // Continues exactly after the batch whose cursor this is. A cursor from another data
  // config, seed, batch size, rank or manifest list, or from a manifest that has since
  // changed size, is a pal::DataError saying which.
  void restore(const std::string& cursor);

  struct Stats {
    int64_t records = 0;     // records this rank read (repeats and read-ahead included)
    int64_t bad = 0;         // of which bad (skipped)
    int64_t cache_hits = 0;  // clips read from cache_dir instead of decoded
  };
  // As of the last batch returned by next() (restored with a cursor, except cache_hits).
  Stats stats() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// count_records(manifest) (for epochs -> steps) is in pal/data/manifest.h.

}  // namespace pal::data
