// The only file that includes c10d: LibTorch 1.13 (Debian) derives the Gloo process group
// from c10d::ProcessGroup, LibTorch 2.x (PyPI) from c10d::Backend; the collectives' calls
// are the same on both. Gloo needs gloo's headers at build time (PAL_HAVE_GLOO, set by
// cmake/palDistributed.cmake), NCCL a CUDA LibTorch built with it and nccl.h (PAL_HAVE_NCCL).
#include "pal/train/distributed.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#ifdef PAL_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef PAL_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "../core/log.h"

namespace pal::train {
using detail::log_info;

namespace {

#if TORCH_VERSION_MAJOR >= 2
using C10dGroup = c10d::Backend;
#else
using C10dGroup = c10d::ProcessGroup;
#endif

std::optional<std::string> env_string(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

// An integer environment variable; ConfigError naming the variable and its value.
std::optional<int64_t> env_int(const char* name, int64_t at_least) {
  const auto text = env_string(name);
  if (!text) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text->c_str(), &end, 10);
  if (errno != 0 || end == text->c_str() || *end != '\0')
    throw ConfigError(std::string("environment: ") + name + "=" + *text + " is not an integer");
  if (v < at_least)
    throw ConfigError(std::string("environment: ") + name + "=" + *text + " must be at least " +
                      std::to_string(at_least));
  return static_cast<int64_t>(v);
}

std::string first_line(const std::string& text) {
  const auto nl = text.find('\n');
  return nl == std::string::npos ? text : text.substr(0, nl);
}

[[maybe_unused]] bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

}  // namespace

std::optional<DistributedEnv> DistributedEnv::from_environment() {
  DistributedEnv env;
  if (env_string("WORLD_SIZE")) {
    env.launcher = env_string("TORCHELASTIC_RUN_ID") ? "torchrun" : "environment";
    env.world_size = *env_int("WORLD_SIZE", 1);
    const auto rank = env_int("RANK", 0);
    if (!rank)
      throw ConfigError("environment: WORLD_SIZE=" + std::to_string(env.world_size) +
                        " is set but RANK is not");
    env.rank = *rank;
    env.local_rank = env_int("LOCAL_RANK", 0).value_or(env.rank);
    env.local_world_size = env_int("LOCAL_WORLD_SIZE", 1).value_or(env.world_size);
  } else if (env_string("SLURM_NTASKS")) {
    env.launcher = "slurm";
    env.world_size = *env_int("SLURM_NTASKS", 1);
    const auto rank = env_int("SLURM_PROCID", 0);
    if (!rank)
      throw ConfigError("environment: SLURM_NTASKS is set but SLURM_PROCID is not (launch with srun)");
    env.rank = *rank;
    env.local_rank = env_int("SLURM_LOCALID", 0).value_or(0);
    // SLURM_NTASKS_PER_NODE may read "4(x2)"; only a plain number is used.
    const auto per_node = env_string("SLURM_NTASKS_PER_NODE");
    env.local_world_size = per_node && per_node->find_first_not_of("0123456789") == std::string::npos
                               ? std::stoll(*per_node)
                               : env.local_rank + 1;
    if (const auto launch = env_string("SLURM_LAUNCH_NODE_IPADDR")) env.master_addr = *launch;
  } else {
    return std::nullopt;
  }
  if (env.rank >= env.world_size)
    throw ConfigError("environment: RANK=" + std::to_string(env.rank) +
                      " must be below WORLD_SIZE=" + std::to_string(env.world_size));
  if (env.local_rank >= env.local_world_size)
    throw ConfigError("environment: LOCAL_RANK=" + std::to_string(env.local_rank) +
                      " must be below LOCAL_WORLD_SIZE=" + std::to_string(env.local_world_size));
  if (const auto addr = env_string("MASTER_ADDR")) env.master_addr = *addr;
  if (const auto port = env_int("MASTER_PORT", 1)) {
    if (*port > 65535)
      throw ConfigError("environment: MASTER_PORT=" + std::to_string(*port) + " is not a port (1..65535)");
    env.master_port = *port;
  } else if (env.world_size > 1 && env.launcher != "slurm") {
    throw ConfigError("environment: WORLD_SIZE=" + std::to_string(env.world_size) +
                      " but MASTER_PORT is not set (set MASTER_ADDR and MASTER_PORT, or launch with torchrun "
                      "or scripts/launch_local.sh)");
  }
  const auto agent = env_string("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent && (*agent == "True" || *agent == "true" || *agent == "1");
  env.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0).value_or(0);
  return env;
}

std::string DistributedEnv::describe() const {
  return "rank " + std::to_string(rank) + "/" + std::to_string(world_size) + " (local " +
         std::to_string(local_rank) + ") via " + (launcher.empty() ? "environment" : launcher) + ", store " +
         master_addr + ":" + std::to_string(master_port) + (agent_store ? " (torchrun's agent)" : "");
}

bool gloo_available() {
#ifdef PAL_HAVE_GLOO
  return true;
#else
  return false;
#endif
}

bool nccl_available() {
#ifdef PAL_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

// ---- the process group ------------------------------------------------------------------

struct ProcessGroup::State {
  DistributedEnv env;
  std::string backend;  // "" until connected
  std::chrono::milliseconds timeout{600000};
  c10::Device device{c10::kCPU};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dGroup> group;

  [[noreturn]] void fail(const std::string& what, const std::string& message, double seconds) const {
    throw DistributedError(
        "rank " + std::to_string(env.rank) + "/" + std::to_string(env.world_size) + ": " + backend + " " +
        what + " failed after " + std::to_string(static_cast<int64_t>(seconds)) + " s (timeout " +
        std::to_string(timeout.count() / 1000) + " s, distributed.timeout_s or " +
        "PAL_DIST_TIMEOUT): " + message +
        ". Another rank has probably exited or stalled: see its log (torchrun names the rank "
        "that failed first)");
  }
  void require_connected(const std::string& what) const {
    if (!group)
      throw DistributedError("rank " + std::to_string(env.rank) + ": " + what + " before connect()");
  }
};

struct ProcessGroup::Pending::Work {
  const ProcessGroup::State* state = nullptr;
  c10::intrusive_ptr<c10d::Work> work;
  std::string what;
  std::chrono::steady_clock::time_point start;
};

ProcessGroup::Pending::Pending() = default;
ProcessGroup::Pending::~Pending() = default;
ProcessGroup::Pending::Pending(Pending&&) noexcept = default;
ProcessGroup::Pending& ProcessGroup::Pending::operator=(Pending&&) noexcept = default;

void ProcessGroup::Pending::wait() {
  if (!work_) return;
  std::unique_ptr<Work> w = std::move(work_);
  const auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - w->start).count();
  };
  try {
    if (!w->work->wait(w->state->timeout)) w->state->fail(w->what, "the work did not complete", seconds());
  } catch (const DistributedError&) {
    throw;
  } catch (const c10::Error& e) {
    w->state->fail(w->what, first_line(e.what_without_backtrace()), seconds());
  } catch (const std::exception& e) {
    w->state->fail(w->what, first_line(e.what()), seconds());
  }
}

