#!/usr/bin/env python3
"""The paper's comparison in miniature, on the demo data (scripts/study.sh runs it).

Every variant trains through the same curriculum (configs/demo/study.yaml: the demo's stages,
encoders, align and probe at 600 steps instead of the demo's 300 / 400 / 400) on the
same data with the same seeds; only the fusion design or the encoder set changes:

  prefix          audio tokens in front of the text (the LLaVA-style baseline)
  delayed         audio joins the sequence at fusion.start_layer
  probe           attention-only probe blocks in layers >= start_layer (PAL's probe)
  pal             the hybrid: summary tokens as a prefix, full sequences through probes
  probe-whisper   probe with the Whisper-type encoder alone (of the two main encoders)
  probe-ast       probe with the AST-type encoder alone (of the two main encoders)

Every variant keeps the demo's small tone encoder (configs/demo/encoders/tones, trained in
the curriculum's `tones` stage on the three tone tasks: louder, pitch and beeps):
the single-encoder variants compare the speech encoder and the general-audio encoder, not
the tone tasks.

For each variant and seed: pal-train (the six stages), then pal-eval on the test split.
The report (Markdown, also printed) gives mean +- std over seeds per task and metric, the
relative change against prefix, the training step time (mean over the audio stages'
steps) and the peak resident memory of the training process.

  scripts/study.py --bin build/debian --seeds 1 2 3 --out runs/study --doc docs/study.md
  scripts/study.py ... --variants prefix probe --seeds 1 --steps 150    # a quicker look

Every finished run leaves a record, docs/study/runs/<variant>-s<seed>.json (scores, step time,
peak memory, and a fingerprint of what the variant trains with: the curriculum's stage configs
as resolved for it, --steps and the demo data's manifests; see fingerprint()). A run whose
record has the same fingerprint is not trained again, on this machine
or on another clone: 18 trainings take about 4.5 hours on 2 cores, so the study may be done in
parts. Runs finished under runs/study with the same fingerprint are reused too.

  scripts/study.py --bin build/debian --report-only    # the table from the records alone
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

ENCODERS = {
    "tones": "{type: whisper, checkpoint: encoders/tones, weights: random}",
    "whisper": "{type: whisper, checkpoint: encoders/whisper, weights: random}",
    "ast": "{type: ast, checkpoint: encoders/ast, weights: random}",
}

# The demo's curriculum trains `pal` (summary tokens of every encoder's stream as a prefix);
# the other variants set their mode and turn the summary tokens off.
NO_SUMMARY = "model.ensemble.streams=[]"
PAL = ["model.fusion.mode=pal", "model.ensemble.summary_route=prefix",
       "model.ensemble.streams=[{summary_token: true}, {summary_token: true}, {summary_token: true}]"]
VARIANTS = {
    "prefix": ["model.fusion.mode=prefix", NO_SUMMARY],
    "delayed": ["model.fusion.mode=delayed", NO_SUMMARY],
    "probe": ["model.fusion.mode=probe", NO_SUMMARY],
    "pal": PAL,
    "probe-whisper": ["model.fusion.mode=probe", NO_SUMMARY,
                      f"model.encoders=[{ENCODERS['tones']}, {ENCODERS['whisper']}]"],
    "probe-ast": ["model.fusion.mode=probe", NO_SUMMARY, f"model.encoders=[{ENCODERS['tones']}, {ENCODERS['ast']}]"],
}
AUDIO_STAGES = ("align", "probe", "instruct")


def log(msg):
    print(f"study: {msg}", flush=True)


def train(args, variant, seed, out_dir):
    sets = [f"output_dir={os.path.abspath(out_dir)}", f"seed={seed}", f"threads={args.threads}"]
    sets += VARIANTS[variant]
    cmd = [os.path.join(args.bin, "pal-train"), "--curriculum", args.curriculum, "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    if args.steps:
        cmd += ["--set", f"steps={args.steps}"]  # every stage
    os.makedirs(out_dir, exist_ok=True)
    # A child python measures the training process alone (ru_maxrss of its only child).
    probe = ("import resource, subprocess, sys, json\n"
             "rc = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1], 'w'), stderr=subprocess.STDOUT)\n"
             "print(json.dumps({'rc': rc, 'peak_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", probe, os.path.join(out_dir, "train.log")] + cmd,
                         capture_output=True, text=True, check=False)
    info = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {"rc": 1, "peak_mib": 0}
    info["wall_s"] = time.time() - t0
    if info["rc"] != 0:
        raise SystemExit(f"study: pal-train failed for {variant} seed {seed} (exit {info['rc']}); "
                         f"see {os.path.join(out_dir, 'train.log')}")
    return info


def step_time(out_dir):
    """Mean seconds per training step over the audio stages (from metrics.jsonl)."""
    total_s, total_steps = 0.0, 0
    for stage in AUDIO_STAGES:
        path = os.path.join(out_dir, stage, "metrics.jsonl")
        last = None
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("type") == "train":
                    last = r
        if last:
            total_s += last["elapsed_s"]
            total_steps += last["step"]
    return total_s / total_steps if total_steps else float("nan")


def evaluate(args, variant, seed, out_dir):
    result = os.path.join(out_dir, "eval.json")
    if os.path.exists(result):
        return json.load(open(result))
    cmd = [os.path.join(args.bin, "pal-eval"), "--model", os.path.join(out_dir, "instruct", "final"),
           "--name", f"{variant}-s{seed}", "--manifest", args.manifest, "--tasks", args.tasks,
           "--batch-size", "16", "--max-new-tokens", "24", "--threads", str(args.threads),
           "--json", result + ".tmp", "--markdown", os.path.join(out_dir, "eval.md")]
    with open(os.path.join(out_dir, "eval.log"), "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"study: pal-eval failed for {variant} seed {seed} (exit {rc}); see {out_dir}/eval.log")
    os.replace(result + ".tmp", result)
    return json.load(open(result))


def task_metrics(eval_json):
    """{task: {metric: value}} from pal-eval's JSON (first model)."""
    model = eval_json["models"][0]
    out = {}
    for task, t in model["tasks"].items():
        out[task] = {k: v for k, v in t["metrics"].items() if isinstance(v, (int, float))}
    return out


