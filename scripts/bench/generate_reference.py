#!/usr/bin/env python3
"""Greedy-generation throughput of Hugging Face transformers, the reference for
`pal-bench generate`, which runs this script and then PAL on the same weights.

    build/pip/venv/bin/python scripts/bench/generate_reference.py --model DIR --threads 2 --json

--model DIR: an HF folder to read, written first (random weights, fixed seed) if it has
no config.json. The default config is a ~100M-parameter Llama (vocab 32000, hidden 768,
12 layers, 12 heads of 64, 4 key/value heads, MLP 2048, tied embeddings).

For each batch size: prompts of --prompt-length random tokens, `generate(do_sample=False,
max_new_tokens=N, min_new_tokens=N)` with the KV cache (transformers' default), once to
warm up, then --repeats times; tokens_per_s = batch * N / the median seconds (prefill
included, as for PAL). Needs torch and transformers (PyPI).
"""
import argparse
import json
import pathlib
import resource
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

BENCH_CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                    num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                    rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                    bos_token_id=1, eos_token_id=2)


def ensure_model(folder: pathlib.Path, dtype):
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**BENCH_CONFIG))
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
    return LlamaForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = ensure_model(args.model, dtype)
    params = sum(p.numel() for p in model.parameters())
    results = []
    n = args.new_tokens
    for batch in (int(b) for b in args.batches.split(",")):
        ids = torch.randint(3, model.config.vocab_size, (batch, args.prompt_length),
                            generator=torch.Generator().manual_seed(batch))
        kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                      pad_token_id=0)
        times = []
        with torch.inference_mode():
            model.generate(ids, **kwargs)  # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = model.generate(ids, **kwargs)
                times.append(time.perf_counter() - start)
        assert out.shape == (batch, args.prompt_length + n), out.shape
        results.append({"batch": batch, "tokens_per_s": batch * n / statistics.median(times),
                        "seconds": statistics.median(times)})
    report = {"implementation": "transformers.generate", "transformers_version": transformers.__version__,
              "torch_version": torch.__version__, "threads": args.threads, "dtype": args.dtype,
              "parameters": params, "prompt_length": args.prompt_length, "new_tokens": n, "results": results,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.json:
        print(json.dumps(report))
    else:
        for r in results:
            print(f"batch {r['batch']}: {r['tokens_per_s']:.1f} tokens/s ({r['seconds']:.2f} s)")
        print(f"peak RSS {report['peak_rss_mib']:.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
