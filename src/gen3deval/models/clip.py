"""CLIP through transformers: model resolution (local folder or the local HF cache), weight
fingerprints, and a cached image/text encoder.

- :func:`resolve_clip` finds a model without any network access and hashes its weights
  (:class:`ModelSource`, recorded in the protocol fingerprint). It raises :class:`ModelUnavailable`
  (one line, saying how to provide the model) when the weights or torch/transformers are missing;
  callers check it before a run and skip the CLIP metrics instead of stopping.
- :func:`get_clip` loads a :class:`ClipEncoder` once per process per (model, device).

Preprocessing is CLIP's standard one read from the model folder's ``preprocessor_config.json``
through the PIL image processor (resize shortest edge bicubic, centre crop, rescale, normalise);
never the torchvision backend, so results do not depend on whether torchvision is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import Gen3DEvalError, UserInputError

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
# Embeddings an encoder remembers (~2 kB each for ViT-B/32): a batch of 8 assets x 8 views is 64.
MEMO_SIZE = 1024
INSTALL_HINT = "pip install 'gen3deval[clip]' (install torch==2.13.0 first)"


class ModelUnavailable(Gen3DEvalError):
    """A model's weights (or torch/transformers) are not available; the message is one line saying how
    to provide them. Not a DependencyError on purpose: a run skips the metric and goes on."""

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(" ".join(f"CLIP model {model!r} {reason}".split()))


@dataclass(frozen=True)
class ModelSource:
    """Where a model was found. ``id``: as given; ``path``: the resolved folder; ``weights_sha256``:
    sha256 hex of the weight file (safetensors preferred), or for several files the sha256 of their
    hex digests joined by newlines in file-name order."""

    id: str
    path: str
    weights_sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "path": self.path, "weights_sha256": self.weights_sha256}


def _importable(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (cheap: no torch import)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _check_deps(model: str) -> None:
    missing = [m for m in ("torch", "transformers") if not _importable(m)]
    if missing:
        raise ModelUnavailable(model, f"needs {' and '.join(missing)}, not installed: {INSTALL_HINT}")


def _hub_cache_dir() -> str | None:
    """The HF hub cache, read from the environment at call time (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None  # huggingface_hub's default (~/.cache/huggingface/hub)


def _looks_like_path(model: str) -> bool:
    """A Hugging Face id is ``name`` or ``org/name``; anything else that is no folder is a wrong path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files transformers loads from ``folder``: ``*.safetensors`` if any, else
    ``pytorch_model*.bin``; sorted by name. Empty when there are none."""
    p = Path(folder)
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(f for f in p.glob(pattern) if f.is_file())
        if files:
            return files
    return []


_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    """sha256 of one file, cached per process by (real path, size, mtime_ns)."""
    real = os.path.realpath(path)  # HF cache snapshots are symlinks to blobs
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
    return digest


def weights_sha256(folder: str | Path) -> str:
    """Fingerprint of the weights in ``folder`` (see :class:`ModelSource`); ValueError if none."""
    files = weight_files(folder)
    if not files:
        raise ValueError(f"{folder}: no *.safetensors or pytorch_model*.bin weight file")
    if len(files) == 1:
        return _file_sha256(files[0])
    joined = "\n".join(_file_sha256(f) for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()


def locate_model(
    model: str, fail: Callable[[str], Exception], *, instead: str, no_folder: str, install_hint: str
) -> ModelSource:
    """A transformers model folder: ``model`` itself when it is a folder, else a Hugging Face id looked up ONLY in
    the local cache (never a network call; works with ``HF_HUB_OFFLINE=1``), with the sha256 of its weights.

    ``fail(reason)`` makes the one-line error (``reason`` follows the model's name); ``instead``: what to give
    instead of an id missing from the cache, ``no_folder``: the same for a path that is no folder,
    ``install_hint``: how to install huggingface_hub. Shared by CLIP and the local vision-language models."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        folder = local.resolve()
    elif _looks_like_path(model):
        raise fail(f"is no such folder (nor a Hugging Face id): {no_folder}")
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo_id=model, cache_dir=_hub_cache_dir(), local_files_only=True))
        except ImportError:
            raise fail(f"needs huggingface_hub, not installed: {install_hint}") from None
        except Exception:
            raise fail(
                "is not in the local Hugging Face cache (no download at run time): run "
                f"`huggingface-cli download {model}` where you have internet (same HF_HOME), or {instead}"
            ) from None
    if not (folder / "config.json").is_file():
        raise fail(f"is not a transformers model folder (no config.json in {folder})")
    if not weight_files(folder):
        raise fail(f"has no *.safetensors or pytorch_model*.bin weights in {folder}")
    return ModelSource(id=model, path=str(folder), weights_sha256=weights_sha256(folder))


def resolve_clip(model: str = DEFAULT_CLIP) -> ModelSource:
    """Find ``model`` (a local folder, or a Hugging Face id looked up ONLY in the local cache).

    Never touches the network (works with ``HF_HUB_OFFLINE=1``). Also checks that torch and
    transformers are installed. Raises :class:`ModelUnavailable` with a one-line fix.
    """
    _check_deps(model)
    return locate_model(
        model,
        lambda reason: ModelUnavailable(model, reason),
        instead="pass --clip-model /path/to/model-folder",
        no_folder="pass --clip-model an existing model folder or an id",
        install_hint=INSTALL_HINT,
    )


def image_processor_class() -> Any:
    """The PIL (slow) CLIP image processor class: ``CLIPImageProcessorPil`` in transformers 5
    (where ``CLIPImageProcessor`` is the torchvision backend), ``CLIPImageProcessor`` before."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the slow PIL one
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars while loading (runs print their own progress); restores the previous state."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def tokenizer_class() -> Any:
    """The Rust-backed CLIP tokenizer: ``CLIPTokenizerFast`` (an alias of ``CLIPTokenizer`` in transformers 5)."""
    hf: Any = importlib.import_module("transformers")
    return getattr(hf, "CLIPTokenizerFast", None) or hf.CLIPTokenizer


def _check_image(i: int, img: Any) -> NDArray[np.uint8]:
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        hint = (
            " (RGBA: composite it first, gen3deval.metrics.clip.composite)"
            if a.ndim == 3 and a.shape[-1] == 4
            else ""
        )
        raise UserInputError(
            f"CLIP image {i}: expected an (H, W, 3) uint8 array, got {a.dtype} {a.shape}{hint}"
        )
    return a


def _l2_normalise(x: torch.Tensor) -> NDArray[np.float32]:
    import torch

    x = x.to(torch.float32)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


class ClipEncoder:
    """A loaded CLIP model + tokenizer + image processor.

    Attributes: ``source`` (:class:`ModelSource`), ``device`` ("cuda"/"cpu"), ``dtype`` (fp16 on CUDA,
    fp32 on CPU), ``dim`` (embedding size D), ``max_tokens`` (77: text is truncated to it).
    """

    def __init__(self, source: ModelSource, device: str = "cpu") -> None:
        try:
            import torch

            hf: Any = importlib.import_module("transformers")
        except ImportError as e:
            raise ModelUnavailable(
                source.id, f"cannot be loaded: {e.name or e} is not installed: {INSTALL_HINT}"
            ) from None
        self.source = source
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        path = source.path
        with _quiet_transformers():
            self.model: Any = hf.CLIPModel.from_pretrained(path, local_files_only=True, dtype=self.dtype)
            self.model.to(device).eval()
            self.tokenizer: Any = tokenizer_class().from_pretrained(path, local_files_only=True)
            self.processor = image_processor_class().from_pretrained(path, local_files_only=True)
        self._memo: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.dim = int(self.model.config.projection_dim)

    def embed_images(self, images: Sequence[NDArray[np.uint8]], batch_size: int = 64) -> NDArray[np.float32]:
        """(N, D) float32 L2-normalised embeddings of N (H, W, 3) uint8 RGB images, ``batch_size`` per forward.

        Images embedded recently (the same bytes) come from a small per-encoder memo: a worker given a batch
        of score stages embeds all their images in one call first, then each stage finds its own."""
        import torch
        from PIL import Image

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        arrays = [_check_image(i, im) for i, im in enumerate(images)]

        def forward(chunk: list[int]) -> NDArray[np.float32]:
            # PIL images: exactly what the processor gets from decoded PNG files.
            pil = [Image.fromarray(arrays[i], "RGB") for i in chunk]
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            return _l2_normalise(_pooled(feats))

        return self._memoised([_image_key(a) for a in arrays], batch_size, forward)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> NDArray[np.float32]:
        """(N, D) float32 L2-normalised embeddings of N texts, each truncated to ``max_tokens`` (77) tokens
        (recent texts come from the memo, like images)."""
        import torch

        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise UserInputError(f"CLIP text {i}: expected a string, got {type(t).__name__}")

        def forward(chunk: list[int]) -> NDArray[np.float32]:
            tok = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            with torch.inference_mode():
                feats = self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device),
                    attention_mask=tok["attention_mask"].to(self.device),
                )
            return _l2_normalise(_pooled(feats))

        return self._memoised(["text:" + t for t in texts], batch_size, forward)

    def _memoised(
        self, keys: list[str], batch_size: int, forward: Callable[[list[int]], NDArray[np.float32]]
    ) -> NDArray[np.float32]:
        """(N, D) rows for ``keys``: memoised ones from the memo, the others by ``forward(indices)`` in chunks of
        ``batch_size``, each distinct key computed once (a key repeated in the call is a copy of its first)."""
        out = np.empty((len(keys), self.dim), np.float32)
        first: dict[str, int] = {}
        todo: list[int] = []
        for i, k in enumerate(keys):
            hit = self._memo.get(k)
            if hit is not None:
                self._memo.move_to_end(k)
                out[i] = hit
            elif k not in first:
                first[k] = i
                todo.append(i)
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            out[chunk] = forward(chunk)
            for i in chunk:
                self._memo[keys[i]] = out[i].copy()
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        for i, k in enumerate(keys):
            if k in first and first[k] != i:
                out[i] = out[first[k]]
        return out


