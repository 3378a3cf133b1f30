// Typed configuration loaded from YAML.
//
// A config is a plain struct with defaults in place and one member template that lists
// its fields once; the same list reads YAML, writes YAML back and checks values:
//
//   struct OptimizerConfig {
//     double lr = 1e-3;        // peak learning rate
//     int64_t warmup_steps = 0;  // linear warmup length
//     std::string name = "adamw";
//     template <class V> void visit(V& v) {
//       v("lr", lr, Rule().greater_than(0));
//       v("warmup_steps", warmup_steps, Rule().at_least(0));
//       v("name", name, Rule().one_of({"adamw", "sgd"}));
//       v.check(warmup_steps < 1000000, "warmup_steps", "is implausibly large");
//     }
//   };
//   auto cfg = pal::config::load<OptimizerConfig>("stage1.yaml", {"lr=2e-4"});
//
// Unknown keys, wrong types, values out of range and missing required keys are
// pal::ConfigError whose message names the file (with line and column), or the --set
// override, and the key's full dotted path, e.g.
//   stage1.yaml:4:3: optim.lrr: unknown key; did you mean 'lr'? (known: lr, warmup_steps, name)
//
// Supported field types: bool, int, int64_t, double, float, std::string, enums with an
// EnumNames specialisation, std::vector of those, nested structs with visit(), and
// std::vector of such structs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "pal/core/atomic_file.h"

namespace pal::config {

// Constraints on one field, built by chaining: Rule().required().at_least(1).
// Numeric bounds apply to numbers (and each element of a numeric list); choices and
// non_empty apply to strings (and each element of a string list; non_empty also to lists).
class Rule {
 public:
  Rule& required() {
    required_ = true;
    return *this;
  }
  Rule& at_least(double v) {
    lo_ = v;
    lo_open_ = false;
    return *this;
  }
  Rule& greater_than(double v) {
    lo_ = v;
    lo_open_ = true;
    return *this;
  }
  Rule& at_most(double v) {
    hi_ = v;
    hi_open_ = false;
    return *this;
  }
  Rule& less_than(double v) {
    hi_ = v;
    hi_open_ = true;
    return *this;
  }
  Rule& one_of(std::vector<std::string> choices) {
    choices_ = std::move(choices);
    return *this;
  }
  Rule& non_empty() {
    non_empty_ = true;
    return *this;
  }

  bool is_required() const { return required_; }
  // Returns an empty string when `x` satisfies the numeric bounds, else why not.
  std::string violation(double x) const;
  // Returns an empty string when `s` satisfies choices / non_empty, else why not.
  std::string violation(const std::string& s) const;
  bool wants_non_empty() const { return non_empty_; }

 private:
  bool required_ = false;
  std::optional<double> lo_, hi_;
  bool lo_open_ = false, hi_open_ = false;
  std::vector<std::string> choices_;
  bool non_empty_ = false;
};

// Specialise to let an enum be read and written by name:
//   template <> struct EnumNames<FusionMode> {
//     static std::vector<std::pair<FusionMode, std::string>> get() {
//       return {{FusionMode::prefix, "prefix"}, {FusionMode::probe, "probe"}};
//     }
//   };
template <class E>
struct EnumNames;

namespace detail {
template <class T, class V, class = void>
struct has_visit : std::false_type {};
template <class T, class V>
struct has_visit<T, V, std::void_t<decltype(std::declval<T&>().visit(std::declval<V&>()))>> : std::true_type {
};

template <class E, class = void>
struct has_enum_names : std::false_type {};
template <class E>
struct has_enum_names<E, std::void_t<decltype(EnumNames<E>::get())>> : std::true_type {};

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {
  using element = T;
};

// std::vector of structs with visit(V&).
template <class T, class V>
struct is_struct_list : std::false_type {};
template <class T, class V>
struct is_struct_list<std::vector<T>, V> : has_visit<T, V> {};

// Where the YAML came from; shared by every Reader of one document.
struct Source;
struct ReaderNode;
struct WriterState;

template <class E>
std::string enum_to_name(E value) {
  for (const auto& [v, name] : EnumNames<E>::get())
    if (v == value) return name;
  return "?";
}
template <class E>
std::vector<std::string> enum_names() {
  std::vector<std::string> names;
  for (const auto& entry : EnumNames<E>::get()) names.push_back(entry.second);
  return names;
}
}  // namespace detail

// The YAML name of an enum value with EnumNames ("?" for a value not listed).
template <class E>
std::string enum_name(E value) {
  return detail::enum_to_name(value);
}

// Reads a struct from a YAML mapping. Obtained from load()/parse(); not built by hand.
class Reader {
 public:
  static constexpr bool is_reader = true;

  template <class T>
  void operator()(std::string_view key, T& value, const Rule& rule = Rule()) {
    if constexpr (detail::has_visit<T, Reader>::value) {
      Reader child;
      if (enter_map(key, rule, child)) {
        value.visit(child);
        child.finish();
      }
    } else if constexpr (detail::is_struct_list<T, Reader>::value) {
      using Element = typename detail::is_vector<T>::element;
      std::optional<size_t> n = enter_list(key, rule);
      if (!n) return;
      value.clear();
      for (size_t i = 0; i < *n; ++i) {
        Reader child = list_element(key, i);
        Element element;
        element.visit(child);
        child.finish();
        value.push_back(std::move(element));
      }
    } else if constexpr (std::is_enum_v<T>) {
      static_assert(detail::has_enum_names<T>::value,
                    "specialise pal::config::EnumNames<E> to read this enum");
      std::string name = detail::enum_to_name(value);
      Rule with_choices = rule;
      with_choices.one_of(detail::enum_names<T>());
      if (!read(key, name, with_choices)) return;
      for (const auto& [v, n] : EnumNames<T>::get())
        if (n == name) value = v;
    } else {
      read(key, value, rule);
    }
  }

