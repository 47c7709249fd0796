"""Local vision-language models through transformers (the ``hf`` system): resolution, loading, generation.

- :func:`resolve_vlm` finds a model (a folder, or a Hugging Face id in the local cache only: never a
  download) and hashes its weights; :func:`resolve_adapter` does the same for a peft LoRA folder. Both raise
  :class:`VlmUnavailable` (a ConfigError: one line naming the id or path and ``HF_HUB_OFFLINE``).
- :func:`get_vlm` loads a :class:`LocalVlm` once per process per (model, adapter, dtype, device, trust,
  chat template): ``AutoProcessor`` + ``AutoModelForImageTextToText``, the adapter applied on load
  (``PeftModel.from_pretrained``).
- :meth:`LocalVlm.generate` answers a batch of OpenAI-style chat messages (as :mod:`gen3deval.prompts` builds
  them) in one ``generate`` call: images become PIL images (RGBA composited over white, as transformers'
  ``convert_to_rgb`` and vLLM do), the prompts are left-padded, greedy unless ``temperature`` > 0.

Processor classes: transformers 5 builds the processors of Qwen2-VL / Qwen2.5-VL / InternVL (``-hf``) with a
video processor that needs torchvision; without torchvision only image-only processors load (Idefics3 /
SmolVLM-256M/500M/Instruct, LLaVA, ...). :class:`VlmUnavailable` says so instead of transformers' traceback.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen3deval.errors import ConfigError
from gen3deval.models.clip import (
    ModelSource,
    _importable,
    _quiet_transformers,
    locate_model,
)

INSTALL_HINT = "pip install 'gen3deval[local]' (install torch==2.13.0 first)"
DTYPES = ("auto", "bfloat16", "float16", "float32")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class VlmUnavailable(ConfigError):
    """A local VLM (or its adapter, or the libraries to run it) is not available: one line saying how to fix
    it. A ConfigError: the run stops before any work (a generator cannot be skipped like a metric)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        offline = os.environ.get("HF_HUB_OFFLINE", "")
        note = (
            f" (HF_HUB_OFFLINE={offline})" if offline else " (HF_HUB_OFFLINE is not set; no download happens)"
        )
        super().__init__(" ".join(f"hf model {what!r} {reason}{note}".split()))


# A resolved model or adapter: ``id`` as given, ``path`` (folder), ``weights_sha256``.
VlmSource = ModelSource


def check_deps(what: str, adapter: bool = False) -> None:
    """torch and transformers (and peft for an adapter) are importable, else :class:`VlmUnavailable`."""
    need = ["torch", "transformers"] + (["peft"] if adapter else [])
    missing = [m for m in need if not _importable(m)]
    if missing:
        raise VlmUnavailable(what, f"needs {' and '.join(missing)}, not installed: {INSTALL_HINT}")


def resolve_vlm(model: str) -> VlmSource:
    """Find ``model``: an existing folder, or a Hugging Face id looked up ONLY in the local cache
    (``HF_HOME``/``HF_HUB_CACHE``), with its weights' sha256. Raises :class:`VlmUnavailable`."""
    check_deps(model)
    return locate_model(
        model,
        lambda reason: VlmUnavailable(model, reason),
        instead="set model= to a model folder",
        no_folder="set model= to a model folder",
        install_hint=INSTALL_HINT,
    )


def resolve_adapter(adapter: str) -> VlmSource:
    """A peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``/``.bin``) and the
    sha256 of its weight file. Raises :class:`VlmUnavailable`."""
    from gen3deval.models.clip import _file_sha256

    folder = Path(os.path.expanduser(adapter))
    if not folder.is_dir():
        raise VlmUnavailable(adapter, "adapter: no such folder (adapter= takes a peft LoRA folder)")
    if not (folder / "adapter_config.json").is_file():
        raise VlmUnavailable(adapter, f"adapter: no adapter_config.json in {folder} (not a peft adapter)")
    weights = [folder / f for f in ADAPTER_FILES if (folder / f).is_file()]
    if not weights:
        raise VlmUnavailable(adapter, f"adapter: no {' or '.join(ADAPTER_FILES)} in {folder}")
    return VlmSource(id=adapter, path=str(folder.resolve()), weights_sha256=_file_sha256(weights[0]))


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """The torch dtype: ``auto`` = bfloat16 on CUDA, float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


# --------------------------------------------------------------------------------------------------
# messages: OpenAI chat format -> transformers chat format + PIL images
# --------------------------------------------------------------------------------------------------


def _image_from_url(url: str) -> Any:
    from PIL import Image

    if not url.startswith("data:"):
        raise ValueError(f"only inline data: image URLs are supported, got {url[:40]!r}")
    raw = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as im:
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
        return im.convert("RGB")


def to_chat(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(transformers chat messages, PIL images in order) of OpenAI messages: string content becomes one text
    part, ``image_url`` parts become ``{"type": "image"}`` placeholders."""
    chat: list[dict[str, Any]] = []
    images: list[Any] = []
    for m in messages:
        content = m["content"]
        given: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content
        )
        parts: list[dict[str, Any]] = []
        for p in given:
            if p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif p["type"] == "image_url":
                images.append(_image_from_url(p["image_url"]["url"]))
                parts.append({"type": "image"})
            else:
                raise ValueError(f"unsupported message part type {p['type']!r}")
        chat.append({"role": m["role"], "content": parts})
    return chat, images


