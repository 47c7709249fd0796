"""write_reports end to end: files, JSON conventions, CSV/markdown tables, and a safe, complete report.html."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gen3deval.metrics.base import metric_info
from gen3deval.report import html, read_results, sort_rows, write_reports

HOSTILE_CASE = "<script>alert('x')</script>"
HOSTILE_SYSTEM = 'sys"><img src=x onerror=alert(1)>'
SYSTEMS = ["oracle", "bbox", HOSTILE_SYSTEM]
METRIC_KEYS = ("chamfer_l2", "hausdorff", "fscore@0.01", "volume_iou", "psnr", "ssim")


def _meta() -> dict[str, Any]:
    return {
        "run_id": "test-run",
        "created": "2025-01-01T00:00:00+00:00",
        "suite": {
            "name": "manifest:tiny",
            "description": "manifest:tiny (4 cases, 2 categories)",
            "suites": [
                {"name": "manifest:tiny", "problems": ["manifest.jsonl:3: missing 'id'; entry skipped"]}
            ],
        },
        "systems": SYSTEMS,
        "protocol": {"name": "default", "version": "1", "hash": "0123abcd", "params": {"samples": 1000}},
        "n_cases": 4,
        "metrics": {
            "chamfer_l2": {
                "higher_is_better": False,
                "unit": "unit length^2",
                "display": "CD x10^3",
                "scale": 1000.0,
            },
            "hausdorff": {"higher_is_better": False, "unit": "unit length", "display": "HD", "scale": 1.0},
            "fscore@0.01": {"higher_is_better": True, "unit": "fraction", "display": "F@1", "scale": 1.0},
            "volume_iou": {"higher_is_better": True, "unit": "fraction", "display": "IoU", "scale": 1.0},
            "psnr": {"higher_is_better": True, "unit": "dB", "display": "PSNR", "scale": 1.0},
            "ssim": {"higher_is_better": True, "unit": "fraction", "display": "SSIM", "scale": 1.0},
            "best_iou": {"higher_is_better": True, "unit": "fraction", "display": "Best IoU", "scale": 1.0},
        },
    }


def _png(path: Path, color: tuple[int, int, int], size: int = 512) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size, size, 4), np.uint8)  # transparent background -> white in thumbnails
    a[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = (*color, 255)
    Image.fromarray(a).save(path)
    return path.name


def make_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cases = [("chair", "furniture"), ("table", "furniture"), ("axe", "tool"), (HOSTILE_CASE, "tool")]
    rows: list[dict[str, Any]] = []
    for k, (case, cat) in enumerate(cases):
        ref = f"artifacts/ref_{k}.png"
        _png(run_dir / ref, (20, 120, 200))
        for j, system in enumerate(SYSTEMS):
            failed = (system == "bbox" and k == 1) or (system == HOSTILE_SYSTEM and k in (0, 3))
            render = f"artifacts/render_{k}_{j}.png"
            if not failed:
                _png(run_dir / render, (200, 40 * j, 40))
            r: dict[str, Any] = {
                "case": case,
                "category": cat,
                "system": system,
                "attempt": 1,
                "executable": not failed,
                "error_class": ("runtime" if k == 1 else "timeout") if failed else None,
                "error": "ReferenceError: <b>THREE</b> is not defined & more" if failed else None,
                "volume_iou_method": None if failed else "grid",
                "timings": {"score": 0.01 * k},
                "artifacts": {
                    "ref_image": ref,
                    "render": None if failed else render,
                    "renders": [] if failed else [render],
                    "mesh": None,
                    "program": None,
                },
                "protocol": _meta()["protocol"],
            }
            for key in (*METRIC_KEYS, "best_iou"):
                r[key] = None
            if not failed:
                good = 1.0 if system == "oracle" else 0.5 + 0.1 * k
                r.update(
                    chamfer_l2=0.0 if system == "oracle" else 0.002 * (k + 1),
                    hausdorff=0.0 if system == "oracle" else 0.1 * (k + 1),
                    volume_iou=good,
                    ssim=good,
                    psnr=100.0 if system == "oracle" else 20.0 + k,  # identical images: capped at 100 dB
                )
                r["fscore@0.01"] = good
            rows.append(r)
    rows.append({**rows[0], "attempt": 2, "volume_iou": 0.123})  # a later attempt: ignored by 'single'
    return rows[::-1], _meta()  # any order in, sorted out


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("run")
    rows, meta = make_run(run_dir)
    report = write_reports(run_dir, rows, meta, n_resamples=2000)
    return run_dir, report, rows, meta


def test_files_written(run: Any) -> None:
    run_dir, report, _, _ = run
    assert report == run_dir / "report.html"
    for name in ("results.jsonl", "summary.json", "leaderboard.csv", "per_category.csv", "errors.csv"):
        assert (run_dir / name).is_file(), name
    for name in ("leaderboard.md", "per_category.md", "errors.md"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp"))


def _strict(text: str) -> Any:
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def test_results_jsonl_sorted_and_strict(run: Any) -> None:
    run_dir, _, rows, _ = run
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    parsed = [_strict(line) for line in lines]
    assert len(parsed) == len(rows)
    keys = [(r["case"], r["system"], r["attempt"]) for r in parsed]
    assert keys == sorted(keys)
    oracle = next(r for r in parsed if r["system"] == "oracle" and r["case"] == "axe")
    assert oracle["psnr"] == 100.0
    back = read_results(run_dir / "results.jsonl")
    oracle_back = next(r for r in back if r["system"] == "oracle" and r["case"] == "axe")
    assert oracle_back["psnr"] == 100.0 and oracle_back["volume_iou"] == 1.0
    assert {r["case"] for r in back} == {"chair", "table", "axe", HOSTILE_CASE}


def test_summary_json(run: Any) -> None:
    run_dir, _, _, _ = run
    s = _strict((run_dir / "summary.json").read_text())
    assert s["meta"]["run_id"] == "test-run" and s["attempts"] == "single"
    assert s["bootstrap"] == {"n_resamples": 2000, "seed": 0, "level": 0.95, "method": "percentile"}
    assert s["headline"] == "volume_iou"
    assert "best_iou" not in s["metrics"]  # no value anywhere
    by = {x["system"]: x for x in s["systems"]}
    assert set(by) == set(SYSTEMS)
    assert by["oracle"]["rank"] == 1 and by["oracle"]["vsr"]["value"] == 1.0
    # bbox failed 'table': valid-only mean over the 3 others, all-cases mean with 0 for the failure.
    valid = [0.5, 0.7, 0.8]
    assert by["bbox"]["metrics"]["volume_iou"]["valid"]["value"] == pytest.approx(np.mean(valid))
    assert by["bbox"]["metrics"]["volume_iou"]["all"]["value"] == pytest.approx(sum(valid) / 4)
    # chamfer of bbox: 2, 6, 8 e-3 and a failure scored worst, with the registry's statistic for both.
    spec = metric_info("chamfer_l2")
    fn = np.median if spec.aggregate == "median" else np.mean
    worst = max(spec.worst, 0.008)
    cd = by["bbox"]["metrics"]["chamfer_l2"]
    assert cd["valid"]["value"] == pytest.approx(fn([0.002, 0.006, 0.008]))
    assert cd["all"]["value"] == pytest.approx(fn([0.002, 0.006, 0.008, worst]))
    assert cd["valid"]["statistic"] == cd["all"]["statistic"] == spec.aggregate
    # HOSTILE_SYSTEM failed 2 of 4: chamfer (4e-3, 6e-3, worst, worst); +inf is written as null (n > 0).
    hostile_cd = by[HOSTILE_SYSTEM]["metrics"]["chamfer_l2"]["all"]
    expected = float(fn([0.004, 0.006, max(spec.worst, 0.006), max(spec.worst, 0.006)]))
    assert hostile_cd["value"] == (None if math.isinf(expected) else pytest.approx(expected))
    assert by["oracle"]["metrics"]["psnr"]["valid"]["value"] == 100.0
    assert by["bbox"]["errors"] == {"runtime": 1} and by[HOSTILE_SYSTEM]["errors"] == {"timeout": 2}
    assert by["bbox"]["vs_best"]["system"] == "oracle" and by["bbox"]["vs_best"]["diff"] < 0


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_csv_tables(run: Any) -> None:
    run_dir, _, _, _ = run
    lb = _csv(run_dir / "leaderboard.csv")
    assert lb[0]["system"] == "oracle" and {r["system"] for r in lb} == set(SYSTEMS)
    bbox = next(r for r in lb if r["system"] == "bbox")
    assert float(bbox["volume_iou:valid"]) == pytest.approx(np.mean([0.5, 0.7, 0.8]))
    assert bbox["volume_iou:n_valid"] == "3" and bbox["volume_iou:all_n"] == "4"
    assert bbox["chamfer_l2:statistic"] == metric_info("chamfer_l2").aggregate
    assert bbox["volume_iou:statistic"] == "mean" and bbox["volume_iou:worst"] == "0.0"
    assert bbox["volume_iou:n_undefined"] == "0"
    assert float(bbox["vsr"]) == 0.75 and bbox["n_executable"] == "3"
    hostile = next(r for r in lb if r["system"] == HOSTILE_SYSTEM)
    assert hostile["chamfer_l2:all_n"] == "4" and hostile["n_executable"] == "2"
    assert (
        float(bbox["volume_iou:valid_lo"])
        <= float(bbox["volume_iou:valid"])
        <= float(bbox["volume_iou:valid_hi"])
    )
    pc = _csv(run_dir / "per_category.csv")
    assert len(pc) == 6 and {r["category"] for r in pc} == {"furniture", "tool"}
    bbox_furn = next(r for r in pc if r["system"] == "bbox" and r["category"] == "furniture")
    assert float(bbox_furn["volume_iou:all"]) == pytest.approx(0.25)  # 0.5 and a failure
    errs = _csv(run_dir / "errors.csv")
    counts = {(r["system"], r["error_class"]): int(r["count"]) for r in errs}
    assert counts[("bbox", "runtime")] == 1 and counts[(HOSTILE_SYSTEM, "timeout")] == 2
    assert counts[("oracle", "runtime")] == 0 and len(errs) == 6


def test_markdown_tables(run: Any) -> None:
    run_dir, _, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    stat = metric_info("chamfer_l2").aggregate
    assert "IoU ↑ mean (valid)" in md and "IoU ↑ mean (all, failures = 0)" in md
    assert f"CD x10^3 ↓ {stat} (valid)" in md and f"CD x10^3 ↓ {stat} (all, failures = " in md
    assert "F@1 ↑ mean (valid)" in md
    assert "`default` v1" in md and "0123abcd" in md
    bbox_line = next(ln for ln in md.splitlines() if "| bbox |" in ln)
    cd = np.median([2, 6, 8]) if stat == "median" else np.mean([2, 6, 8])
    assert f"{cd:.3f}" in bbox_line  # CD x10^3 valid-only statistic of 2, 6, 8
    assert "(3/4)" in bbox_line
    # A '|' inside a cell is escaped, so every row has the same number of cells.
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len({ln.replace("\\|", "").count("|") for ln in rows}) == 1


def test_report_html_parses_and_is_complete(run: Any) -> None:
    _, report, _, _ = run
    page = report.read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    text = "".join(parser.text)
    tags = [t for t, _ in parser.tags]
    # Hostile data stays data: one script element (the page's own, allowed by hash in the CSP), no injected
    # image, and the texts are shown as written.
    assert tags.count("script") == 1 and page.count("<script") == 1
    own = (Path(html.__file__).parent / "templates" / "report.js").read_text(encoding="utf-8")
    assert f"<script>{own}</script>" in page
    digest = base64.b64encode(hashlib.sha256(own.encode()).digest()).decode()
    csp = next(a["content"] for t, a in parser.tags if t == "meta" and a.get("http-equiv"))
    assert f"script-src 'sha256-{digest}'" in (csp or "") and "default-src 'none'" in (csp or "")
    assert all(attrs.get("src") != "x" and "onerror" not in attrs for _, attrs in parser.tags)
    assert HOSTILE_CASE in text and HOSTILE_SYSTEM in text
    assert "&lt;script&gt;" in page
    for system in SYSTEMS:
        assert system in text
    for case in ("chair", "table", "axe", HOSTILE_CASE):
        assert case in text
    assert "ReferenceError: <b>THREE</b> is not defined & more" in text  # the message, escaped
    for needle in (
        "Leaderboard",
        "Per category",
        "Failures (3)",
        "Cases (4)",
        "Protocol fingerprint",
        "0123abcd",
    ):
        assert needle in text, needle
    assert "Suite problems (1)" in text and "missing 'id'" in text
    stat = metric_info("chamfer_l2").aggregate
    assert f"CD x10^3 ↓ {stat}" in text and "F@1 ↑ mean" in text and "all, failures = 0" in text
    assert "timeout" in text and "runtime" in text


def _decode(uri: str) -> Image.Image:
    assert uri.startswith(("data:image/webp;base64,", "data:image/jpeg;base64,")), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_report_html_images(run: Any) -> None:
    run_dir, report, _, _ = run
    parser = _Collector()
    text = report.read_text()
    parser.feed(text[text.index("<h2>Cases") :])  # the per-case table (the revision section has its own)
    imgs = [a for t, a in parser.tags if t == "img" and a.get("src")]
    # 4 reference images + one render per executable (case, system): 12 - 3 failures.
    assert len(imgs) == 4 + 9
    for a in imgs:
        im = _decode(a["src"] or "")
        assert max(im.size) == 160
        assert im.convert("RGB").getpixel((2, 2)) == pytest.approx((255, 255, 255), abs=3)  # alpha over white
    zooms = [a for t, a in parser.tags if t == "a" and "zoom" in (a.get("class") or "")]
    assert len(zooms) == 13
    for a in zooms:
        assert (run_dir / (a["href"] or "")).is_file()  # the full-size file, relative to the run folder
        big = _decode(a["data-full"] or "")  # click to enlarge: embedded at full size (512 px here)
        assert big.size == (512, 512)
        assert big.convert("RGB").getpixel((2, 2)) == pytest.approx((255, 255, 255), abs=3)
    assert report.stat().st_size < 200_000


def test_rows_are_validated() -> None:
    with pytest.raises(ValueError, match="row 1 has no 'case'"):
        sort_rows([{"case": "a", "system": "s"}, {"system": "s"}])
    with pytest.raises(ValueError, match="duplicate results row for case 'a', system 's', attempt 1"):
        sort_rows([{"case": "a", "system": "s"}, {"case": "a", "system": "s", "attempt": 1}])
    with pytest.raises(ValueError, match="non-integer attempt"):
        sort_rows([{"case": "a", "system": "s", "attempt": "first"}])


def test_missing_images_and_empty_run(tmp_path: Path) -> None:
    rows, meta = make_run(tmp_path / "a")
    for p in (tmp_path / "a" / "artifacts").glob("render_*"):
        p.unlink()
    (tmp_path / "a" / "artifacts" / "ref_0.png").write_bytes(b"not a png")
    page = write_reports(tmp_path / "a", rows, meta, n_resamples=200).read_text()
    assert "image file missing" in page and "unreadable image" in page
    empty = write_reports(tmp_path / "b", [], {"systems": ["x"]}, n_resamples=100)
    parser = _Collector()
    parser.feed(empty.read_text())
    assert "system &#x27;x&#x27; has no results" in empty.read_text()
    assert _csv(tmp_path / "b" / "leaderboard.csv") == []


def test_final_attempt_mode(tmp_path: Path) -> None:
    rows, meta = make_run(tmp_path)
    write_reports(tmp_path, rows, meta, attempts="final", n_resamples=200)
    s = _strict((tmp_path / "summary.json").read_text())
    oracle = next(x for x in s["systems"] if x["system"] == "oracle")
    # chair's attempt 2 scored 0.123: the final mean is (0.123 + 1 + 1 + 1) / 4.
    assert oracle["metrics"]["volume_iou"]["all"]["value"] == pytest.approx((0.123 + 3) / 4)
    assert s["attempts"] == "final"


def test_meta_drives_display_and_odd_meta_is_tolerated(tmp_path: Path) -> None:
    rows = [
        {"case": "a", "system": "s", "executable": True, "chamfer_l2": 0.02},
        {"case": "b", "system": "s", "executable": True, "chamfer_l2": 0.04},
    ]
    meta = {
        "protocol": "not a dict",
        "suite": None,
        "metrics": {
            "chamfer_l2": {"higher_is_better": False, "unit": "u", "display": "Chamfer (custom)", "scale": 10}
        },
    }
    page = write_reports(tmp_path, rows, meta, n_resamples=100).read_text()
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Chamfer (custom) ↓" in md and "Chamfer (custom) ↓" in page
    assert "| 0.300 [" in md  # mean 0.03 shown x10
