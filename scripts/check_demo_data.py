#!/usr/bin/env python3
"""Validates what scripts/make_demo_data.sh wrote (standard library only).

    scripts/check_demo_data.py [data/demo] [--quiet]

Checks: every manifest line is a JSON object with instruction / output / task; every audio
path (relative to the manifest) exists and is a 16 kHz mono 16-bit WAV of 0 < d <= 10 s;
the splits share no source, no clip and no identical audio bytes; text.jsonl has no audio;
tokenizer.model / .vocab exist, without "<|audio|>"; stats.json agrees with the manifests.
Prints the answer distribution of every task per split. Exit code 0 when all checks pass,
1 otherwise (each failure is printed), 2 bad usage.
"""
import collections
import hashlib
import json
import os
import sys
import wave

SPLITS = ("train", "valid", "test")
MAX_S = 10.0


def main(argv):
    args = [a for a in argv if not a.startswith("-")]
    quiet = "--quiet" in argv
    if any(a not in ("--quiet",) for a in argv if a.startswith("-")) or len(args) > 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo")
    root = os.path.normpath(root)
    failures = []
    passed = 0

    def check(ok, msg):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(msg)
        return ok

    if not os.path.isdir(root):
        print("check_demo_data: '%s' is not a folder (run scripts/make_demo_data.sh first)" % root, file=sys.stderr)
        return 1

    records = {}
    for s in SPLITS + ("text",):
        path = os.path.join(root, s + ".jsonl")
        rows = []
        if check(os.path.isfile(path), "%s is missing" % path):
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                    except ValueError as e:
                        failures.append("%s:%d: malformed JSON (%s)" % (path, n, e))
                        continue
                    if not isinstance(r, dict) or not all(isinstance(r.get(k), str) and r.get(k).strip()
                                                          for k in ("instruction", "output", "task")):
                        failures.append("%s:%d: needs non-empty instruction, output and task" % (path, n))
                        continue
                    r["_line"] = "%s:%d" % (path, n)
                    rows.append(r)
        check(rows, "%s has no records" % path)
        records[s] = rows

    # text-only records
    check(all("audio" not in r and r["task"] == "text" for r in records["text"]),
          "text.jsonl: records must have task 'text' and no audio")

    # audio files
    info = {}  # path -> (seconds, md5)
    for s in SPLITS:
        for r in records[s]:
            a = r.get("audio")
            if not check(isinstance(a, str) and a and not os.path.isabs(a), "%s: audio must be a relative path" % r["_line"]):
                continue
            p = os.path.normpath(os.path.join(root, a))
            if p in info:
                continue
            if not check(os.path.isfile(p), "%s: %s does not exist" % (r["_line"], a)):
                info[p] = None
                continue
            try:
                with wave.open(p) as w:
                    fmt = (w.getframerate(), w.getnchannels(), w.getsampwidth())
                    sec = w.getnframes() / w.getframerate()
            except (wave.Error, EOFError) as e:
                failures.append("%s: %s is not a readable WAV (%s)" % (r["_line"], a, e))
                info[p] = None
                continue
            check(fmt == (16000, 1, 2), "%s: %s is %d Hz, %d channels, %d-byte samples (want 16000, 1, 2)" % ((r["_line"], a) + fmt))
            check(0 < sec <= MAX_S + 1e-6, "%s: %s lasts %.3f s (want 0 < d <= %g)" % (r["_line"], a, sec, MAX_S))
            with open(p, "rb") as fh:
                info[p] = (sec, hashlib.md5(fh.read()).hexdigest())

    # leakage: sources, clips and audio content disjoint between splits
    by = {k: collections.defaultdict(set) for k in ("source", "clip", "md5")}
    for s in SPLITS:
        for r in records[s]:
            p = os.path.normpath(os.path.join(root, r.get("audio", "")))
            by["clip"][p].add(s)
            for src in r.get("sources", []):
                by["source"][src].add(s)
            if info.get(p):
                by["md5"][info[p][1]].add(s)
    check(by["source"], "no record names its sources (field 'sources')")
    for kind, m in by.items():
        shared = sorted(k for k, v in m.items() if len(v) > 1)
        check(not shared, "%d %ss appear in more than one split, e.g. %s" % (len(shared), kind, shared[:3]))

    # tokenizer
    vocab = os.path.join(root, "tokenizer.vocab")
    if check(os.path.isfile(os.path.join(root, "tokenizer.model")) and os.path.isfile(vocab),
             "tokenizer.model / tokenizer.vocab missing"):
        pieces = [l.split("\t")[0] for l in open(vocab, encoding="utf-8")]
        check("<|audio|>" not in pieces, "the tokenizer has <|audio|> (PAL adds it)")
        for p in ("<unk>", "<s>", "</s>"):
            check(p in pieces, "the tokenizer lacks %s" % p)

    # stats.json against the manifests
    counts = {s: collections.Counter(r["task"] for r in records[s]) for s in SPLITS}
    stats_path = os.path.join(root, "stats.json")
    if check(os.path.isfile(stats_path), "stats.json missing"):
        st = json.load(open(stats_path))
        for t, v in st.get("tasks", {}).items():
            for s in SPLITS:
                check(v["counts"][s] == counts[s][t], "stats.json: %s/%s says %d, the manifest has %d" % (
                    t, s, v["counts"][s], counts[s][t]))
        check(set(st.get("tasks", {})) == set().union(*counts.values()), "stats.json: task list differs from the manifests")
        for s in SPLITS:
            check(st["splits"][s]["examples"] == len(records[s]), "stats.json: %s example count differs" % s)

    # report
    if not quiet:
        secs = {s: sum(info[p][0] for p in {os.path.normpath(os.path.join(root, r["audio"])) for r in records[s]}
                       if info.get(p)) for s in SPLITS}
        print("%s: %s examples, %s text-only records" % (
            root, " / ".join("%s %d (%.2f h)" % (s, len(records[s]), secs[s] / 3600) for s in SPLITS), len(records["text"])))
        tasks = sorted(set().union(*counts.values()))
        for t in tasks:
            print("%s  (%s)" % (t, " / ".join("%s %d" % (s, counts[s][t]) for s in SPLITS)))
            for s in SPLITS:
                c = collections.Counter(r["output"] for r in records[s] if r["task"] == t)
                top = c.most_common(12)
                more = len(c) - len(top)
                print("  %-5s %s%s" % (s, ", ".join("%s %d" % kv for kv in top), " (+%d more)" % more if more > 0 else ""))
    for f in failures[:50]:
        print("FAIL " + f)
    if len(failures) > 50:
        print("... %d more failures" % (len(failures) - 50))
    print("%d passed, %d failed" % (passed, len(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
