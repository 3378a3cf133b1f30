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
    tokenizer     small byte-level BPE tokenizers trained with HF tokenizers and configured as
                  Llama 3, Qwen2 and GPT-2, a sentencepiece model configured as Llama 2, the
                  reference ids / decodings of a 216-line corpus, and chat template renderings
                  from transformers (needs tokenizers, transformers, and
                  `pip install sentencepiece protobuf`)
    encoders      tiny random Whisper (WhisperForConditionalGeneration) and AST
                  (ASTForAudioClassification) checkpoints via save_pretrained, with every
                  hidden state of transformers' encoders for clips of the audio section
                  (needs transformers; run the audio section first)
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



# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The chat_template of meta-llama/Llama-3.2-1B-Instruct (tokenizer_config.json).
LLAMA32_CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# The chat_template of Qwen/Qwen2.5-0.5B-Instruct (tokenizer_config.json).
QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

TOKENIZER_MULTILINGUAL = """\
Façade, naïve café, crème brûlée, Ångström, Øresund, São Paulo, Łódź, Dvořák, Smørrebrød.
Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России.
Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.
我能吞下玻璃而不伤身体。北京是中华人民共和国的首都。今天天气很好，我们去公园散步吧。
私はガラスを食べられます。それは私を傷つけません。東京は日本の首都です。カタカナとひらがな。
나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. 서울은 대한민국의 수도입니다.
أنا قادر على أكل الزجاج و هذا لا يؤلمني. القاهرة هي عاصمة مصر.
मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती. नई दिल्ली भारत की राजधानी है।
אני יכול לאכול זכוכית וזה לא מזיק לי. ירושלים.
ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ กรุงเทพมหานคร
Tôi có thể ăn thủy tinh mà không hại gì. Hà Nội là thủ đô của Việt Nam.
Emoji: 😀 😂 👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 🇯🇵 ✨🚀🎉 — and numbers: 1, 22, 333, 4444, 55555, 3.14159, 1e10, ½ ⅓ ² ³ ٣ ४.
It's, I'LL, we've, they're, she'd, I'm, don't, can't, won't, O'Neil's, rock'n'roll.
"""


