#include "pal/data/loader.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "clip_cache.h"
#include "log.h"
#include "pal/core/error.h"
#include "planner.h"

namespace pal::data {
namespace {

using nlohmann::json;

// One planned batch on its way to next(): planned, then decoded by a worker (or by next()
// itself with workers: 0).
struct Slot {
  detail::PlannedBatch plan;
  bool end = false;                  // the non-repeating pass is over (no plan)
  std::exception_ptr error;          // from the planner or the decoding
  bool taken = false;                // a thread is decoding it (or nothing to decode)
  bool ready = false;                // decoded (or end / error)
  Batch batch;                       // examples + tensors, without cursor
  std::vector<std::string> dropped;  // "source: reason" of examples whose audio failed
  std::vector<int> dropped_source;   // their manifests
  int64_t cache_hits = 0;
};

void require(bool condition, const std::string& message) {
  if (!condition) throw DataError("data loader: " + message);
}

}  // namespace

struct DataLoader::State {
  std::vector<ManifestSpec> specs;
  std::vector<std::filesystem::path> manifests;  // resolved
  DataConfig config;
  LoaderOptions options;
  std::unique_ptr<detail::ClipCache> cache;
  std::unique_ptr<detail::Planner> planner;  // used by the planner thread while it runs

  std::mutex mutex;
  std::condition_variable planner_wakeup, worker_wakeup, consumer_wakeup;
  std::deque<std::shared_ptr<Slot>> slots;  // in plan order
  bool stop = false;
  std::atomic<bool> cancel{false};  // stop, for the planner between records
  bool running = false;
  std::thread planner_thread;
  std::vector<std::thread> workers;

  // The consumer's view, as of the last batch next() returned.
  std::vector<int64_t> decode_bad;  // per manifest
  std::vector<std::vector<std::string>> decode_first_bad;
  Stats stats;
  std::exception_ptr failed;  // thrown again by every next()
  bool finished = false;

  void start();
  void stop_threads();
  void plan_loop();
  void work_loop();
  void decode(Slot& slot) const;
  void account(const Slot& slot);
  std::optional<Batch> finish(Slot& slot);
};

void DataLoader::State::start() {
  stop = false;
  cancel = false;
  planner->cancel_on(&cancel);
  running = true;
  planner_thread = std::thread([this] { plan_loop(); });
  for (int64_t i = 0; i < config.workers; ++i) workers.emplace_back([this] { work_loop(); });
}

void DataLoader::State::stop_threads() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    stop = true;
    cancel = true;
  }
  planner_wakeup.notify_all();
  worker_wakeup.notify_all();
  consumer_wakeup.notify_all();
  if (planner_thread.joinable()) planner_thread.join();
  for (auto& w : workers) w.join();
  workers.clear();
  slots.clear();
  stop = false;
  running = false;
}

void DataLoader::State::plan_loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex);
      planner_wakeup.wait(
          lock, [&] { return stop || slots.size() < static_cast<size_t>(config.prefetch_batches); });
      if (stop) return;
    }
    auto slot = std::make_shared<Slot>();
    try {
      std::optional<detail::PlannedBatch> plan = planner->next();
      if (plan) {
        slot->plan = std::move(*plan);
      } else {
        slot->end = true;
        slot->plan.records = planner->records();  // for the limit at the end of the pass
      }
    } catch (const detail::Planner::Cancelled&) {
      return;
    } catch (...) {
      slot->error = std::current_exception();
    }
    const bool last = slot->end || slot->error;
    if (last) slot->taken = slot->ready = true;
    {
      std::lock_guard<std::mutex> lock(mutex);
      slots.push_back(slot);
    }
    worker_wakeup.notify_one();
    consumer_wakeup.notify_all();
    if (last) return;
  }
}

void DataLoader::State::work_loop() {
  while (true) {
    std::shared_ptr<Slot> slot;
    {
      std::unique_lock<std::mutex> lock(mutex);
      auto untaken = [&] {
        return std::find_if(slots.begin(), slots.end(), [](const auto& s) { return !s->taken; });
      };
      worker_wakeup.wait(lock, [&] { return stop || untaken() != slots.end(); });
      if (stop) return;
      slot = *untaken();
      slot->taken = true;
    }
    decode(*slot);
    {
      std::lock_guard<std::mutex> lock(mutex);
      slot->ready = true;
    }
    consumer_wakeup.notify_all();
  }
}

