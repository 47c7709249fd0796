"""The ``hf`` system on a tiny random Idefics3 model built in code (no download): loading from a folder and from
an offline Hugging Face cache, a LoRA adapter, batched == one-at-a-time greedy answers, garbage -> no_code."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("peft")

from gen3deval.errors import ConfigError
from gen3deval.models import hf_vlm
from gen3deval.models.clip import weights_sha256
from gen3deval.models.hf_vlm import VlmUnavailable, get_vlm, resolve_vlm, to_chat
from gen3deval.models.testing import make_random_lora, make_random_vlm
from gen3deval.suites.base import Case
from gen3deval.systems.answers import classify
from gen3deval.systems.base import GenerationFailed, create_system
from gen3deval.systems.hf import HfSystem
from testdata import hf_cache_entry, offline_hf

TOKENS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_vlm(tmp_path_factory.mktemp("vlm") / "tiny", seed=0)


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_lora(model_dir, tmp_path_factory.mktemp("lora") / "adapter", seed=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    out = []
    for i, size in enumerate([(64, 64), (40, 90), (120, 30), (64, 64), (33, 47)]):
        p = d / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _system(model: Path, **settings: Any) -> HfSystem:
    s = create_system("hf", {"model": str(model), "max_new_tokens": TOKENS, **settings})
    assert isinstance(s, HfSystem)
    return s


def _direct_answer(model: Path, messages: list[dict[str, Any]], adapter: Path | None = None) -> str:
    """The answer by transformers alone (independent of LocalVlm): processor + model, greedy."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(model)
    m = AutoModelForImageTextToText.from_pretrained(model)
    if adapter is not None:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter)
    chat, ims = to_chat(messages)
    text = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inp = proc(text=[text], images=[ims], return_tensors="pt")
    with torch.inference_mode():
        out = m.eval().generate(**inp, max_new_tokens=TOKENS, do_sample=False)
    return str(proc.tokenizer.decode(out[0, inp["input_ids"].shape[1] :], skip_special_tokens=True))


# ----------------------------------------------------------------------------------------------------------


def test_folder_model_answers_like_transformers_alone(
    model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    s = _system(model_dir, language="cadquery")
    case = Case(id="c0", image=str(images[0]))
    with pytest.raises(GenerationFailed) as ei:
        s.generate(case, None, tmp_path, attempt=1)
    answer = (tmp_path / "answer.md").read_text(encoding="utf-8")
    assert ei.value.files == {"answer": str(tmp_path / "answer.md")}
    assert answer == _direct_answer(model_dir, s.messages(case, 1, None))
    assert answer.strip()  # random text, not empty: no_code because there is no program in it
    assert ei.value.error_class == "no_code" and ei.value.meta["finish_reason"] == "stop"
    assert 0 < ei.value.meta["completion_tokens"] <= TOKENS and ei.value.meta["prefetched"] is False


def test_hf_cache_layout_resolves_offline_by_id(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: list[object],
    images: list[Path],
) -> None:
    home = tmp_path / "hf"
    snap = hf_cache_entry(home, "org/tiny-vlm", model_dir, "89abcdef0123456789abcdef0123456789abcdef")
    offline_hf(monkeypatch, home)
    src = resolve_vlm("org/tiny-vlm")
    assert Path(src.path) == snap and src.weights_sha256 == resolve_vlm(str(model_dir)).weights_sha256
    by_id, by_dir = get_vlm("org/tiny-vlm", device="cpu"), get_vlm(str(model_dir), device="cpu")
    assert by_id is not by_dir and get_vlm("org/tiny-vlm", device="cpu") is by_id  # loaded once per process
    msgs = _system(model_dir).messages(Case(id="c", image=str(images[1])), 1, None)
    assert by_id.generate([msgs], max_new_tokens=TOKENS) == by_dir.generate([msgs], max_new_tokens=TOKENS)
    assert no_network == []


def test_missing_model_is_one_line_naming_it_and_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object], model_dir: Path
) -> None:
    offline_hf(monkeypatch, tmp_path / "empty_home")
    with pytest.raises(VlmUnavailable) as ei:
        resolve_vlm("OpenGVLab/InternVL3-2B")
    msg = str(ei.value)
    assert "\n" not in msg and "OpenGVLab/InternVL3-2B" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "huggingface-cli download OpenGVLab/InternVL3-2B" in msg
    assert isinstance(ei.value, ConfigError)  # the run stops before any work, with this line
    s = create_system("hf", {"model": "OpenGVLab/InternVL3-2B"})
    with pytest.raises(VlmUnavailable, match="InternVL3-2B"):
        s.preflight([Case(id="x", image="x.png")])
    with pytest.raises(VlmUnavailable, match="no such folder"):
        resolve_vlm(str(tmp_path / "nope" / "model"))
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    shutil.copy(model_dir / "config.json", noweights)
    with pytest.raises(VlmUnavailable, match=r"no \*\.safetensors"):
        resolve_vlm(str(noweights))
    with pytest.raises(VlmUnavailable, match="adapter: no such folder"):
        create_system("hf", {"model": str(model_dir), "adapter": str(tmp_path / "no-adapter")}).sources()
    assert no_network == []


