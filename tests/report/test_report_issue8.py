"""Issue 8 on the report side: strict JSON numbers, CSV injection, the terminal leaderboard, and an HTML page
that ranks by its first metric column, folds the rest, sorts/filters its per-case table and keeps its
pictures when copied alone."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gen3deval.report import write_reports
from gen3deval.report.jsonio import read_summary
from gen3deval.report.summary import summarize
from gen3deval.report.terminal import leaderboard_lines


def _png(path: Path, color: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((256, 256, 4), 0, np.uint8)
    a[64:192, 64:192] = (*color, 255)
    Image.fromarray(a).save(path)
    return str(path.relative_to(path.parent.parent))


def _rows(run_dir: Path, systems: tuple[str, ...] = ("good", "bad"), **extra: Any) -> list[dict[str, Any]]:
    rows = []
    for i in range(6):
        ref = _png(run_dir / "art" / f"ref{i}.png", (20, 20, 200))
        for j, s in enumerate(systems):
            failed = s == "bad" and i % 3 == 0
            render = None if failed else _png(run_dir / "art" / f"r{i}_{j}.png", (200, 20 * i, 20))
            r: dict[str, Any] = {
                "case": f"case{i}",
                "category": "odd" if i % 2 else "even",
                "system": s,
                "attempt": 1,
                "executable": not failed,
                "error_class": "runtime" if failed else None,
                "error": "boom" if failed else None,
                "artifacts": {"ref_image": ref, "render": render},
                "volume_iou": None if failed else (0.9 if j == 0 else 0.4) - 0.01 * i,
                "chamfer_l2": None if failed else 0.001 * (j + 1) * (i + 1),
                "ssim": None if failed else -0.5 + 0.01 * i,  # negative: the CSV must keep it a number
                # An identical image: +inf PSNR (or any non-finite value) must not become a string.
                "psnr": None if failed else (math.inf if i == 0 else 30.0 + i),
                "mse": None if failed else (0.0 if i == 0 else math.nan),
            }
            r.update(extra)
            rows.append(r)
    return rows


META = {"systems": ["good", "bad"], "protocol": {"name": "default", "version": "1", "hash": "h"}}


def _strict(text: str) -> Any:
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def test_json_files_have_numbers_or_null_never_inf_strings(tmp_path: Path) -> None:
    """Old code: +inf became the string "inf" in results.jsonl and summary.json."""
    write_reports(tmp_path, _rows(tmp_path), META, n_resamples=100)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    parsed = [_strict(line) for line in lines]
    for r in parsed:
        for key in ("volume_iou", "chamfer_l2", "ssim", "psnr", "mse"):
            assert r[key] is None or isinstance(r[key], float | int), (key, r[key])
    identical = next(r for r in parsed if r["case"] == "case0" and r["system"] == "good")
    assert identical["psnr"] is None and identical["mse"] == 0.0
    summary = _strict((tmp_path / "summary.json").read_text())
    bad = {s.lower() for s in _strings(summary)} & {"inf", "-inf", "+inf", "infinity", "-infinity", "nan"}
    assert not bad
    for text in [*lines, (tmp_path / "summary.json").read_text()]:
        assert not re.search(r"\b(Infinity|NaN)\b|\"-?inf\"", text)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_csv_text_cells_are_escaped_but_numbers_stay_numbers(tmp_path: Path) -> None:
    """Old code wrote '=HYPERLINK(...)' as is: a spreadsheet runs it."""
    systems = ('=HYPERLINK("http://x")', "+1+2", "-cmd", "@SUM(A1)", "ok")
    rows = _rows(tmp_path, systems)
    for r in rows:
        r["category"] = "=2+3" if r["case"] == "case1" else "-x"
        if r["system"] == "-cmd" and r["executable"]:
            r["error_class"] = None
    rows[2]["executable"], rows[2]["error_class"] = False, "@evil"
    write_reports(tmp_path, rows, {"systems": list(systems)}, n_resamples=50)
    lb = _csv_rows(tmp_path / "leaderboard.csv")
    names = {r["system"] for r in lb}
    assert names == {'\'=HYPERLINK("http://x")', "'+1+2", "'-cmd", "'@SUM(A1)", "ok"}
    pc = _csv_rows(tmp_path / "per_category.csv")
    assert {r["category"] for r in pc} == {"'=2+3", "'-x"}
    errs = _csv_rows(tmp_path / "errors.csv")
    assert "'@evil" in {r["error_class"] for r in errs}
    # A negative mean stays a plain number (SSIM is about -0.47 here), not "'-0.47".
    ok = next(r for r in lb if r["system"] == "ok")
    assert float(ok["ssim:valid"]) < 0 and ok["ssim:valid"].startswith("-")
    for path in ("leaderboard.csv", "per_category.csv", "errors.csv"):
        for r in _csv_rows(tmp_path / path):
            for v in r.values():
                if v and v[0] in "=+-@" and not v.startswith("'"):
                    float(v)  # only numbers may start with a formula character


def test_terminal_leaderboard(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    rows[0]["system"] = "good"
    s = summarize(rows, META, n_resamples=100)
    lines = leaderboard_lines(s)
    assert "ranked by IoU (volume_iou)" in lines[0] and "failures = 0" in lines[0]
    body = lines[1:]
    assert body[0].split()[:2] == ["#", "system"] and "VSR" in body[0]
    assert body[1].split()[:2] == ["1", "good"] and body[2].split()[:2] == ["2", "bad"]
    # bad: 4 of 6 executable; IoU all-cases mean (failures 0) below its valid-only mean.
    cells = body[2].split()
    assert cells[-1] == "4/6" and float(cells[2]) < float(cells[3])
    assert float(cells[3]) == pytest.approx(np.mean([0.4 - 0.01 * i for i in (1, 2, 4, 5)]), abs=5e-4)
    # The same lines from summary.json read back (estimates as dicts, infinities as null).
    write_reports(tmp_path, rows, META, n_resamples=100)
    assert leaderboard_lines(read_summary(tmp_path)) == lines
    assert leaderboard_lines({"systems": []}) == ["leaderboard: no results"]


def test_terminal_leaderboard_cleans_names_and_shows_undefined() -> None:
    rows = [
        {"case": "a", "system": "evil\x1b[2J", "executable": True, "volume_iou": None,
         "volume_iou_method": "undefined", "chamfer_l2": 0.1},
        {"case": "b", "system": "evil\x1b[2J", "executable": True, "volume_iou": 0.5, "chamfer_l2": 0.2},
    ]  # fmt: skip
    lines = leaderboard_lines(summarize(rows, {}, n_resamples=50))
    assert not any("\x1b" in ln for ln in lines)
    assert "undefined" in lines[1] and lines[2].split()[-1] == "1"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Tags()
    p.feed(page)
    return p.tags


def test_report_html_copied_alone_keeps_its_pictures(tmp_path: Path) -> None:
    """Old code: "click to enlarge" linked the file by a relative path, dead once report.html moved."""
    run = tmp_path / "run"
    report = write_reports(run, _rows(run), META, n_resamples=50)
    alone = tmp_path / "elsewhere" / "report.html"
    alone.parent.mkdir()
    shutil.copy(report, alone)
    tags = _tags(alone.read_text())
    imgs = [a for t, a in tags if t == "img" and a.get("src")]
    assert len(imgs) == 6 + 6 + 4  # references, good's renders, bad's renders
    assert all((a["src"] or "").startswith("data:image/") for a in imgs)
    zooms = [a for t, a in tags if t == "a" and "zoom" in (a.get("class") or "")]
    assert len(zooms) == len(imgs)
    for a in zooms:
        assert (a.get("data-full") or "").startswith("data:image/")
        full = Image.open(io.BytesIO(__import__("base64").b64decode((a["data-full"] or "").split(",", 1)[1])))
        assert full.size == (256, 256)  # small pictures are embedded at their full size
    assert not [a for t, a in tags if t in ("img", "script", "link") and (a.get("src") or a.get("href") or "")
                and not (a.get("src") or a.get("href") or "").startswith("data:")]  # fmt: skip


def test_report_html_layout(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    rows += [{**r, "attempt": 2, "executable": True, "error_class": None, "volume_iou": 0.3} for r in rows
             if r["system"] == "bad" and not r["executable"]]  # fmt: skip
    rows[2]["volume_iou"], rows[2]["volume_iou_method"] = None, "undefined"  # case1, good
    page = write_reports(tmp_path, rows, META, n_resamples=50).read_text()
    board = page[page.index("<h2>Leaderboard</h2>") : page.index("<details><summary>Every metric")]
    # The ranking metric is the first (and only) metric column of the visible leaderboard.
    ths = re.findall(r"<th[^>]*>(.*?)</th>", board)
    assert ths[:4] == ["#", "system", "VSR", "&Delta; IoU vs best"] and ths[4].startswith("IoU ↑ mean")
    assert "all, failures = 0" in board and "CD x10^3" not in board and "SSIM" not in board
    folded = page[page.index("<details><summary>Every metric") :]
    assert "CD x10^3" in folded[: folded.index("</details>")]
    assert "1 undefined" in page
    # Several attempts: single-shot vs final, with best@<=2 labelled as a diagnostic.
    assert "Attempts: single-shot vs final" in page and "oracle diagnostic" in page
    # The per-case table: sortable, filterable, numeric sort keys.
    tags = _tags(page)
    table = next(a for t, a in tags if t == "table" and a.get("id") == "cases")
    assert "sortable" in (table.get("class") or "")
    assert any(t == "form" and a.get("data-table") == "cases" for t, a in tags)
    trs = [a for t, a in tags if t == "tr" and (a.get("id") or "").startswith("case-")]
    assert len(trs) == 6 and all(a.get("data-text") for a in trs)
    assert any("f1" in (a.get("data-tags") or "").split() for a in trs)  # "bad failed" filter tag
    keys = [a["data-v"] for t, a in tags if t == "td" and a.get("data-v")]
    assert keys and all(float(k) == float(k) for k in keys)


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no chromium")
def test_report_script_sorts_filters_and_enlarges_in_a_browser(tmp_path: Path) -> None:
    """Run the page's own script in headless Chromium (with the page's CSP) and drive it."""
    page = write_reports(tmp_path, _rows(tmp_path), META, n_resamples=50).read_text()
    probe = (
        "<script>setTimeout(function(){var t=document.getElementById('cases'),h=t.tHead.rows[0].cells,o=[];"
        "function c(i){return Array.prototype.map.call(t.tBodies[0].rows,function(r){"
        "return r.cells[i].getAttribute('data-v')}).join(',')}"
        "h[3].click();o.push(c(3));h[3].click();o.push(c(3));"
        "var f=document.querySelector('form.filter input');f.value='case4';"
        "f.dispatchEvent(new Event('input',{bubbles:true}));"
        "o.push(document.querySelector('form.filter output').textContent);"
        "document.querySelector('a.zoom').click();var v=document.getElementById('viewer');"
        "o.push(String(v.hidden)+':'+v.querySelector('img').src.slice(0,11));"
        "document.body.setAttribute('data-probe',o.join('|'))},50)</script></body>"
    )
    # The probe is a second script: drop the CSP (which allows only the page's own) for this test page.
    test_page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page).replace(
        "</body>", probe
    )
    (tmp_path / "t.html").write_text(test_page)
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    out = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom",
         (tmp_path / "t.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout  # fmt: skip
    m = re.search(r'data-probe="([^"]*)"', out)
    assert m, out[-2000:]
    asc, desc, count, viewer = m.group(1).split("|")
    values = [float(x) for x in asc.split(",")]
    assert values == sorted(values) and [float(x) for x in desc.split(",")] == sorted(values, reverse=True)
    assert count == "1 of 6 cases"
    assert viewer == "false:data:image/"
    # And the unmodified page's script runs under its CSP (the filter form is shown, the count filled).
    (tmp_path / "r.html").write_text(page)
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom",
         (tmp_path / "r.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout  # fmt: skip
    assert "<output>6 of 6 cases</output>" in dom


def test_run_prints_the_leaderboard_before_the_report_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gen3deval run` (quickstart, 1 case, the oracle): a compact leaderboard, then the path as last line."""
    from gen3deval.cli import main

    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "--limit", "1", "--system", "oracle", "--quiet", "--jobs", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1] == str(out / "report.html")
    assert lines[-4].startswith("leaderboard: 1 case, ranked by ")
    assert lines[-3].split()[:2] == ["#", "system"] and lines[-2].split()[:2] == ["1", "oracle"]
    assert lines[-2].split()[-1] == "1/1"