def chance_metrics(args):
    """{task: {metric: value}} of pal-eval's majority column: every test item answered with its
    task's most frequent answer in the training manifest (the chance of the open tasks' BLEU-4
    and CIDEr-D too). Empty when pal-eval cannot make it (a build before --majority)."""
    train = os.path.join(os.path.dirname(os.path.abspath(args.manifest)), "train.jsonl")
    result = os.path.join(args.out, "chance.json")
    os.makedirs(args.out, exist_ok=True)
    cmd = [os.path.join(args.bin, "pal-eval"), "--majority", train, "--manifest", args.manifest,
           "--tasks", args.tasks, "--json", result]
    if subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        log(f"no majority column from pal-eval ({' '.join(cmd)}); open tasks without chance")
        return {}
    return task_metrics(json.load(open(result)))


def mean_std(values):
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def shared_inputs(args):
    """The fingerprint's part that is the same for every variant, as byte strings: the files
    the configs point to in the curriculum's folder (model configs) and the manifests that
    training and evaluation read. Read once per study."""
    chunks = []
    folder = os.path.dirname(os.path.abspath(args.curriculum))
    for base_dir, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".yaml"):  # stage configs and curricula: in the resolved text
                continue
            path = os.path.join(base_dir, name)
            chunks.append(os.path.relpath(path, folder).encode() + b"\0" + open(path, "rb").read())
    data_dir = os.path.dirname(os.path.abspath(args.manifest))
    for name in ("train.jsonl", "train_spoken.jsonl", "valid.jsonl", os.path.basename(args.manifest)):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            chunks.append(name.encode() + b"\0" + open(path, "rb").read())
    return chunks


