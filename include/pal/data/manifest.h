// Training examples and the JSONL manifests that list them (DESIGN.md section 5).
//
// One example a line, compatible with LTU / OpenAQA:
//   {"audio": "clips/a.wav", "instruction": "What sound is this?", "output": "A dog barks.",
//    "task": "cla", "start": 1.5, "end": 4.0}
// `audio_id` is accepted for `audio`; the path is relative to the manifest's folder (an
// absolute path is kept); `start` / `end` (seconds) are optional; blank lines are skipped
// and are not records. Manifests are streamed line by line, never loaded whole.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "pal/core/config.h"

namespace pal::data {

// One training example.
struct Example {
  std::string audio;  // resolved path; empty for a text-only record (DataConfig::require_audio false)
  double start = 0;   // seconds
  double end = -1;    // seconds; < 0: to the end of the file
  std::string instruction, output, task;
  std::string source;  // "path/to/manifest.jsonl:LINE", for messages
};

// One manifest of a data mix. YAML: {path: train.jsonl, weight: 2.0, tasks: [digit, word]}
struct ManifestSpec {
  std::string path;     // JSONL file; a relative path is taken from the config's folder
  double weight = 1.0;  // mixing weight (> 0): the share of examples drawn from this manifest
  // Only the records whose "task" is one of these (empty: every record). Filtered records
  // are neither examples nor bad records; they do not count for epochs either.
  std::vector<std::string> tasks;
  template <class V>
  void visit(V& v) {
    v("path", path, config::Rule().required().non_empty());
    v("weight", weight, config::Rule().greater_than(0));
    v("tasks", tasks);
  }
  // Whether a record of this task belongs to the mix.
  bool wants(const std::string& task) const;
};

// Parses one manifest line. `manifest_dir` resolves relative audio paths; `source` is
// stored in Example::source. With `require_audio` false a record without audio is a
// text-only example. Throws pal::DataError whose message is the reason alone (malformed
// JSON, a missing or mistyped field, an empty output, a bad start/end); the caller adds
// the file and line. Does not touch the audio file.
Example parse_record(std::string_view line, const std::filesystem::path& manifest_dir,
                     const std::string& source, bool require_audio);

// Reads a manifest line by line, tracking the byte offset and line number so that a
// reader can be re-opened at any line (data cursors).
class ManifestReader {
 public:
  // Throws pal::DataError when the file is missing or cannot be opened.
  explicit ManifestReader(std::filesystem::path manifest);

  struct Line {
    std::string text;    // without the line break (and a trailing '\r')
    int64_t offset = 0;  // byte offset of the line's first character
    int64_t number = 0;  // 1-based line number
  };
  // Reads the next non-blank line; false at the end of the file.
  bool next(Line& line);
  // Continues at byte `offset`, which starts line `line_number` (1-based). Throws
  // pal::DataError when the offset is past the end of the file.
  void seek(int64_t offset, int64_t line_number);
  // Goes back to the first line.
  void rewind() { seek(0, 1); }

  int64_t offset() const { return offset_; }          // of the next line to read
  int64_t next_line_number() const { return line_; }  // of the next line to read
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ifstream in_;
  int64_t offset_ = 0;
  int64_t line_ = 1;
};

// Counts the records (non-blank lines) of a manifest by streaming it; for turning epochs
// into steps. Malformed records count too. Throws pal::DataError when it is missing.
int64_t count_records(const std::filesystem::path& manifest);
// The records of the manifest that `spec` keeps (its `tasks`); a line that does not parse
// counts, as the loader meets it as a bad record.
int64_t count_records(const ManifestSpec& spec);

}  // namespace pal::data
