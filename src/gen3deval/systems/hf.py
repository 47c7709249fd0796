"""``hf``: a local transformers vision-language model (optionally with a peft LoRA adapter) writes a Three.js
or CadQuery program from the reference image, then revises it.

Same prompts (:mod:`gen3deval.prompts`), code extraction and answer rules (:mod:`gen3deval.systems.answers`)
as ``vlm``; the revision loop is the engine's: attempt i+1's ``generate`` gets ``previous`` (attempt i's
program or answer, how it ran, its render). The model is loaded once per worker process
(:func:`gen3deval.models.hf_vlm.get_vlm`). Batching: the engine hands a worker up to ``batch_size`` generate
stages and first calls :meth:`HfSystem.prefetch` with all of them: their prompts are generated together (one
left-padded ``generate`` per ``batch_size`` prompts) and memoised by prompt digest; each stage's
:meth:`HfSystem.generate` then takes its answer from the memo (or generates alone on a miss). Greedy answers
are the same batched or alone.

Every answer is written to ``answer.md`` in the stage's folder and kept as the ``answer`` artifact
(``Candidate.files``, or ``GenerationFailed.files`` for a failure such as ``no_code`` or ``truncated``), so a
revision of an answer without a program quotes the answer.

Settings: ``model`` (required: a folder, or a Hugging Face id in the local cache), ``adapter`` (a peft LoRA
folder), ``dtype`` (``auto``: bf16 on CUDA, fp32 on CPU), ``device`` (``auto``|``cpu``|``cuda``|``cuda:N``),
``batch_size`` (8), ``max_new_tokens`` (1024), ``temperature`` (0: greedy), ``top_p``, ``seed``,
``trust_remote_code`` (false), ``model_workers`` (0 = auto: with CUDA the model loads in one worker per GPU, a
lane of its own, :mod:`gen3deval.engine.lanes`; N: a lane of N workers), ``chat_template`` (a Jinja file or text
replacing the model's), ``language``
(``threejs``|``cadquery``; empty: the case's reference language, else threejs), ``attempts`` (1), ``prompt``
(a built-in template or a template file; default: the language's).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

from gen3deval.errors import ConfigError
from gen3deval.mesh.types import Mesh
from gen3deval.suites.base import Case
from gen3deval.systems.base import Candidate, GenerationFailed, System

LANGUAGES = ("threejs", "cadquery")
MEMO_SIZE = 4096  # answers kept per system object (a batch is at most a few dozen)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def prompt_digest(messages: list[dict[str, Any]]) -> str:
    """sha256 of a prompt (its messages, images inline): the memo key of its answer."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


