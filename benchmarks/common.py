"""Arguments every benchmark shares: model, prompt count, output length, batch size."""
from __future__ import annotations

import argparse


def base_parser(description: str) -> argparse.ArgumentParser:
    """--model (name or path), --n (prompts), --max-new-tokens (per prompt), --batch-size (prompts)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    return parser
