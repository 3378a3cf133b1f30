#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ with the real reference libraries.

PAL's parity tests compare its C++ implementations against files produced here, so CI
needs no Python. Run it with PyPI's packages (the versions used are recorded in each
fixture's metadata), e.g. in the virtual environment that `scripts/setup.sh --torch pip`
creates:

    build/pip/venv/bin/pip install safetensors numpy
    build/pip/venv/bin/python scripts/make_parity_fixtures.py [--only NAME ...]

Sections (each writes its own folder under tests/fixtures/):
    safetensors   a file written by safetensors.torch.save_file with every common dtype
"""
import argparse
import pathlib

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


SECTIONS = {"safetensors": make_safetensors}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to (re)write; default: all")
    args = parser.parse_args()
    for name in args.only or sorted(SECTIONS):
        SECTIONS[name]()


if __name__ == "__main__":
    main()
