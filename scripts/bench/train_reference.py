#!/usr/bin/env python3
"""Training throughput of an equivalent PyTorch (Python) loop, the reference for
`pal-bench train`, which writes the model folder and runs this script in the same run.

    build/pip/venv/bin/python scripts/bench/train_reference.py --folder /tmp/pal-bench-train --threads 2 --json

The model is PAL's benchmark configuration written as plain PyTorch + transformers:
a frozen Whisper encoder (tests/fixtures/encoders/tiny_whisper) on log-mel features
computed each step with torch.stft; LayerNorm, 5-frame average pooling (50 -> 10 frames/s)
and a linear projection (the ensemble); Linear-GELU-Linear (the MLP projector); the audio
tokens inserted after the prompt's first tokens of a LlamaForCausalLM built from
FOLDER/llm/config.json (random weights); cross-entropy on the answer tokens;
torch.optim.AdamW (decay on matrices only), gradient clipping at 1.0. Batch of --batch
clips of --seconds seconds and --text-tokens text tokens each (the C++ run's mean).
Data loading is not timed here, while the C++ trainer's steps include it.

tokens_per_s = batch * text_tokens / the median step time over --steps steps after --warmup.
Needs torch and transformers (PyPI).
"""
import argparse
import json
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"


class LogMel(torch.nn.Module):
    """Whisper's log-mel spectrogram in torch (ref: openai-whisper audio.log_mel_spectrogram)."""

    def __init__(self, n_mels):
        super().__init__()
        fe = WhisperFeatureExtractor(feature_size=n_mels)
        self.register_buffer("filters", torch.tensor(fe.mel_filters, dtype=torch.float32).T)
        self.register_buffer("window", torch.hann_window(400))

    def forward(self, audio):
        stft = torch.stft(audio, 400, 160, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        mel = self.filters @ power
        log = torch.clamp(mel, min=1e-10).log10()
        log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)
        return (log + 4.0) / 4.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", required=True, type=pathlib.Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--answer-tokens", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    whisper_dir = FIXTURES / "encoders" / "tiny_whisper"
    wcfg = WhisperConfig.from_pretrained(whisper_dir)
    encoder = WhisperEncoder(wcfg)
    from safetensors.torch import load_file
    state = {k[len("model.encoder."):]: v for k, v in load_file(str(whisper_dir / "model.safetensors")).items()
             if k.startswith("model.encoder.")}
    encoder.load_state_dict(state)
    encoder.eval().requires_grad_(False)
    logmel = LogMel(wcfg.num_mel_bins)

    llm = LlamaForCausalLM(LlamaConfig.from_pretrained(a.folder / "llm"))
    llm.train()
    width = 64
    norm = torch.nn.LayerNorm(wcfg.d_model)
    ensemble = torch.nn.Linear(wcfg.d_model, width)
    hidden = llm.config.hidden_size
    projector = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    trainable = [*norm.parameters(), *ensemble.parameters(), *projector.parameters(), *llm.parameters()]
    decay = [t for t in trainable if t.dim() >= 2]
    no_decay = [t for t in trainable if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4)

    samples = int(a.seconds * 16000)
    t = torch.arange(samples) / 16000.0
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * 220.0 * (i + 1) * t) for i in range(a.batch)])
    ids = torch.randint(10, llm.config.vocab_size, (a.batch, a.text_tokens))
    labels = ids.clone()
    labels[:, : a.text_tokens - a.answer_tokens] = -100
    split = 5  # audio goes after the template's first tokens

    def step():
        with torch.no_grad():
            feats = logmel(audio)
            frames = 2 * wcfg.max_source_positions
            feats = F.pad(feats, (0, max(0, frames - feats.shape[-1])))[..., :frames]
            h = encoder(feats).last_hidden_state  # [B, 250, d]
        h = norm(h)
        h = h.view(a.batch, h.shape[1] // 5, 5, -1).mean(2)
        tokens = projector(ensemble(h))
        emb = llm.get_input_embeddings()(ids)
        x = torch.cat([emb[:, :split], tokens, emb[:, split:]], 1)
        lab = torch.cat([labels[:, :split], torch.full(tokens.shape[:2], -100), labels[:, split:]], 1)
        loss = llm(inputs_embeds=x, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    times = []
    for i in range(a.warmup + a.steps):
        start = time.perf_counter()
        step()
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"step_s": median, "tokens_per_s": a.batch * a.text_tokens / median, "torch": torch.__version__,
              "threads": a.threads, "text_tokens": a.text_tokens, "audio_tokens": wcfg.max_source_positions // 5}
    print(json.dumps(result) if a.json else result)


if __name__ == "__main__":
    main()