// Decodes and pads the batch's audio. Examples whose audio does not decode are dropped
// and noted; any other failure becomes the slot's error.
void DataLoader::State::decode(Slot& slot) const {
  try {
    std::vector<at::Tensor> clips;
    for (auto& item : slot.plan.examples) {
      Example& example = item.example;
      at::Tensor clip;
      if (!example.audio.empty()) {
        try {
          if (cache) {
            bool hit = false;
            clip = cache->load(example, hit);
            slot.cache_hits += hit;
          } else {
            clip = detail::load_clip(example, config.max_audio_seconds);
          }
        } catch (const AudioError& e) {
          if (item.epoch == 0)
            pal::detail::log_warn(example.source, ": skipped, audio does not decode: ", e.what());
          slot.dropped.push_back(example.source + ": " + e.what());
          slot.dropped_source.push_back(item.source);
          continue;
        }
      }
      slot.batch.examples.push_back(std::move(example));
      clips.push_back(clip);
    }
    const auto b = static_cast<int64_t>(clips.size());
    if (b == 0) return;
    int64_t n = 1;
    for (const auto& c : clips)
      if (c.defined()) n = std::max<int64_t>(n, c.numel());
    slot.batch.waveforms = at::zeros({b, n}, at::kFloat);
    slot.batch.lengths = at::zeros({b}, at::kLong);
    auto lengths = slot.batch.lengths.accessor<int64_t, 1>();
    for (int64_t i = 0; i < b; ++i) {
      const at::Tensor& c = clips[static_cast<size_t>(i)];
      if (!c.defined()) continue;
      slot.batch.waveforms[i].narrow(0, 0, c.numel()).copy_(c);
      lengths[i] = c.numel();
    }
    slot.batch.epoch = slot.plan.epoch;
  } catch (...) {
    slot.error = std::current_exception();
  }
}

// Counts the examples the decoding dropped, updates the stats and applies the bad-record
// limit to the counts as of this slot.
void DataLoader::State::account(const Slot& slot) {
  for (size_t i = 0; i < slot.dropped.size(); ++i) {
    const auto s = static_cast<size_t>(slot.dropped_source[i]);
    ++decode_bad[s];
    if (decode_first_bad[s].size() < detail::RecordCounts::kKeptReasons)
      decode_first_bad[s].push_back(slot.dropped[i]);
  }
  Stats now;
  now.cache_hits = stats.cache_hits + slot.cache_hits;
  for (size_t s = 0; s < slot.plan.records.size(); ++s) {
    const detail::RecordCounts& counts = slot.plan.records[s];
    now.records += counts.seen;
    now.bad += counts.bad + decode_bad[s];
    if (decode_bad[s] > 0) {
      std::vector<std::string> first_bad = counts.first_bad;
      for (const auto& line : decode_first_bad[s])
        if (first_bad.size() < detail::RecordCounts::kKeptReasons) first_bad.push_back(line);
      detail::check_bad_fraction(planner->manifest_name(s), counts.seen, counts.bad + decode_bad[s],
                                 counts.pass_done, first_bad, config.max_bad_fraction);
    }
  }
  std::lock_guard<std::mutex> lock(mutex);
  stats = now;
}

// The decoded batch with its cursor; nullopt when every example was dropped.
std::optional<Batch> DataLoader::State::finish(Slot& slot) {
  account(slot);
  if (slot.batch.examples.empty()) return std::nullopt;
  json cursor = std::move(slot.plan.cursor);
  cursor["decode_bad"] = decode_bad;
  cursor["decode_first_bad"] = decode_first_bad;
  slot.batch.cursor = cursor.dump();
  return std::move(slot.batch);
}

