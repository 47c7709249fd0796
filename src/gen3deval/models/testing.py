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


# --------------------------------------------------------------------------------------------------
# a tiny vision-language model (the ``hf`` system's tests and benchmarks)
# --------------------------------------------------------------------------------------------------

VLM_SPECIAL = [
    "<|endoftext|>",  # padding / unknown
    "<|im_start|>",  # beginning of a conversation
    "<end_of_utterance>",  # end of a turn: the end-of-answer token
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]  # Idefics3's image-split tags
# Idefics3-style chat template (role: text, <image> where an image goes; the answer follows "Assistant:").
VLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
# What the tokenizer is trained on: prose and the code characters of both languages (fences included).
_VLM_CORPUS = [
    "import cadquery as cq\nresult = cq.Workplane('XY').box(10, 20, 5).faces('>Z').hole(2.5)\n",
    "function createObject(THREE) {\n  const g = new THREE.BoxGeometry(1, 2, 3);\n  return new THREE.Mesh(g);\n}\n",
    "```python\nshow_object(result)\n```\n",
    "You write a program that builds the object in the reference image. Reference image: render.",
    "[]{}()<>=+-*/%&|^~!?.,;:'\"#@$_\\ 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def make_random_vlm(folder: str | Path, seed: int = 0, *, size: Literal["tiny", "small"] = "tiny") -> Path:
    """Write an Idefics3 (SmolVLM architecture) model with random weights (seeded), a byte-level BPE
    tokenizer trained here on a few code strings (~400 tokens), its PIL image processor (no image
    splitting, one 32 px image = 4 image tokens for ``tiny``) and chat template into ``folder``.

    ``tiny``: vision 1 x 32, text 2 x 32 (~60 k parameters, for tests); ``small``: vision 2 x 128, text
    4 x 256, 64 px images (~4 M parameters, for the CPU benchmark). Its answers are random text; the saved
    generation config ends them after ~24 tokens (``exponential_decay_length_penalty`` on the end token), so
    greedy answers stop on their own (``finish_reason`` ``stop``) and hold no program (``no_code``).
    Loads through ``AutoProcessor`` + ``AutoModelForImageTextToText`` without torchvision. Same seed ->
    identical weight bytes. Returns ``Path(folder)``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    from gen3deval.models.clip import _quiet_transformers

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=VLM_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    from importlib import resources

    # The built-in prompt templates too: prompts become a few hundred tokens instead of thousands.
    prompts = resources.files("gen3deval.prompts")
    texts = [f.read_text(encoding="utf-8") for f in prompts.iterdir() if f.name.endswith(".md")]
    bpe.train_from_iterator(_VLM_CORPUS * 4 + texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        padding_side="left",
    )
    px = 32 if size == "tiny" else 64
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            do_image_splitting=False, size={"longest_edge": px}, max_image_size={"longest_edge": px}
        ),
        tokenizer=tok,
        image_seq_len=(px // 8) ** 2 // 4,  # patches of 8 px, pixel shuffle by 2 x 2
        chat_template=VLM_CHAT_TEMPLATE,
    )
    ids: dict[str, int] = {t: int(tok.convert_tokens_to_ids(t)) for t in VLM_SPECIAL[:5]}  # type: ignore[arg-type]
    width, layers, vwidth, vlayers = (32, 2, 32, 1) if size == "tiny" else (256, 4, 128, 2)
    init = 0.5  # large random weights: answers depend on the image and the text (0.02 gives one answer)
    config = Idefics3Config(  # type: ignore[call-arg]  # pad_token_id: kept in the config for generate
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<end_of_utterance>"],
            pad_token_id=ids["<|endoftext|>"],
            initializer_range=init,
        ),
        vision_config=dict(
            hidden_size=vwidth,
            intermediate_size=2 * vwidth,
            num_hidden_layers=vlayers,
            num_attention_heads=2,
            image_size=px,
            patch_size=8,
            initializer_range=init,
        ),
        scale_factor=2,
        image_token_id=int(ids["<image>"]),
        pad_token_id=ids["<|endoftext|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id = ids["<|im_start|>"], ids["<end_of_utterance>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.exponential_decay_length_penalty = (16, 1.5)  # random weights never pick the end token by themselves
    with _quiet_transformers():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out


def make_random_lora(model_dir: str | Path, out: str | Path, seed: int = 1, scale: float = 0.5) -> Path:
    """Write a peft LoRA adapter (rank 4 on the text model's query and value projections) for the
    model in ``model_dir`` into ``out``, with random non-zero A and B (std ``scale``; peft's own init leaves B
    at zero, which changes nothing), so it changes the model's answers. Returns ``Path(out)``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from gen3deval.models.clip import _quiet_transformers

    with _quiet_transformers():
        base = AutoModelForImageTextToText.from_pretrained(str(model_dir), local_files_only=True)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*text_model.*\.(q_proj|v_proj)",
        lora_dropout=0.0,
    )
    model = get_peft_model(base, config)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, scale)
    target = Path(out)
    with _quiet_transformers():
        model.save_pretrained(str(target))
    return target
