#!/usr/bin/env python3
"""Audio-encoder throughput of Hugging Face transformers, the reference for
`pal-bench encoders`, which runs this script and then PAL on the same weights.

    build/pip/venv/bin/python scripts/bench/encoders_reference.py --folder DIR --threads 2 --json

--folder DIR: holds whisper_base/ and ast_base/, HF folders written first (random weights,
fixed seed) when they have no config.json: a Whisper encoder of whisper-base's size
(d_model 512, 6 layers, 8 heads, ffn 2048, 80 mels; a bare WhisperEncoder checkpoint) and
an ASTModel of AST-base's size (hidden 768, 12 layers, 12 heads, ffn 3072, 128 mels, 1024
frames).

Timed: the encoder forward alone under torch.inference_mode, on random features of the
frontends' shapes (the frontends are excluded, as in PAL's half): transformers'
WhisperEncoder on 30 s inputs ([B, 80, 3000]: it refuses anything else, so a 10 s clip is
padded to 30 s as its users run it) and ASTModel on [B, 1024, 128]. Each is run once to
warm up, then --repeats times; clips_per_s = batch / the median seconds. Needs torch and
transformers (PyPI).
"""
import argparse
import json
import pathlib
import statistics
import time

import torch
import transformers
from transformers import ASTConfig, ASTModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

WHISPER_BASE = dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048, num_mel_bins=80,
                    max_source_positions=1500, decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048)
AST_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                num_mel_bins=128, max_length=1024)


def ensure(folder: pathlib.Path, make, load):
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        make().save_pretrained(folder, safe_serialization=True)
    return load(folder).eval()


def clips_per_s(model, inputs, batch, repeats):
    times = []
    with torch.inference_mode():
        model(inputs)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["whisper", "ast"], nargs="*")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only or ["whisper", "ast"])

    whisper = ensure(args.folder / "whisper_base", lambda: WhisperEncoder(WhisperConfig(**WHISPER_BASE)),
                     WhisperEncoder.from_pretrained)
    ast = ensure(args.folder / "ast_base", lambda: ASTModel(ASTConfig(**AST_BASE)), ASTModel.from_pretrained)
    g = torch.Generator().manual_seed(0)
    report = {"implementation": "transformers", "transformers_version": transformers.__version__,
              "torch_version": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
              "attention": whisper.config._attn_implementation, "frontend": "excluded"}
    if "whisper" in only:
        features = torch.randn(args.batch, 80, 3000, generator=g) * 0.5
        rate, seconds = clips_per_s(whisper, features, args.batch, args.repeats)
        report["whisper_pad_to_30s"] = {"clips_per_s": rate, "seconds": seconds, "input": "[B, 80, 3000] (30 s)"}
    if "ast" in only:
        features = torch.randn(args.batch, 1024, 128, generator=g) * 0.5
        rate, seconds = clips_per_s(ast, features, args.batch, args.repeats)
        report["ast"] = {"clips_per_s": rate, "seconds": seconds, "input": "[B, 1024, 128]"}
    if args.json:
        print(json.dumps(report))
    else:
        for k in ("whisper_pad_to_30s", "ast"):
            if k in report:
                print(f"{k}: {report[k]['clips_per_s']:.2f} clips/s ({report[k]['seconds']:.2f} s per batch)")


if __name__ == "__main__":
    main()
