#include "pal/data/loader.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "audio/audio_test_util.h"
#include "pal/audio/decode.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::data {
namespace {

using nlohmann::json;

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

// A folder of short 16 kHz clips and manifests that point at them.
class Dataset {
 public:
  // Clip i: a sine of 200 + 37 i Hz lasting 40 + 10 (i % 9) ms; its manifest path.
  std::string clip(int i) {
    const std::string name = "clips/c" + std::to_string(i) + ".wav";
    if (!std::filesystem::exists(dir_ / name)) {
      std::filesystem::create_directories(dir_ / "clips");
      test::write_audio(dir_ / name, SF_FORMAT_WAV | SF_FORMAT_FLOAT, audio::kSampleRate, 1,
                        test::sine(200 + 37 * i, audio::kSampleRate, 0.04 + 0.01 * (i % 9)));
    }
    return name;
  }
  static std::string record(const std::string& audio, const std::string& output,
                            json extra = json::object()) {
    json r = {{"instruction", "What do you hear?"}, {"output", output}, {"task", "cla"}};
    if (!audio.empty()) r["audio"] = audio;
    r.update(extra);
    return r.dump();
  }
  // A manifest of clips first..first+n-1 (outputs "<prefix><i>").
  std::string clips_manifest(const std::string& name, int first, int n, const std::string& prefix = "o") {
    std::string text;
    for (int i = first; i < first + n; ++i) text += record(clip(i), prefix + std::to_string(i)) + "\n";
    return write(name, text);
  }
  std::string write(const std::string& name, const std::string& text) {
    test::write_bytes(dir_ / name, text);
    return name;
  }
  const std::filesystem::path& path() const { return dir_.path(); }
  std::filesystem::path operator/(const std::string& name) const { return dir_ / name; }

