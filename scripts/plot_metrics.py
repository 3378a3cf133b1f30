#!/usr/bin/env python3
"""Plots the curves of pal-train's metrics.jsonl files as one PNG.

    scripts/plot_metrics.py runs/tiny-curriculum/*/metrics.jsonl -o curves.png

Panels: training loss (with evaluation loss as points), learning rate, tokens/s and
audio seconds/s, against the optimizer step. Several files (the stages of a curriculum)
are drawn one after another on a shared step axis, each stage in its own colour, so the
whole curriculum reads left to right. Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import pathlib
import sys


def read(path):
    train, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            (evals if row.get("type") == "eval" else train).append(row)
    return train, evals


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", type=pathlib.Path, help="metrics.jsonl files, in stage order")
    p.add_argument("-o", "--output", type=pathlib.Path, default=pathlib.Path("metrics.png"))
    p.add_argument("--title", default=None)
    a = p.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_metrics.py needs matplotlib: apt-get install python3-matplotlib (or pip install matplotlib)")

    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    (ax_loss, ax_lr), (ax_tok, ax_audio) = axes
    offset = 0
    drawn = 0
    for i, path in enumerate(a.metrics):
        if not path.exists():
            sys.exit(f"{path}: no such file")
        train, evals = read(path)
        if not train:
            print(f"{path}: no training lines, skipped", file=sys.stderr)
            continue
        colour = f"C{i % 10}"
        stage = train[0].get("stage", path.parent.name)
        steps = [offset + r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], color=colour, label=stage)
        if evals:
            ax_loss.plot([offset + r["step"] for r in evals], [r["eval_loss"] for r in evals], "o", color=colour,
                         markerfacecolor="white", label=f"{stage} (eval)")
        ax_lr.plot(steps, [r["lr"] for r in train], color=colour)
        ax_tok.plot(steps, [r["tokens_per_s"] for r in train], color=colour)
        ax_audio.plot(steps, [r["audio_s_per_s"] for r in train], color=colour)
        offset = steps[-1]
        drawn += 1
    if not drawn:
        sys.exit("no training lines in the given files")
    ax_loss.set_ylabel("loss (answer tokens)")
    ax_loss.legend(fontsize=8)
    ax_lr.set_ylabel("learning rate")
    ax_tok.set_ylabel("text tokens / s")
    ax_audio.set_ylabel("audio seconds / s")
    for ax in (ax_tok, ax_audio):
        ax.set_xlabel("optimizer step (stages concatenated)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(a.title or ", ".join(str(m) for m in a.metrics[:3]) + (" ..." if len(a.metrics) > 3 else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(a.output, dpi=100)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
