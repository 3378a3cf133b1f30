#include "pal/analyze/manifest_analysis.h"

#include <sys/wait.h>

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "pal/audio/decode.h"
#include "pal/core/atomic_file.h"
#include "pal/core/config.h"
#include "pal/core/error.h"
#include "pal/core/logging.h"
#include "pal/data/manifest.h"
#include "pal/models/pal_model.h"
#include "pal/text/prompt.h"
#include "pal/text/tokenizer.h"

namespace pal::analyze {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kSkipReasons = 10;

// Clears the ensemble's removed streams at scope end.
class RemovedStreams {
 public:
  RemovedStreams(models::EncoderEnsembleImpl& ensemble, std::vector<bool> removed) : ensemble_(ensemble) {
    ensemble_.set_removed_streams(std::move(removed));
  }
  ~RemovedStreams() { ensemble_.set_removed_streams({}); }
  RemovedStreams(const RemovedStreams&) = delete;
  RemovedStreams& operator=(const RemovedStreams&) = delete;

 private:
  models::EncoderEnsembleImpl& ensemble_;
};

models::EnsembleOutput encode(models::PalModelImpl& model, const data::Example& e,
                              const infer::LongAudioOptions& options) {
  audio::LoadOptions load;
  load.start = e.start;
  if (e.end >= 0) load.end = e.end;
  auto stream = std::make_shared<audio::AudioStream>(e.audio, load);
  return infer::encode_long_audio(
             model, [stream](std::vector<float>& out) { return stream->read(out); }, options, e.audio)
      .tokens;
}

std::string fixed(double v, int digits = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

json shares_json(const AttentionShares& s) {
  json j;
  j["share"] = s.share;
  j["uniform"] = s.uniform;
  j["examples"] = s.examples;
  std::vector<double> layer_mean;
  for (const auto& row : s.share) {
    double sum = 0;
    for (double v : row) sum += v;
    layer_mean.push_back(row.empty() ? 0.0 : sum / static_cast<double>(row.size()));
  }
  j["layer_mean"] = layer_mean;
  return j;
}

json lens_json(const std::vector<LensPoint>& points) {
  json rows = json::array();
  for (size_t i = 0; i < points.size(); ++i) {
    const LensPoint& p = points[i];
    rows.push_back({{"layer", static_cast<int64_t>(i) - 1},
                    {"tap", i == 0 ? "embeddings" : "layer " + std::to_string(i - 1)},
                    {"probability", p.probability},
                    {"rank", p.rank},
                    {"top1", p.top1},
                    {"positions", p.positions}});
  }
  return rows;
}

// The mean over heads of a [layers][heads] table.
std::vector<double> head_mean(const std::vector<std::vector<double>>& t) {
  std::vector<double> out;
  for (const auto& row : t) {
    double sum = 0;
    for (double v : row) sum += v;
    out.push_back(row.empty() ? 0.0 : sum / static_cast<double>(row.size()));
  }
  return out;
}

}  // namespace

void ManifestAnalysisOptions::validate() const {
  if (manifest.empty()) throw ConfigError("manifest: a JSONL file is needed");
  if (!attention && !logit_lens && !ablation)
    throw ConfigError("no measurement chosen (attention, logit_lens, ablation)");
  if (batch_size < 1) throw ConfigError("batch_size: must be >= 1, got " + std::to_string(batch_size));
  if (limit < 0) throw ConfigError("limit: must be >= 0, got " + std::to_string(limit));
  if (max_new_tokens < 1)
    throw ConfigError("max_new_tokens: must be >= 1, got " + std::to_string(max_new_tokens));
  long_audio.validate();
}

AnalysisReport analyze_manifest(models::PalModelImpl& model, const fs::path& model_folder,
                                const ManifestAnalysisOptions& options, const AnalysisProgress& progress) {
  options.validate();
  const text::PromptBuilder* prompts = model.prompts();
  const text::Tokenizer* tokenizer = model.tokenizer();
  if (!prompts || !tokenizer)
    throw ModelError(
        model_folder.string() + ": the LLM folder '" + model.config().llm +
        "' has no tokenizer (tokenizer.json or tokenizer.model); the analysis needs one to build "
        "prompts and read answers");
  models::FusionDecoderImpl& decoder = *model.decoder;
  AnalysisReport report;
  report.model = model_folder.string();
  report.manifest = options.manifest.string();
  report.fusion_mode = config::enum_name(decoder.config().mode);
  report.start_layer = decoder.config().start_layer;
  report.layers = decoder.llm->config().num_hidden_layers;
  report.heads = decoder.llm->config().num_attention_heads;
  for (const auto& e : model.config().encoders) report.encoders.push_back(e.type);

  std::optional<AttentionAnalysis> attention;
  std::optional<LogitLensAnalysis> lens;
  std::optional<AblationAnalysis> ablation;
  bool remove_streams = false;
  if (options.attention) attention.emplace(decoder);
  if (options.logit_lens) lens.emplace(decoder);
  if (options.ablation) {
    // Ranges are checked before any work.
    std::vector<AblationCondition> conditions = ablation_conditions(
        report.layers, decoder.config().mode == models::FusionMode::prefix ? 0 : report.start_layer,
        options.ranges, options.each_layer, report.encoders);
    for (const auto& c : conditions) remove_streams = remove_streams || c.removed_stream >= 0;
    models::GenerationOptions generation;
    generation.max_new_tokens = options.max_new_tokens;
    generation.stop_token_ids = prompts->stop_ids();
    ablation.emplace(decoder, std::move(conditions), generation,
                     [tokenizer](const std::vector<int64_t>& ids) { return tokenizer->decode(ids, true); });
  }

  const bool was_training = model.is_training();
  model.eval();
  data::ManifestReader reader(options.manifest);
  const fs::path folder = options.manifest.parent_path();
  std::vector<AnalysisExample> batch;
  auto flush = [&] {
    if (batch.empty()) return;
    if (attention) attention->add(batch);
    if (lens) lens->add(batch);
    if (ablation) ablation->add(batch);
    report.examples += static_cast<int64_t>(batch.size());
    batch.clear();
    if (progress) progress(report.examples);
  };
  data::ManifestReader::Line line;
  int64_t taken = 0;
  while ((options.limit == 0 || taken < options.limit) && reader.next(line)) {
    const std::string source = options.manifest.string() + ":" + std::to_string(line.number);
    data::Example record;
    try {
      record = data::parse_record(line.text, folder, source, /*require_audio=*/true);
    } catch (const DataError& e) {
      throw DataError(source + ": " + e.what());
    }
    if (!options.tasks.empty() &&
        std::find(options.tasks.begin(), options.tasks.end(), record.task) == options.tasks.end())
      continue;
    ++taken;
    AnalysisExample example;
    const text::PromptBuilder::Example ids = prompts->example(record.instruction, record.output, true);
    example.ids = ids.ids;
    example.is_answer = ids.is_answer;
    example.reference = record.output;
    example.task = record.task;
    try {
      c10::InferenceMode inference;
      example.audio = encode(model, record, options.long_audio);
      if (remove_streams)
        for (size_t i = 0; i < report.encoders.size(); ++i) {
          std::vector<bool> removed(report.encoders.size(), false);
          removed[i] = true;
          RemovedStreams scope(*model.ensemble, removed);
          example.audio_without_stream.push_back(encode(model, record, options.long_audio));
        }
    } catch (const AudioError& e) {
      ++report.skipped;
      if (report.skip_reasons.size() < kSkipReasons) report.skip_reasons.push_back(source + ": " + e.what());
      log_message(LogLevel::warn, source + ": skipped: " + e.what());
      continue;
    }
    batch.push_back(std::move(example));
    if (static_cast<int64_t>(batch.size()) >= options.batch_size) flush();
  }
  flush();
  if (was_training) model.train();
  if (attention) report.attention = attention->result();
  if (lens) report.logit_lens = lens->result();
  if (ablation) report.ablation = ablation->result();
  return report;
}

std::string report_json(const AnalysisReport& r) {
  json j;
  j["model"] = r.model;
  j["manifest"] = r.manifest;
  j["fusion"] = {{"mode", r.fusion_mode}, {"start_layer", r.start_layer}};
  j["layers"] = r.layers;
  j["heads"] = r.heads;
  j["encoders"] = r.encoders;
  j["examples"] = r.examples;
  j["skipped"] = r.skipped;
  j["skip_reasons"] = r.skip_reasons;
  if (r.attention) {
    const AttentionResult& a = *r.attention;
    j["attention"] = {{"layers", a.layers},
                      {"heads", a.heads},
                      {"examples", a.examples},
                      {"question", shares_json(a.question)},
                      {"answer", shares_json(a.answer)}};
  }
  if (r.logit_lens) {
    const LogitLensResult& l = *r.logit_lens;
    j["logit_lens"] = {{"layers", l.layers},
                       {"examples", l.examples},
                       {"all_tokens", lens_json(l.all_tokens)},
                       {"first_token", lens_json(l.first_token)}};
  }
  if (r.ablation) {
    json points = json::array();
    double baseline = 0;
    for (const auto& p : r.ablation->points)
      if (p.condition.removed_stream < 0 && p.condition.first < 0) baseline = p.accuracy();
    for (const auto& p : r.ablation->points) {
      json withheld = json::array();
      for (size_t l = 0; l < p.condition.withheld.size(); ++l)
        if (p.condition.withheld[l]) withheld.push_back(l);
      json c = {{"name", p.condition.name}, {"withheld_layers", withheld},
                {"accuracy", p.accuracy()}, {"correct", p.correct},
                {"examples", p.examples},   {"change", p.accuracy() - baseline}};
      c["kind"] = p.condition.removed_stream >= 0 ? "encoder" : p.condition.first < 0 ? "baseline" : "layers";
      if (p.condition.first >= 0) c["range"] = {p.condition.first, p.condition.last};
      if (p.condition.removed_stream >= 0) c["removed_encoder"] = p.condition.removed_stream;
      json tasks = json::object();
      for (const auto& [task, count] : p.by_task)
        tasks[task] = {
            {"accuracy", count.accuracy()}, {"correct", count.correct}, {"examples", count.examples}};
      c["by_task"] = tasks;
      points.push_back(c);
    }
    j["ablation"] = {{"layers", r.ablation->layers}, {"baseline", baseline}, {"conditions", points}};
  }
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string report_markdown(const AnalysisReport& r, const PlotOutcome& plots) {
  std::ostringstream md;
  auto figure = [&](const std::string& suffix, const std::string& caption) {
    for (const auto& f : plots.files)
      if (f.size() >= suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0)
        md << "\n![" << caption << "](" << f << ")\n";
  };
  md << "# Probe analysis\n\n";
  md << "- model: `" << r.model << "`\n";
  md << "- fusion: " << r.fusion_mode << " (start_layer " << r.start_layer << "), " << r.layers
     << " layers x " << r.heads << " heads\n";
  md << "- encoders: ";
  for (size_t i = 0; i < r.encoders.size(); ++i) md << (i ? ", " : "") << i << ": " << r.encoders[i];
  md << "\n- manifest: `" << r.manifest << "`: " << r.examples << " examples analysed";
  if (r.skipped > 0) md << ", " << r.skipped << " skipped (unreadable audio)";
  md << "\n";
  if (!plots.ok) md << "\nNo plots: " << plots.message << "\n";

  if (r.attention) {
    const AttentionResult& a = *r.attention;
    md << "\n## Attention to audio\n\n"
          "Share of each query's attention mass on audio keys (prefix-routed audio positions of the "
          "sequence, probe keys of probe layers), averaged over the query tokens of a group and then over "
          "the examples. `uniform` is what attention spread evenly over the keys each query sees would "
          "give.\n\n";
    md << "| layer | question: mean over heads | top head | uniform | answer: mean over heads | top head |\n";
    md << "|---|---|---|---|---|---|\n";
    const auto q = head_mean(a.question.share), an = head_mean(a.answer.share),
               u = head_mean(a.question.uniform);
    int64_t best_layer = 0, best_head = 0;
    double best = -1;
    for (int64_t l = 0; l < a.layers; ++l) {
      const auto& qrow = a.question.share[static_cast<size_t>(l)];
      const auto& arow = a.answer.share[static_cast<size_t>(l)];
      const auto qtop = std::max_element(qrow.begin(), qrow.end()) - qrow.begin();
      const auto atop = std::max_element(arow.begin(), arow.end()) - arow.begin();
      md << "| " << l << " | " << fixed(q[static_cast<size_t>(l)]) << " | " << qtop << " ("
         << fixed(qrow[static_cast<size_t>(qtop)]) << ") | " << fixed(u[static_cast<size_t>(l)]) << " | "
         << fixed(an[static_cast<size_t>(l)]) << " | " << atop << " ("
         << fixed(arow[static_cast<size_t>(atop)]) << ") |\n";
      for (int64_t h = 0; h < a.heads; ++h)
        if (qrow[static_cast<size_t>(h)] + arow[static_cast<size_t>(h)] > best) {
          best = qrow[static_cast<size_t>(h)] + arow[static_cast<size_t>(h)];
          best_layer = l;
          best_head = h;
        }
    }
    md << "\nMost audio-reading head (question + answer): layer " << best_layer << ", head " << best_head
       << ".\n";
    figure("_attention_question.png", "attention to audio, question tokens");
    figure("_attention_answer.png", "attention to audio, answer tokens");
  }

  if (r.logit_lens) {
    const LogitLensResult& l = *r.logit_lens;
    md << "\n## Logit lens\n\n"
          "Hidden states at the answer positions decoded through the final norm and the LM head "
          "(teacher-forced on the reference answer): mean probability and rank (1 = greedy would pick it) "
          "of the reference token.\n\n";
    md << "| after | all tokens: probability | rank | top-1 | first token: probability | rank | top-1 |\n";
    md << "|---|---|---|---|---|---|---|\n";
    for (size_t i = 0; i < l.all_tokens.size(); ++i) {
      const LensPoint& p = l.all_tokens[i];
      const LensPoint& f = l.first_token[i];
      md << "| " << (i == 0 ? std::string("embeddings") : "layer " + std::to_string(i - 1)) << " | "
         << fixed(p.probability) << " | " << fixed(p.rank, 1) << " | " << fixed(p.top1) << " | "
         << fixed(f.probability) << " | " << fixed(f.rank, 1) << " | " << fixed(f.top1) << " |\n";
    }
    for (size_t i = 0; i < l.first_token.size(); ++i)
      if (l.first_token[i].positions > 0 && l.first_token[i].top1 >= 0.5) {
        md << "\nThe first answer token becomes the top prediction for most examples after "
           << (i == 0 ? std::string("the embeddings") : "layer " + std::to_string(i - 1)) << ".\n";
        break;
      }
    figure("_logit_lens.png", "logit lens");
  }

  if (r.ablation) {
    md << "\n## Ablations\n\n"
          "Exact match of greedy answers against the references (lower case, punctuation and extra spaces "
          "removed). Audio withheld from a layer: its text queries read no audio (prefix-routed audio "
          "positions are hidden as keys; probe layers skip their probe block). Encoder removed: its "
          "stream's projected features are zeros and its time steps and summary token are masked.\n\n";
    md << "| condition | accuracy | correct | change vs baseline |\n|---|---|---|---|\n";
    double baseline = 0;
    for (const auto& p : r.ablation->points)
      if (p.condition.removed_stream < 0 && p.condition.first < 0) baseline = p.accuracy();
    for (const auto& p : r.ablation->points)
      md << "| " << p.condition.name << " | " << fixed(p.accuracy()) << " | " << p.correct << "/"
         << p.examples << " | " << (p.accuracy() - baseline >= 0 ? "+" : "") << fixed(p.accuracy() - baseline)
         << " |\n";
    // Per task, when the manifest has several.
    std::set<std::string> tasks;
    for (const auto& p : r.ablation->points)
      for (const auto& entry : p.by_task) tasks.insert(entry.first);
    if (tasks.size() > 1) {
      md << "\nAccuracy per task:\n\n| condition |";
      for (const auto& t : tasks) md << " " << (t.empty() ? std::string("(none)") : t) << " |";
      md << "\n|---|";
      for (size_t i = 0; i < tasks.size(); ++i) md << "---|";
      md << "\n";
      for (const auto& p : r.ablation->points) {
        md << "| " << p.condition.name << " |";
        for (const auto& t : tasks) {
          auto it = p.by_task.find(t);
          md << " " << (it == p.by_task.end() ? std::string("-") : fixed(it->second.accuracy())) << " |";
        }
        md << "\n";
      }
    }
    figure("_ablation.png", "ablations");
    figure("_ablation_layers.png", "per-layer ablation");
  }
  return md.str();
}

PlotOutcome plot_report(const fs::path& json_file, const fs::path& folder, const std::string& name,
                        const fs::path& script, const std::string& python) {
  PlotOutcome out;
  if (!fs::is_regular_file(script)) {
    out.message = "the plotting script " + script.string() + " was not found (give --plot-script)";
    return out;
  }
  auto quote = [](const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  const std::string command = quote(python) + " " + quote(script.string()) + " " + quote(json_file.string()) +
                              " " + quote(folder.string()) + " --prefix " + quote(name) + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) {
    out.message = "could not run " + python;
    return out;
  }
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
  const int status = pclose(pipe);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::istringstream lines(text);
  std::vector<std::string> other;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("wrote ", 0) == 0)
      out.files.push_back(line.substr(6));
    else if (!line.empty())
      other.push_back(line);
  }
  out.ok = code == 0 && !out.files.empty();
  if (!out.ok) {
    std::string why = other.empty() ? std::string() : other.back();
    if (code == 3)
      out.message = "matplotlib is not installed for " + python + " (" + why +
                    "); install python3-matplotlib or give --python";
    else if (code == 127)
      out.message = "the Python interpreter " + python + " was not found (give --python)";
    else
      out.message = python + " " + script.string() + " failed (exit " + std::to_string(code) + "): " + why;
  }
  return out;
}

PlotOutcome write_report(const AnalysisReport& report, const fs::path& folder, const std::string& name,
                         const fs::path& script, const std::string& python) {
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) throw IoError(folder.string() + ": cannot create the output folder: " + ec.message());
  const fs::path json_file = folder / (name + ".json");
  write_file_atomic(json_file, report_json(report));
  PlotOutcome plots;
  if (script.empty())
    plots.message = "plotting was turned off (--no-plots)";
  else
    plots = plot_report(json_file, folder, name, script, python);
  write_file_atomic(folder / (name + ".md"), report_markdown(report, plots));
  return plots;
}

}  // namespace pal::analyze