def _tokenizer_corpus():
    """The test lines: >= 200 strings of many scripts, whitespace runs, digits, contractions,
    punctuation, special tokens inline, NFC/NFD forms and odd code points."""
    lines = [
        "", " ", "  ", "\t", "\n", "\r\n", "\n\n\n", " \n ", "a", "A", "0", "'", "''", "'s", "'S", "'ſ",
        "Hello world", "Hello  world", "Hello   world", " Hello world ", "Hello world\n", "\tTabbed\tline\t",
        "Line one\nLine two\r\nLine three\rEnd", "trailing spaces   ", "   leading spaces", "mixed \t \n \t end",
        "multiple\n\n\nnewlines\n\n", "space before newline \nand after\n next", "  \n\n  x", "\u00a0non-breaking\u00a0space",
        "ideographic\u3000space", "em\u2003space and thin\u2009space", "line\u2028separator\u2029paragraph",
        "It's a dog's life; they've said we'll go, you'd think I'm sure.",
        "IT'S LOUD, THEY'VE, WE'LL, YOU'D, I'M, DON'T", "It'S mIxEd'Ll 'Re 'vE", "rock'n'roll o'clock 'tis 'twas",
        "contractions'sss 'llama 'dd 'mm", "Unicode apostrophe: it’s they’re",
        "0 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890",
        "3.14159265358979323846 2.71828 -42 +17 1,000,000 1_000_000 0x1F 0b1010 1e-9",
        "Phone: +1 (555) 123-4567, ZIP 90210, year 2024, 10:45pm, 50%", "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ①②③ ⅠⅡⅢⅣ ½¾",
        "!!!???...,,,;;;:::---___***", "(parentheses) [brackets] {braces} <angles>", "a+b=c; x*y/z; p&q|r^s~t",
        "#hashtag @mention $dollar %percent &amp;", "email@example.com https://example.org/path?q=1&r=2#frag",
        "C:\\Windows\\System32\\drivers", "/usr/local/bin:/usr/bin:/bin", "def f(x):\n    return x**2  # square\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}", "<html><body><p class=\"x\">Hi</p></body></html>",
        "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}", "SELECT * FROM t WHERE a = 'x' AND b <> 2;",
        "— – - ‐ ‑ ‒ ― … · • ‣ ※ § ¶ † ‡ ‰ ′ ″", "«guillemets» „Anführungszeichen“ “curly” ‘single’ 「括弧」",
        "café", "cafe\u0301", "Å", "A\u030a", "\u212b", "é\u0301", "e\u0301\u0301", "\u0301leading combining",
        "ñ vs n\u0303", "한국어", "\u1112\u1161\u11ab\u1100\u116e\u11a8\u110b\u1165", "ḱṷṓn", "k\u0301u\u032do\u0304\u0301n",
        "Zalgo: Z\u0351\u036b\u0343a\u0352\u0364l\u0357g\u0310o\u0351", "ﬁ ﬂ ﬃ ligatures", "①②③ ㈱ ㎏ ㎝",
        "😀", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇩🇪", "❤️❤", "1️⃣ #️⃣", "🧑🏿‍🚀 astronaut", "🫠🫡🫶 newer emoji",
        "\u200b zero width \u200c\u200d joiners", "\ufeffBOM at start", "\ufffd replacement char", "\x00 nul \x01 \x1f ctrl",
        "\x7f del \x80 \x9f c1", "private \ue000 use \U000f0000", "\U0010ffff max code point", "\U000e0001 tag",
        "unassigned \u0378 \U0001fbff", "surrogate-looking \\ud800 text", "mathematical 𝐀𝐁𝐂 𝔸𝔹ℂ", "𓀀 egyptian 𐍈 gothic",
        "<|begin_of_text|>", "<|begin_of_text|>Hello", "Hello<|end_of_text|>", "a<|eot_id|>b<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>", "<|im_start|>user\nHello<|im_end|>\n",
        "<|im_start|>system\nYou are a bot.<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>text<|endoftext|>",
        "Describe <|audio|> please", "<|audio|><|audio|>", "before<|audio|>after", "  <|audio|>  spaced  ",
        "<|audio", "audio|>", "<|AUDIO|>", "<|begin_of_text", "<s>Hello</s>", "<s> spaced </s>", "<unk>",
        "<mask> masked", "word <mask>", "x [[rs]]   y", "wordy wordy! awordy wordyb _wordy_",
    ]
    lines += TOKENIZER_MULTILINGUAL.strip("\n").split("\n")
    lines += [TOKENIZER_MULTILINGUAL, TOKENIZER_MULTILINGUAL.replace("\n", " ")]
    # Whitespace runs of every shape.
    for n in (1, 2, 3, 7):
        lines += [" " * n + "x", "x" + " " * n + "y", "\t" * n + "x", "x" + "\n" * n + "y", "x" + " \n" * n]
    # Digits of many lengths, alone and next to letters.
    for n in range(1, 13):
        lines.append("".join(str((i * 7 + n) % 10) for i in range(n)))
    lines += [f"v{n}x{n * 37}y{n}{n}z" for n in range(5)]
    # Lines of English prose from the licence texts (also in the training text).
    prose = []
    for path in sorted(pathlib.Path("/usr/share/common-licenses").glob("*")):
        if path.is_file():
            prose += [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if len(l.strip()) > 30]
    lines += prose[::97][:60]
    lines.append("\n".join(prose[1000:1040]))  # a long multi-line paragraph
    return lines


def _tokenizer_training_text():
    texts = []
    for path in sorted(pathlib.Path("/usr/share/common-licenses").glob("*")):
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    texts += [TOKENIZER_MULTILINGUAL] * 20
    texts.append("\n".join(f"{i} {i * i} {i * 3.5} value_{i}" for i in range(500)))
    return texts


