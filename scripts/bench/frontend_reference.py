#!/usr/bin/env python3
"""Throughput of the reference audio front ends that PAL's C++ ones are compared with.

Needs only torch and torchaudio, and runs with Debian's (apt-get install python3-torch
python3-torchaudio; torch 1.13, torchaudio 0.13) as with PyPI's:

    /usr/bin/python3 scripts/bench/frontend_reference.py --threads 1 --json
    build/pip/venv/bin/python scripts/bench/frontend_reference.py --threads 2

Work: a batch of --batch clips of --seconds s of random noise at 16 kHz (fixed seed).
  whisper mel   openai-whisper's log_mel_spectrogram (80 bins), reproduced: once per clip
                in a loop, as whisper runs it, and once over the whole batch (one STFT over
                [B, N], the max-8 dB floor taken per example); the faster is the reference.
                Its mel filters are torchaudio's slaney ones, which match whisper's
                librosa-made mel_filters.npz to ~1e-7.
  fbank         torchaudio.compliance.kaldi.fbank with AST's / EAT's settings (128 bins,
                hanning window, 10 ms shift, no dither), one clip at a time (it takes one
                waveform).
Each is run once to warm up, then repeated until --min-time seconds have passed;
x_realtime = batch * seconds * iterations / elapsed seconds.
"""
import argparse
import json
import sys
import time

import torch
import torchaudio
from torchaudio.compliance import kaldi

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160


def whisper_filters(n_mels=80):
    # [n_mels, 201], as whisper's filters (librosa.filters.mel(sr=16000, n_fft=400, n_mels)).
    return torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2.0, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    ).T.contiguous()


def whisper_log_mel(audio, filters, window):
    """openai-whisper's log_mel_spectrogram for one clip [N] -> [n_mels, N // 160]."""
    stft = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = filters @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec


def whisper_log_mel_batched(audio, filters, window):
    """The same over a batch [B, N] -> [B, n_mels, N // 160], the floor per example."""
    stft = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = filters @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec


def ast_fbank(clip):
    return kaldi.fbank(clip.unsqueeze(0), htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False,
                       window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)


def timed(fn, min_time):
    fn()  # warm-up
    iterations = 0
    start = time.perf_counter()
    while True:
        fn()
        iterations += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return iterations, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--batch", type=int, default=16, help="clips per batch (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per clip (default 10)")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds to repeat each for (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    n = int(round(args.seconds * SAMPLE_RATE))
    gen = torch.Generator().manual_seed(0)
    audio = (torch.rand(args.batch, n, generator=gen) * 2.0 - 1.0) * 0.5
    filters = whisper_filters(80)
    window = torch.hann_window(N_FFT)

    def mel_loop():
        return [whisper_log_mel(audio[b], filters, window) for b in range(args.batch)]

    def mel_batched():
        return whisper_log_mel_batched(audio, filters, window)

    def fbank_loop():
        return [ast_fbank(audio[b]) for b in range(args.batch)]

    with torch.inference_mode():
        # The two whisper variants must agree before their speeds are compared.
        loop_out = torch.stack(mel_loop())
        batched_out = mel_batched()
        if loop_out.shape != (args.batch, 80, n // HOP) or not torch.allclose(loop_out, batched_out, atol=1e-4):
            sys.exit("batched whisper mel differs from the per-clip one")

        audio_seconds = args.batch * args.seconds
        results = {}
        for name, fn in (("whisper_mel_loop", mel_loop), ("whisper_mel_batched", mel_batched),
                         ("fbank", fbank_loop)):
            iterations, elapsed = timed(fn, args.min_time)
            results[name] = (audio_seconds * iterations / elapsed, iterations, elapsed)

    best = max(results["whisper_mel_loop"][0], results["whisper_mel_batched"][0])
    report = {
        "threads": args.threads,
        "batch": args.batch,
        "seconds": args.seconds,
        "torch_version": torch.__version__,
        "torchaudio_version": torchaudio.__version__,
        "whisper_mel_x_realtime": best,
        "whisper_mel_loop_x_realtime": results["whisper_mel_loop"][0],
        "whisper_mel_batched_x_realtime": results["whisper_mel_batched"][0],
        "fbank_x_realtime": results["fbank"][0],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, {args.threads} thread(s), "
          f"batch {args.batch} x {args.seconds:g} s at 16 kHz")
    print(f"{'front end':32s} {'x realtime':>12s} {'iterations':>10s} {'seconds':>8s}")
    labels = {"whisper_mel_loop": "whisper mel, per clip (loop)", "whisper_mel_batched": "whisper mel, batched",
              "fbank": "kaldi fbank (AST), per clip"}
    for name, (xrt, iterations, elapsed) in results.items():
        print(f"{labels[name]:32s} {xrt:12.1f} {iterations:10d} {elapsed:8.2f}")
    print(f"{'whisper mel reference (faster)':32s} {best:12.1f}")


if __name__ == "__main__":
    main()
