#include "pal/core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include "pal/core/error.h"

namespace pal::config {
namespace detail {

// One parsed document and where its parts came from.
struct Source {
  YAML::Node root;
  std::string name;  // file path, or the name given to from_string
  // Dotted paths set by --set ("optim.lr", "data.manifests[0].weight") and the assignment
  // text, for messages about values that came from the command line.
  std::vector<std::pair<std::string, std::string>> overrides;
};

struct ReaderNode {
  std::shared_ptr<Source> source;
  YAML::Node node;              // a mapping (or an empty one for an absent section)
  YAML::Mark mark;              // where this mapping is (or its parent, when absent)
  std::string path;             // dotted path of this mapping
  std::set<std::string> asked;  // every key a field asked for
};

struct WriterState {
  YAML::Emitter out;
};

}  // namespace detail

namespace {

using detail::ReaderNode;
using detail::Source;

std::string format_number(double x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  if (ec != std::errc()) return std::to_string(x);
  return std::string(buf, end);
}

std::string format_number(float x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  if (ec != std::errc()) return std::to_string(x);
  return std::string(buf, end);
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// Edit distance counting an adjacent transposition as one edit ("algin" -> "align").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] =
          std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1] ? 1 : 0)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// "; did you mean 'x'?" when one candidate is close to `word`, else "".
std::string suggestion(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string* best = nullptr;
  size_t best_distance = std::max<size_t>(1, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_distance) best_distance = d, best = &c;
  }
  return best ? "; did you mean '" + *best + "'?" : "";
}

std::string child_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

// Where a value at `path` (with YAML position `mark`) came from: the --set that set it
// or one of its parents, else "file:line:column".
std::string location(const Source& source, const std::string& path, const YAML::Mark& mark) {
  for (auto it = source.overrides.rbegin(); it != source.overrides.rend(); ++it) {
    const std::string& p = it->first;
    bool covers = path == p || (path.size() > p.size() && path.compare(0, p.size(), p) == 0 &&
                                (path[p.size()] == '.' || path[p.size()] == '['));
    if (covers) return "--set " + it->second;
  }
  if (mark.is_null()) return source.name;
  return source.name + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
}

[[noreturn]] void fail(const Source& source, const std::string& path, const YAML::Mark& mark,
                       const std::string& message) {
  throw ConfigError(location(source, path, mark) + ": " + (path.empty() ? "(root)" : path) + ": " + message);
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    default: return "an undefined value";
  }
}

// Typed scalar parsing; each returns false when `text` is not of the type.
bool parse_scalar(const std::string& text, bool& out) {
  static const std::vector<std::string> yes = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const std::vector<std::string> no = {"false", "False", "FALSE", "no", "No",
                                              "NO",    "off",   "Off",   "OFF"};
  if (std::find(yes.begin(), yes.end(), text) != yes.end()) return out = true, true;
  if (std::find(no.begin(), no.end(), text) != no.end()) return out = false, true;
  return false;
}

bool parse_scalar(const std::string& text, double& out) {
  std::string t = text;
  if (t == ".inf" || t == "+.inf" || t == ".Inf") t = "inf";
  if (t == "-.inf" || t == "-.Inf") t = "-inf";
  if (t == ".nan" || t == ".NaN") t = "nan";
  const char* begin = t.data() + (t.size() > 1 && t[0] == '+' ? 1 : 0);
  const char* end = t.data() + t.size();
  if (begin == end) return false;
  auto [ptr, ec] = std::from_chars(begin, end, out);
  return ec == std::errc() && ptr == end;
}

// Integers: plain decimal, or a float spelling of an integral value ("1e6", "2.0"),
// since step counts are often written that way.
bool parse_scalar(const std::string& text, int64_t& out) {
  const char* begin = text.data() + (text.size() > 1 && text[0] == '+' ? 1 : 0);
  const char* end = text.data() + text.size();
  if (begin == end) return false;
  auto [ptr, ec] = std::from_chars(begin, end, out);
  if (ec == std::errc() && ptr == end) return true;
  double x = 0;
  if (!parse_scalar(text, x) || !std::isfinite(x) || std::floor(x) != x) return false;
  if (x < -9.2e18 || x > 9.2e18) return false;
  out = static_cast<int64_t>(x);
  return true;
}