ProcessGroup::ProcessGroup(DistributedEnv env) : state_(std::make_unique<State>()) {
  state_->env = std::move(env);
}

ProcessGroup::~ProcessGroup() {
#ifdef PAL_HAVE_NCCL
  // NCCL wants its communicators shut down before the process exits (LibTorch 2.x warns otherwise).
  if (auto* nccl = dynamic_cast<c10d::ProcessGroupNCCL*>(state_->group.get())) {
    try {
      nccl->shutdown();
    } catch (const std::exception&) {
    }
  }
#endif
}

void ProcessGroup::connect(bool cuda, const DistributedConfig& config) {
  State& s = *state_;
  std::string backend = config.backend;
  if (backend == "auto") backend = cuda ? "nccl" : "gloo";
  if (s.group) {
    if (backend != s.backend)
      throw ConfigError("distributed.backend: this stage needs " + backend +
                        " but the process group (set up by an " + "earlier stage) uses " + s.backend +
                        "; use one device kind for the whole curriculum");
    return;
  }
  if (backend == "nccl" && !cuda)
    throw ConfigError("distributed.backend: nccl needs a CUDA device (device is the CPU); use gloo or auto");
  if (backend == "gloo" && !gloo_available())
    throw ConfigError(
        "distributed.backend: gloo is not built into this PAL (gloo's headers were not found at build time: "
        "install libgloo-dev and reconfigure; PyPI's torch wheel ships none). CPU ranks need Gloo; CUDA "
        "ranks can "
        "use nccl");
  if (backend == "nccl" && !nccl_available())
    throw ConfigError(
        "distributed.backend: nccl is not built into this PAL (it needs a CUDA LibTorch built with "
        "NCCL, e.g. PyPI's torch, and nccl.h from the nvidia-nccl wheel at build time)");
  double timeout_s = config.timeout_s;
  if (const auto t = env_string("PAL_DIST_TIMEOUT")) {
    char* end = nullptr;
    timeout_s = std::strtod(t->c_str(), &end);
    if (end == t->c_str() || *end != '\0' || !(timeout_s > 0))
      throw ConfigError("environment: PAL_DIST_TIMEOUT=" + *t + " is not a positive number of seconds");
  }
  s.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  s.backend = backend;
  const DistributedEnv& env = s.env;
  const auto start = std::chrono::steady_clock::now();
  // torchrun's agent store speaks the TCPStore protocol of the torchrun's torch (PyPI's,
  // 2.x); LibTorch 1.13's client cannot talk to it (the handshake times out). Then rank 0
  // hosts a store of its own on MASTER_PORT + 1 (PAL_STORE_PORT overrides), which needs
  // rank 0 on MASTER_ADDR's machine: true for torchrun's static and standalone rendezvous.
  const bool agent_store = env.agent_store && TORCH_VERSION_MAJOR >= 2;
  int64_t port = env.master_port + (env.agent_store && !agent_store ? 1 : 0);
  if (const auto p = env_int("PAL_STORE_PORT", 1)) port = *p;
  if (port > 65535)
    throw ConfigError("the store's port " + std::to_string(port) + " is not a port (set PAL_STORE_PORT)");
  if (env.agent_store && !agent_store)
    log_info("distributed: LibTorch ", TORCH_VERSION,
             " cannot use torchrun's agent store; rank 0 hosts one on ", env.master_addr, ":", port);
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = env.rank == 0 && !agent_store;
    so.numWorkers = static_cast<std::size_t>(env.world_size);
    so.waitWorkers = !agent_store;
    so.timeout = s.timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    // Keys of a restarted attempt (torchrun --max-restarts) never meet the old ones.
    s.store =
        c10::make_intrusive<c10d::PrefixStore>("/pal/attempt_" + std::to_string(env.restart_count), tcp);
    s.store->setTimeout(s.timeout);
    if (backend == "gloo") {
#ifdef PAL_HAVE_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(s.timeout);
      const auto ifname = env_string("GLOO_SOCKET_IFNAME");
      if (ifname)
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(*ifname));
      else if (is_loopback(env.master_addr))
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      options->threads = 2;
      s.group = c10::make_intrusive<c10d::ProcessGroupGloo>(s.store, static_cast<int>(env.rank),
                                                            static_cast<int>(env.world_size), options);
#endif
    } else {
#ifdef PAL_HAVE_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
      s.device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = s.timeout;
      s.group = c10::make_intrusive<c10d::ProcessGroupNCCL>(s.store, static_cast<int>(env.rank),
                                                            static_cast<int>(env.world_size), options);
#endif
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const std::string message = dynamic_cast<const c10::Error*>(&e)
                                    ? static_cast<const c10::Error&>(e).what_without_backtrace()
                                    : e.what();
    s.group.reset();
    s.fail("rendezvous at " + env.master_addr + ":" + std::to_string(port) + " (" + env.describe() + ")",
           first_line(message),
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  log_info("distributed: rank ", env.rank, "/", env.world_size, " (local ", env.local_rank, ") via ",
           env.launcher.empty() ? "environment" : env.launcher, ", store ", env.master_addr, ":", port,
           agent_store ? " (torchrun's agent)" : "", ", ", backend, ", timeout ", timeout_s, " s");
}

bool ProcessGroup::connected() const {
  return static_cast<bool>(state_->group);
}
int64_t ProcessGroup::rank() const {
  return state_->env.rank;
}
int64_t ProcessGroup::world_size() const {
  return state_->env.world_size;
}
int64_t ProcessGroup::local_rank() const {
  return state_->env.local_rank;
}
const DistributedEnv& ProcessGroup::env() const {
  return state_->env;
}
std::string ProcessGroup::backend_name() const {
  return state_->backend;
}
std::chrono::milliseconds ProcessGroup::timeout() const {
  return state_->timeout;
}

ProcessGroup::Pending ProcessGroup::all_reduce_sum_async(std::vector<at::Tensor>& tensors,
                                                         const std::string& what) {
  State& s = *state_;
  s.require_connected(what);
  Pending p;
  p.work_ = std::make_unique<Pending::Work>();
  p.work_->state = &s;
  p.work_->what = "all-reduce of " + what;
  p.work_->start = std::chrono::steady_clock::now();
  try {
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    p.work_->work = s.group->allreduce(tensors, options);
  } catch (const c10::Error& e) {
    s.fail(p.work_->what, first_line(e.what_without_backtrace()), 0);
  } catch (const std::exception& e) {
    s.fail(p.work_->what, first_line(e.what()), 0);
  }
  return p;
}

void ProcessGroup::all_reduce_sum(std::vector<at::Tensor>& tensors, const std::string& what) {
  all_reduce_sum_async(tensors, what).wait();
}

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, int64_t root, const std::string& what) {
  State& s = *state_;
  s.require_connected(what);
  Pending p;
  p.work_ = std::make_unique<Pending::Work>();
  p.work_->state = &s;
  p.work_->what = "broadcast of " + what;
  p.work_->start = std::chrono::steady_clock::now();
  try {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    p.work_->work = s.group->broadcast(tensors, options);
  } catch (const c10::Error& e) {
    s.fail(p.work_->what, first_line(e.what_without_backtrace()), 0);
  } catch (const std::exception& e) {
    s.fail(p.work_->what, first_line(e.what()), 0);
  }
  p.wait();
}

