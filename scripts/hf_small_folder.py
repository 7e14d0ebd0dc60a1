"""Writes a random GPT-2-small-shaped HF folder (config + safetensors) for parity runs.

python scripts/hf_small_folder.py DIR [--layers 12 --embd 768 --heads 12]
"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    args = p.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=args.layers, n_embd=args.embd, n_head=args.heads, vocab_size=args.vocab
    )
    GPT2LMHeadModel(config).save_pretrained(args.out)


if __name__ == "__main__":
    main()