template <class T>
const char* type_word();
template <>
const char* type_word<bool>() {
  return "true or false";
}
template <>
const char* type_word<int64_t>() {
  return "an integer";
}
template <>
const char* type_word<double>() {
  return "a number";
}

// Reads one scalar node as T (bool, int64_t or double), failing with the path.
template <class T>
T scalar_as(const Source& source, const std::string& path, const YAML::Node& node) {
  if (!node.IsScalar())
    fail(source, path, node.Mark(), std::string("expected ") + type_word<T>() + ", got " + describe(node));
  T value{};
  if (!parse_scalar(node.Scalar(), value))
    fail(source, path, node.Mark(), std::string("expected ") + type_word<T>() + ", got " + describe(node));
  return value;
}

void check_number(const Source& source, const std::string& path, const YAML::Node& node, double x,
                  const Rule& rule) {
  std::string why = rule.violation(x);
  if (!why.empty()) fail(source, path, node.Mark(), "value " + node.Scalar() + " is out of range: " + why);
}

void check_string(const Source& source, const std::string& path, const YAML::Node& node, const std::string& s,
                  const Rule& rule) {
  std::string why = rule.violation(s);
  if (!why.empty()) fail(source, path, node.Mark(), why);
}

// Typed element conversion for lists and single values.
template <class T>
T convert(const Source& source, const std::string& path, const YAML::Node& node, const Rule& rule) {
  if constexpr (std::is_same_v<T, bool>) {
    return scalar_as<bool>(source, path, node);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!node.IsScalar()) fail(source, path, node.Mark(), "expected a string, got " + describe(node));
    check_string(source, path, node, node.Scalar(), rule);
    return node.Scalar();
  } else if constexpr (std::is_integral_v<T>) {
    int64_t v = scalar_as<int64_t>(source, path, node);
    if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
      fail(source, path, node.Mark(), "value " + node.Scalar() + " does not fit a 32-bit integer");
    check_number(source, path, node, static_cast<double>(v), rule);
    return static_cast<T>(v);
  } else {
    double v = scalar_as<double>(source, path, node);
    if (std::isnan(v)) fail(source, path, node.Mark(), "value is NaN");
    if constexpr (std::is_same_v<T, float>) {
      if (std::isfinite(v) && std::fabs(v) > std::numeric_limits<float>::max())
        fail(source, path, node.Mark(), "value " + node.Scalar() + " does not fit a 32-bit float");
    }
    check_number(source, path, node, v, rule);
    return static_cast<T>(v);
  }
}

}  // namespace

// ---- Rule ----------------------------------------------------------------------------

std::string Rule::violation(double x) const {
  if (std::isnan(x)) return "must be a number, not NaN";
  std::string bounds;
  if (lo_) bounds += std::string(lo_open_ ? "> " : ">= ") + format_number(*lo_);
  if (hi_)
    bounds += std::string(bounds.empty() ? "" : " and ") + (hi_open_ ? "< " : "<= ") + format_number(*hi_);
  bool ok = (!lo_ || (lo_open_ ? x > *lo_ : x >= *lo_)) && (!hi_ || (hi_open_ ? x < *hi_ : x <= *hi_));
  return ok ? std::string() : "must be " + bounds;
}

std::string Rule::violation(const std::string& s) const {
  if (non_empty_ && s.empty()) return "must not be empty";
  if (!choices_.empty() && std::find(choices_.begin(), choices_.end(), s) == choices_.end())
    return "'" + s + "' is not one of: " + join(choices_) + suggestion(s, choices_);
  return {};
}

// ---- Reader --------------------------------------------------------------------------

Reader::Reader() = default;
Reader::~Reader() = default;
Reader::Reader(const Reader&) = default;
Reader& Reader::operator=(const Reader&) = default;

const std::string& Reader::path() const {
  return node_->path;
}

