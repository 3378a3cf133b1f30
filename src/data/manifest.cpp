#include "pal/data/manifest.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "pal/core/error.h"

namespace pal::data {
namespace {

using nlohmann::json;

bool is_blank(std::string_view text) {
  return text.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos;
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

[[noreturn]] void bad(const std::string& reason) {
  throw DataError(reason);
}

// A string field; nullopt when absent or null.
std::optional<std::string> string_field(const json& record, const char* key) {
  auto it = record.find(key);
  if (it == record.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) bad(std::string("'") + key + "' must be a string, got " + it->type_name());
  return it->get<std::string>();
}

// A number of seconds; nullopt when absent or null.
std::optional<double> seconds_field(const json& record, const char* key) {
  auto it = record.find(key);
  if (it == record.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) bad(std::string("'") + key + "' must be a number of seconds, got " + it->type_name());
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < 0)
    bad(std::string("'") + key + "' must be a finite number of seconds >= 0, got " + it->dump());
  return v;
}

}  // namespace

Example parse_record(std::string_view line, const std::filesystem::path& manifest_dir,
                     const std::string& source, bool require_audio) {
  json record;
  try {
    record = json::parse(line.begin(), line.end());
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at ..." -> "parse error at ..."
    if (auto close = what.find("] "); what.rfind("[json.exception", 0) == 0 && close != std::string::npos)
      what = what.substr(close + 2);
    bad("malformed JSON: " + what);
  }
  if (!record.is_object()) bad(std::string("a record must be a JSON object, got ") + record.type_name());

  Example example;
  example.source = source;
  std::optional<std::string> audio = string_field(record, "audio");
  if (!audio || audio->empty()) audio = string_field(record, "audio_id");
  if (audio && !audio->empty()) {
    std::filesystem::path path(*audio);
    example.audio = (path.is_absolute() ? path : manifest_dir / path).lexically_normal().string();
  } else if (require_audio) {
    bad("no 'audio' (or 'audio_id') path (text-only records need data.require_audio: false)");
  }

  std::optional<std::string> instruction = string_field(record, "instruction");
  if (!instruction) bad("missing 'instruction'");
  example.instruction = std::move(*instruction);
  std::optional<std::string> output = string_field(record, "output");
  if (!output) bad("missing 'output'");
  if (is_blank(*output)) bad("empty 'output'");
  example.output = std::move(*output);
  example.task = string_field(record, "task").value_or("");

  const std::optional<double> start = seconds_field(record, "start");
  const std::optional<double> end = seconds_field(record, "end");
  if (start) example.start = *start;
  if (end) {
    if (*end <= example.start)
      bad("'end' (" + number(*end) + " s) must be after 'start' (" + number(example.start) + " s)");
    example.end = *end;
  }
  if ((start || end) && example.audio.empty()) bad("'start'/'end' given without audio");
  return example;
}

ManifestReader::ManifestReader(std::filesystem::path manifest) : path_(std::move(manifest)) {
  std::error_code ec;
  if (!std::filesystem::exists(path_, ec))
    throw DataError("manifest '" + path_.string() + "' does not exist");
  if (std::filesystem::is_directory(path_, ec))
    throw DataError("manifest '" + path_.string() + "' is a folder, not a JSONL file");
  in_.open(path_, std::ios::binary);
  if (!in_) throw DataError("cannot open manifest '" + path_.string() + "'");
}

bool ManifestReader::next(Line& line) {
  while (true) {
    line.offset = offset_;
    line.number = line_;
    if (!std::getline(in_, line.text)) return false;
    // getline consumed the '\n' unless it hit the end of the file.
    offset_ += static_cast<int64_t>(line.text.size()) + (in_.eof() ? 0 : 1);
    ++line_;
    if (!line.text.empty() && line.text.back() == '\r') line.text.pop_back();
    if (!is_blank(line.text)) return true;
  }
}

void ManifestReader::seek(int64_t offset, int64_t line_number) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path_, ec);
  if (ec || offset < 0 || static_cast<uintmax_t>(offset) > size || line_number < 1)
    throw DataError("manifest '" + path_.string() + "': cannot continue at byte " + std::to_string(offset) +
                    " (line " + std::to_string(line_number) + "): the file has " +
                    (ec ? std::string("no readable size") : std::to_string(size) + " bytes"));
  in_.clear();
  in_.seekg(offset);
  if (!in_)
    throw DataError("manifest '" + path_.string() + "': cannot seek to byte " + std::to_string(offset));
  offset_ = offset;
  line_ = line_number;
}

int64_t count_records(const std::filesystem::path& manifest) {
  ManifestReader reader(manifest);
  ManifestReader::Line line;
  int64_t n = 0;
  while (reader.next(line)) ++n;
  return n;
}

bool ManifestSpec::wants(const std::string& task) const {
  return tasks.empty() || std::find(tasks.begin(), tasks.end(), task) != tasks.end();
}

int64_t count_records(const ManifestSpec& spec) {
  if (spec.tasks.empty()) return count_records(spec.path);
  ManifestReader reader(spec.path);
  ManifestReader::Line line;
  int64_t n = 0;
  while (reader.next(line)) {
    const auto j = nlohmann::json::parse(line.text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      ++n;  // a bad record
      continue;
    }
    const auto task = j.find("task");
    if (task == j.end()) {
      n += spec.wants("") ? 1 : 0;
    } else {
      n += !task->is_string() || spec.wants(task->get<std::string>()) ? 1 : 0;
    }
  }
  return n;
}

}  // namespace pal::data
