// pal-analyze: how a trained PAL model's LLM reads audio, over a manifest of examples.
//
//   pal-analyze attention  --model DIR --manifest test.jsonl --output OUT   attention to audio per layer x
//   head pal-analyze logit-lens --model DIR --manifest test.jsonl --output OUT   reference token per layer
//   pal-analyze ablate     --model DIR --manifest test.jsonl --output OUT   accuracy with audio withheld
//   pal-analyze all        ...                                              the three in one pass
//
// Writes OUT/<name>.json (every number), OUT/<name>.md (summary) and OUT/<name>_*.png
// (scripts/plot_analysis.py with matplotlib; without it, JSON and Markdown alone).
//
// Exit codes: 0 success; 1 bad input (model folder, manifest line, layer range; the message
// names the file or value); 2 bad usage.
#include <unistd.h>

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "pal/analyze/manifest_analysis.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/core/runtime.h"
#include "pal/models/pal_checkpoint.h"

namespace {

namespace fs = std::filesystem;

struct Args {
  std::string model, manifest, output, device = "cpu", dtype, log_level = "warn", ranges, python, plot_script;
  int threads = 0;
  bool no_plots = false;
  pal::analyze::ManifestAnalysisOptions options;
};

// "0-3,8,10-11" -> {0, 3}, {8, 8}, {10, 11}.
std::vector<std::pair<int64_t, int64_t>> parse_ranges(const std::string& text) {
  std::vector<std::pair<int64_t, int64_t>> out;
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    if (item.empty()) continue;
    const size_t dash = item.find('-', 1);
    try {
      size_t used = 0;
      const int64_t first = std::stoll(item.substr(0, dash), &used);
      if (used != (dash == std::string::npos ? item.size() : dash)) throw std::invalid_argument(item);
      int64_t last = first;
      if (dash != std::string::npos) {
        last = std::stoll(item.substr(dash + 1), &used);
        if (used != item.size() - dash - 1) throw std::invalid_argument(item);
      }
      out.emplace_back(first, last);
    } catch (const std::logic_error&) {
      throw CLI::ValidationError("--ranges",
                                 "'" + item + "' is not a layer or a range FIRST-LAST (e.g. 0-3,8)");
    }
  }
  return out;
}

// The plotting script: --plot-script, else installed beside the tools, else the source tree's.
fs::path find_plot_script(const std::string& given) {
  if (!given.empty()) return given;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed = exe.parent_path().parent_path() / "share" / "pal" / "plot_analysis.py";
    if (fs::is_regular_file(installed)) return installed;
  }
  return fs::path(PAL_SOURCE_DIR) / "scripts" / "plot_analysis.py";
}

