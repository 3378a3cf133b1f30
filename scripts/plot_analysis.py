#!/usr/bin/env python3
"""Plots a pal-analyze report (the JSON it writes) as PNG files.

    /usr/bin/python3 scripts/plot_analysis.py OUT/analysis.json OUT --prefix analysis

pal-analyze runs this itself after writing the JSON (unless --no-plots); run it by hand
to redraw. Writes, for the sections the report has:
    <prefix>_attention_question.png   layer x head heatmap: attention share on audio keys
    <prefix>_attention_answer.png     the same for the answer tokens
    <prefix>_logit_lens.png           per layer: probability and rank of the reference token
    <prefix>_ablation.png             accuracy per condition (layer ranges, encoders removed)
and prints "wrote NAME" for each. Needs matplotlib (Debian: python3-matplotlib, which
/usr/bin/python3 has; a pyenv python3 may not). Exit codes: 0 done, 2 bad input,
3 matplotlib missing.
"""
import argparse
import json
import pathlib
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=pathlib.Path, help="the JSON pal-analyze wrote")
    parser.add_argument("folder", type=pathlib.Path, help="where the PNG files go")
    parser.add_argument("--prefix", default="analysis", help="file name prefix (default: analysis)")
    args = parser.parse_args()
    try:
        report = json.loads(args.report.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"{args.report}: cannot read the report: {e}", file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        print(f"matplotlib is not available for {sys.executable}: {e}", file=sys.stderr)
        return 3

    args.folder.mkdir(parents=True, exist_ok=True)
    title = f"{report.get('fusion', {}).get('mode', '?')} fusion, start_layer {report.get('fusion', {}).get('start_layer', '?')}"
    written = []

    def save(fig, suffix):
        name = f"{args.prefix}_{suffix}.png"
        fig.savefig(args.folder / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    attention = report.get("attention")
    if attention:
        for group in ("question", "answer"):
            share = attention[group]["share"]
            if not share:
                continue
            fig, ax = plt.subplots(figsize=(max(4, 0.5 * attention["heads"] + 2), max(3, 0.35 * attention["layers"] + 1.5)))
            image = ax.imshow(share, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"attention share on audio keys ({group} tokens)\n{title}")
            fig.colorbar(image, ax=ax, label="share of attention mass")
            save(fig, f"attention_{group}")

    lens = report.get("logit_lens")
    if lens:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for key, style in (("all_tokens", "-o"), ("first_token", "--s")):
            rows = lens[key]
            x = [r["layer"] for r in rows]
            top.plot(x, [r["probability"] for r in rows], style, label=key.replace("_", " "))
            bottom.plot(x, [r["rank"] for r in rows], style, label=key.replace("_", " "))
        top.set_ylabel("probability of the reference token")
        top.set_ylim(0, 1)
        bottom.set_ylabel("rank (1 = top)")
        if max(r["rank"] for key in ("all_tokens", "first_token") for r in lens[key]) > 20:
            bottom.set_yscale("log")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.set_xlabel("after layer (-1: embeddings)")
        top.legend()
        top.set_title(f"logit lens\n{title}")
        save(fig, "logit_lens")

    ablation = report.get("ablation")
    if ablation and ablation["conditions"]:
        conditions = ablation["conditions"]
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(conditions) + 1.5))
        names = [c["name"] for c in conditions]
        colors = ["tab:gray" if c["kind"] == "baseline" else "tab:orange" if c["kind"] == "encoder" else "tab:blue" for c in conditions]
        ax.barh(range(len(conditions)), [c["accuracy"] for c in conditions], color=colors)
        ax.set_yticks(range(len(conditions)))
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.axvline(ablation["baseline"], color="black", linestyle=":", label="baseline")
        ax.set_xlim(0, 1)
        ax.set_xlabel("exact-match accuracy")
        ax.set_title(f"audio withheld\n{title}")
        ax.legend(loc="lower right")
        save(fig, "ablation")

        # Per-layer curves: single layers withheld (--each-layer, or blocks of one layer) as
        # points, the L/4 blocks as steps over the layers they cover.
        ranges = [c for c in conditions if c["kind"] == "layers"]
        singles = sorted((c["range"][0], c["accuracy"]) for c in ranges if c["range"][0] == c["range"][1])
        blocks = [c for c in ranges if c["name"].startswith("block ") and c["range"][0] != c["range"][1]]
        if len(singles) >= 2 or blocks:
            fig, ax = plt.subplots(figsize=(7, 3.5))
            for n, c in enumerate(blocks):
                ax.hlines(c["accuracy"], c["range"][0] - 0.4, c["range"][1] + 0.4, colors="tab:green", linewidth=3,
                          label="audio withheld from the block" if n == 0 else None)
            if singles:
                ax.plot([s[0] for s in singles], [s[1] for s in singles], "-o", label="audio withheld from this layer")
            ax.axhline(ablation["baseline"], color="black", linestyle=":", label="baseline")
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("exact-match accuracy")
            ax.set_title(f"per-layer ablation\n{title}")
            ax.legend()
            save(fig, "ablation_layers")

    for name in written:
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