namespace {

// Finds `key` in the mapping; records that the field exists. Missing + required fails.
std::optional<YAML::Node> lookup(ReaderNode& n, std::string_view key, const Rule& rule) {
  std::string k(key);
  n.asked.insert(k);
  const YAML::Node& map = n.node;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == k) return it->second;
  }
  if (rule.is_required()) fail(*n.source, child_path(n.path, key), n.mark, "required key is missing");
  return std::nullopt;
}

template <class T>
bool read_one(ReaderNode& n, std::string_view key, T& out, const Rule& rule) {
  auto node = lookup(n, key, rule);
  if (!node) return false;
  out = convert<T>(*n.source, child_path(n.path, key), *node, rule);
  return true;
}

template <class T>
bool read_list(ReaderNode& n, std::string_view key, std::vector<T>& out, const Rule& rule) {
  auto node = lookup(n, key, rule);
  if (!node) return false;
  std::string path = child_path(n.path, key);
  if (!node->IsSequence()) fail(*n.source, path, node->Mark(), "expected a list, got " + describe(*node));
  if (rule.wants_non_empty() && node->size() == 0) fail(*n.source, path, node->Mark(), "must not be empty");
  std::vector<T> values;
  for (size_t i = 0; i < node->size(); ++i)
    values.push_back(convert<T>(*n.source, path + "[" + std::to_string(i) + "]", (*node)[i], rule));
  out = std::move(values);
  return true;
}

}  // namespace

bool Reader::read(std::string_view k, bool& v, const Rule& r) {
  return read_one(*node_, k, v, r);
}
bool Reader::read(std::string_view k, int& v, const Rule& r) {
  return read_one(*node_, k, v, r);
}
bool Reader::read(std::string_view k, int64_t& v, const Rule& r) {
  return read_one(*node_, k, v, r);
}
bool Reader::read(std::string_view k, double& v, const Rule& r) {
  return read_one(*node_, k, v, r);
}
bool Reader::read(std::string_view k, float& v, const Rule& r) {
  return read_one(*node_, k, v, r);
}
bool Reader::read(std::string_view k, std::string& v, const Rule& r) {
  return read_one(*node_, k, v, r);
}
bool Reader::read(std::string_view k, std::vector<int>& v, const Rule& r) {
  return read_list(*node_, k, v, r);
}
bool Reader::read(std::string_view k, std::vector<int64_t>& v, const Rule& r) {
  return read_list(*node_, k, v, r);
}
bool Reader::read(std::string_view k, std::vector<double>& v, const Rule& r) {
  return read_list(*node_, k, v, r);
}
bool Reader::read(std::string_view k, std::vector<float>& v, const Rule& r) {
  return read_list(*node_, k, v, r);
}
bool Reader::read(std::string_view k, std::vector<std::string>& v, const Rule& r) {
  return read_list(*node_, k, v, r);
}

namespace {

std::shared_ptr<ReaderNode> mapping_reader(std::shared_ptr<Source> source, const YAML::Node& node,
                                           const YAML::Mark& mark, std::string path) {
  auto n = std::make_shared<ReaderNode>();
  n->source = std::move(source);
  n->mark = mark;
  n->path = std::move(path);
  if (node.IsNull() || !node.IsDefined()) {
    n->node = YAML::Node(YAML::NodeType::Map);  // absent or empty section: all defaults
  } else if (node.IsMap()) {
    n->node = node;
  } else {
    fail(*n->source, n->path, node.Mark(), "expected a mapping of keys to values, got " + describe(node));
  }
  return n;
}

}  // namespace

bool Reader::enter_map(std::string_view key, const Rule& rule, Reader& child) {
  auto node = lookup(*node_, key, rule);
  // An absent section is read as an empty mapping, so its own required keys are enforced.
  YAML::Node value = node ? *node : YAML::Node();
  YAML::Mark mark = node ? node->Mark() : node_->mark;
  child.node_ = mapping_reader(node_->source, value, mark, child_path(node_->path, key));
  return true;
}