  // Fails with `message` attached to `key` when `condition` is false. For checks that
  // involve several fields; call it after the fields it reads.
  void check(bool condition, std::string_view key, const std::string& message) const;

  // Errors on any key of this mapping that no field consumed.
  void finish() const;

  // Dotted path of this mapping ("" at the root).
  const std::string& path() const;

  Reader();
  ~Reader();
  Reader(const Reader&);
  Reader& operator=(const Reader&);

 private:
  friend class Document;
  bool enter_map(std::string_view key, const Rule& rule, Reader& child);
  std::optional<size_t> enter_list(std::string_view key, const Rule& rule);
  Reader list_element(std::string_view key, size_t index);

  // Scalar and list reads; return whether the key was present.
  bool read(std::string_view key, bool& v, const Rule& rule);
  bool read(std::string_view key, int& v, const Rule& rule);
  bool read(std::string_view key, int64_t& v, const Rule& rule);
  bool read(std::string_view key, double& v, const Rule& rule);
  bool read(std::string_view key, float& v, const Rule& rule);
  bool read(std::string_view key, std::string& v, const Rule& rule);
  bool read(std::string_view key, std::vector<int>& v, const Rule& rule);
  bool read(std::string_view key, std::vector<int64_t>& v, const Rule& rule);
  bool read(std::string_view key, std::vector<double>& v, const Rule& rule);
  bool read(std::string_view key, std::vector<float>& v, const Rule& rule);
  bool read(std::string_view key, std::vector<std::string>& v, const Rule& rule);

  std::shared_ptr<detail::ReaderNode> node_;
};

// Writes a struct as YAML, field by field in visit order.
class Writer {
 public:
  static constexpr bool is_reader = false;

  template <class T>
  void operator()(std::string_view key, const T& value, const Rule& = Rule()) {
    if constexpr (detail::has_visit<T, Writer>::value) {
      begin_map(key);
      const_cast<T&>(value).visit(*this);  // visit() only reads fields when writing
      end_map();
    } else if constexpr (detail::is_struct_list<T, Writer>::value) {
      begin_list(key);
      for (const auto& element : value) {
        begin_map({});
        const_cast<typename detail::is_vector<T>::element&>(element).visit(*this);
        end_map();
      }
      end_list();
    } else if constexpr (std::is_enum_v<T>) {
      write(key, detail::enum_to_name(value));
    } else {
      write(key, value);
    }
  }
  void check(bool, std::string_view, const std::string&) const {}

  Writer();
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  std::string yaml() const;
  void begin_map(std::string_view key);
  void end_map();

 private:
  void begin_list(std::string_view key);
  void end_list();
  void write(std::string_view key, bool v);
  void write(std::string_view key, int v);
  void write(std::string_view key, int64_t v);
  void write(std::string_view key, double v);
  void write(std::string_view key, float v);
  void write(std::string_view key, const std::string& v);
  void write(std::string_view key, const std::vector<int>& v);
  void write(std::string_view key, const std::vector<int64_t>& v);
  void write(std::string_view key, const std::vector<double>& v);
  void write(std::string_view key, const std::vector<float>& v);
  void write(std::string_view key, const std::vector<std::string>& v);

  std::unique_ptr<detail::WriterState> state_;
};

// A parsed YAML document with --set overrides applied, ready to be read.
class Document {
 public:
  // Reads `file`; throws pal::ConfigError when it is missing or not valid YAML.
  static Document from_file(const std::filesystem::path& file);
  // Parses `text`; `source_name` stands for the file in messages.
  static Document from_string(std::string_view text, const std::string& source_name);

  // Applies one "a.b.c=value" override; value is parsed as YAML ("1e-4", "[a, b]",
  // "{x: 1}"). Numeric path segments index into lists. Creates missing mappings.
  void apply_override(const std::string& assignment);

  // A reader over the root mapping (or over the mapping at `subtree`, a dotted path).
  Reader root() const;

  Document();
  ~Document();
  Document(const Document&);
  Document& operator=(const Document&);

 private:
  std::shared_ptr<detail::Source> source_;
};

// Reads `T` from a document: visit, then reject unknown keys.
template <class T>
T read(const Document& document) {
  Reader reader = document.root();
  T value;
  value.visit(reader);
  reader.finish();
  return value;
}

// Loads `T` from a YAML file with `overrides` ("a.b=c") applied in order.
template <class T>
T load(const std::filesystem::path& file, const std::vector<std::string>& overrides = {}) {
  Document document = Document::from_file(file);
  for (const auto& o : overrides) document.apply_override(o);
  return read<T>(document);
}

// Parses `T` from YAML text; `source_name` appears in error messages.
template <class T>
T parse(std::string_view text, const std::string& source_name = "<string>",
        const std::vector<std::string>& overrides = {}) {
  Document document = Document::from_string(text, source_name);
  for (const auto& o : overrides) document.apply_override(o);
  return read<T>(document);
}

// The fully resolved config as YAML; parse<T>(to_yaml(x)) gives back x.
template <class T>
std::string to_yaml(const T& value) {
  Writer writer;
  writer.begin_map({});
  const_cast<T&>(value).visit(writer);
  writer.end_map();
  return writer.yaml();
}

// Writes to_yaml(value) to `file` atomically (temporary file + rename).
template <class T>
void save(const T& value, const std::filesystem::path& file) {
  write_file_atomic(file, to_yaml(value));
}

}  // namespace pal::config