def test_adapter_changes_answers_and_fingerprints(
    model_dir: Path, adapter_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    base, tuned = _system(model_dir), _system(model_dir, adapter=str(adapter_dir))
    case = Case(id="c", image=str(images[2]))
    msgs = base.messages(case, 1, None)
    assert msgs == tuned.messages(case, 1, None)
    a, b = base._answer([msgs])[0], tuned._answer([msgs])[0]
    assert a.text != b.text
    assert b.text == _direct_answer(model_dir, msgs, adapter=adapter_dir)
    fa, fb = base.fingerprint_models(), tuned.fingerprint_models()
    assert fa["weights_sha256"] == fb["weights_sha256"] == weights_sha256(model_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    assert fa["adapter_sha256"] is None
    assert fb["adapter_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert base.input_fingerprint(case, 1) != tuned.input_fingerprint(case, 1)
    # A retrained adapter in the same folder: a new fingerprint, so its cases are generated again.
    other = make_random_lora(model_dir, tmp_path / "other", seed=7)
    shutil.copyfile(other / "adapter_model.safetensors", weights)
    again = _system(model_dir, adapter=str(adapter_dir))
    assert again.input_fingerprint(case, 1) != tuned.input_fingerprint(case, 1)


def test_batched_greedy_answers_equal_one_at_a_time(
    model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    prog = tmp_path / "prev.py"
    prog.write_text("import cadquery as cq\nresult = cq.Workplane('XY').box(1, 2, 3)\n", encoding="utf-8")
    render = images[4]
    requests: list[dict[str, Any]] = [
        {"case": Case(id=f"c{i}", image=str(p)), "attempt": 1, "previous": None} for i, p in enumerate(images)
    ]
    requests += [
        {
            "case": Case(id="r1", image=str(images[0])),
            "attempt": 2,
            "previous": {
                "program": str(prog),
                "executable": False,
                "error_class": "runtime",
                "error": "boom",
            },
        },
        {
            "case": Case(id="r2", image=str(images[1])),
            "attempt": 2,
            "previous": {"program": str(prog), "executable": True, "render": str(render)},
        },
    ]
    batched = _system(model_dir, language="cadquery", batch_size=3)
    batched.prefetch(requests)  # 7 prompts: batches of 3, 3, 1
    alone = _system(model_dir, language="cadquery", batch_size=1)
    texts = set()
    for r in requests:
        wd_a, wd_b = tmp_path / f"a_{r['case'].id}", tmp_path / f"b_{r['case'].id}"
        with pytest.raises(GenerationFailed) as ea:
            batched.generate(r["case"], None, wd_a, attempt=r["attempt"], previous=r["previous"])
        with pytest.raises(GenerationFailed) as eb:
            alone.generate(r["case"], None, wd_b, attempt=r["attempt"], previous=r["previous"])
        assert ea.value.meta["prefetched"] is True and ea.value.meta["batch"] in (1, 3)
        assert eb.value.meta["prefetched"] is False and eb.value.meta["batch"] == 1
        a, b = (wd_a / "answer.md").read_text(), (wd_b / "answer.md").read_text()
        assert a == b, r["case"].id
        assert ea.value.meta["completion_tokens"] == eb.value.meta["completion_tokens"]
        assert ea.value.meta["prompt_tokens"] == eb.value.meta["prompt_tokens"]
        texts.add(a)
    assert len(texts) >= 2  # the prompts do get different answers: the comparison means something


def test_answers_are_classified_like_vlm(model_dir: Path, images: list[Path], tmp_path: Path) -> None:
    # Cut at max_new_tokens: truncated (the end token comes only after ~16 tokens).
    s = _system(model_dir, language="threejs", max_new_tokens=3)
    with pytest.raises(GenerationFailed) as ei:
        s.generate(Case(id="t", image=str(images[0])), None, tmp_path)
    assert ei.value.error_class == "truncated" and ei.value.meta["completion_tokens"] == 3
    assert classify("", "cadquery") == (None, ("no_code", "the model's answer is empty"))
    assert classify("no code here", "cadquery")[1] == ("no_code", "no cadquery program in the answer")
    assert classify("I can't", "cadquery", refusal="policy")[1] == ("refusal", "the model refused: policy")
    code = "```python\nimport cadquery as cq\nresult = cq.Workplane('XY').box(1, 1, 1)\n```"
    program, failure = classify(code, "cadquery")
    assert failure is None and program is not None and "box(1, 1, 1)" in program
    assert classify(code, "cadquery", finish_reason="length")[1] == (
        "truncated",
        "the answer was cut at max_tokens (finish_reason: length)",
    )


def test_program_answers_become_candidates(model_dir: Path, images: list[Path], tmp_path: Path) -> None:
    """An answer holding a program (memoised under its prompt, as prefetch leaves it) is a program candidate
    that names its answer file."""
    s = _system(model_dir, language="cadquery")
    case = Case(id="p", image=str(images[0]))
    text = "Here:\n```python\nimport cadquery as cq\nresult = cq.Workplane('XY').box(1, 2, 3)\n```\n"
    from gen3deval.systems.hf import prompt_digest

    s._remember(prompt_digest(s.messages(case, 1, None)), hf_vlm.Answer(text, "stop", 10, 20))
    cand = s.generate(case, None, tmp_path)
    assert cand.language == "cadquery" and cand.program is not None and "box(1, 2, 3)" in cand.program
    assert cand.files["answer"] == str(tmp_path / "answer.md") and cand.meta["prefetched"] is True
    assert (tmp_path / "answer.md").read_text() == text


def test_language_follows_the_case_and_revision_quotes_the_answer(
    model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    s = _system(model_dir, attempts=2)
    assert s.revises and not _system(model_dir).revises and s.attempts(Case(id="x")) == 2
    gencad = Case(id="g", image=str(images[0]), ref_code="import cadquery", ref_code_lang="cadquery")
    assert (
        s.language_of(gencad) == "cadquery" and s.language_of(Case(id="i", image=str(images[0]))) == "threejs"
    )
    answer = tmp_path / "answer.md"
    answer.write_text("PREVIOUS-ANSWER-TEXT", encoding="utf-8")
    previous = {
        "program": None,
        "answer": str(answer),
        "executable": False,
        "error_class": "no_code",
        "error": "x",
    }
    msgs = s.messages(gencad, 2, previous)
    text = "\n".join(p["text"] for m in msgs[1:] for p in m["content"] if p["type"] == "text")
    assert "PREVIOUS-ANSWER-TEXT" in text and "no_code" in text


def test_to_chat_composites_transparency_over_white(tmp_path: Path) -> None:
    from gen3deval.prompts import image_part

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 64  # 25 % red over white: 255 - 0.251 * (255 - 200) = 241.2 -> 241
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    chat, ims = to_chat(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "t"}, image_part(p)]},
        ]
    )
    assert chat == [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "text", "text": "t"}, {"type": "image"}]},
    ]
    px = np.asarray(ims[0])
    assert ims[0].mode == "RGB" and tuple(px[0, 0]) == (
        241,
        round(255 - 64 / 255 * 255),
        round(255 - 64 / 255 * 255),
    )