std::optional<size_t> Reader::enter_list(std::string_view key, const Rule& rule) {
  auto node = lookup(*node_, key, rule);
  if (!node) return std::nullopt;
  std::string path = child_path(node_->path, key);
  if (!node->IsSequence())
    fail(*node_->source, path, node->Mark(), "expected a list, got " + describe(*node));
  if (rule.wants_non_empty() && node->size() == 0)
    fail(*node_->source, path, node->Mark(), "must not be empty");
  return node->size();
}

Reader Reader::list_element(std::string_view key, size_t index) {
  const YAML::Node list = *lookup(*node_, key, Rule());
  const YAML::Node element = list[index];
  Reader child;
  child.node_ = mapping_reader(node_->source, element, element.Mark(),
                               child_path(node_->path, key) + "[" + std::to_string(index) + "]");
  return child;
}

void Reader::check(bool condition, std::string_view key, const std::string& message) const {
  if (condition) return;
  YAML::Mark mark = node_->mark;
  for (auto it = node_->node.begin(); it != node_->node.end(); ++it)
    if (it->first.IsScalar() && it->first.Scalar() == key) mark = it->second.Mark();
  fail(*node_->source, child_path(node_->path, key), mark, message);
}

void Reader::finish() const {
  std::vector<std::string> known(node_->asked.begin(), node_->asked.end());
  std::set<std::string> seen;
  for (auto it = node_->node.begin(); it != node_->node.end(); ++it) {
    if (!it->first.IsScalar())
      fail(*node_->source, node_->path, it->first.Mark(),
           "keys must be plain names, got " + describe(it->first));
    const std::string& key = it->first.Scalar();
    std::string path = child_path(node_->path, key);
    if (!seen.insert(key).second) fail(*node_->source, path, it->first.Mark(), "duplicate key");
    if (!node_->asked.count(key))
      fail(*node_->source, path, it->first.Mark(),
           "unknown key" + suggestion(key, known) + " (known: " + join(known) + ")");
  }
}

// ---- Document ------------------------------------------------------------------------

Document::Document() : source_(std::make_shared<Source>()) {}
Document::~Document() = default;
Document::Document(const Document&) = default;
Document& Document::operator=(const Document&) = default;

Document Document::from_string(std::string_view text, const std::string& source_name) {
  Document d;
  d.source_->name = source_name;
  try {
    d.source_->root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    throw ConfigError(source_name + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": not valid YAML: " + e.msg);
  }
  if (!d.source_->root.IsNull() && !d.source_->root.IsMap())
    throw ConfigError(source_name + ": expected a mapping of keys to values at the top, got " +
                      describe(d.source_->root));
  return d;
}

Document Document::from_file(const std::filesystem::path& file) {
  std::string text;
  try {
    text = read_file(file);
  } catch (const IoError& e) {
    throw ConfigError(std::string("cannot read config: ") + e.what());
  }
  return from_string(text, file.string());
}

void Document::apply_override(const std::string& assignment) {
  auto bad = [&](const std::string& why) -> ConfigError {
    return ConfigError("--set " + assignment + ": " + why);
  };
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) throw bad("expected key.path=value");
  std::string key_path = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);

  std::vector<std::string> segments;
  std::stringstream ss(key_path);
  for (std::string s; std::getline(ss, s, '.');) {
    if (s.empty()) throw bad("empty name in key path '" + key_path + "'");
    segments.push_back(s);
  }
  if (key_path.back() == '.') throw bad("empty name in key path '" + key_path + "'");

  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw bad("value is not valid YAML: " + e.msg);
  }

  if (source_->root.IsNull() || !source_->root.IsDefined()) source_->root = YAML::Node(YAML::NodeType::Map);
  YAML::Node current = source_->root;  // yaml-cpp nodes are handles; reset() re-points them
  std::string normalized;
  for (size_t i = 0; i < segments.size(); ++i) {
    const std::string& seg = segments[i];
    bool last = i + 1 == segments.size();
    if (current.IsSequence()) {
      size_t index = 0;
      auto [ptr, ec] = std::from_chars(seg.data(), seg.data() + seg.size(), index);
      if (ec != std::errc() || ptr != seg.data() + seg.size())
        throw bad("'" + normalized + "' is a list; expected an index, got '" + seg + "'");
      if (index >= current.size())
        throw bad("index " + seg + " is past the end of '" + normalized + "' (" +
                  std::to_string(current.size()) + " elements)");
      normalized += "[" + seg + "]";
      if (last) {
        current[index] = value;
      } else {
        YAML::Node next = current[index];
        current.reset(next);
      }
      continue;
    }
    if (current.IsNull()) current = YAML::Node(YAML::NodeType::Map);
    if (!current.IsMap()) throw bad("'" + normalized + "' is " + describe(current) + ", not a mapping");
    normalized = child_path(normalized, seg);
    if (last) {
      current[seg] = value;
    } else {
      if (!current[seg] || current[seg].IsNull()) current[seg] = YAML::Node(YAML::NodeType::Map);
      YAML::Node next = current[seg];
      current.reset(next);
    }
  }
  source_->overrides.emplace_back(normalized, assignment);
}