def _image_key(a: NDArray[np.uint8]) -> str:
    """The memo key of an image: its shape and a 128-bit digest of its pixels."""
    return f"{a.shape}:{hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).hexdigest()}"


def _pooled(feats: Any) -> torch.Tensor:
    """transformers 5 returns a model output (projected ``pooler_output``); 4.x a tensor."""
    return feats if not hasattr(feats, "pooler_output") else feats.pooler_output


_ENCODERS: dict[tuple[str, str], ClipEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def default_device() -> str:
    """ "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_clip(model: str | ModelSource = DEFAULT_CLIP, device: str | None = None) -> ClipEncoder:
    """The :class:`ClipEncoder` for ``model`` (an id, a folder, or an already resolved
    :class:`ModelSource`) on ``device`` (None: CUDA if available), loaded once per process and cached.
    Raises :class:`ModelUnavailable`."""
    name = model.id if isinstance(model, ModelSource) else model
    _check_deps(name)
    dev = device or default_device()
    key = (model.path if isinstance(model, ModelSource) else model, dev)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            src = model if isinstance(model, ModelSource) else resolve_clip(model)
            enc = ClipEncoder(src, dev)
            _ENCODERS[key] = enc
    return enc


def clear_cache() -> None:
    """Forget loaded encoders and weight hashes (tests; frees memory)."""
    with _ENCODERS_LOCK:
        _ENCODERS.clear()
    with _HASH_LOCK:
        _HASH_CACHE.clear()