// Debian's interpreter has python3-matplotlib; a pyenv python3 on PATH may not.
std::string find_python(const std::string& given) {
  if (!given.empty()) return given;
  return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pal-analyze: how a PAL model's LLM reads audio (attention to audio, logit lens, ablations)"};
  app.footer(
      "Exit codes: 0 success, 1 bad input (model folder, manifest line, layer range), 2 bad usage.\n"
      "Plots need matplotlib for the Python interpreter (default /usr/bin/python3, Debian's "
      "python3-matplotlib).");
  app.require_subcommand(1);
  Args a;
  auto common = [&](CLI::App* cmd) {
    cmd->add_option("--model", a.model, "model folder (model.yaml + model.safetensors)")->required();
    cmd->add_option("--manifest", a.manifest, "JSONL of {audio, instruction, output, task} examples")
        ->required();
    cmd->add_option("--output", a.output, "folder for the JSON, Markdown and PNG files")->required();
    cmd->add_option("--batch-size", a.options.batch_size, "examples per batch")->check(CLI::PositiveNumber);
    cmd->add_option("--limit", a.options.limit, "analyse the first N examples only (0: all)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--tasks", a.options.tasks,
                    "only examples of these tasks (the manifest's task), e.g. cla,voice")
        ->delimiter(',');
    cmd->add_option("--device", a.device, "cpu, cuda or cuda:N");
    cmd->add_option("--dtype", a.dtype, "weights and activations (default: the model's)")
        ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
    cmd->add_option("--threads", a.threads, "LibTorch intra-op threads (0: all cores)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_flag("--no-plots", a.no_plots, "write JSON and Markdown only");
    cmd->add_option("--python", a.python, "Python interpreter with matplotlib (default /usr/bin/python3)");
    cmd->add_option("--plot-script", a.plot_script, "plotting script (default: scripts/plot_analysis.py)");
    cmd->add_option("--log-level", a.log_level, "trace, debug, info, warn, error or off");
  };
  auto ablation = [&](CLI::App* cmd) {
    cmd->add_option("--ranges", a.ranges,
                    "extra layer ranges to withhold audio from, e.g. 0-3,8 (inclusive)");
    cmd->add_flag("--each-layer", a.options.each_layer, "also withhold audio from each layer alone");
    cmd->add_option("--max-new-tokens", a.options.max_new_tokens, "longest greedy answer")
        ->check(CLI::PositiveNumber);
  };
  auto* attention = app.add_subcommand("attention", "share of attention on audio keys per layer and head");
  auto* lens =
      app.add_subcommand("logit-lens", "probability and rank of the reference answer token per layer");
  auto* ablate =
      app.add_subcommand("ablate", "exact-match accuracy with audio withheld from layers / encoders");
  auto* all = app.add_subcommand("all", "attention, logit-lens and ablate in one pass over the manifest");
  for (auto* cmd : {attention, lens, ablate, all}) common(cmd);
  ablation(ablate);
  ablation(all);
  std::string name;
  try {
    app.parse(argc, argv);
    a.options.ranges = parse_ranges(a.ranges);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (*attention || *all) a.options.attention = true;
  if (*lens || *all) a.options.logit_lens = true;
  if (*ablate || *all) a.options.ablation = true;
  name = *attention ? "attention" : *lens ? "logit_lens" : *ablate ? "ablation" : "analysis";

  c10::Device device(c10::kCPU);
  bool progress_shown = false;  // a \r progress line is open on stderr
  try {
    device = c10::Device(a.device);
  } catch (const c10::Error&) {
    std::fprintf(stderr, "pal-analyze: --device: '%s' is not a device (cpu, cuda, cuda:N)\n",
                 a.device.c_str());
    return 2;
  }
  try {
    pal::set_log_level(pal::parse_log_level(a.log_level));
    pal::configure_threads({a.threads, 0});
    pal::models::ModelLoadOptions load;
    load.device = device;
    if (!a.dtype.empty())
      load.dtype = a.dtype == "float32"    ? pal::models::ModelDtype::float32
                   : a.dtype == "bfloat16" ? pal::models::ModelDtype::bfloat16
                                           : pal::models::ModelDtype::float16;
    if (!fs::is_directory(a.model))
      throw pal::IoError(a.model + ": " + (fs::exists(a.model) ? "not a folder" : "no such folder") +
                         " (a model folder holds model.yaml and model.safetensors)");
    pal::models::PalModel model = pal::models::load_pal_model(a.model, load);
    a.options.manifest = a.manifest;
    // A counter rewritten in place on a terminal; a line every 100 examples in a log.
    const bool tty = isatty(fileno(stderr)) != 0;
    int64_t last_line = 0;
    const pal::analyze::AnalysisReport report =
        pal::analyze::analyze_manifest(*model, a.model, a.options, [&](int64_t n) {
          if (tty) {
            std::fprintf(stderr, "\rpal-analyze: %lld examples", static_cast<long long>(n));
            progress_shown = true;
          } else if (n - last_line >= 100) {
            std::fprintf(stderr, "pal-analyze: %lld examples\n", static_cast<long long>(n));
            last_line = n;
          }
        });
    if (progress_shown) std::fprintf(stderr, "\n");
    progress_shown = false;
    if (report.examples == 0)
      throw pal::DataError(a.manifest + ": no example could be analysed (" + std::to_string(report.skipped) +
                           " skipped)");
    const pal::analyze::PlotOutcome plots = pal::analyze::write_report(
        report, a.output, name, a.no_plots ? fs::path() : find_plot_script(a.plot_script),
        find_python(a.python));
    std::fprintf(stderr, "pal-analyze: %lld examples (%lld skipped); wrote %s/%s.json and %s.md\n",
                 static_cast<long long>(report.examples), static_cast<long long>(report.skipped),
                 a.output.c_str(), name.c_str(), name.c_str());
    if (plots.ok)
      std::fprintf(stderr, "pal-analyze: plots: %zu PNG files\n", plots.files.size());
    else
      std::fprintf(stderr, "pal-analyze: no plots: %s\n", plots.message.c_str());
  } catch (const pal::Error& e) {
    std::fprintf(stderr, "%spal-analyze: error: %s\n", progress_shown ? "\n" : "", e.what());
    return 1;
  }
  return 0;
}
