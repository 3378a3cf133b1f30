#include "hf_checkpoint.h"

#include <torch/torch.h>

#include <set>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"

namespace pal::models::detail {

ConfigJson ConfigJson::open(const std::filesystem::path& file) {
  ConfigJson c;
  c.file_ = file.string();
  try {
    c.json_ = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(c.file_ + ": not valid JSON: " + e.what());
  }
  if (!c.json_.is_object()) throw ConfigError(c.file_ + ": expected a JSON object");
  return c;
}

bool ConfigJson::has(const char* key) const {
  return json_.contains(key) && !json_[key].is_null();
}

std::string ConfigJson::model_type() const {
  return has("model_type") && json_["model_type"].is_string() ? json_["model_type"].get<std::string>() : "";
}

void ConfigJson::fail(const std::string& key, const std::string& why) const {
  throw ConfigError(file_ + ": " + key + ": " + why);
}

void ConfigJson::require_model_type(const std::vector<std::string>& expected, const std::string& what) const {
  const std::string type = model_type();
  for (const auto& e : expected)
    if (type == e) return;
  std::string list;
  for (const auto& e : expected) list += (list.empty() ? "'" : " or '") + e + "'";
  fail("model_type", "'" + (type.empty() ? std::string("(none)") : type) + "' is not a " + what +
                         " checkpoint (expected " + list + ")");
}

int64_t ConfigJson::integer(const char* key, std::optional<int64_t> fallback) const {
  if (!has(key)) {
    if (fallback) return *fallback;
    fail(key, "required key is missing");
  }
  if (!json_[key].is_number_integer()) fail(key, "expected an integer, got " + json_[key].dump());
  return json_[key].get<int64_t>();
}

double ConfigJson::number(const char* key, std::optional<double> fallback) const {
  if (!has(key)) {
    if (fallback) return *fallback;
    fail(key, "required key is missing");
  }
  if (!json_[key].is_number()) fail(key, "expected a number, got " + json_[key].dump());
  return json_[key].get<double>();
}

bool ConfigJson::boolean(const char* key, bool fallback) const {
  if (!has(key)) return fallback;
  if (!json_[key].is_boolean()) fail(key, "expected true or false, got " + json_[key].dump());
  return json_[key].get<bool>();
}

std::string ConfigJson::string(const char* key, std::optional<std::string> fallback) const {
  if (!has(key)) {
    if (fallback) return *fallback;
    fail(key, "required key is missing");
  }
  if (!json_[key].is_string()) fail(key, "expected a string, got " + json_[key].dump());
  return json_[key].get<std::string>();
}

void load_prefixed(torch::nn::Module& module, const std::filesystem::path& folder,
                   const std::vector<std::string>& prefixes, const std::string& probe,
                   const std::string& what, const std::function<bool(const std::string&)>& ignore) {
  auto checkpoint = io::SafetensorsCheckpoint::open(folder);
  const std::string where = folder.string();
  const std::string* prefix = nullptr;
  for (const auto& p : prefixes)
    if (checkpoint.contains(p + probe)) {
      prefix = &p;
      break;
    }
  if (!prefix) {
    std::string tried;
    for (const auto& p : prefixes) tried += (tried.empty() ? "'" : ", '") + p + probe + "'";
    throw WeightsError(where + ": not a " + what + " checkpoint: none of the tensors " + tried + " is in it");
  }
  std::set<std::string> unused;
  for (const auto& name : checkpoint.names())
    if (name.compare(0, prefix->size(), *prefix) == 0 && !(ignore && ignore(name))) unused.insert(name);

  torch::NoGradGuard no_grad;
  auto copy = [&](const std::string& name, torch::Tensor& target) {
    const std::string key = *prefix + name;
    if (!checkpoint.contains(key))
      throw WeightsError(where + ": tensor '" + key + "' is missing from the " + what + " checkpoint");
    torch::Tensor t = checkpoint.tensor(key);
    if (t.sizes() != target.sizes())
      throw WeightsError(where + ": tensor '" + key + "' has shape " + c10::str(t.sizes()) + ", the " + what +
                         " (config.json) expects " + c10::str(target.sizes()));
    target.copy_(t);
    unused.erase(key);
  };
  for (auto& p : module.named_parameters()) copy(p.key(), p.value());
  for (auto& b : module.named_buffers()) copy(b.key(), b.value());
  if (!unused.empty())
    throw WeightsError(where + ": unexpected tensor '" + *unused.begin() + "' (" +
                       std::to_string(unused.size()) + " unexpected in all) for a " + what +
                       " with this config.json");
}

void set_trainable(torch::nn::Module& module, bool trainable) {
  for (auto& p : module.parameters()) p.set_requires_grad(trainable);
}

void init_hf_style(torch::nn::Module& module, double std) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters()) {
    const std::string& name = p.key();
    torch::Tensor t = p.value();
    const auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    const std::string leaf = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
    const std::string owner = name.substr(0, name.size() - leaf.size());
    if (ends_with(".bias") || leaf == "bias") {
      t.zero_();
    } else if (owner.find("norm") != std::string::npos && leaf == "weight") {
      t.fill_(1.0);
    } else {
      t.normal_(0.0, std).clamp_(-2.0 * std, 2.0 * std);
    }
  }
}

}  // namespace pal::models::detail
