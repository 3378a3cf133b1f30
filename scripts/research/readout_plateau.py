#!/usr/bin/env python3
"""Why the demo's from-scratch model does not learn what is *said* (digits, words).

A small PyTorch model with the shape of PAL's demo path, trained on one closed task of
data/demo (default: digit) with three read-outs of the same randomly initialised
Whisper-type encoder (conv stem, sinusoidal positions, 2 pre-LN layers, width 128,
HF-style N(0, 0.02) weights):

  direct     mean over time of the encoder output -> linear classifier
  projector  ensemble LayerNorm -> pool 5 frames -> linear -> 2-layer MLP projector
             -> mean over time -> linear classifier
  decoder    the same audio tokens, then a causal pre-LN transformer (width 128,
             --decoder-layers) over [audio tokens ; 6 question tokens]; the last question
             token's output, through a final LayerNorm, scores the answers against tied
             embeddings: the way PAL's LLM reads audio (prefix fusion)

It prints train / test accuracy every few epochs. What it showed on the demo data
(digit, 369 train / 54 test clips, batch 16, AdamW 3e-3, 20 epochs = 480 steps) is in
README.md ("The demo"). Needs PyTorch and torchaudio: the wheel scripts/setup.sh --pip
installs (build/pip/venv/bin/python), or any Python with both.

  build/pip/venv/bin/python scripts/research/readout_plateau.py --readout direct
  build/pip/venv/bin/python scripts/research/readout_plateau.py --readout decoder --epochs 60
"""
import argparse
import json
import math
import os
import sys
import wave

try:
    import torch
    import torchaudio
except ImportError as e:  # pragma: no cover - a message for the user
    sys.exit("readout_plateau.py needs torch and torchaudio (%s): run it with build/pip/venv/bin/python" % e)

SAMPLE_RATE, FRAMES, WIDTH = 16000, 300, 128


def log_mel(path, filters):
    """Whisper-style log-mel (80 bins, 10 ms hop, max - 8 clamp), padded/cut to 3 s."""
    w = wave.open(path)
    if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
        sys.exit("%s: expected 16 kHz 16-bit mono (data/demo's clips)" % path)
    audio = torch.frombuffer(bytearray(w.readframes(w.getnframes())), dtype=torch.int16).float() / 32768
    power = torch.stft(audio, 400, 160, window=torch.hann_window(400), return_complex=True).abs() ** 2
    mel = (power.T @ filters).clamp_min(1e-10).log10()
    mel = (torch.maximum(mel, mel.max() - 8) + 4) / 4
    mel = torch.nn.functional.pad(mel, (0, 0, 0, max(0, FRAMES - mel.shape[0])))[:FRAMES]
    return mel.T