def fingerprint(args, variant, shared):
    """What a run of `variant` trains with, as a digest: every stage's config as the
    curriculum resolves it (pal-train --print-config with the variant's overrides; the
    repository's folder, the output folder and the seed written the same for every clone
    and run), --steps, and `shared` (shared_inputs: model configs, manifests). A record is
    reused only while its digest matches; an edit of the configs that leaves a variant's
    training as it was (a comment, a default written out) leaves its records valid."""
    cmd = [os.path.join(args.bin, "pal-train"), "--curriculum", args.curriculum, "--print-config",
           "--set", "output_dir=/study-run", "--set", "seed=0", "--set", "threads=2"]
    for s in VARIANTS[variant]:
        cmd += ["--set", s]
    if args.steps:
        cmd += ["--set", f"steps={args.steps}"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"study: the curriculum does not resolve for {variant}: {res.stderr.strip()}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256(str(args.steps).encode() + b"\0" + res.stdout.replace(root, "<repo>").encode())
    for chunk in shared:
        digest.update(chunk)
    return digest.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="build folder with pal-train and pal-eval")
    ap.add_argument("--curriculum", default="configs/demo/study.yaml")
    ap.add_argument("--manifest", default="data/demo/test.jsonl")
    ap.add_argument("--tasks", default="data/demo/stats.json")
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--doc", default="docs/study.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--steps", type=int, default=0,
                    help="steps of every stage (default: the curriculum's own)")
    ap.add_argument("--records", default="docs/study/runs",
                    help="folder of the finished runs' records (kept in the repository)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: the table from the records that match the configs")
    args = ap.parse_args()

    shared = shared_inputs(args)
    fingerprints = {v: fingerprint(args, v, shared) for v in args.variants}

    rows = {}  # variant -> list of per-seed dicts
    # Seed by seed, so that the runs a seed's cost ratios pair ran close together in time.
    for seed in args.seeds:
        for variant in args.variants:
            record_file = os.path.join(args.records, f"{variant}-s{seed}.json")
            record = json.load(open(record_file)) if os.path.exists(record_file) else None
            digest = fingerprints[variant]
            if record is not None and record.get("configs") == digest:
                log(f"{variant} seed {seed}: recorded before ({record_file})")
                rows.setdefault(variant, []).append(record)
                continue
            if args.report_only:
                log(f"{variant} seed {seed}: no record for these configs, left out")
                continue
            out_dir = os.path.join(args.out, f"{variant}-s{seed}")
            done = os.path.exists(os.path.join(out_dir, "instruct", "final", "model.yaml"))
            info_file = os.path.join(out_dir, "train_info.json")
            info = json.load(open(info_file)) if done and os.path.exists(info_file) else None
            if info is not None and info.get("configs") == digest:
                log(f"{variant} seed {seed}: trained before ({out_dir})")
            else:
                if os.path.exists(out_dir):  # another curriculum, step count or an unfinished run
                    log(f"{variant} seed {seed}: {out_dir} was trained with other configs or did not finish; "
                        "training again")
                    shutil.rmtree(out_dir)
                log(f"{variant} seed {seed}: training -> {out_dir}")
                info = train(args, variant, seed, out_dir)
                info["configs"] = digest
                json.dump(info, open(info_file, "w"))
                log(f"{variant} seed {seed}: trained in {info['wall_s']:.0f} s, peak {info['peak_mib']:.0f} MiB")
            metrics = task_metrics(evaluate(args, variant, seed, out_dir))
            record = {"variant": variant, "seed": seed, "configs": digest, "metrics": metrics,
                      "step_s": step_time(out_dir), "peak_mib": info["peak_mib"], "wall_s": info["wall_s"]}
            os.makedirs(args.records, exist_ok=True)
            with open(record_file + ".tmp", "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(record_file + ".tmp", record_file)
            rows.setdefault(variant, []).append(record)
    rows = {v: sorted(rows[v], key=lambda r: r["seed"]) for v in args.variants if v in rows}
    if not rows:
        raise SystemExit("study: no run to report (no record matches these configs; run without --report-only)")

    # ---- report ---------------------------------------------------------------------------
    stats = json.load(open(args.tasks))["tasks"]
    majority = chance_metrics(args)
    tasks = sorted({t for runs in rows.values() for r in runs for t in r["metrics"]})
    base = "prefix" if "prefix" in rows else args.variants[0]
    summary = {"seeds": args.seeds, "variants": {}, "baseline": base}
    lines = [f"# The study in miniature: fusion designs and encoders on the demo data",
             "",
             f"`scripts/study.sh` (seeds {', '.join(map(str, args.seeds))}; runs per variant: "
             f"{', '.join(f'{v} {len(r)}' for v, r in rows.items())}; "
             f"curriculum `{args.curriculum}`; test split `{args.manifest}`). "
             f"Each cell: mean +- std over seeds; in brackets the relative change of the mean against `{base}`. "
             "Chance: for the closed tasks' accuracy the larger of the test split's majority share and "
             "1 / classes; for the open tasks what a model reaches that answers each task with its most "
             "frequent training answer (`pal-eval --majority`).",
             ""]
    header = "| task | metric | chance | " + " | ".join(rows) + " |"
    lines += [header, "|" + "---|" * (3 + len(rows))]
    for task in tasks:
        metric_names = sorted({m for runs in rows.values() for r in runs for m in r["metrics"].get(task, {})
                               if m in ("accuracy", "mAP", "BLEU-4", "CIDEr-D")})
        for metric in metric_names:
            chance = ""
            st = stats.get(task, {})
            if metric == "accuracy" and st.get("closed"):
                chance = f"{max(st.get('majority_rate_test', 0), st.get('chance_uniform', 0)):.3f}"
            elif not st.get("closed") and metric in majority.get(task, {}):
                chance = f"{majority[task][metric]:.3f}"
            cells = []
            base_mean = mean_std([r["metrics"].get(task, {}).get(metric) for r in rows.get(base, [])
                                  if r["metrics"].get(task, {}).get(metric) is not None])[0]
            for variant, runs in rows.items():
                vals = [r["metrics"][task][metric] for r in runs if metric in r["metrics"].get(task, {})]
                m, s = mean_std(vals)
                summary["variants"].setdefault(variant, {}).setdefault(task, {})[metric] = {"mean": m, "std": s,
                                                                                            "values": vals}
                rel = "" if variant == base or not base_mean or math.isnan(base_mean) else \
                    f" ({(m - base_mean) / base_mean * 100:+.0f}%)"
                cells.append(f"{m:.3f} +- {s:.3f}{rel}")
            lines.append(f"| {task} | {metric} | {chance} | " + " | ".join(cells) + " |")
    # Cost. The runs of one seed train one after another (above), so each seed's ratios against
    # the baseline pair runs made close together, on one machine, even when seeds were not.
    base_runs = {r["seed"]: r for r in rows.get(base, [])}
    lines += ["", "Cost per variant: the training step time (mean over the audio stages' steps) and the peak "
              "resident memory of the training process; per seed, as a ratio against the same seed's "
              f"`{base}` run.", "",
              "| variant | step time (s) | peak memory (MiB) | step time per seed (x " + base + ") "
              "| peak memory per seed (x " + base + ") |", "|---|---|---|---|---|"]
    for variant, runs in rows.items():
        st, ss = mean_std([r["step_s"] for r in runs])
        pm, ps = mean_std([r["peak_mib"] for r in runs])
        summary["variants"].setdefault(variant, {})["_cost"] = {"step_s": st, "peak_mib": pm}

        def per_seed(key, fmt):
            cells = []
            for r in sorted(runs, key=lambda r: r["seed"]):
                b = base_runs.get(r["seed"])
                ratio = f" ({r[key] / b[key]:.2f})" if b and b[key] and variant != base else ""
                cells.append(f"s{r['seed']} {fmt.format(r[key])}{ratio}")
            return ", ".join(cells)
        lines.append(f"| {variant} | {st:.3f} +- {ss:.3f} | {pm:.0f} +- {ps:.0f} | "
                     f"{per_seed('step_s', '{:.3f}')} | {per_seed('peak_mib', '{:.0f}')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    with open(args.doc, "w") as f:
        f.write(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"wrote {args.doc} and {os.path.join(args.out, 'study.json')}")


if __name__ == "__main__":
    main()
