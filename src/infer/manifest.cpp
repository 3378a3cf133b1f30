#include "pal/infer/manifest.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"

namespace pal::infer {
namespace fs = std::filesystem;
namespace {

using nlohmann::json;

// One question of the manifest, as validated.
struct Entry {
  int64_t line = 0;  // 1-based line number in the manifest
  json record;       // the input object
  fs::path audio;
  std::string question;
  double start = 0;
  std::optional<double> end;
};

const json* field(const json& record, const char* name, const char* alias) {
  if (record.contains(name)) return &record[name];
  if (alias && record.contains(alias)) return &record[alias];
  return nullptr;
}

Entry parse_line(const std::string& text, int64_t line, const fs::path& manifest) {
  const std::string where = manifest.string() + ":" + std::to_string(line) + ": ";
  Entry e;
  e.line = line;
  try {
    e.record = json::parse(text);
  } catch (const json::parse_error& err) {
    throw DataError(where + "not valid JSON (" + err.what() + ")");
  }
  if (!e.record.is_object()) throw DataError(where + "expected a JSON object, got " + e.record.type_name());
  const json* audio = field(e.record, "audio", "audio_id");
  if (!audio) throw DataError(where + "no \"audio\" (the clip's path)");
  if (!audio->is_string() || audio->get<std::string>().empty())
    throw DataError(where + "\"audio\" must be a non-empty string (a path), got " + audio->dump());
  const json* question = field(e.record, "question", "instruction");
  if (!question) throw DataError(where + "no \"question\" (or \"instruction\")");
  if (!question->is_string())
    throw DataError(where + "\"question\" must be a string, got " + question->dump());
  e.question = question->get<std::string>();
  if (e.question.find_first_not_of(" \t\r\n") == std::string::npos)
    throw DataError(where + "\"question\" is empty");
  fs::path path = audio->get<std::string>();
  e.audio = path.is_absolute() ? path : manifest.parent_path() / path;
  for (const char* key : {"start", "end"}) {
    if (!e.record.contains(key) || e.record[key].is_null()) continue;
    if (!e.record[key].is_number())
      throw DataError(where + "\"" + key + "\" must be a number of seconds, got " + e.record[key].dump());
    const double v = e.record[key].get<double>();
    if (std::string(key) == "start")
      e.start = v;
    else
      e.end = v;
  }
  return e;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

bool blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\n") == std::string::npos;
}

// Reads the answered line numbers of an earlier run; rewrites the file without error
// records and without a torn last line when it has them.
std::set<int64_t> read_answered(const fs::path& output) {
  std::set<int64_t> answered;
  if (!fs::exists(output)) return answered;
  const std::string text = read_file(output);
  std::string kept;
  bool rewrite = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {  // a last line without its newline: a crash mid-write
      rewrite = true;
      break;
    }
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (blank(line)) continue;
    json record;
    try {
      record = json::parse(line);
    } catch (const json::parse_error&) {
      throw IoError(output.string() + ": a line is not JSON; is this the output of pal-infer? (" +
                    line.substr(0, 80) + ")");
    }
    if (!record.is_object() || !record.contains("line") || !record["line"].is_number_integer())
      throw IoError(output.string() + ": a record without \"line\"; is this the output of pal-infer? (" +
                    line.substr(0, 80) + ")");
    if (record.contains("error")) {
      rewrite = true;
      continue;
    }
    answered.insert(record["line"].get<int64_t>());
    kept += line + "\n";
  }
  if (rewrite) write_file_atomic(output, kept);
  return answered;
}

// Appends whole lines and flushes them to disk.
class OutputFile {
 public:
  explicit OutputFile(const fs::path& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "ab");
    if (!file_) throw IoError(path.string() + ": cannot open for appending: " + std::strerror(errno));
  }
  ~OutputFile() {
    if (file_) std::fclose(file_);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const std::string& lines) {
    if (std::fwrite(lines.data(), 1, lines.size(), file_) != lines.size() || std::fflush(file_) != 0 ||
        ::fsync(fileno(file_)) != 0)
      throw IoError(path_.string() + ": write failed: " + std::strerror(errno));
  }

 private:
  fs::path path_;
  FILE* file_ = nullptr;
};

}  // namespace

ManifestProgress answer_manifest(Pipeline& pipeline, const ManifestOptions& options,
                                 const std::function<void(const ManifestProgress&)>& progress) {
  if (options.batch_size < 1)
    throw ConfigError("batch_size: must be >= 1, got " + std::to_string(options.batch_size));
  options.generation.validate();
  auto open = [&] {
    std::ifstream in(options.manifest);
    if (!in)
      throw IoError(options.manifest.string() + ": cannot read the manifest (" +
                    (fs::exists(options.manifest) ? "permission?" : "no such file") + ")");
    return in;
  };
  ManifestProgress p;
  {  // Validate every line before answering any.
    std::ifstream in = open();
    std::string text;
    for (int64_t line = 1; std::getline(in, text); ++line) {
      if (blank(text)) continue;
      parse_line(text, line, options.manifest);
      ++p.lines;
    }
  }
  const std::set<int64_t> answered = read_answered(options.output);
  OutputFile out(options.output);

  std::vector<Entry> batch;
  auto flush = [&] {
    if (batch.empty()) return;
    std::vector<Pipeline::Question> questions;
    std::vector<size_t> asked;                       // batch index of each question
    std::vector<std::string> records(batch.size());  // in manifest order
    for (size_t i = 0; i < batch.size(); ++i) {
      Entry& e = batch[i];
      try {
        Pipeline::Question q;
        q.audio = pipeline.encode(e.audio, e.start, e.end);
        q.question = e.question;
        questions.push_back(std::move(q));
        asked.push_back(i);
      } catch (const AudioError& err) {
        json record = e.record;
        record["line"] = e.line;
        record["error"] = err.what();
        records[i] = dump(record);
        ++p.failed;
      }
    }
    if (!questions.empty()) {
      std::vector<Answer> answers = pipeline.ask_batch(questions, options.generation);
      for (size_t j = 0; j < answers.size(); ++j) {
        const Entry& e = batch[asked[j]];
        json record = e.record;
        record["line"] = e.line;
        record["answer"] = answers[j].text;
        record["finish_reason"] = finish_reason_name(answers[j].finish_reason);
        record["answer_tokens"] = answers[j].tokens.size();
        record["audio_seconds"] = questions[j].audio.seconds();
        records[asked[j]] = dump(record);
        ++p.answered;
      }
    }
    std::string lines;
    for (const auto& r : records) lines += r + "\n";
    out.write(lines);
    batch.clear();
    if (progress) progress(p);
  };

  std::ifstream in = open();
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (blank(text)) continue;
    if (answered.count(line)) {
      ++p.skipped;
      continue;
    }
    batch.push_back(parse_line(text, line, options.manifest));
    if (static_cast<int64_t>(batch.size()) >= options.batch_size) flush();
  }
  flush();
  if (progress && p.answered + p.failed == 0) progress(p);
  return p;
}

}  // namespace pal::infer