 private:
  test::TempDir dir_;
};

DataConfig small_config() {
  DataConfig c;
  c.shuffle_buffer = 16;
  c.bucket_batches = 2;
  c.workers = 2;
  c.prefetch_batches = 3;
  return c;
}

std::vector<ManifestSpec> specs(std::vector<std::pair<std::string, double>> list) {
  std::vector<ManifestSpec> out;
  for (auto& [path, weight] : list) out.push_back({path, weight, {}});
  return out;
}

std::vector<Batch> take(DataLoader& loader, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) {
    std::optional<Batch> b = loader.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

std::vector<std::string> sources(const Batch& b) {
  std::vector<std::string> out;
  for (const auto& e : b.examples) out.push_back(e.source);
  return out;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("batch " + std::to_string(i));
    EXPECT_EQ(sources(a[i]), sources(b[i]));
    EXPECT_EQ(a[i].epoch, b[i].epoch);
    EXPECT_TRUE(at::equal(a[i].waveforms, b[i].waveforms));
    EXPECT_TRUE(at::equal(a[i].lengths, b[i].lengths));
    EXPECT_EQ(a[i].cursor, b[i].cursor);
  }
}

TEST(DataLoader, ManifestOrderBatchesArePaddedWaveforms) {
  Dataset data;
  data.clips_manifest("m.jsonl", 0, 7);
  LoaderOptions options;
  options.batch_size = 3;
  options.shuffle = false;
  options.repeat = false;
  DataLoader loader(specs({{"m.jsonl", 1}}), small_config(), data.path(), options);
  std::vector<Batch> batches = take(loader, 10);
  ASSERT_EQ(batches.size(), 3u);  // 3 + 3 + 1
  EXPECT_FALSE(loader.next());
  EXPECT_FALSE(loader.next());
  int i = 0;
  for (const Batch& b : batches) {
    const auto n = static_cast<int64_t>(b.examples.size());
    ASSERT_EQ(b.waveforms.dim(), 2);
    EXPECT_EQ(b.waveforms.size(0), n);
    EXPECT_EQ(b.waveforms.scalar_type(), at::kFloat);
    EXPECT_EQ(b.lengths.scalar_type(), at::kLong);
    EXPECT_EQ(b.waveforms.size(1), b.lengths.max().item<int64_t>());
    for (int64_t k = 0; k < n; ++k, ++i) {
      const Example& e = b.examples[static_cast<size_t>(k)];
      EXPECT_EQ(e.output, "o" + std::to_string(i));
      EXPECT_EQ(e.source, (data / "m.jsonl").string() + ":" + std::to_string(i + 1));
      EXPECT_EQ(e.audio, (data / data.clip(i)).string());
      at::Tensor expected = audio::load_audio(e.audio);
      const int64_t len = b.lengths[k].item<int64_t>();
      ASSERT_EQ(len, expected.numel());
      EXPECT_TRUE(at::equal(b.waveforms[k].narrow(0, 0, len), expected));
      EXPECT_EQ(b.waveforms[k].narrow(0, len, b.waveforms.size(1) - len).abs().sum().item<double>(), 0.0);
    }
  }
  EXPECT_EQ(i, 7);
  EXPECT_EQ(loader.stats().records, 7);
  EXPECT_EQ(loader.stats().bad, 0);
}

TEST(DataLoader, SameSeedGivesSameBatchesWhateverTheWorkers) {
  Dataset data;
  data.clips_manifest("a.jsonl", 0, 20);
  data.clips_manifest("b.jsonl", 20, 9);
  LoaderOptions options;
  options.batch_size = 4;
  options.seed = 7;
  DataConfig one = small_config(), many = small_config(), inline_decoding = small_config();
  one.workers = 1;
  many.workers = 4;
  many.prefetch_batches = 8;
  inline_decoding.workers = 0;
  const auto mix = specs({{"a.jsonl", 2}, {"b.jsonl", 1}});
  DataLoader a(mix, one, data.path(), options), b(mix, many, data.path(), options),
      c(mix, inline_decoding, data.path(), options);
  std::vector<Batch> from_a = take(a, 12);
  expect_same_batches(from_a, take(b, 12));
  expect_same_batches(from_a, take(c, 12));
  EXPECT_GT(from_a.back().epoch, 0);  // a.jsonl (20 records) was gone through more than once

  options.seed = 8;
  DataLoader d(mix, one, data.path(), options);
  std::vector<Batch> from_d = take(d, 12);
  bool differs = false;
  for (size_t i = 0; i < from_d.size(); ++i) differs |= sources(from_d[i]) != sources(from_a[i]);
  EXPECT_TRUE(differs);
}

TEST(DataLoader, RestoringACursorContinuesExactlyAfterItsBatch) {
  Dataset data;
  data.clips_manifest("a.jsonl", 0, 13);
  data.clips_manifest("b.jsonl", 13, 7);
  LoaderOptions options;
  options.batch_size = 3;
  options.seed = 11;
  const auto mix = specs({{"a.jsonl", 1.5}, {"b.jsonl", 1}});
  DataLoader whole(mix, small_config(), data.path(), options);
  std::vector<Batch> reference = take(whole, 10);

  DataLoader first_part(mix, small_config(), data.path(), options);
  std::vector<Batch> head = take(first_part, 4);
  expect_same_batches(head, std::vector<Batch>(reference.begin(), reference.begin() + 4));
  // The cursor carries pending examples (shuffle buffer, bucket window).
  json cursor = json::parse(head[3].cursor);
  EXPECT_FALSE(cursor["shuffle_buffer"].empty());

  DataLoader resumed(mix, small_config(), data.path(), options);
  resumed.restore(head[3].cursor);
  EXPECT_EQ(resumed.stats().records, first_part.stats().records);
  std::vector<Batch> tail = take(resumed, 6);
  expect_same_batches(tail, std::vector<Batch>(reference.begin() + 4, reference.end()));

  // Restoring mid-stream also rewinds a running loader.
  whole.restore(reference[1].cursor);
  expect_same_batches(take(whole, 2), std::vector<Batch>(reference.begin() + 2, reference.begin() + 4));
}

TEST(DataLoader, CursorFromAnotherConfigIsRejected) {
  Dataset data;
  data.clips_manifest("a.jsonl", 0, 6);
  LoaderOptions options;
  options.batch_size = 2;
  std::string cursor;
  {
    DataLoader loader(specs({{"a.jsonl", 1}}), small_config(), data.path(), options);
    cursor = loader.next()->cursor;
  }

  options.seed = 5;
  DataLoader other_seed(specs({{"a.jsonl", 1}}), small_config(), data.path(), options);
  std::string message = test::error_message<DataError>([&] { other_seed.restore(cursor); });
  expect_contains(message, "seed");
  expect_contains(message, "cursor");

  options.seed = 0;
  DataConfig bigger_buffer = small_config();
  bigger_buffer.shuffle_buffer = 64;
  DataLoader other_config(specs({{"a.jsonl", 1}}), bigger_buffer, data.path(), options);
  expect_contains(test::error_message<DataError>([&] { other_config.restore(cursor); }), "shuffle_buffer");
  expect_contains(test::error_message<DataError>([&] { other_config.restore("not json"); }), "not JSON");
  expect_contains(test::error_message<DataError>([&] { other_config.restore("{\"a\": 1}"); }),
                  "not a data cursor");

  // A manifest that changed since the cursor was made.
  DataLoader same(specs({{"a.jsonl", 1}}), small_config(), data.path(), options);
  data.clips_manifest("a.jsonl", 0, 5);
  expect_contains(test::error_message<DataError>([&] { same.restore(cursor); }), "has changed");
}

TEST(DataLoader, MixesManifestsByWeight) {
  Dataset data;
  std::string a, b;
  for (int i = 0; i < 10; ++i) a += Dataset::record("", "a" + std::to_string(i)) + "\n";
  for (int i = 0; i < 10; ++i) b += Dataset::record("", "b" + std::to_string(i)) + "\n";
  data.write("a.jsonl", a);
  data.write("b.jsonl", b);
  DataConfig config = small_config();
  config.require_audio = false;
  LoaderOptions options;
  options.batch_size = 8;
  DataLoader loader(specs({{"a.jsonl", 3}, {"b.jsonl", 1}}), config, data.path(), options);
  int from_a = 0, total = 0;
  for (const Batch& batch : take(loader, 100)) {
    EXPECT_EQ(batch.lengths.sum().item<int64_t>(), 0);  // text-only
    EXPECT_EQ(batch.waveforms.size(1), 1);
    for (const auto& e : batch.examples) {
      from_a += e.output[0] == 'a';
      ++total;
    }
  }
  EXPECT_EQ(total, 800);
  EXPECT_NEAR(static_cast<double>(from_a) / total, 0.75, 0.05);
}

TEST(DataLoader, ManifestTasksFilterTheMix) {
  Dataset data;
  const std::vector<std::string> tasks = {"cla", "digit", "word"};
  std::string a, b;
  for (int i = 0; i < 12; ++i) a += Dataset::record("", "a" + std::to_string(i), {{"task", tasks[i % 3]}}) + "\n";
  for (int i = 0; i < 10; ++i) b += Dataset::record("", "b" + std::to_string(i)) + "\n";
  data.write("a.jsonl", a);
  data.write("b.jsonl", b);
  DataConfig config = small_config();
  config.require_audio = false;
  LoaderOptions options;
  options.batch_size = 8;
  std::vector<ManifestSpec> mix = specs({{"a.jsonl", 1}, {"b.jsonl", 1}});
  mix[0].tasks = {"digit", "word"};
  DataLoader loader(mix, config, data.path(), options);
  std::map<std::string, int> from_a;
  int total = 0, a_total = 0;
  for (const Batch& batch : take(loader, 50)) {
    for (const auto& e : batch.examples) {
      ++total;
      if (e.output[0] != 'a') continue;
      ++a_total;
      ++from_a[e.task];
    }
  }
  EXPECT_EQ(from_a.count("cla"), 0u);
  EXPECT_GT(from_a["digit"], 0);
  EXPECT_GT(from_a["word"], 0);
  EXPECT_NEAR(static_cast<double>(a_total) / total, 0.5, 0.07);  // the filter keeps the weights
  // Epochs count the kept records only; a line that does not parse counts (a bad record).
  ManifestSpec counted = mix[0];
  counted.path = (data / "a.jsonl").string();
  EXPECT_EQ(count_records(counted), 8);
  data.write("c.jsonl", a + "{broken\n");
  counted.path = (data / "c.jsonl").string();
  EXPECT_EQ(count_records(counted), 9);
  EXPECT_EQ(count_records(data / "a.jsonl"), 12);

  // A cursor remembers the filter.
  const std::string cursor = DataLoader(mix, config, data.path(), options).next()->cursor;
  DataLoader unfiltered(specs({{"a.jsonl", 1}, {"b.jsonl", 1}}), config, data.path(), options);
  expect_contains(test::error_message<DataError>([&] { unfiltered.restore(cursor); }), "cursor");

  // A filter that matches nothing names the manifest and its tasks.
  std::vector<ManifestSpec> none = specs({{"a.jsonl", 1}});
  none[0].tasks = {"beeps"};
  DataLoader empty(none, config, data.path(), options);
  const std::string message = test::error_message<DataError>([&] { empty.next(); });
  expect_contains(message, "a.jsonl");
  expect_contains(message, "[\"beeps\"]");
}

TEST(DataLoader, RanksSeeDisjointShards) {
  Dataset data;
  std::string text;
  for (int i = 0; i < 11; ++i) text += Dataset::record("", "r" + std::to_string(i)) + "\n";
  data.write("m.jsonl", text);
  DataConfig config = small_config();
  config.require_audio = false;
  std::set<std::string> seen;
  for (int64_t rank = 0; rank < 3; ++rank) {
    LoaderOptions options;
    options.batch_size = 2;
    options.repeat = false;
    options.rank = rank;
    options.world_size = 3;
    DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
    for (const Batch& b : take(loader, 100))
      for (const auto& e : b.examples) {
        EXPECT_EQ(std::stoi(e.output.substr(1)) % 3, rank) << e.output;
        EXPECT_TRUE(seen.insert(e.output).second) << e.output << " seen by two ranks";
      }
  }
  EXPECT_EQ(seen.size(), 11u);
}

TEST(DataLoader, BucketsByDurationAndShufflesTheBatches) {
  Dataset data;
  data.clips_manifest("m.jsonl", 0, 16);
  DataConfig config = small_config();
  config.shuffle_buffer = 0;
  config.bucket_batches = 4;  // one window of all 16 examples
  LoaderOptions options;
  options.batch_size = 4;
  options.repeat = false;
  DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
  std::vector<Batch> batches = take(loader, 10);
  ASSERT_EQ(batches.size(), 4u);
  // Each batch holds a contiguous range of the sorted durations: no two ranges overlap.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& b : batches)
    ranges.push_back({b.lengths.min().item<int64_t>(), b.lengths.max().item<int64_t>()});
  for (size_t i = 0; i < ranges.size(); ++i)
    for (size_t j = i + 1; j < ranges.size(); ++j)
      EXPECT_TRUE(ranges[i].second <= ranges[j].first || ranges[j].second <= ranges[i].first);
}

TEST(DataLoader, WindowsAreCutToMaxAudioSeconds) {
  Dataset data;
  data.clip(8);  // 120 ms
  data.write("m.jsonl", Dataset::record(data.clip(8), "x", {{"start", 0.01}, {"end", 0.06}}) + "\n" +
                            Dataset::record(data.clip(8), "y") + "\n" +
                            Dataset::record(data.clip(8), "z", {{"start", 0.1}}) + "\n");
  DataConfig config = small_config();
  config.max_audio_seconds = 0.03;
  LoaderOptions options;
  options.batch_size = 3;
  options.shuffle = false;
  options.repeat = false;
  DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
  Batch b = *loader.next();
  at::Tensor full = audio::load_audio(data / data.clip(8));
  EXPECT_EQ(b.lengths[0].item<int64_t>(), 480);
  EXPECT_TRUE(at::equal(b.waveforms[0].narrow(0, 0, 480), full.narrow(0, 160, 480)));
  EXPECT_EQ(b.lengths[1].item<int64_t>(), 480);
  EXPECT_EQ(b.lengths[2].item<int64_t>(), 320);  // from 100 ms to the end at 120 ms
  EXPECT_TRUE(at::equal(b.waveforms[2].narrow(0, 0, 320), full.narrow(0, 1600, 320)));
}

TEST(DataLoader, TooManyBadRecordsIsAnErrorNamingThem) {
  Dataset data;
  std::string text;
  for (int i = 0; i < 10; ++i) {
    if (i == 1)
      text += "{\"audio\": \"x.wav\", \"instruction\": \n";
    else if (i == 4)
      text += Dataset::record(data.clip(i), "") + "\n";
    else if (i == 7)
      text += Dataset::record("clips/missing.wav", "o") + "\n";
    else
      text += Dataset::record(data.clip(i), "o" + std::to_string(i)) + "\n";
  }
  data.write("m.jsonl", text);
  LoaderOptions options;
  options.batch_size = 2;
  options.repeat = false;
  DataLoader strict(specs({{"m.jsonl", 1}}), small_config(), data.path(), options);
  std::string message = test::error_message<DataError>([&] { take(strict, 100); });
  expect_contains(message, (data / "m.jsonl").string());
  expect_contains(message, "3 of 10 records are bad");
  expect_contains(message, "m.jsonl:2: malformed JSON");
  expect_contains(message, "m.jsonl:5: empty 'output'");
  expect_contains(message, "m.jsonl:8: audio file");
  expect_contains(message, "not found");
  // The error stays.
  expect_contains(test::error_message<DataError>([&] { strict.next(); }), "3 of 10");

  DataConfig lenient = small_config();
  lenient.max_bad_fraction = 0.5;
  DataLoader loader(specs({{"m.jsonl", 1}}), lenient, data.path(), options);
  int examples = 0;
  for (const Batch& b : take(loader, 100)) examples += static_cast<int>(b.examples.size());
  EXPECT_EQ(examples, 7);
  EXPECT_EQ(loader.stats().records, 10);
  EXPECT_EQ(loader.stats().bad, 3);
}

TEST(DataLoader, AudioThatDoesNotDecodeIsDroppedFromItsBatchOrFailsNext) {
  Dataset data;
  std::string text;
  for (int i = 0; i < 4; ++i) text += Dataset::record(data.clip(i), "o") + "\n";
  data.write("clips/broken.wav", "RIFF....WAVEfmt garbage");
  // With an end, planning does not open the file: the worker finds it broken.
  text += Dataset::record("clips/broken.wav", "o", {{"end", 1.0}}) + "\n";
  data.write("m.jsonl", text);
  LoaderOptions options;
  options.batch_size = 5;
  options.shuffle = false;
  options.repeat = false;
  DataConfig config = small_config();
  config.max_bad_fraction = 0.5;
  DataLoader lenient(specs({{"m.jsonl", 1}}), config, data.path(), options);
  Batch b = *lenient.next();
  EXPECT_EQ(b.examples.size(), 4u);
  EXPECT_EQ(b.waveforms.size(0), 4);
  EXPECT_EQ(lenient.stats().bad, 1);
  EXPECT_EQ(json::parse(b.cursor)["decode_bad"][0], 1);

  config.max_bad_fraction = 0;
  DataLoader strict(specs({{"m.jsonl", 1}}), config, data.path(), options);
  EXPECT_EQ(strict.next()->examples.size(), 4u);  // fewer than 50 records: known at the end of the pass
  std::string message = test::error_message<DataError>([&] { strict.next(); });
  expect_contains(message, "1 of 5 records are bad");
  expect_contains(message, "broken.wav");
}

TEST(DataLoader, CacheServesDecodedClipsAndRewritesCorruptEntries) {
  Dataset data;
  std::string text;
  for (int i = 0; i < 6; ++i) text += Dataset::record(data.clip(i), "o") + "\n";
  text += Dataset::record(data.clip(8), "o", {{"start", 0.02}, {"end", 0.07}}) + "\n";
  data.write("m.jsonl", text);
  DataConfig config = small_config();
  config.cache_dir = "cache";
  LoaderOptions options;
  options.batch_size = 3;
  options.repeat = false;
  auto run = [&] {
    DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
    std::vector<Batch> batches = take(loader, 10);
    return std::make_pair(std::move(batches), loader.stats().cache_hits);
  };
  auto [first, first_hits] = run();
  EXPECT_EQ(first_hits, 0);
  auto [second, second_hits] = run();
  EXPECT_EQ(second_hits, 7);
  expect_same_batches(first, second);

  // Damage one entry: it is decoded and written again.
  std::vector<std::filesystem::path> entries;
  for (const auto& f : std::filesystem::recursive_directory_iterator(data / "cache"))
    if (f.is_regular_file()) entries.push_back(f.path());
  ASSERT_EQ(entries.size(), 7u);
  const auto size = std::filesystem::file_size(entries[0]);
  std::filesystem::resize_file(entries[0], size - 5);
  auto [third, third_hits] = run();
  EXPECT_EQ(third_hits, 6);
  expect_same_batches(first, third);
  EXPECT_EQ(std::filesystem::file_size(entries[0]), size);
}

TEST(DataLoader, WorkerErrorsReachNext) {
  Dataset data;
  data.clips_manifest("m.jsonl", 0, 4);
  // Files where the cache's sub-folders would go: writing an entry fails in the worker.
  std::filesystem::create_directories(data / "cache");
  for (int i = 0; i < 256; ++i) {
    char name[3];
    std::snprintf(name, sizeof name, "%02x", i);
    test::write_bytes(data / "cache" / name, "x");
  }
  DataConfig config = small_config();
  config.cache_dir = "cache";
  LoaderOptions options;
  options.batch_size = 2;
  DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
  std::string message = test::error_message<DataError>([&] { loader.next(); });
  expect_contains(message, "cannot write the audio cache entry");
  expect_contains(message, "m.jsonl:");
}

TEST(DataLoader, ClearErrorsForMissingOrEmptyManifestsAndBadOptions) {
  Dataset data;
  data.clips_manifest("a.jsonl", 0, 2);
  data.write("empty.jsonl", "\n  \n");
  LoaderOptions options;
  const DataConfig config = small_config();
  auto error = [&](std::vector<ManifestSpec> m, const LoaderOptions& o) {
    return test::error_message<DataError>([&] { DataLoader loader(m, config, data.path(), o); });
  };
  std::string message = error(specs({{"a.jsonl", 1}, {"nope.jsonl", 1}}), options);
  expect_contains(message, "nope.jsonl");
  expect_contains(message, "does not exist");
  expect_contains(error(specs({{"empty.jsonl", 1}}), options), "empty.jsonl' is empty");
  expect_contains(error(specs({{"a.jsonl", 0}}), options), "weight");
  expect_contains(error(specs({{"a.jsonl", -1}}), options), "weight");
  expect_contains(error({}, options), "no manifests");
  LoaderOptions bad_rank;
  bad_rank.rank = 2;
  bad_rank.world_size = 2;
  expect_contains(error(specs({{"a.jsonl", 1}}), bad_rank), "rank 2 of world_size 2");
  LoaderOptions bad_batch;
  bad_batch.batch_size = 0;
  expect_contains(error(specs({{"a.jsonl", 1}}), bad_batch), "batch_size");

  // A rank whose shard of a repeating manifest holds nothing.
  LoaderOptions lonely;
  lonely.rank = 2;
  lonely.world_size = 3;
  DataLoader loader(specs({{"a.jsonl", 1}}), config, data.path(), lonely);
  expect_contains(test::error_message<DataError>([&] { loader.next(); }), "no usable record for rank 2 of 3");
}

TEST(DataLoader, DestroyingMidStreamDoesNotHang) {
  Dataset data;
  data.clips_manifest("m.jsonl", 0, 30);
  DataConfig config = small_config();
  config.workers = 3;
  config.prefetch_batches = 2;
  LoaderOptions options;
  options.batch_size = 2;
  const auto start = std::chrono::steady_clock::now();
  for (int taken = 0; taken < 3; ++taken) {
    DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
    take(loader, taken);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(DataLoader, EpochCountsPassesOverTheFirstManifest) {
  Dataset data;
  std::string text;
  for (int i = 0; i < 5; ++i) text += Dataset::record("", "t" + std::to_string(i)) + "\n";
  data.write("m.jsonl", text);
  DataConfig config = small_config();
  config.require_audio = false;
  config.shuffle_buffer = 0;
  config.bucket_batches = 1;
  LoaderOptions options;
  options.batch_size = 5;
  DataLoader loader(specs({{"m.jsonl", 1}}), config, data.path(), options);
  std::vector<Batch> batches = take(loader, 3);
  // The end of a pass is noticed when the record after its last one is read.
  EXPECT_EQ(batches[0].epoch, 0);
  EXPECT_EQ(batches[1].epoch, 1);
  EXPECT_EQ(batches[2].epoch, 2);
  std::multiset<std::string> outputs;
  for (const auto& e : batches[1].examples) outputs.insert(e.output);
  EXPECT_EQ(outputs, (std::multiset<std::string>{"t0", "t1", "t2", "t3", "t4"}));
}

}  // namespace
}  // namespace pal::data
