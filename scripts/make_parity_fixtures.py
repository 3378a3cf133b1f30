#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ with the real reference libraries.

PAL's parity tests compare its C++ implementations against files produced here, so CI
needs no Python. Run it with PyPI's packages (the versions used are recorded in each
fixture's metadata), e.g. in the virtual environment that `scripts/setup.sh --torch pip`
creates:

    build/pip/venv/bin/pip install safetensors numpy
    build/pip/venv/bin/python scripts/make_parity_fixtures.py [--only NAME ...]

Sections (each writes its own folder under tests/fixtures/):
    llm           tiny random Llama (llama3 RoPE, GQA) and Qwen2 (biases, tied head)
                  checkpoints via save_pretrained, with transformers' logits, hidden
                  states and rotary tables (needs transformers)
    safetensors   a file written by safetensors.torch.save_file with every common dtype
    audio         small clips (tests/fixtures/audio/clips/) and, for each, the reference
                  front-end features: 16 kHz mono waveform (soundfile + soxr), Whisper
                  log-mel (transformers), Kaldi fbank (torchaudio), AST / EAT inputs

The audio section needs, besides the Python packages
    build/pip/venv/bin/pip install torchaudio==<the torch version> transformers soundfile soxr
these Debian packages, whose files it cuts the clips from (and sox to cut them with):
    apt-get install sox libsox-fmt-all asterisk-core-sounds-en-wav sonic-pi-samples
