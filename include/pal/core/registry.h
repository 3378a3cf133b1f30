// A name -> factory table for components chosen by `type:` in YAML (encoders,
// projectors). Asking for an unknown name is a ConfigError that lists the known ones.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "pal/core/error.h"

namespace pal {

template <class Signature>
class Registry;

template <class Product, class... Args>
class Registry<Product(Args...)> {
 public:
  using Factory = std::function<Product(Args...)>;

  // `what` names the kind of component in messages, e.g. "projector".
  explicit Registry(std::string what) : what_(std::move(what)) {}

  // Registering a name twice replaces the factory (tests and plugins may override).
  void add(const std::string& name, Factory factory) { factories_[name] = std::move(factory); }

  bool contains(const std::string& name) const { return factories_.count(name) > 0; }

  // `key` is the config key path for the message, e.g. "model.projector.type".
  Product make(const std::string& name, const std::string& key, Args... args) const {
    auto it = factories_.find(name);
    if (it == factories_.end()) {
      std::string known;
      for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
      throw ConfigError(key + ": unknown " + what_ + " type '" + name + "' (known: " + known + ")");
    }
    return it->second(std::forward<Args>(args)...);
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : factories_) out.push_back(entry.first);
    return out;
  }

 private:
  std::string what_;
  std::map<std::string, Factory> factories_;
};

}  // namespace pal
