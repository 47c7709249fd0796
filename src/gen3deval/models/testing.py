"""CLIP models with random weights, written in code, for tests and benchmarks (no download).

:func:`make_random_clip` writes a complete Hugging Face model folder (``config.json``,
``model.safetensors``, a working byte-level BPE tokenizer, ``preprocessor_config.json``) that
:func:`gen3deval.models.clip.resolve_clip` / :func:`~gen3deval.models.clip.get_clip` load through
exactly the code path of a real checkpoint. The numbers it gives are meaningless; its shapes,
preprocessing and tokenisation are those of CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def byte_level_vocab() -> dict[str, int]:
    """The vocabulary: 256 byte characters, their ``</w>`` (end of word) forms, then BOS and EOS.

    Without merges every word tokenises to one token per UTF-8 byte, the last carrying ``</w>``;
    the special tokens take the two highest ids, as in OpenAI's CLIP vocabulary.
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def _config(size: str, vocab_size: int, bos_id: int, eos_id: int) -> Any:
    from transformers import CLIPConfig

    ids = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    if size == "b32":
        # The default CLIPConfig is ViT-B/32 sized (vision 768 x 12 layers, patch 32; text 512 x 12).
        return CLIPConfig(text_config=dict(vocab_size=max(vocab_size, 49408), **ids))
    if size == "tiny":
        text = dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            **ids,
        )
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
        )
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    raise ValueError(f"make_random_clip: size must be 'tiny' or 'b32', not {size!r}")


def make_random_clip(folder: str | Path, size: Literal["tiny", "b32"] = "tiny", seed: int = 0) -> Path:
    """Write a CLIP model with random weights (seeded) and its tokenizer/preprocessor into ``folder``.

    ``tiny``: 2 layers of width 32 per tower, embeddings of dimension 16 (~0.2 MB, for tests);
    ``b32``: ViT-B/32 sized (~600 MB, embeddings of 512, for timing). Returns ``Path(folder)``.
    Same seed and size -> identical weight bytes.
    """
    import torch
    from transformers import CLIPModel

    from gen3deval.models.clip import _quiet_transformers, image_processor_class, tokenizer_class

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = tokenizer_class()(
        vocab=vocab,
        merges=[],
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=77,
    )
    tok.save_pretrained(out)

    config = _config(size, len(vocab), vocab[BOS], vocab[EOS])
    # Seeded init without touching the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    with _quiet_transformers():
        model.save_pretrained(out)  # model.safetensors
        image_processor_class()().save_pretrained(out)  # CLIP defaults: resize 224 bicubic, crop 224
    return out