void ProcessGroup::barrier(const std::string& what) {
  // An all-reduce of one element on the group's device: the same on Gloo and NCCL.
  std::vector<at::Tensor> one = {torch::ones({1}, torch::TensorOptions().device(state_->device))};
  all_reduce_sum(one, "barrier (" + what + ")");
}

std::vector<std::string> ProcessGroup::all_gather_strings(const std::string& value, const std::string& key) {
  State& s = *state_;
  s.require_connected(key);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> out;
  try {
    s.store->set(key + "/" + std::to_string(s.env.rank), std::vector<uint8_t>(value.begin(), value.end()));
    for (int64_t r = 0; r < s.env.world_size; ++r) {
      const std::vector<uint8_t> bytes = s.store->get(key + "/" + std::to_string(r));
      out.emplace_back(bytes.begin(), bytes.end());
    }
  } catch (const c10::Error& e) {
    s.fail("exchange of " + key + " through the store", first_line(e.what_without_backtrace()),
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  } catch (const std::exception& e) {
    s.fail("exchange of " + key + " through the store", first_line(e.what()),
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return out;
}

// ---- buckets ------------------------------------------------------------------------------

namespace {

// Indices of `tensors` in buckets of at most `bucket_bytes` (one tensor larger than that
// is a bucket of its own); one dtype and device per bucket; `order` gives the order.
std::vector<std::vector<size_t>> make_buckets(const std::vector<at::Tensor>& tensors,
                                              const std::vector<size_t>& order, double bucket_mb) {
  const auto bucket_bytes = static_cast<int64_t>(bucket_mb * 1024 * 1024);
  std::vector<std::vector<size_t>> buckets;
  std::vector<int64_t> bytes;
  for (size_t i : order) {
    const at::Tensor& t = tensors[i];
    const int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
    const bool fits = !buckets.empty() && tensors[buckets.back().front()].scalar_type() == t.scalar_type() &&
                      tensors[buckets.back().front()].device() == t.device() &&
                      bytes.back() + size <= bucket_bytes;
    if (fits) {
      buckets.back().push_back(i);
      bytes.back() += size;
    } else {
      buckets.push_back({i});
      bytes.push_back(size);
    }
  }
  return buckets;
}

at::Tensor flat_bucket(const std::vector<at::Tensor>& tensors, const std::vector<size_t>& bucket) {
  int64_t n = 0;
  for (size_t i : bucket) n += tensors[i].numel();
  return torch::empty({n}, tensors[bucket.front()].options().requires_grad(false));
}

}  // namespace

GradientBuckets::GradientBuckets(std::vector<at::Tensor> parameters, double bucket_mb)
    : parameters_(std::move(parameters)) {
  // Reverse registration order: the backward pass produces the last layers' gradients first.
  std::vector<size_t> order(parameters_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = order.size() - 1 - i;
  buckets_ = make_buckets(parameters_, order, bucket_mb);
}

double GradientBuckets::all_reduce_mean(ProcessGroup& group) {
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> flats;
  std::vector<ProcessGroup::Pending> pending;
  flats.reserve(buckets_.size());
  pending.reserve(buckets_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    at::Tensor flat = flat_bucket(parameters_, buckets_[b]);
    int64_t offset = 0;
    for (size_t i : buckets_[b]) {
      const at::Tensor& p = parameters_[i];
      at::Tensor slice = flat.narrow(0, offset, p.numel());
      if (p.grad().defined())
        slice.copy_(p.grad().reshape({-1}));
      else
        slice.zero_();
      offset += p.numel();
    }
    flats.push_back(flat);
    std::vector<at::Tensor> one = {flat};
    pending.push_back(group.all_reduce_sum_async(
        one, "gradients (bucket " + std::to_string(b + 1) + "/" + std::to_string(buckets_.size()) + ")"));
  }
  const double inv = 1.0 / static_cast<double>(group.world_size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    pending[b].wait();
    flats[b].mul_(inv);
    int64_t offset = 0;
    for (size_t i : buckets_[b]) {
      at::Tensor& p = parameters_[i];
      at::Tensor slice = flats[b].narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(slice);
      else
        p.mutable_grad() = slice.clone();
      offset += p.numel();
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void broadcast_from_rank0(ProcessGroup& group, const std::vector<at::Tensor>& tensors, double bucket_mb,
                          const std::string& what) {
  torch::NoGradGuard no_grad;
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto buckets = make_buckets(tensors, order, bucket_mb);
  for (size_t b = 0; b < buckets.size(); ++b) {
    at::Tensor flat = flat_bucket(tensors, buckets[b]);
    int64_t offset = 0;
    for (size_t i : buckets[b]) {
      flat.narrow(0, offset, tensors[i].numel()).copy_(tensors[i].detach().reshape({-1}));
      offset += tensors[i].numel();
    }
    std::vector<at::Tensor> one = {flat};
    group.broadcast(one, 0,
                    what + " (bucket " + std::to_string(b + 1) + "/" + std::to_string(buckets.size()) + ")");
    offset = 0;
    for (size_t i : buckets[b]) {
      at::Tensor t = tensors[i];
      t.detach().copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

}  // namespace pal::train