def test_chat_template_override(model_dir: Path, images: list[Path], tmp_path: Path) -> None:
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}[{{ m['role'] }}]{% endfor %}<image>OVERRIDE:", encoding="utf-8")
    s = _system(model_dir, chat_template=str(tpl))
    vlm = s._model()
    chat, _ = to_chat(s.messages(Case(id="c", image=str(images[0])), 1, None))
    assert vlm.prompt_text(chat) == "[system][user]<image>OVERRIDE:"
    with pytest.raises(ConfigError, match="chat_template: no such file"):
        _system(model_dir, chat_template="missing.jinja").chat_template()


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"dtype": "int8"}, r"hf\.settings\.dtype: expected one of auto"),
        ({"device": "gpu"}, r"hf\.settings\.device"),
        ({"batch_size": 0}, r"hf\.settings\.batch_size: expected at least 1"),
        ({"language": "openscad"}, r"hf\.settings\.language"),
        ({"top_p": 1.5}, r"hf\.settings\.top_p"),
        ({"temperature": -1}, r"hf\.settings\.temperature"),
        ({"lora": "x"}, r"hf\.settings\.lora: unknown setting"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_system("hf", {"model": "org/x", **settings})
    with pytest.raises(ConfigError, match=r"hf\.settings\.model: required"):
        create_system("hf", {})