It rewrites the clips, tests/fixtures/audio/README.md (their sources, commands and
licences) and one <clip>.safetensors per clip.
"""
import argparse
import pathlib
import shlex
import shutil
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def make_safetensors():
    import safetensors
    import torch
    from safetensors.torch import save_file

    def ramp(n):  # (arange(n) - n//2) / 4: exact in f16, bf16, f32 and f64
        return (torch.arange(n, dtype=torch.float64) - n // 2) / 4

    tensors = {
        "f32": ramp(24).reshape(2, 3, 4).float(),
        "f16": ramp(10).half(),
        "bf16": ramp(6).reshape(3, 2).bfloat16(),
        "f64": ramp(5),
        "i64": torch.arange(-3, 4, dtype=torch.int64) * 1_000_000_000_000,
        "i32": torch.arange(-4, 4, dtype=torch.int32),
        "u8": torch.arange(0, 256, 51).to(torch.uint8),
        "bool": torch.tensor([True, False, False, True]),
    }
    out = FIXTURES / "safetensors"
    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "producer": "safetensors.torch.save_file",
        "safetensors_version": safetensors.__version__,
        "torch_version": torch.__version__,
    }
    save_file(tensors, str(out / "reference.safetensors"), metadata=metadata)
    print("wrote", out / "reference.safetensors")


# ---------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------

# Where the Debian packages put their files (`dpkg -L PACKAGE`). The asterisk prompts are
# taken from the package's own folder, not from /usr/share/asterisk/sounds/en, which is an
# alternatives link that another voice package could redirect.
ASTERISK_PACKAGE = "asterisk-core-sounds-en-wav"
ASTERISK_DIR = pathlib.Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_COPYRIGHT = pathlib.Path("/usr/share/doc/asterisk-core-sounds-en-wav/copyright")
SONIC_PI_PACKAGE = "sonic-pi-samples"
SONIC_PI_DIR = pathlib.Path("/usr/share/sonic-pi/samples")
SONIC_PI_COPYRIGHT = pathlib.Path("/usr/share/doc/sonic-pi-samples/copyright")

# sox's global options for every call (for synthesized input, -r and -c go before "-n": after it
# they set the output's, and sox would synthesize at 48 kHz and resample): -R seeds its random generators with a fixed value
# (repeatable output), -D turns off the automatic dither (which would add noise whenever
# an effect runs and the output has fewer than 24 bits).
SOX = ["sox", "-R", "-D"]

# Each clip: the package it comes from (None: synthesized), its source files, and the sox
# calls that make it; "{out}" is the clip and "{tmp}" a scratch folder. The 24-bit 48 kHz
# stereo and 32-bit 4-channel clips are shorter than a second to stay near 100 KB.
AUDIO_CLIPS = [
    {
        "stem": "speech_8k_mono", "ext": "wav", "package": ASTERISK_PACKAGE,
        "sources": [ASTERISK_DIR / "auth-thankyou.wav"],
        "what": 'speech, "thank you" (whole prompt), PCM16 8 kHz mono',
        "licence": "CC-BY-SA-3.0, recorded by Allison Smith (Digium, Inc.)",
        "commands": [SOX + ["{src0}", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", "{out}"]],
    },
    {
        "stem": "speech_48k_stereo_24bit", "ext": "wav", "package": ASTERISK_PACKAGE,
        "sources": [ASTERISK_DIR / "digits" / "5.wav"],
        "what": 'speech, "five" (0.35 s from 0.25 s), resampled to 48 kHz, PCM24 stereo, '
                "right channel at half the gain of the left (so the downmix matters)",
        "licence": "CC-BY-SA-3.0, recorded by Allison Smith (Digium, Inc.)",
        "commands": [SOX + ["{src0}", "-r", "48000", "-c", "2", "-b", "24", "-e", "signed-integer", "{out}",
                            "trim", "0.25", "0.35", "rate", "-v", "48000", "remix", "1", "1v0.5"]],
    },
    {
        "stem": "sound_44k_stereo", "ext": "flac", "package": SONIC_PI_PACKAGE,
        "sources": [SONIC_PI_DIR / "loop_compus.flac"],
        "what": "drum loop, first 1 s, 44.1 kHz stereo (channels differ), FLAC 16-bit",
        "licence": "CC0, godspine (freesound.org sound 212288)",
        "commands": [SOX + ["{src0}", "-r", "44100", "-c", "2", "-b", "16", "{out}", "trim", "0", "1"]],
    },
    {
        "stem": "sound_22k_mono", "ext": "ogg", "package": SONIC_PI_PACKAGE,
        "sources": [SONIC_PI_DIR / "ambi_drone.flac"],
        "what": "ambient drone, first 1 s, channels averaged, 22.05 kHz mono, Ogg Vorbis (sox's default quality 3)",
        "licence": "CC0, Autistic Lucario (freesound.org sound 195341)",
        "commands": [SOX + ["{src0}", "-r", "22050", "-c", "1", "{out}",
                            "trim", "0", "1", "remix", "-", "rate", "-v", "22050"]],
    },
    {
        "stem": "chirp_16k_float", "ext": "wav", "package": None, "sources": [],
        "what": "linear sine sweep 100 Hz -> 7000 Hz, 1.5 s, peak 0.5, plus white noise peaking at -20 dBFS "
                "(so that, as in any recording, no spectral bin sits at float32 rounding noise), "
                "16 kHz mono, 32-bit float",
        "licence": "synthesized here; no rights claimed",
        "commands": [
            SOX + ["-r", "16000", "-c", "1", "-n", "-b", "32", "-e", "floating-point", "{tmp}/sweep.wav",
                   "synth", "1.5", "sine", "100:7000", "gain", "-n", "-6.0206"],
            SOX + ["-r", "16000", "-c", "1", "-n", "-b", "32", "-e", "floating-point", "{tmp}/noise.wav",
                   "synth", "1.5", "whitenoise", "gain", "-n", "-20"],
            SOX + ["-m", "-v", "1", "{tmp}/sweep.wav", "-v", "1", "{tmp}/noise.wav",
                   "-b", "32", "-e", "floating-point", "{out}"],
        ],
    },
    {
        "stem": "tone_11k_u8", "ext": "wav", "package": None, "sources": [],
        "what": "440 Hz sine, 0.8 s, peak -3 dBFS, 11025 Hz mono, 8-bit unsigned PCM",
        "licence": "synthesized here; no rights claimed",
        "commands": [SOX + ["-r", "11025", "-c", "1", "-n", "-b", "8", "-e", "unsigned-integer", "{out}",
                            "synth", "0.8", "sine", "440", "gain", "-n", "-3"]],
    },
    {
        "stem": "quad_32k_pcm32", "ext": "wav", "package": ASTERISK_PACKAGE,
        "sources": [ASTERISK_DIR / "hello.wav"],
        "what": 'channel 1: speech, "hello" (0.2 s from 0.2 s) resampled to 32 kHz; channels 2-4: sines '
                "of 220 Hz at 0.3, 660 Hz at 0.2 and 1500 Hz at 0.1; 32 kHz, 4 channels, PCM32, 0.2 s",
        "licence": "CC-BY-SA-3.0, recorded by Allison Smith (Digium, Inc.)",
        "commands": [
            SOX + ["{src0}", "-b", "32", "-e", "floating-point", "{tmp}/ch1.wav",
                   "trim", "0.2", "0.2", "rate", "-v", "32000"],
            SOX + ["-r", "32000", "-c", "1", "-n", "-b", "32", "-e", "floating-point", "{tmp}/ch2.wav",
                   "synth", "0.2", "sine", "220", "gain", "-n", "-10.4576"],
            SOX + ["-r", "32000", "-c", "1", "-n", "-b", "32", "-e", "floating-point", "{tmp}/ch3.wav",
                   "synth", "0.2", "sine", "660", "gain", "-n", "-13.9794"],
            SOX + ["-r", "32000", "-c", "1", "-n", "-b", "32", "-e", "floating-point", "{tmp}/ch4.wav",
                   "synth", "0.2", "sine", "1500", "gain", "-n", "-20"],
            SOX + ["-M", "{tmp}/ch1.wav", "{tmp}/ch2.wav", "{tmp}/ch3.wav", "{tmp}/ch4.wav",
                   "-r", "32000", "-b", "32", "-e", "signed-integer", "{out}"],
        ],
    },
]

# Clips that get the extra Whisper tensors (128 mel bins, 30-second padding) and the
# extra AST / EAT tensors.
WHISPER_EXTRA = {"speech_8k_mono", "chirp_16k_float"}
AST_EXTRA = {"sound_44k_stereo", "speech_8k_mono"}

# AudioSet statistics used by AST (transformers' ASTFeatureExtractor defaults) and EAT.
AST_MEAN, AST_STD = -4.2677393, 4.5689974
EAT_MEAN, EAT_STD = -4.268, 4.569


def _audio_require_tools():
    missing = []
    if shutil.which("sox") is None:
        missing.append("sox (apt-get install sox libsox-fmt-all)")
    if not ASTERISK_DIR.is_dir():
        missing.append(f"{ASTERISK_DIR} (apt-get install {ASTERISK_PACKAGE})")
    if not SONIC_PI_DIR.is_dir():
        missing.append(f"{SONIC_PI_DIR} (apt-get install {SONIC_PI_PACKAGE})")
    for clip in AUDIO_CLIPS:
        for src in clip["sources"]:
            if not src.is_file() and src.parent.is_dir():
                missing.append(f"{src} (not in this version of {clip['package']}?)")
    if missing:
        raise SystemExit("the audio section needs:\n  " + "\n  ".join(missing)
                         + "\nInstall with: apt-get update && apt-get install sox libsox-fmt-all "
                           f"{ASTERISK_PACKAGE} {SONIC_PI_PACKAGE}")


def _audio_render(argv, clip, out, tmp):
    subs = {"{out}": str(out), "{tmp}": str(tmp)}
    for i, src in enumerate(clip["sources"]):
        subs[f"{{src{i}}}"] = str(src)
    rendered = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        rendered.append(a)
    return rendered


def _audio_readme_command(argv, clip):
    # The clip path relative to the fixtures folder, the scratch folder as "$TMP" (unquoted).
    line = shlex.join(_audio_render(argv, clip, pathlib.Path("clips") / f"{clip['stem']}.{clip['ext']}",
                                    pathlib.Path("TMPDIR_PLACEHOLDER")))
    return line.replace("TMPDIR_PLACEHOLDER", "$TMP")


def _debian_version(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _make_audio_clips(clips_dir):
    clips_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for clip in AUDIO_CLIPS:
            out = clips_dir / f"{clip['stem']}.{clip['ext']}"
            for argv in clip["commands"]:
                subprocess.run(_audio_render(argv, clip, out, tmp), check=True)
            size = out.stat().st_size
            print(f"wrote {out} ({size} bytes)")
            if size > 110_000:
                raise SystemExit(f"{out} is {size} bytes; clips should stay near 100 KB")


def _write_audio_readme(out_dir, versions):
    sox_version = subprocess.run(["sox", "--version"], capture_output=True, text=True).stdout.split()[-1]
    lines = [
        "# Audio parity fixtures",
        "",
        "Written by `scripts/make_parity_fixtures.py --only audio` (edit the script, not this file).",
        "",
        "`clips/` holds small input clips cut with sox from audio that Debian packages ship, plus",
        "synthesized ones; each `<clip>.safetensors` here holds what the reference Python libraries",
        "compute from that clip (see the script for the exact calls; the versions used are in each",
        "file's metadata).",
        "",
        "## Clips",
        "",
    ]
    for clip in AUDIO_CLIPS:
        lines.append(f"### `clips/{clip['stem']}.{clip['ext']}`")
        lines.append("")
        lines.append(f"- content: {clip['what']}")
        if clip["package"]:
            srcs = ", ".join(f"`{s}`" for s in clip["sources"])
            lines.append(f"- source: Debian package `{clip['package']}` "
                         f"{_debian_version(clip['package'])}, {srcs}")
        else:
            lines.append("- source: synthesized by sox")
        lines.append(f"- licence: {clip['licence']}")
        lines.append("- made with:")
        lines.append("")
        lines.append("  ```sh")
        if any("{tmp}" in a for argv in clip["commands"] for a in argv):
            lines.append("  TMP=$(mktemp -d)")
        for argv in clip["commands"]:
            lines.append("  " + _audio_readme_command(argv, clip))
        lines.append("  ```")
        lines.append("")
    lines += [
        "## Licences",
        "",
        f"- `{ASTERISK_PACKAGE}` (the `speech_*` and `quad_*` clips): the prompts recorded by",
        "  Allison Smith (http://www.theivrvoice.com) for Asterisk, financed by Digium, Inc.",
        "  (http://www.digium.com), are under the Creative Commons",
        "  Attribution-ShareAlike 3.0 licence (CC-BY-SA-3.0,",
        "  https://creativecommons.org/licenses/by-sa/3.0/), as the package's",
        f"  `{ASTERISK_COPYRIGHT}` says (it holds the full licence text). The clips cut from",
        "  them are derivative works under the same licence: they were trimmed, resampled,",
        "  re-encoded and, for `speech_48k_stereo_24bit` and `quad_32k_pcm32`, remixed or",
        "  combined with synthesized tones, as the commands above show.",
        f"- `{SONIC_PI_PACKAGE}` (the `sound_*` clips): Sonic Pi's samples come from",
        "  freesound.org and are dedicated to the public domain under CC0 1.0, per",
        f"  `{SONIC_PI_COPYRIGHT}` (one `Files:` entry per sample, naming its author) and",
        f"  `{SONIC_PI_DIR}/README.md`.",
        "- The synthesized clips (`chirp_*`, `tone_*`) carry no rights.",
        "",
        "## Regenerating",
        "",
        "```sh",
        f"apt-get install sox libsox-fmt-all {ASTERISK_PACKAGE} {SONIC_PI_PACKAGE}",
        "build/pip/venv/bin/pip install torchaudio==<torch's version> transformers soundfile soxr",
        "build/pip/venv/bin/python scripts/make_parity_fixtures.py --only audio",
        "```",
        "",
        f"Last written with sox {sox_version} and "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines))
    print("wrote", out_dir / "README.md")


def make_audio():
    _audio_require_tools()
    import numpy as np
    import safetensors
    import soundfile
    import soxr
    import torch
    import torchaudio
    import transformers
    from safetensors.torch import save_file
    from torchaudio.compliance import kaldi
    from transformers import ASTFeatureExtractor, WhisperFeatureExtractor

    versions = {
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "transformers": transformers.__version__,
        "soxr": soxr.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }
    out_dir = FIXTURES / "audio"
    clips_dir = out_dir / "clips"
    _make_audio_clips(clips_dir)
    _write_audio_readme(out_dir, versions)

    # dither=0.0 is the default of transformers' WhisperFeatureExtractor since it gained the
    # parameter (4.50); it is set here so that a different default could not slip in.
    whisper = {n: WhisperFeatureExtractor(feature_size=n, dither=0.0) for n in (80, 128)}
    for fe in whisper.values():
        assert fe.dither == 0.0

    def whisper_mel(fe, w, padding):
        # padding="longest" over a batch of one pads nothing: the STFT (center=True, reflect
        # padding, as in openai-whisper) gives 1 + N//160 frames of the unpadded waveform and
        # Whisper drops the last, so T == N//160. padding="max_length" (HF's default) first
        # zero-pads the waveform to 30 s = 480000 samples, giving 3000 frames.
        out = fe(w, sampling_rate=16000, padding=padding, return_tensors="np")["input_features"]
        assert out.shape[0] == 1 and out.shape[1] == fe.feature_size, out.shape
        return torch.from_numpy(np.ascontiguousarray(out[0].T, dtype=np.float32))  # [T, n_mels]

    def ast_fbank(w, **kw):
        return kaldi.fbank(torch.from_numpy(w)[None], htk_compat=True, sample_frequency=16000,
                           use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                           frame_shift=10, **kw)

    for clip in AUDIO_CLIPS:
        path = clips_dir / f"{clip['stem']}.{clip['ext']}"
        x, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
        channels = x.shape[1]
        w = x.mean(axis=1, dtype=np.float32)
        if rate != 16000:
            w = soxr.resample(w, rate, 16000, quality="HQ")
        w = np.ascontiguousarray(w, dtype=np.float32)
        n = w.shape[0]

        t = {
            "waveform_16k": torch.from_numpy(w.copy()),
            "source_rate": torch.tensor([rate], dtype=torch.int64),
            "source_channels": torch.tensor([channels], dtype=torch.int64),
        }
        t["whisper_mel_80"] = whisper_mel(whisper[80], w, "longest")
        assert t["whisper_mel_80"].shape[0] == n // 160, (t["whisper_mel_80"].shape, n)
        if clip["stem"] in WHISPER_EXTRA:
            t["whisper_mel_128"] = whisper_mel(whisper[128], w, "longest")
            assert t["whisper_mel_128"].shape[0] == n // 160
            full = whisper_mel(whisper[80], w, "max_length")
            assert full.shape == (3000, 80), full.shape
            # Frame t's window covers samples [160t - 200, 160t + 200); from t = N//160 + 3
            # on it sees only the zero padding, so every value there is the same clamped floor
            # max(-10, max - 8) mapped by (x + 4) / 4. Keep more head frames if that failed.
            head = n // 160 + 3
            tail = full[-1, -1]
            while not bool((full[head:] == tail).all()):
                head += 1
            if head != n // 160 + 3:
                print(f"  note: {clip['stem']}: the constant tail of the 30 s mel starts at frame {head}")
            t["whisper_mel_80_30s_head"] = full[:head].contiguous()
            t["whisper_mel_80_30s_tail_value"] = tail.reshape(1).clone()

        t["fbank_ast"] = ast_fbank(w)
        assert t["fbank_ast"].shape == (1 + (n - 400) // 160, 128)
        t["fbank_povey_80"] = kaldi.fbank(torch.from_numpy(w)[None], sample_frequency=16000,
                                          num_mel_bins=80, dither=0.0)
        assert t["fbank_povey_80"].shape == (1 + (n - 400) // 160, 80)

        if clip["stem"] in AST_EXTRA:
            # transformers' ASTFeatureExtractor: torchaudio's kaldi.fbank (hanning window, 128
            # bins; it leaves htk_compat at False, which only matters with use_energy=True),
            # zero-pad or crop to max_length frames, then (x - mean) / (2 * std).
            ast = ASTFeatureExtractor(max_length=300)
            assert (ast.mean, ast.std, ast.do_normalize) == (AST_MEAN, AST_STD, True)
            a = ast(w, sampling_rate=16000, return_tensors="np")["input_values"]
            assert a.shape == (1, 300, 128), a.shape
            t["fbank_ast_norm_300"] = torch.from_numpy(np.ascontiguousarray(a[0], dtype=np.float32))

            # EAT / SSLAM input, as EAT_preprocess in X-LANCE/SLAM-LLM
            # (src/slam_llm/models/EAT/EAT.py; the same steps as the EAT repository's
            # feature_extract code): subtract the waveform's mean, kaldi fbank as above,
            # zero-pad at the end (torch.nn.ZeroPad2d((0, 0, 0, diff))) or crop to the target
            # length, and only then normalise (x - (-4.268)) / (4.569 * 2), so padded frames
            # become 4.268 / 9.138, not 0. 64 frames crops these ~1 s clips.
            target = 64
            e = ast_fbank(w - w.mean())[None]  # [1, T, 128]
            diff = target - e.shape[1]
            if diff > 0:
                e = torch.nn.ZeroPad2d((0, 0, 0, diff))(e)
            elif diff < 0:
                e = e[:, 0:target, :]
            e = (e - EAT_MEAN) / (EAT_STD * 2)
            t["fbank_eat_norm_64"] = e[0].contiguous()

        t = {k: v.contiguous() for k, v in t.items()}
        for k, v in t.items():
            assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        metadata = {"producer": "scripts/make_parity_fixtures.py (audio)",
                    "clip": f"clips/{path.name}"}
        metadata.update({f"{k}_version": v for k, v in versions.items()})
        dest = out_dir / f"{clip['stem']}.safetensors"
        save_file(t, str(dest), metadata=metadata)
        size = dest.stat().st_size
        print(f"wrote {dest} ({size} bytes): rate {rate}, channels {channels}, N {n}")
        for k, v in t.items():
            print(f"    {k:32s} {str(list(v.shape)):12s} {str(v.dtype)}")
        if size > 460_000:  # speech_8k_mono, with every extra tensor, is the largest (~440 KB)
            raise SystemExit(f"{dest} is {size} bytes; keep fixtures near 400 KB")


def make_llm():
    """Tiny random Llama (llama3 RoPE scaling, GQA, tied embeddings, as Llama 3.2) and
    Qwen2 (q/k/v bias, untied head) checkpoints saved by transformers, with reference
    logits and per-layer hidden states for fixed token ids, and greedy generations of 32
    tokens (`generate(do_sample=False)`) for one prompt and for a left-padded batch."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    # head_dim 16, rope_theta 5e5, original context 128: the RoPE wavelengths 6.3, 44 and
    # 308+ fall in llama3's high (kept), medium (smoothed) and low (divided) bands.
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5)
    models = {
        "tiny_llama": (LlamaForCausalLM, LlamaConfig(
            **common, tie_word_embeddings=True,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
            rope_theta=500000.0)),
        "tiny_qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, tie_word_embeddings=False, rope_theta=10000.0)),
    }
    ids = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(7))
    for name, (cls, config) in models.items():
        torch.manual_seed(0)
        model = cls(config).eval()
        with torch.no_grad():  # a wide random init: errors show, and greedy text does not loop at once
            for p in model.parameters():
                p.normal_(0.0, 0.4)
        out_dir = FIXTURES / "llm" / name
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            # The rotary tables themselves, for positions 0..255, pin RoPE (and llama3's
            # frequency bands) more tightly than the logits can.
            positions = torch.arange(256)[None]
            cos, sin = model.model.rotary_emb(model.model.embed_tokens(ids[:1, :1]), positions)
        expected = {"input_ids": ids.contiguous(), "logits": out.logits.float().contiguous(),
                    "rope_cos": cos[0].float().contiguous(), "rope_sin": sin[0].float().contiguous()}
        for i, h in enumerate(out.hidden_states):  # embeddings, after each layer (last: after the final norm)
            expected[f"hidden_states.{i}"] = h.float().contiguous()
        # Greedy generation, 32 new tokens, no stop token (eos_token_id None), for one
        # prompt and for three prompts of different lengths, left-padded with pad id 0.
        # Prompts are drawn (seed 11, 12, ...) until no step has a near tie between the
        # best and second-best logit, where the ids would depend on rounding.
        lengths = [12, 5, 9]
        greedy = dict(do_sample=False, max_new_tokens=32, min_new_tokens=32, eos_token_id=None, pad_token_id=0)
        for seed in range(11, 100):
            g = torch.Generator().manual_seed(seed)
            prompts = [torch.randint(3, 96, (n,), generator=g) for n in lengths]
            batch = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
            mask = torch.zeros_like(batch)
            for row, p in enumerate(prompts):
                batch[row, batch.shape[1] - len(p):] = p
                mask[row, batch.shape[1] - len(p):] = 1
            with torch.no_grad():
                single = model.generate(prompts[0][None], attention_mask=torch.ones(1, lengths[0], dtype=torch.long),
                                        **greedy)
                batched = model.generate(batch, attention_mask=mask, output_scores=True, return_dict_in_generate=True,
                                         **greedy)
            gap = min(float((v[:, 0] - v[:, 1]).min()) for v in (s.topk(2, -1).values for s in batched.scores))
            if gap >= 0.01:
                break
        print(f"{name}: prompt seed {seed}, smallest top-1/top-2 logit gap of the greedy runs {gap:.3g}")
        batched = batched.sequences
        expected["generate.prompt"] = prompts[0].contiguous()
        expected["generate.single"] = single[0, lengths[0]:].contiguous()
        expected["generate.batch_ids"] = batch.contiguous()
        expected["generate.batch_mask"] = mask.contiguous()
        expected["generate.batch"] = batched[:, batch.shape[1]:].contiguous()
        save_file(expected, str(FIXTURES / "llm" / f"{name}_expected.safetensors"),
                  metadata={"torch_version": torch.__version__, "transformers_version": transformers.__version__})
        print("wrote", out_dir)


SECTIONS = {"llm": make_llm, "safetensors": make_safetensors, "audio": make_audio}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to (re)write; default: all")
    args = parser.parse_args()
    for name in args.only or sorted(SECTIONS):
        SECTIONS[name]()


if __name__ == "__main__":
    main()