def make_tokenizer():
    """Small byte-level BPE tokenizers trained with HF tokenizers and configured as Llama 3,
    Qwen2 and GPT-2, a sentencepiece BPE model configured as Llama 2, the expected ids and
    decodings of a test corpus, and chat template renderings from transformers."""
    import io
    import json
    import sentencepiece as spm
    import tokenizers
    import transformers
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers

    out = FIXTURES / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    training = _tokenizer_training_text()
    corpus = _tokenizer_corpus()
    alphabet = pre_tokenizers.ByteLevel.alphabet()

    def train(pre, normalizer, specials, ignore_merges, vocab_size):
        tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(training, trainer)
        return tok

    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                      "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    llama = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        None, llama_specials, True, 1500)
    bos = llama.token_to_id("<|begin_of_text|>")
    llama.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])

    qwen = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], False, 1500)
    qwen.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    gpt2 = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None, ["<|endoftext|>"], False, 1200)
    gpt2.post_processor = processors.ByteLevel(trim_offsets=True)
    # Added tokens with the matching flags (special and not).
    gpt2.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True),
                             AddedToken("[[rs]]", rstrip=True, special=True)])
    gpt2.add_tokens([AddedToken("wordy", single_word=True, normalized=False)])

    configs = {
        "llama3": (llama, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                           "chat_template": LLAMA32_CHAT_TEMPLATE}),
        "qwen2": (qwen, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                         "chat_template": QWEN25_CHAT_TEMPLATE}),
        "gpt2": (gpt2, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    }
    expected = {"versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                             "sentencepiece": spm.__version__},
                "lines": corpus, "tokenizers": {}, "chat": []}
    for name, (tok, config) in configs.items():
        folder = out / name
        folder.mkdir(exist_ok=True)
        tok.save(str(folder / "tokenizer.json"))
        if name == "gpt2":  # the merges as "a b" strings, as tokenizers < 0.20 wrote them
            j = json.loads((folder / "tokenizer.json").read_text())
            j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
            (folder / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False, indent=1))
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **config},
            ensure_ascii=False, indent=1) + "\n")
        entry = {"vocab_size": tok.get_vocab_size(), "ids": [], "ids_no_special": [], "decode": [],
                 "decode_skip_special": []}
        for line in corpus:
            ids = tok.encode(line).ids
            entry["ids"].append(ids)
            entry["ids_no_special"].append(tok.encode(line, add_special_tokens=False).ids)
            entry["decode"].append(tok.decode(ids, skip_special_tokens=False))
            entry["decode_skip_special"].append(tok.decode(ids, skip_special_tokens=True))
        # The audio placeholder added as a special token (next free id).
        with_audio = Tokenizer.from_file(str(folder / "tokenizer.json"))
        with_audio.add_special_tokens([AddedToken("<|audio|>", special=True, normalized=False)])
        entry["audio_id"] = with_audio.token_to_id("<|audio|>")
        entry["ids_with_audio"] = {str(i): with_audio.encode(l).ids for i, l in enumerate(corpus) if "<|audio|>" in l}
        expected["tokenizers"][name] = entry
        print(f"wrote {folder}: vocab {tok.get_vocab_size()}")

    # sentencepiece BPE with the options of Llama 2's tokenizer.model.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([l for t in training for l in t.splitlines() if l.strip()]), model_writer=model,
        vocab_size=1000, model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    (out / "sentencepiece").mkdir(exist_ok=True)
    (out / "sentencepiece" / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    specials = ["<s>", "</s>"]

    def sp_encode(line):  # split on the control pieces, as PAL (and HF's legacy LlamaTokenizer) do
        ids, rest = [], line
        while rest:
            hits = [(rest.find(s), s) for s in specials if rest.find(s) >= 0]
            if not hits:
                ids += sp.encode(rest)
                break
            at, s = min(hits)
            if at:
                ids += sp.encode(rest[:at])
            ids.append(sp.piece_to_id(s))
            rest = rest[at + len(s):]
        return ids

    entry = {"vocab_size": sp.get_piece_size(), "ids": [], "ids_no_special": [], "decode": [], "decode_skip_special": []}
    for line in corpus:
        ids = sp_encode(line)
        entry["ids_no_special"].append(ids)
        entry["ids"].append([sp.bos_id()] + ids)
        plain = not any(s in line for s in specials)
        if plain:
            assert ids == sp.encode(line), line
        entry["decode"].append(sp.decode(ids) if plain else None)
        entry["decode_skip_special"].append(sp.decode(ids) if plain else None)
    expected["tokenizers"]["sentencepiece"] = entry
    print(f"wrote {out / 'sentencepiece'}: vocab {sp.get_piece_size()}")

    # Chat templates rendered by transformers from the saved folders.
    conversations = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "  Be kind.\n"}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Tell me a joke."}],
        [{"role": "user", "content": "Transcribe this audio: <|audio|>"}],
        [{"role": "user", "content": "<|audio|>\nWhat sound is this?"}, {"role": "assistant", "content": "A dog."}],
        [{"role": "user", "content": "  padded content \n\t"}, {"role": "assistant", "content": "\n answer \n"}],
        [{"role": "system", "content": "Réponds en français. 日本語も可。"}, {"role": "user", "content": "Ça va? 👍🏽"}],
        [{"role": "user", "content": ""}],
    ]
    for name, kind in (("llama3", "llama3"), ("qwen2", "chatml")):
        hf = transformers.AutoTokenizer.from_pretrained(str(out / name))
        for messages in conversations:
            for gen in (False, True):
                kwargs = {"date_string": "26 Jul 2024"} if kind == "llama3" else {}
                text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kwargs)
                expected["chat"].append({"kind": kind, "folder": name, "messages": messages,
                                         "add_generation_prompt": gen, "text": text})
    dest = out / "expected.json"
    dest.write_text(json.dumps(expected, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {dest}; tokenizer fixtures {total} bytes")
    if total > 1_500_000:
        raise SystemExit(f"tokenizer fixtures are {total} bytes; keep them under 1.5 MB")

# ---------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------

def _encoder_taps(embeddings, layers, final_norm):
    """The embeddings, the output of each layer and the final norm's output, by calling
    transformers' own sub-modules in order (the forward of WhisperEncoder / ASTModel)."""
    taps, h = [embeddings], embeddings
    for layer in layers:
        h = layer(h, None)
        taps.append(h)
    return taps, final_norm(h)


def make_encoders():
    """Tiny random Whisper encoder and AST checkpoints saved by transformers
    (WhisperForConditionalGeneration: tensors model.encoder.* plus a decoder to ignore;
    ASTForAudioClassification: audio_spectrogram_transformer.* plus a classifier head),
    with every hidden state of transformers' encoders for real clips from the audio
    fixtures.

    Whisper: max_source_positions 250 (a 5 s context instead of 30 s, so that
    transformers' own WhisperEncoder.forward, which insists on 2 * max_source_positions
    mel frames, runs unmodified on the padded clip while the fixture stays small).
    - `full.*`: WhisperFeatureExtractor(chunk_length=5) pads the 0.96 s clip to 5 s (500
      frames, stored as the head of the clip's frames + 3 and the constant tail value) and
      WhisperEncoder.forward(output_hidden_states=True) runs on it; the first 64 output
      frames of every tap are kept.
    - `short.*`: the unpadded clip (95 frames, padding="longest"): transformers' encoder
      refuses it, so its sub-modules run in WhisperEncoder.forward's order on it
      (gelu(conv1), gelu(conv2), + embed_positions.weight[:48], layers, layer_norm): the
      output PAL's unpadded encoder must match. The same sub-module path is checked
      against WhisperEncoder.forward on the padded input first.
    AST: max_length 64 (5 time patches of stride 10), ASTFeatureExtractor(max_length=64)
    on a 0.35 s clip (33 fbank frames, padded): ASTModel(output_hidden_states=True)."""
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, WhisperConfig,
                              WhisperFeatureExtractor, WhisperForConditionalGeneration)

    out_dir = FIXTURES / "encoders"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"producer": "scripts/make_parity_fixtures.py (encoders)", "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}
    gelu = torch.nn.functional.gelu

    def widen(model, std):  # a wide random init, so that errors show
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std)

    # ---- Whisper ----
    clip = load_file(str(FIXTURES / "audio" / "speech_8k_mono.safetensors"))
    w = clip["waveform_16k"].numpy()
    n = w.shape[0]
    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=16, num_mel_bins=80,
                           max_source_positions=250, max_target_positions=16, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(config).eval()
    widen(model, 0.2)
    folder = out_dir / "tiny_whisper"
    model.save_pretrained(folder, safe_serialization=True)
    encoder = model.model.encoder
    context = 2 * config.max_source_positions

    def whisper_taps(features):  # features [1, 80, T]
        h = gelu(encoder.conv2(gelu(encoder.conv1(features)))).permute(0, 2, 1)
        return _encoder_taps(h + encoder.embed_positions.weight[: h.shape[1]], encoder.layers, encoder.layer_norm)

    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=context // 100, dither=0.0)
    assert fe.nb_max_frames == context, fe.nb_max_frames
    full = torch.from_numpy(fe(w, sampling_rate=16000, padding="max_length", return_tensors="np")["input_features"])
    short = torch.from_numpy(fe(w, sampling_rate=16000, padding="longest", return_tensors="np")["input_features"])
    assert full.shape == (1, 80, context) and short.shape == (1, 80, n // 160), (full.shape, short.shape)
    expected = {}
    with torch.no_grad():
        out = encoder(full, output_hidden_states=True)
        taps, last = whisper_taps(full)
        # transformers' hidden_states: the embeddings, each layer's output but the last, the final norm.
        assert len(out.hidden_states) == len(taps)
        for ours, theirs in zip(taps[:-1] + [last], out.hidden_states):
            assert torch.allclose(ours, theirs, rtol=0, atol=1e-5), float((ours - theirs).abs().max())
        assert torch.allclose(last, out.last_hidden_state, rtol=0, atol=1e-5)
        keep = 64
        head = n // 160 + 3  # as in the audio section: later frames see only the padding
        features = full[0].T.contiguous()  # [frames, 80]
        assert bool((features[head:] == features[-1, -1]).all())
        expected["full.features_head"] = features[:head].contiguous()
        expected["full.features_tail_value"] = features[-1, -1].reshape(1).clone()
        for i, t in enumerate(taps):
            expected[f"full.hidden_states.{i}"] = t[:, :keep].contiguous()
        expected["full.last_hidden_state"] = out.last_hidden_state[:, :keep].contiguous()
        expected["full.last_hidden_state_tail"] = out.last_hidden_state[:, -4:].contiguous()
        taps, last = whisper_taps(short)
        expected["short.features"] = short[0].T.contiguous()
        for i, t in enumerate(taps):
            expected[f"short.hidden_states.{i}"] = t.contiguous()
        expected["short.last_hidden_state"] = last.contiguous()
    expected["samples"] = torch.tensor([n], dtype=torch.int64)
    save_file(expected, str(out_dir / "tiny_whisper_expected.safetensors"),
              metadata={**meta, "clip": "audio/speech_8k_mono.safetensors (waveform_16k)"})
    print("wrote", folder, "and", out_dir / "tiny_whisper_expected.safetensors")

    # ---- AST ----
    clip = load_file(str(FIXTURES / "audio" / "speech_48k_stereo_24bit.safetensors"))
    w = clip["waveform_16k"].numpy()
    max_length = 64
    config = ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       num_mel_bins=128, max_length=max_length, num_labels=3)
    model = ASTForAudioClassification(config).eval()
    widen(model, 0.2)
    folder = out_dir / "tiny_ast"
    model.save_pretrained(folder, safe_serialization=True)
    ast = model.audio_spectrogram_transformer
    fe = ASTFeatureExtractor(max_length=max_length)
    values = torch.from_numpy(np.ascontiguousarray(fe(w, sampling_rate=16000, return_tensors="np")["input_values"]))
    assert values.shape == (1, max_length, 128), values.shape
    frames = 1 + (w.shape[0] - 400) // 160
    expected = {"input_values": values[0].contiguous(), "frames": torch.tensor([frames], dtype=torch.int64)}
    with torch.no_grad():
        out = ast(values, output_hidden_states=True)
        taps, last = _encoder_taps(ast.embeddings(values), ast.layers, ast.layernorm)
        # transformers' hidden_states: the embeddings and each layer's output.
        assert len(out.hidden_states) == len(taps)
        for ours, theirs in zip(taps, out.hidden_states):
            assert torch.allclose(ours, theirs, rtol=0, atol=1e-5), float((ours - theirs).abs().max())
        assert torch.allclose(last, out.last_hidden_state, rtol=0, atol=1e-5)
    for i, t in enumerate(out.hidden_states):
        expected[f"hidden_states.{i}"] = t.contiguous()
    expected["last_hidden_state"] = out.last_hidden_state.contiguous()
    expected["pooler_output"] = out.pooler_output.contiguous()
    save_file(expected, str(out_dir / "tiny_ast_expected.safetensors"),
              metadata={**meta, "clip": "audio/speech_48k_stereo_24bit.safetensors (waveform_16k)"})
    print("wrote", folder, "and", out_dir / "tiny_ast_expected.safetensors", f"({frames} fbank frames)")


SECTIONS = {"llm": make_llm, "safetensors": make_safetensors, "audio": make_audio, "encoders": make_encoders,
            "tokenizer": make_tokenizer}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to (re)write; default: all")
    args = parser.parse_args()
    for name in args.only or sorted(SECTIONS):
        SECTIONS[name]()


if __name__ == "__main__":
    main()