DataLoader::DataLoader(std::vector<ManifestSpec> manifests, const DataConfig& config,
                       const std::filesystem::path& base_dir, const LoaderOptions& options)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  require(!manifests.empty(), "no manifests given (data.train must list at least one)");
  for (const auto& m : manifests) {
    require(!m.path.empty(), "a manifest has an empty path");
    require(std::isfinite(m.weight) && m.weight > 0,
            "manifest '" + m.path + "' has weight " + json(m.weight).dump() + "; a weight must be > 0");
  }
  require(options.batch_size >= 1, "batch_size must be >= 1, got " + std::to_string(options.batch_size));
  require(options.world_size >= 1 && options.rank >= 0 && options.rank < options.world_size,
          "rank " + std::to_string(options.rank) + " of world_size " + std::to_string(options.world_size) +
              " is not a valid shard");
  require(config.shuffle_buffer >= 0, "data.shuffle_buffer must be >= 0");
  require(config.bucket_batches >= 1, "data.bucket_batches must be >= 1");
  require(config.workers >= 0, "data.workers must be >= 0");
  require(config.prefetch_batches >= 1, "data.prefetch_batches must be >= 1");
  require(config.max_bad_fraction >= 0 && config.max_bad_fraction <= 1,
          "data.max_bad_fraction must be in [0, 1]");
  require(config.max_audio_seconds > 0, "data.max_audio_seconds must be > 0");

  s.specs = std::move(manifests);
  s.config = config;
  s.options = options;
  for (const auto& m : s.specs) {
    const std::filesystem::path p(m.path);
    s.manifests.push_back(p.is_absolute() ? p : base_dir / p);
  }
  s.planner = std::make_unique<detail::Planner>(s.specs, s.manifests, s.config, s.options);
  if (!config.cache_dir.empty()) {
    const std::filesystem::path dir(config.cache_dir);
    s.cache = std::make_unique<detail::ClipCache>(dir.is_absolute() ? dir : base_dir / dir,
                                                  config.max_audio_seconds);
  }
  s.decode_bad.assign(s.specs.size(), 0);
  s.decode_first_bad.assign(s.specs.size(), {});
}

DataLoader::~DataLoader() {
  state_->stop_threads();
}

std::optional<Batch> DataLoader::next() {
  State& s = *state_;
  if (s.failed) std::rethrow_exception(s.failed);
  if (s.finished) return std::nullopt;
  if (!s.running) s.start();
  while (true) {
    std::shared_ptr<Slot> slot;
    bool decode_here = false;
    {
      std::unique_lock<std::mutex> lock(s.mutex);
      s.consumer_wakeup.wait(lock, [&] {
        return !s.slots.empty() &&
               (s.slots.front()->ready || (s.config.workers == 0 && !s.slots.front()->taken));
      });
      slot = s.slots.front();
      decode_here = !slot->ready;
      if (decode_here) slot->taken = true;
    }
    if (decode_here) s.decode(*slot);
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.slots.pop_front();
    }
    s.planner_wakeup.notify_one();
    try {
      if (slot->error) std::rethrow_exception(slot->error);
      if (slot->end) {
        s.account(*slot);  // the limit at the end of the pass, with the decoding's drops
        s.finished = true;
        return std::nullopt;
      }
      if (std::optional<Batch> batch = s.finish(*slot)) return batch;
    } catch (...) {
      s.failed = std::current_exception();
      throw;
    }
  }
}

void DataLoader::restore(const std::string& cursor) {
  State& s = *state_;
  json c = json::parse(cursor, nullptr, /*allow_exceptions=*/false);
  if (c.is_discarded() || !c.is_object())
    throw DataError("cannot restore the data cursor: it is not JSON (expected a Batch::cursor)");
  auto planner = std::make_unique<detail::Planner>(s.specs, s.manifests, s.config, s.options);
  planner->restore(c);
  std::vector<int64_t> decode_bad;
  std::vector<std::vector<std::string>> decode_first_bad;
  try {
    decode_bad = c.at("decode_bad").get<std::vector<int64_t>>();
    decode_first_bad = c.at("decode_first_bad").get<std::vector<std::vector<std::string>>>();
  } catch (const json::exception&) {
    throw DataError(
        "cannot restore the data cursor: its decode_bad / decode_first_bad are missing or malformed");
  }
  if (decode_bad.size() != s.specs.size() || decode_first_bad.size() != s.specs.size())
    throw DataError("cannot restore the data cursor: its decode counts do not match the manifests");

  s.stop_threads();
  s.planner = std::move(planner);
  s.decode_bad = std::move(decode_bad);
  s.decode_first_bad = std::move(decode_first_bad);
  Stats restored;
  restored.cache_hits = s.stats.cache_hits;
  for (size_t i = 0; i < s.specs.size(); ++i) {
    const auto& counts = c["streams"][i]["counts"];
    restored.records += counts["seen"].get<int64_t>();
    restored.bad += counts["bad"].get<int64_t>() + s.decode_bad[i];
  }
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stats = restored;
  }
  s.failed = nullptr;
  s.finished = false;
}

DataLoader::Stats DataLoader::stats() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->stats;
}

}  // namespace pal::data
