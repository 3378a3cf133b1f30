#include "pal/train/checkpoint.h"

#include <ATen/Context.h>
#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <system_error>

#include "../core/log.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "pal/models/pal_checkpoint.h"

namespace pal::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kLatestFile = "latest";
constexpr const char* kTempPrefix = ".tmp-";
constexpr const char* kOldPrefix = ".old-";

void sync_folder(const fs::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void remove_quietly(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

// step-000123 -> 123; -1 for other names.
int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0) return -1;
  try {
    size_t used = 0;
    const int64_t n = std::stoll(name.substr(5), &used);
    return used == name.size() - 5 ? n : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

std::string step_checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%06lld", static_cast<long long>(step));
  return buf;
}

std::string to_json(const TrainerState& s) {
  nlohmann::json j;
  j["stage"] = s.stage;
  j["step"] = s.step;
  j["total_steps"] = s.total_steps;
  j["epoch"] = s.epoch;
  j["data_cursor"] = s.data_cursor;
  j["world_size"] = s.world_size;
  j["data_cursors"] = s.data_cursors;
  j["loss_scale"] = s.loss_scale;
  j["scaler_good_steps"] = s.scaler_good_steps;
  j["skipped_steps"] = s.skipped_steps;
  j["tokens_seen"] = s.tokens_seen;
  j["audio_seconds_seen"] = s.audio_seconds_seen;
  j["elapsed_seconds"] = s.elapsed_seconds;
  j["last_loss"] = s.last_loss;
  j["finished"] = s.finished;
  j["saved_parameters"] = s.saved_parameters;
  return j.dump(2) + "\n";
}

TrainerState trainer_state_from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw TrainError(source + ": not valid JSON (" + e.what() + ")");
  }
  TrainerState s;
  try {
    s.stage = j.at("stage").get<std::string>();
    s.step = j.at("step").get<int64_t>();
    s.total_steps = j.at("total_steps").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.data_cursor = j.at("data_cursor").get<std::string>();
    // Written by single-process runs before multi-process training existed: absent.
    s.world_size = j.value("world_size", int64_t{1});
    s.data_cursors = j.value("data_cursors", std::vector<std::string>{});
    s.loss_scale = j.at("loss_scale").get<double>();
    s.scaler_good_steps = j.at("scaler_good_steps").get<int64_t>();
    s.skipped_steps = j.at("skipped_steps").get<int64_t>();
    s.tokens_seen = j.at("tokens_seen").get<int64_t>();
    s.audio_seconds_seen = j.at("audio_seconds_seen").get<double>();
    s.elapsed_seconds = j.at("elapsed_seconds").get<double>();
    s.last_loss = j.at("last_loss").get<double>();
    s.finished = j.at("finished").get<bool>();
    s.saved_parameters = j.at("saved_parameters").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw TrainError(source + ": " + e.what());
  }
  return s;
}

bool is_complete_checkpoint(const fs::path& folder) {
  for (const char* f : {kStateFile, "config.yaml", "optimizer.safetensors", "rng.safetensors",
                        models::kModelConfigFile, models::kModelWeightsFile})
    if (!fs::is_regular_file(folder / f)) return false;
  return true;
}

void commit_checkpoint(const fs::path& output_dir, const std::string& name,
                       const std::function<void(const fs::path&)>& write_contents) {
  fs::create_directories(output_dir);
  const std::string suffix = std::to_string(::getpid());
  const fs::path tmp = output_dir / (kTempPrefix + name + "-" + suffix);
  remove_quietly(tmp);
  try {
    fs::create_directories(tmp);
    write_contents(tmp);
    sync_folder(tmp);
    const fs::path target = output_dir / name;
    const fs::path old = output_dir / (kOldPrefix + name + "-" + suffix);
    if (fs::exists(target)) fs::rename(target, old);
    fs::rename(tmp, target);
    sync_folder(output_dir);
    write_file_atomic(output_dir / kLatestFile, name + "\n");
    remove_quietly(old);
  } catch (const fs::filesystem_error& e) {
    remove_quietly(tmp);
    throw IoError("writing checkpoint " + (output_dir / name).string() + ": " + e.what());
  } catch (...) {
    remove_quietly(tmp);
    throw;
  }
}

std::optional<fs::path> find_resume_checkpoint(const fs::path& output_dir) {
  if (!fs::is_directory(output_dir)) return std::nullopt;
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kTempPrefix, 0) == 0) {
      detail::log_warn("removing ", entry.path().string(), ": an unfinished checkpoint of an interrupted save");
      remove_quietly(entry.path());
      continue;
    }
    if (name.rfind(kOldPrefix, 0) == 0) {
      // The renamed-away copy of a checkpoint being replaced; the new one is in place
      // once `latest` names it, else this one is the complete one.
      const std::string original = name.substr(std::strlen(kOldPrefix), name.rfind('-') - std::strlen(kOldPrefix));
      if (!fs::exists(output_dir / original) && is_complete_checkpoint(entry.path()))
        fs::rename(entry.path(), output_dir / original);
      else
        remove_quietly(entry.path());
      continue;
    }
  }
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    const int64_t n = step_of(entry.path().filename().string());
    if (n >= 0 && is_complete_checkpoint(entry.path())) steps.emplace_back(n, entry.path());
  }
  if (fs::is_regular_file(output_dir / kLatestFile)) {
    std::string name = read_file(output_dir / kLatestFile);
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    const fs::path named = output_dir / name;
    if (!name.empty() && name.find('/') == std::string::npos && is_complete_checkpoint(named)) return named;
    detail::log_warn(output_dir.string(), "/latest names '", name, "', which is not a complete checkpoint; ",
                     "falling back to the newest complete one");
  }
  if (is_complete_checkpoint(output_dir / "final")) return output_dir / "final";
  if (steps.empty()) return std::nullopt;
  return std::max_element(steps.begin(), steps.end())->second;
}

void prune_checkpoints(const fs::path& output_dir, int64_t keep) {
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    const int64_t n = step_of(entry.path().filename().string());
    if (n >= 0) steps.emplace_back(n, entry.path());
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < steps.size(); ++i) remove_quietly(steps[i].second);
}

std::vector<std::pair<std::string, at::Tensor>> rng_state() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.emplace_back("cpu", gen.get_state());
  }
  if (torch::cuda::is_available()) {
    for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
      auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      out.emplace_back("cuda:" + std::to_string(i), gen.get_state());
    }
  }
  return out;
}

void restore_rng_state(const fs::path& file) {
  auto st = io::SafetensorsFile::open(file);
  if (!st.contains("cpu")) throw TrainError(file.string() + ": no 'cpu' generator state");
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(st.tensor("cpu").clone());
  }
  if (torch::cuda::is_available()) {
    for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
      const std::string key = "cuda:" + std::to_string(i);
      if (!st.contains(key)) continue;
      auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(st.tensor(key).clone());
    }
  }
}

}  // namespace pal::train