def load(data, split, task, filters):
    xs, ys = [], []
    with open(os.path.join(data, split + ".jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            if r["task"] == task:
                xs.append(log_mel(os.path.join(data, r["audio"]), filters))
                ys.append(r["output"])
    if not xs:
        sys.exit("%s/%s.jsonl: no examples of task '%s'" % (data, split, task))
    return torch.stack(xs), ys


def hf_init(module):
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


class Encoder(torch.nn.Module):
    def __init__(self, stem_init="hf"):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(80, WIDTH, 3, padding=1)
        self.conv2 = torch.nn.Conv1d(WIDTH, WIDTH, 3, stride=2, padding=1)
        t = torch.arange(FRAMES // 2)[:, None]
        inv = torch.exp(-math.log(10000) / (WIDTH // 2 - 1) * torch.arange(WIDTH // 2))
        self.register_buffer("positions", torch.cat([torch.sin(t * inv), torch.cos(t * inv)], 1))
        layer = torch.nn.TransformerEncoderLayer(WIDTH, 4, 2 * WIDTH, 0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.layers = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(WIDTH)
        hf_init(self)
        if stem_init == "kaiming":  # unit-variance conv outputs: content as strong as the positions
            for conv in (self.conv1, self.conv2):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")

    def forward(self, x):
        h = torch.nn.functional.gelu(self.conv1(x))
        h = torch.nn.functional.gelu(self.conv2(h)).transpose(1, 2) + self.positions
        return self.norm(self.layers(h))


class Model(torch.nn.Module):
    QUESTION = 6

    def __init__(self, readout, classes, decoder_layers, stem_init="hf"):
        super().__init__()
        self.readout = readout
        self.encoder = Encoder(stem_init)
        self.stream_norm = torch.nn.LayerNorm(WIDTH)
        self.stream_proj = torch.nn.Linear(WIDTH, WIDTH)
        # PAL's ensemble projection and MLP projector keep LibTorch's default initialisation
        self.mlp = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Linear(WIDTH, WIDTH))
        self.head = torch.nn.Linear(WIDTH, classes)
        self.embed = torch.nn.Embedding(self.QUESTION + classes, WIDTH)
        torch.nn.init.normal_(self.embed.weight, 0.0, 0.02)
        layer = torch.nn.TransformerEncoderLayer(WIDTH, 4, 3 * WIDTH, 0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.decoder = torch.nn.TransformerEncoder(layer, decoder_layers, enable_nested_tensor=False)
        hf_init(self.decoder)
        self.final_norm = torch.nn.LayerNorm(WIDTH)

    def forward(self, x):
        h = self.encoder(x)
        if self.readout == "direct":
            return self.head(h.mean(1))
        pooled = torch.nn.functional.avg_pool1d(self.stream_norm(h).transpose(1, 2), 5).transpose(1, 2)
        audio = self.mlp(self.stream_proj(pooled))
        if self.readout == "projector":
            return self.head(audio.mean(1))
        question = self.embed(torch.arange(self.QUESTION).expand(x.shape[0], -1))
        seq = torch.cat([audio, question], 1)
        causal = torch.nn.Transformer.generate_square_subsequent_mask(seq.shape[1])
        last = self.final_norm(self.decoder(seq, mask=causal, is_causal=True))[:, -1]
        return last @ self.embed.weight[self.QUESTION:].T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/demo", help="scripts/make_demo_data.sh's output")
    ap.add_argument("--task", default="digit")
    ap.add_argument("--readout", choices=["direct", "projector", "decoder"], default="decoder")
    ap.add_argument("--decoder-layers", type=int, default=4)
    ap.add_argument("--stem-init", choices=["hf", "kaiming"], default="hf",
                    help="the encoder's conv stem: N(0, 0.02) as HF, or Kaiming (fan-in)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    filters = torchaudio.functional.melscale_fbanks(201, 0, 8000, 80, SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    xtr, ytr = load(a.data, "train", a.task, filters)
    xte, yte = load(a.data, "test", a.task, filters)
    classes = sorted(set(ytr))
    tr = torch.tensor([classes.index(c) for c in ytr])
    te = torch.tensor([classes.index(c) if c in classes else -1 for c in yte])
    model = Model(a.readout, len(classes), a.decoder_layers, a.stem_init)
    opt = torch.optim.AdamW(model.parameters(), a.lr)
    print("task %s: %d train / %d test clips, %d classes; readout %s" % (a.task, len(tr), len(te), len(classes), a.readout))
    step = 0
    for epoch in range(1, a.epochs + 1):
        model.train()
        for batch in torch.randperm(len(tr)).split(a.batch_size):
            loss = torch.nn.functional.cross_entropy(model(xtr[batch]), tr[batch])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
        if epoch % 4 == 0 or epoch == a.epochs:
            model.eval()
            with torch.no_grad():
                acc_tr = (model(xtr).argmax(1) == tr).float().mean().item()
                acc_te = (model(xte).argmax(1) == te).float().mean().item()
            print("epoch %3d  step %5d  train accuracy %.3f  test accuracy %.3f" % (epoch, step, acc_tr, acc_te), flush=True)


if __name__ == "__main__":
    main()
