#include "pal/train/optimizer.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>

#include "pal/core/error.h"

namespace pal::train {
namespace {

bool is_no_decay(const NamedParameter& p) {
  const std::string& n = p.name;
  auto ends_with = [&](const char* s) {
    const size_t k = std::strlen(s);
    return n.size() >= k && n.compare(n.size() - k, k, s) == 0;
  };
  return p.tensor.dim() <= 1 || ends_with(".bias") || n.find("norm") != std::string::npos;
}

}  // namespace

AdamW::AdamW(std::vector<NamedParameter> parameters, const Options& options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const auto& p : parameters_) {
    if (!p.tensor.requires_grad())
      throw TrainError("AdamW: parameter '" + p.name + "' does not require grad");
    Slot slot;
    slot.param = p;
    slot.decay = !is_no_decay(p);
    slots_.push_back(std::move(slot));
  }
}

int64_t AdamW::decayed_count() const {
  int64_t n = 0;
  for (const auto& s : slots_) n += s.decay ? 1 : 0;
  return n;
}

void AdamW::zero_grad() {
  for (auto& s : slots_) {
    at::Tensor& g = s.param.tensor.mutable_grad();
    if (g.defined()) {
      g = g.detach();
      g.zero_();
    }
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  const double b1 = options_.beta1, b2 = options_.beta2;
  for (auto& s : slots_) {
    at::Tensor p = s.param.tensor;
    const at::Tensor& g_raw = p.grad();
    if (!g_raw.defined()) continue;
    at::Tensor g = g_raw.to(torch::kFloat32);
    if (!s.exp_avg.defined()) {
      s.exp_avg = torch::zeros_like(p, p.options().dtype(torch::kFloat32));
      s.exp_avg_sq = torch::zeros_like(p, p.options().dtype(torch::kFloat32));
    }
    ++s.step;
    if (s.decay && options_.weight_decay > 0) p.mul_(1.0 - lr * options_.weight_decay);
    s.exp_avg.lerp_(g, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
    const double bias1 = 1.0 - std::pow(b1, static_cast<double>(s.step));
    const double bias2 = 1.0 - std::pow(b2, static_cast<double>(s.step));
    const double step_size = lr / bias1;
    at::Tensor denom = (s.exp_avg_sq.sqrt() / std::sqrt(bias2)).add_(options_.eps);
    if (p.scalar_type() == torch::kFloat32) {
      p.addcdiv_(s.exp_avg, denom, -step_size);
    } else {
      p.copy_(p.to(torch::kFloat32).addcdiv_(s.exp_avg, denom, -step_size));
    }
  }
}

double AdamW::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& s : slots_)
    if (s.param.tensor.grad().defined()) norms.push_back(s.param.tensor.grad().to(torch::kFloat32).norm());
  if (norms.empty()) return 0.0;
  const double total = torch::stack(norms).norm().item<double>();
  if (max_norm > 0 && std::isfinite(total) && total > max_norm) {
    const double factor = max_norm / (total + 1e-6);
    for (auto& s : slots_)
      if (s.param.tensor.grad().defined()) s.param.tensor.mutable_grad().mul_(factor);
  }
  return total;
}

io::NamedTensors AdamW::state() const {
  io::NamedTensors out;
  for (const auto& s : slots_) {
    if (!s.exp_avg.defined()) continue;
    out.emplace_back("exp_avg." + s.param.name, s.exp_avg);
    out.emplace_back("exp_avg_sq." + s.param.name, s.exp_avg_sq);
    out.emplace_back("step." + s.param.name, torch::tensor({s.step}, torch::kInt64));
  }
  return out;
}

void AdamW::load_state(const io::SafetensorsFile& file) {
  const std::string where = file.path().string();
  for (auto& s : slots_) {
    const std::string m = "exp_avg." + s.param.name;
    if (!file.contains(m)) {
      // A parameter that had no gradient yet when the state was saved has no moments.
      s.exp_avg = at::Tensor();
      s.exp_avg_sq = at::Tensor();
      s.step = 0;
      continue;
    }
    at::Tensor exp_avg = file.tensor(m);
    at::Tensor exp_avg_sq = file.tensor("exp_avg_sq." + s.param.name);
    if (exp_avg.sizes() != s.param.tensor.sizes() || exp_avg_sq.sizes() != s.param.tensor.sizes())
      throw TrainError(where + ": optimizer state of '" + s.param.name + "' has shape " +
                       c10::str(exp_avg.sizes()) + ", the parameter " + c10::str(s.param.tensor.sizes()));
    const auto device = s.param.tensor.device();
    s.exp_avg = exp_avg.to(device, torch::kFloat32).clone();
    s.exp_avg_sq = exp_avg_sq.to(device, torch::kFloat32).clone();
    s.step = file.tensor("step." + s.param.name).item<int64_t>();
  }
  // Names in the file that this optimizer does not have mean a different set of
  // trainable parameters: resuming would silently drop state.
  for (const auto& info : file.tensors()) {
    const std::string& n = info.name;
    const size_t dot = n.find('.');
    if (dot == std::string::npos) continue;
    const std::string param = n.substr(dot + 1);
    bool known = false;
    for (const auto& s : slots_) known = known || s.param.name == param;
    if (!known)
      throw TrainError(where + ": optimizer state for '" + param +
                       "', which is not trainable in this run (did `trainable` change since the checkpoint?)");
  }
}

double learning_rate(int64_t step, int64_t total, double peak, int64_t warmup, double min_ratio) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t decay_steps = total - warmup;
  if (decay_steps <= 1) return peak;
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(decay_steps - 1));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * cosine);
}

DynamicLossScaler::DynamicLossScaler(double initial_scale, int64_t growth_interval)
    : scale_(initial_scale), growth_interval_(growth_interval) {}

bool DynamicLossScaler::unscale(const std::vector<NamedParameter>& parameters) const {
  torch::NoGradGuard no_grad;
  const double inv = 1.0 / scale_;
  bool finite = true;
  std::vector<at::Tensor> checks;
  for (const auto& p : parameters) {
    if (!p.tensor.grad().defined()) continue;
    at::Tensor g = p.tensor.mutable_grad();
    g.mul_(inv);
    checks.push_back(g.isfinite().all());
  }
  if (!checks.empty()) finite = torch::stack(checks).all().item<bool>();
  return finite;
}

void DynamicLossScaler::update(bool finite) {
  if (!finite) {
    scale_ = std::max(scale_ * 0.5, 1.0);
    good_steps_ = 0;
    ++skipped_;
    return;
  }
  if (++good_steps_ >= growth_interval_) {
    scale_ *= 2.0;
    good_steps_ = 0;
  }
}

void DynamicLossScaler::restore(double scale, int64_t good_steps, int64_t skipped) {
  scale_ = scale;
  good_steps_ = good_steps;
  skipped_ = skipped;
}

}  // namespace pal::train