# --------------------------------------------------------------------------------------------------
# the loaded model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One generated answer: ``text`` (special tokens removed), ``finish_reason`` (``stop``: an end token;
    ``length``: cut at ``max_new_tokens``), ``prompt_tokens`` and ``completion_tokens`` (up to the end
    token), ``batch`` (how many prompts were generated together)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    batch: int = 1

    def info(self) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "batch": self.batch,
        }


def load_processor(source: VlmSource, *, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor`` of ``source`` (local files only); :class:`VlmUnavailable` when it does not load, e.g.
    a Qwen2-VL/InternVL processor in transformers 5 without torchvision (its video processor needs it)."""
    import transformers

    with _quiet_transformers():
        try:
            return transformers.AutoProcessor.from_pretrained(
                source.path, local_files_only=True, trust_remote_code=trust_remote_code
            )
        except (AttributeError, ImportError, ValueError, OSError, TypeError) as exc:
            hint = (
                " (its processor may need torchvision, not installed)"
                if not _importable("torchvision")
                else ""
            )
            msg = " ".join(str(exc).split())[:300]
            raise VlmUnavailable(
                source.id, f"processor does not load{hint}: {type(exc).__name__}: {msg}"
            ) from None


def check_processor(source: VlmSource, *, trust_remote_code: bool = False) -> None:
    """Raise :class:`VlmUnavailable` when the processor of ``source`` does not load (a run's preflight)."""
    load_processor(source, trust_remote_code=trust_remote_code)


class LocalVlm:
    """A processor + model (+ adapter) on one device. ``source``/``adapter``: :class:`VlmSource`;
    ``device``: ``cpu``/``cuda[:N]``; ``dtype``: the torch dtype."""

    def __init__(
        self,
        source: VlmSource,
        adapter: VlmSource | None = None,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        chat_template: str | None = None,
    ) -> None:
        import transformers

        self.source, self.adapter, self.device = source, adapter, device
        self.dtype = pick_dtype(dtype, device)
        path = source.path
        self.processor: Any = load_processor(source, trust_remote_code=trust_remote_code)
        with _quiet_transformers():
            model: Any = transformers.AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=self.dtype
            )
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter.path, is_trainable=False)
        self.model: Any = model.to(device).eval()
        self.tokenizer: Any = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # decoder-only batches are padded on the left
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_template = chat_template
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    def prompt_text(self, chat: list[dict[str, Any]]) -> str:
        kw = {"chat_template": self.chat_template} if self.chat_template else {}
        return str(self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **kw))

    def generate(
        self,
        prompts: list[list[dict[str, Any]]],
        *,
        max_new_tokens: int = 1024,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[Answer]:
        """Answers of N prompts (OpenAI messages each) from ONE ``generate`` call (left padding)."""
        import torch

        chats = [to_chat(m) for m in prompts]
        texts = [self.prompt_text(c) for c, _ in chats]
        images = [ims for _, ims in chats]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(images):
            kwargs["images"] = images
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        sample = temperature > 0
        gen_kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
        if sample:
            gen_kw.update(temperature=temperature, top_p=top_p if top_p is not None else 1.0)
        else:  # greedy: no sampling knobs (transformers warns about them otherwise)
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        gen_kw["pad_token_id"] = self.tokenizer.pad_token_id
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**inputs, **gen_kw)
        n_in = inputs["input_ids"].shape[1]
        prompt_lens = inputs["attention_mask"].sum(dim=1).tolist()
        answers = []
        for row, plen in zip(out[:, n_in:].tolist(), prompt_lens, strict=True):
            end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row if end is None else row[: end + 1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            answers.append(
                Answer(
                    text=text,
                    finish_reason="stop" if end is not None else "length",
                    prompt_tokens=int(plen),
                    completion_tokens=len(tokens),
                    batch=len(prompts),
                )
            )
        return answers


_LOADED: dict[tuple[Any, ...], LocalVlm] = {}
_LOCK = threading.Lock()


def get_vlm(
    model: str,
    adapter: str | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
) -> LocalVlm:
    """The :class:`LocalVlm` of these settings, loaded once per process. Raises :class:`VlmUnavailable`."""
    dev = pick_device(device)
    key = (model, adapter or "", dev, dtype, trust_remote_code, chat_template or "")
    with _LOCK:
        vlm = _LOADED.get(key)
        if vlm is None:
            check_deps(model, adapter=bool(adapter))
            src = resolve_vlm(model)
            ad = resolve_adapter(adapter) if adapter else None
            vlm = LocalVlm(
                src,
                ad,
                device=dev,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                chat_template=chat_template,
            )
            _LOADED[key] = vlm
    return vlm


def clear_cache() -> None:
    """Forget loaded models (tests; frees memory)."""
    with _LOCK:
        _LOADED.clear()
