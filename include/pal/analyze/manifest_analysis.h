// The probe analyses (probe_analysis.h) of a trained PAL model over a JSONL manifest, and
// their report: what `pal-analyze` runs.
//
// The manifest is LTU / OpenAQA JSONL (pal/data/manifest.h: audio, instruction, output,
// task, optional start / end), streamed line by line in batches of `batch_size`: only one
// batch of examples is held at a time, and the measurements keep sums, so memory does not
// grow with the manifest. Each example is teacher-forced as training sees it: the model's
// prompt format (PromptBuilder::example) with the instruction and the reference output.
//
// Report files, in the output folder, named after the run (`name`: attention,
// logit_lens, ablation or analysis):
//   <name>.json   every number (report_json)
//   <name>.md     a Markdown summary with tables, linking the plots
//   <name>_*.png  plots drawn by scripts/plot_analysis.py (matplotlib) from the JSON
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pal/analyze/probe_analysis.h"
#include "pal/infer/long_audio.h"

namespace pal::models {
class PalModelImpl;
}

namespace pal::analyze {

struct ManifestAnalysisOptions {
  std::filesystem::path manifest;  // JSONL; relative audio paths are taken from its folder
  bool attention = false;          // AttentionAnalysis
  bool logit_lens = false;         // LogitLensAnalysis
  bool ablation = false;           // AblationAnalysis
  int64_t batch_size = 8;          // examples per forward / generation (>= 1)
  int64_t limit = 0;               // the first `limit` examples only; 0: all
  std::vector<std::string> tasks;  // only lines of these tasks (the manifest's "task"); empty: all
  std::vector<std::pair<int64_t, int64_t>> ranges;  // ablation: extra withheld layer ranges, inclusive
  bool each_layer = false;                          // ablation: also each layer alone
  int64_t max_new_tokens = 32;                      // ablation: longest greedy answer
  infer::LongAudioOptions long_audio;               // audio longer than an encoder's input

  void validate() const;  // throws ConfigError naming the field
};

struct AnalysisReport {
  std::string model;     // the model folder
  std::string manifest;  // the manifest file
  std::string fusion_mode;
  int64_t start_layer = 0, layers = 0, heads = 0;
  std::vector<std::string> encoders;      // types, in order
  int64_t examples = 0;                   // analysed
  int64_t skipped = 0;                    // lines whose audio could not be read
  std::vector<std::string> skip_reasons;  // the first few, "manifest:line: why"
  std::optional<AttentionResult> attention;
  std::optional<LogitLensResult> logit_lens;
  std::optional<AblationResult> ablation;
};

// Called after each batch with the examples analysed so far.
using AnalysisProgress = std::function<void(int64_t examples)>;

// Runs the chosen measurements. Throws DataError naming manifest:line for a malformed
// line; ModelError when the model has no tokenizer; ConfigError for a layer range out of
// bounds (before any work). A line whose audio cannot be read is skipped and counted.
AnalysisReport analyze_manifest(models::PalModelImpl& model, const std::filesystem::path& model_folder,
                                const ManifestAnalysisOptions& options,
                                const AnalysisProgress& progress = {});

// The report as JSON (pretty-printed).
std::string report_json(const AnalysisReport& report);

// What the plotting script did.
struct PlotOutcome {
  bool ok = false;                 // plots were written
  std::vector<std::string> files;  // their file names, in the output folder
  std::string message;             // why not, when !ok (e.g. matplotlib is missing)
};

// The Markdown summary; `plots` links the figures (or says why there are none).
std::string report_markdown(const AnalysisReport& report, const PlotOutcome& plots);

// Runs `python` `script` <json> <folder> --prefix <name>: the script writes <name>_*.png
// and prints their names. A missing interpreter, script or matplotlib is not an error:
// the outcome says what was missing.
PlotOutcome plot_report(const std::filesystem::path& json, const std::filesystem::path& folder,
                        const std::string& name, const std::filesystem::path& script,
                        const std::string& python);

// Writes <name>.json, the plots (unless `script` is empty) and <name>.md into `folder`
// (created if needed). Returns the plot outcome.
PlotOutcome write_report(const AnalysisReport& report, const std::filesystem::path& folder,
                         const std::string& name, const std::filesystem::path& script,
                         const std::string& python);

}  // namespace pal::analyze