class HfSystem(System):
    name = "hf"
    description = (
        "a local transformers vision-language model (+ LoRA adapter) writing Three.js/CadQuery programs"
    )
    output = "program"
    needs_reference = False
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {
        "model": (str, ...),
        "adapter": (str, None),
        "dtype": (str, "auto"),
        "device": (str, "auto"),
        "batch_size": (int, 8),
        "max_new_tokens": (int, 1024),
        "temperature": (float, 0.0),
        "top_p": (float, None),
        "seed": (int, None),
        "trust_remote_code": (bool, False),
        "chat_template": (str, None),
        "language": (str, ""),
        "attempts": (int, 1),
        "prompt": (str, ""),
        "model_workers": (int, 0),
    }
    path_settings: ClassVar[tuple[str, ...]] = ("adapter",)

    def __init__(self, settings: dict[str, Any] | None = None, *, base_dir: str | Path = ".") -> None:
        super().__init__(settings, base_dir=base_dir)
        self.batch_size = int(self.settings["batch_size"])
        # The engine reads ``language`` (None: per case, see language_of) to check the runtimes it needs.
        self.language: str | None = self.settings["language"] or None
        self._templates: dict[str, Any] = {}
        self._memo: OrderedDict[str, Any] = OrderedDict()
        self._sources: tuple[Any, Any] | None = None

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        from gen3deval.models.hf_vlm import DTYPES

        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"{where}.{key}: expected {expected}, got {settings[key]!r}")

        if settings["language"] not in ("", *LANGUAGES):
            raise bad("language", f"one of {', '.join(LANGUAGES)}")
        if settings["dtype"] not in DTYPES:
            raise bad("dtype", f"one of {', '.join(DTYPES)}")
        if not _DEVICE.match(settings["device"]):
            raise bad("device", "auto, cpu, cuda or cuda:N")
        for key in ("attempts", "batch_size", "max_new_tokens"):
            if settings[key] < 1:
                raise bad(key, "at least 1")
        if settings["model_workers"] < 0:
            raise bad("model_workers", "0 (auto: one per GPU on CUDA) or more")
        if settings["temperature"] < 0:
            raise bad("temperature", "0 (greedy) or more")
        if settings["top_p"] is not None and not 0 < settings["top_p"] <= 1:
            raise bad("top_p", "a number in (0, 1]")
        if not settings["model"].strip():
            raise bad("model", "a model folder or a Hugging Face id")

    @property
    def gpus(self) -> int:
        """GPUs the model runs on: the visible CUDA devices when ``device`` is auto (and CUDA is there) or cuda,
        else 0. Asked by the engine only (it imports torch)."""
        device = str(self.settings["device"])
        if device == "cpu" or device == "mps":
            return 0
        try:
            import torch
        except ImportError:
            return 0
        n = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        return 1 if device.startswith("cuda:") and n else n

    @property
    def model_workers(self) -> int:
        """How many worker processes load the model, in a lane of their own (:mod:`gen3deval.engine.lanes`):
        the setting, or 0 (auto): one per GPU on CUDA, and no lane on the CPU (every worker may load it)."""
        n = int(self.settings["model_workers"])
        return n if n > 0 else self.gpus

    # -- what it reads ------------------------------------------------------------------------------------
    @property
    def revises(self) -> bool:
        """Attempt i+1 reads attempt i (the engine's revision loop) when there are several attempts."""
        return int(self.settings["attempts"]) > 1

    def language_of(self, case: Case | None = None) -> str:
        """The program language: the setting, else the case's reference language, else threejs."""
        lang = self.settings["language"]
        if not lang and case is not None and case.ref_code_lang in LANGUAGES:
            lang = case.ref_code_lang
        return str(lang or "threejs")

    def template(self, language: str) -> Any:
        if language not in self._templates:
            from gen3deval.prompts import load_template

            self._templates[language] = load_template(self.settings["prompt"] or language, self.base_dir)
        return self._templates[language]

    def chat_template(self) -> str | None:
        """The ``chat_template`` setting: a file's text (relative to the spec's folder) or the text itself."""
        value = self.settings["chat_template"]
        if not value:
            return None
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        if "{" not in value and path.is_file():
            return path.read_text(encoding="utf-8")
        if "{" not in value:
            raise ConfigError(f"hf.settings.chat_template: no such file {path} (nor a Jinja template text)")
        return str(value)

    def sources(self) -> tuple[Any, Any]:
        """(model, adapter or None) as :class:`gen3deval.models.hf_vlm.VlmSource`; VlmUnavailable if missing."""
        if self._sources is None:
            from gen3deval.models.hf_vlm import check_deps, resolve_adapter, resolve_vlm

            s = self.settings
            check_deps(s["model"], adapter=bool(s["adapter"]))
            adapter = resolve_adapter(s["adapter"]) if s["adapter"] else None
            self._sources = (resolve_vlm(s["model"]), adapter)
        return self._sources

    def fingerprint_models(self) -> dict[str, Any]:
        """What the protocol fingerprint records: model, weights and adapter hashes, prompt and its version."""
        model, adapter = self.sources()
        langs = [self.settings["language"]] if self.settings["language"] else list(LANGUAGES)
        versions = [self.template(lang).version for lang in langs]
        return {
            "model": self.settings["model"],
            "weights_sha256": model.weights_sha256,
            "adapter": self.settings["adapter"],
            "adapter_sha256": adapter.weights_sha256 if adapter is not None else None,
            "prompt": self.settings["prompt"] or "/".join(langs),
            "prompt_version": "/".join(versions),
        }

    # -- planning hooks -----------------------------------------------------------------------------------
    def attempts(self, case: Case) -> int:
        return int(self.settings["attempts"])

    def input_fingerprint(self, case: Case, attempt: int) -> str:
        # New weights, a new adapter or a changed prompt generate again.
        model, adapter = self.sources()
        ad = adapter.weights_sha256[:16] if adapter is not None else "-"
        version = self.template(self.language_of(case)).version
        return f"prompt:{version}|weights:{model.weights_sha256[:16]}|adapter:{ad}"

    def preflight(self, cases: list[Case]) -> list[str]:
        """The model and adapter exist (no download), the prompt templates load, and the processor loads
        (a processor that needs a missing library stops the run here, not in every case)."""
        from gen3deval.models.hf_vlm import check_processor

        model, _ = self.sources()
        for lang in {self.language_of(c) for c in cases} or {self.language_of()}:
            self.template(lang)
        self.chat_template()
        check_processor(model, trust_remote_code=bool(self.settings["trust_remote_code"]))
        return []

    # -- generation ---------------------------------------------------------------------------------------
    def _model(self) -> Any:
        from gen3deval.models.hf_vlm import get_vlm

        s = self.settings
        return get_vlm(
            s["model"],
            s["adapter"],
            device=s["device"],
            dtype=s["dtype"],
            trust_remote_code=bool(s["trust_remote_code"]),
            chat_template=self.chat_template(),
        )

    def messages(self, case: Case, attempt: int, previous: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The OpenAI-style messages of this attempt (the prompt templates, the engine's feedback)."""
        from gen3deval.systems.answers import attempt_messages

        if case.image is None:
            raise GenerationFailed(
                "generation_error", f"case {case.id!r}: no reference image to show the model"
            )
        return attempt_messages(self.template(self.language_of(case)), Path(case.image), attempt, previous)

    def _answer(self, prompts: list[list[dict[str, Any]]]) -> list[Any]:
        s = self.settings
        return list(
            self._model().generate(
                prompts,
                max_new_tokens=s["max_new_tokens"],
                temperature=s["temperature"],
                top_p=s["top_p"],
                seed=s["seed"],
            )
        )

    def _remember(self, key: str, answer: Any) -> None:
        self._memo[key] = answer
        self._memo.move_to_end(key)
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)

    def prefetch(self, requests: list[dict[str, Any]]) -> None:
        """Generate the answers of ``requests`` (``{"case", "attempt", "previous"}`` each) in batches of
        ``batch_size`` (prompts of similar length together) and memoise them; a request whose prompt cannot
        be built is skipped (its stage reports the problem)."""
        todo: dict[str, list[dict[str, Any]]] = {}
        for r in requests:
            try:
                msgs = self.messages(r["case"], int(r.get("attempt", 1)), r.get("previous"))
            except Exception:
                continue
            key = prompt_digest(msgs)
            if key not in self._memo:
                todo.setdefault(key, msgs)
        items = sorted(todo.items(), key=lambda kv: len(json.dumps(kv[1])))
        for i in range(0, len(items), self.batch_size):
            chunk = items[i : i + self.batch_size]
            for (key, _), answer in zip(chunk, self._answer([m for _, m in chunk]), strict=True):
                self._remember(key, answer)

    def generate(
        self,
        case: Case,
        reference: Mesh | None,
        workdir: Path,
        attempt: int = 1,
        previous: dict[str, Any] | None = None,
    ) -> Candidate:
        from gen3deval.systems.answers import classify

        msgs = self.messages(case, attempt, previous)
        key = prompt_digest(msgs)
        answer = self._memo.get(key)
        prefetched = answer is not None
        if answer is None:
            answer = self._answer([msgs])[0]
            self._remember(key, answer)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "answer.md"
        path.write_text(answer.text, encoding="utf-8")
        language = self.language_of(case)
        meta = {
            "model": self.settings["model"],
            "prompt": self.template(language).version,
            "prompt_sha256": key,
            "prefetched": prefetched,
            **answer.info(),
        }
        program, failure = classify(answer.text, language, finish_reason=answer.finish_reason)
        if failure is not None or program is None:
            error_class, message = failure or ("no_code", f"no {language} program in the answer")
            raise GenerationFailed(error_class, message, files={"answer": str(path)}, meta=meta)
        return Candidate(program=program, language=language, meta=meta, files={"answer": str(path)})