Reader Document::root() const {
  Reader r;
  r.node_ = mapping_reader(source_, source_->root, YAML::Mark::null_mark(), "");
  return r;
}

// ---- Writer --------------------------------------------------------------------------

Writer::Writer() : state_(std::make_unique<detail::WriterState>()) {}
Writer::~Writer() = default;

std::string Writer::yaml() const {
  return std::string(state_->out.c_str()) + "\n";
}

namespace {

void emit_key(YAML::Emitter& out, std::string_view key) {
  if (!key.empty()) out << YAML::Key << std::string(key) << YAML::Value;
}

// Strings that YAML would read back as something else (or as nothing) are quoted.
void emit_string(YAML::Emitter& out, const std::string& s) {
  bool quote = s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
  bool b = false;
  double d = 0;
  quote = quote || parse_scalar(s, b) || parse_scalar(s, d);
  if (quote) out << YAML::DoubleQuoted;
  out << s;
}

}  // namespace

void Writer::begin_map(std::string_view key) {
  emit_key(state_->out, key);
  state_->out << YAML::BeginMap;
}
void Writer::end_map() {
  state_->out << YAML::EndMap;
}
void Writer::begin_list(std::string_view key) {
  emit_key(state_->out, key);
  state_->out << YAML::BeginSeq;
}
void Writer::end_list() {
  state_->out << YAML::EndSeq;
}

void Writer::write(std::string_view key, bool v) {
  emit_key(state_->out, key);
  state_->out << (v ? "true" : "false");
}
void Writer::write(std::string_view key, int v) {
  emit_key(state_->out, key);
  state_->out << v;
}
void Writer::write(std::string_view key, int64_t v) {
  emit_key(state_->out, key);
  state_->out << v;
}
void Writer::write(std::string_view key, double v) {
  emit_key(state_->out, key);
  state_->out << format_number(v);
}
void Writer::write(std::string_view key, float v) {
  emit_key(state_->out, key);
  state_->out << format_number(v);
}
void Writer::write(std::string_view key, const std::string& v) {
  emit_key(state_->out, key);
  emit_string(state_->out, v);
}

namespace {
template <class T, class Emit>
void write_list(YAML::Emitter& out, std::string_view key, const std::vector<T>& v, Emit emit) {
  emit_key(out, key);
  out << YAML::Flow << YAML::BeginSeq;
  for (const auto& x : v) emit(x);
  out << YAML::EndSeq;
}
}  // namespace

void Writer::write(std::string_view key, const std::vector<int>& v) {
  write_list(state_->out, key, v, [&](int x) { state_->out << x; });
}
void Writer::write(std::string_view key, const std::vector<int64_t>& v) {
  write_list(state_->out, key, v, [&](int64_t x) { state_->out << x; });
}
void Writer::write(std::string_view key, const std::vector<double>& v) {
  write_list(state_->out, key, v, [&](double x) { state_->out << format_number(x); });
}
void Writer::write(std::string_view key, const std::vector<float>& v) {
  write_list(state_->out, key, v, [&](float x) { state_->out << format_number(x); });
}
void Writer::write(std::string_view key, const std::vector<std::string>& v) {
  write_list(state_->out, key, v, [&](const std::string& x) { emit_string(state_->out, x); });
}

}  // namespace pal::config
