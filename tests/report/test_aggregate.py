"""Aggregation: hand-checked valid-only/all semantics, VSR, histograms, and the bootstrap against a slow loop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from gen3deval.metrics.base import metric_info
from gen3deval.report import aggregate as agg
from gen3deval.report import bootstrap as boot
from gen3deval.report.aggregate import (
    bootstrap_ci,
    error_histogram,
    estimate,
    metric_infos,
    paired_bootstrap,
    resample_statistics,
    select_attempts,
    vsr,
)
from gen3deval.report.summary import summarize

META: dict[str, Any] = {
    "systems": ["A", "B"],
    "protocol": {"name": "default", "version": "1", "hash": "h1"},
    "metrics": {
        "volume_iou": {"higher_is_better": True, "unit": "fraction", "display": "IoU"},
        "chamfer_l2": {"higher_is_better": False, "unit": "u^2", "display": "CD x10^3", "scale": 1000.0},
    },
}


def spec_stat(key: str, valid: list[float], n_failed: int) -> tuple[float, float]:
    """An independent reference for one metric: (valid-only, all-cases) with the registry's statistic, the
    failures scored the registry's worst value (or the worst valid value, if a valid case is even worse)."""
    spec = metric_info(key)
    fn = np.mean if spec.aggregate == "mean" else np.median
    worst = min([spec.worst, *valid]) if spec.higher_is_better else max([spec.worst, *valid])
    return float(fn(valid)), float(fn(valid + [worst] * n_failed))


def row(case: str, system: str, iou: float | None, cd: float | None, *, ok: bool = True, **kw: Any) -> dict:
    r = {
        "case": case,
        "category": kw.pop("category", "c1"),
        "system": system,
        "attempt": kw.pop("attempt", 1),
        "executable": ok,
        "error_class": kw.pop("error_class", None if ok else "runtime"),
        "error": None if ok else "it broke",
        "volume_iou": iou,
        "chamfer_l2": cd,
        "protocol": {"hash": "h1"},
    }
    r.update(kw)
    return r


def hand_rows() -> list[dict]:
    return [
        row("c1", "A", 0.5, 0.001),
        row("c2", "A", 0.7, 0.003),
        row("c3", "A", None, None, ok=False, error_class="syntax"),
        row("c4", "A", 0.9, 0.002, category="c2"),
        row("c1", "B", 0.2, 0.010),
        row("c2", "B", None, None, ok=False),
        row("c3", "B", None, None, ok=False, error_class="timeout"),
        row("c4", "B", None, None, ok=False, category="c2"),
    ]


def sys_entry(summary: dict, name: str) -> dict:
    return next(s for s in summary["systems"] if s["system"] == name)


def test_valid_only_vs_all_by_hand() -> None:
    s = summarize(hand_rows(), META, n_resamples=200)
    a = sys_entry(s, "A")
    iou, cd = a["metrics"]["volume_iou"], a["metrics"]["chamfer_l2"]
    assert iou["valid"].value == pytest.approx((0.5 + 0.7 + 0.9) / 3) and iou["valid"].n == 3
    assert iou["all"].value == pytest.approx((0.5 + 0.7 + 0 + 0.9) / 4) and iou["all"].n == 4
    assert iou["all"].statistic == iou["valid"].statistic == "mean"
    # Chamfer: the registry's statistic (the median) for BOTH columns, failures scored its worst (+inf).
    stat = metric_info("chamfer_l2").aggregate
    assert cd["valid"].statistic == cd["all"].statistic == stat
    valid_cd, all_cd = spec_stat("chamfer_l2", [0.001, 0.003, 0.002], 1)
    assert cd["valid"].value == pytest.approx(valid_cd) and cd["all"].value == pytest.approx(all_cd)
    assert cd["all"].value >= cd["valid"].value  # lower is better: all-cases never looks better
    b = sys_entry(s, "B")
    _, b_cd = spec_stat("chamfer_l2", [0.010], 3)
    assert b["metrics"]["chamfer_l2"]["all"].value == pytest.approx(b_cd)
    assert b["metrics"]["volume_iou"]["all"].value == pytest.approx(0.05)
    assert b["metrics"]["volume_iou"]["valid"].value == pytest.approx(0.2)
    assert (a["vsr"].value, b["vsr"].value) == (0.75, 0.25)
    assert a["errors"] == {"syntax": 1} and b["errors"] == {"runtime": 2, "timeout": 1}
    assert [x["system"] for x in s["systems"]] == ["A", "B"] and a["rank"] == 1
    assert s["headline"] == "volume_iou"
    assert {(e["system"], e["error_class"], e["count"]) for e in s["errors"]} == {
        ("A", "syntax", 1),
        ("B", "runtime", 2),
        ("B", "timeout", 1),
    }
    assert [(f["case"], f["system"]) for f in s["failures"]] == [
        ("c2", "B"),
        ("c3", "A"),
        ("c3", "B"),
        ("c4", "B"),
    ]
    assert s["warnings"] == []


def test_per_category_by_hand() -> None:
    s = summarize(hand_rows(), META, n_resamples=200)
    cats = {(c["system"], c["category"]): c for c in s["per_category"]}
    assert set(cats) == {("A", "c1"), ("A", "c2"), ("B", "c1"), ("B", "c2")}
    a1 = cats[("A", "c1")]
    assert a1["n"] == 3 and a1["n_executable"] == 2
    assert a1["metrics"]["volume_iou"]["all"].value == pytest.approx(0.4)
    assert a1["metrics"]["chamfer_l2"]["all"].value == pytest.approx(
        spec_stat("chamfer_l2", [1e-3, 3e-3], 1)[1]
    )
    assert cats[("B", "c2")]["metrics"]["volume_iou"]["valid"].value is None
    assert cats[("B", "c2")]["metrics"]["volume_iou"]["valid"].n == 0


def test_metric_without_value_is_excluded_or_dropped() -> None:
    rows = hand_rows()
    rows[0]["volume_iou"] = None  # valid candidate, metric did not apply: left out of both aggregates
    for r in rows:
        r["best_iou"] = None  # no value anywhere: not reported
    s = summarize(rows, META, n_resamples=100)
    a = sys_entry(s, "A")["metrics"]["volume_iou"]
    assert a["valid"].n == 2 and a["all"].n == 3
    assert a["all"].value == pytest.approx((0.7 + 0 + 0.9) / 3)
    assert "best_iou" not in s["metrics"]
    infos = metric_infos(rows, META)
    assert list(infos) == ["volume_iou", "chamfer_l2"]
    assert infos["chamfer_l2"]["scale"] == 1000.0
    assert infos["chamfer_l2"]["worst"] == metric_info("chamfer_l2").worst
    assert infos["chamfer_l2"]["statistic"] == metric_info("chamfer_l2").aggregate
    assert infos["volume_iou"]["worst"] == 0.0 and infos["volume_iou"]["registered"]


def test_fallback_metric_info_and_strings() -> None:
    rows = [row("x", "A", 0.5, 0.1, psnr="inf", hausdorff=float("nan"), **{"fscore@0.1": 0.3})]
    rows[0]["my_metric"] = 2.0
    meta = {"metrics": {"my_metric": {"higher_is_better": False, "display": "Mine x10^2"}}}
    infos = metric_infos(rows, meta)
    assert infos["psnr"]["higher_is_better"] and infos["chamfer_l2"]["scale"] == 1000.0
    assert "hausdorff" not in infos  # NaN is no value
    # fscore@T found only in the rows: described by the registry (which parses any T).
    assert infos["fscore@0.1"]["display"] == "F@10" and infos["fscore@0.1"]["higher_is_better"]
    # A key the registry does not know: meta's direction, the median, failures +inf (never better).
    mine = infos["my_metric"]
    assert not mine["registered"] and not mine["higher_is_better"] and mine["scale"] == 100.0
    assert mine["statistic"] == "median" and mine["worst"] == math.inf
    assert agg.to_float("inf") == math.inf and agg.to_float("-inf") == -math.inf
    assert agg.to_float(True) is None and agg.to_float("x") is None and agg.to_float(2) == 2.0
    assert agg.display_scale("CD x10^3") == 1000 and agg.display_scale("F@1") == 1
    assert agg.display_scale("CD ×10³") == 1000


def test_attempt_selection() -> None:
    rows = [
        row("c1", "A", 0.1, 0.1, attempt=1),
        row("c1", "A", 0.5, 0.1, attempt=3),
        row("c1", "A", 0.3, 0.1, attempt=2),
        row("c2", "A", None, None, ok=False, attempt=1),
    ]
    single = select_attempts(rows, "single")
    assert [(r["case"], r["attempt"]) for r in single] == [("c1", 1), ("c2", 1)]
    final = select_attempts(rows, "final")
    assert sorted((r["case"], r["attempt"]) for r in final) == [("c1", 3), ("c2", 1)]
    s = summarize(rows, META, attempts="final", n_resamples=100)
    assert s["systems"][0]["metrics"]["volume_iou"]["valid"].value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown attempt mode"):
        select_attempts(rows, "best")
    with pytest.raises(ValueError, match="unknown attempt mode"):
        select_attempts(rows, "final@0")
    # final@2: the last attempt <= 2; best@<=3 by IoU: attempt 3 (0.5); best@<=2: attempt 2 (0.3).
    assert sorted((r["case"], r["attempt"]) for r in select_attempts(rows, "final@2")) == [
        ("c1", 2),
        ("c2", 1),
    ]
    best3 = select_attempts(rows, "best@<=3", key="volume_iou", higher_is_better=True)
    assert sorted((r["case"], r["attempt"]) for r in best3) == [("c1", 3), ("c2", 1)]
    best2 = select_attempts(rows, "best@<=2", key="volume_iou", higher_is_better=True)
    assert sorted((r["case"], r["attempt"]) for r in best2) == [("c1", 2), ("c2", 1)]
    # Lower is better: the smallest value wins; an executable attempt always beats a failed one.
    more = [*rows, row("c2", "A", 0.05, 0.5, attempt=2), row("c2", "A", 0.9, 0.2, attempt=3)]
    low = select_attempts(more, "best@<=3", key="chamfer_l2", higher_is_better=False)
    assert {r["case"]: r["attempt"] for r in low}["c2"] == 3


def test_attempt_modes_compare_single_and_final() -> None:
    rows = [
        row("c1", "A", 0.2, 0.1, attempt=1),
        row("c1", "A", 0.6, 0.1, attempt=2),
        row("c2", "A", None, None, ok=False, attempt=1),
        row("c2", "A", 0.4, 0.1, attempt=2),
        row("c1", "B", 0.5, 0.1),
        row("c2", "B", 0.5, 0.1),
    ]
    s = summarize(rows, META, n_resamples=100)
    assert s["max_attempt"] == 2
    modes = {m["mode"]: m["systems"] for m in s["attempt_modes"]}
    assert list(modes) == ["single", "final", "best@<=2"]
    assert modes["single"]["A"]["vsr"].value == 0.5 and modes["final"]["A"]["vsr"].value == 1.0
    assert modes["single"]["A"]["headline"]["all"].value == pytest.approx(0.1)  # (0.2 + 0) / 2
    assert modes["final"]["A"]["headline"]["all"].value == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert modes["final"]["B"]["headline"]["all"].value == pytest.approx(0.5)  # one attempt: final = single
    assert summarize(rows[4:], META, n_resamples=100)["attempt_modes"] is None


def test_vsr_and_histogram() -> None:
    rows = [
        row(f"c{i}", "A", 0.5, 0.1, ok=i % 4 != 0, error_class=None if i % 4 else "memory") for i in range(20)
    ]
    rows[0]["error_class"] = None  # a failure without a class is still counted
    est = vsr(rows, n_resamples=500)
    assert est.value == pytest.approx(15 / 20) and est.n == 20
    assert 0.5 < est.lo < 0.75 < est.hi <= 1.0
    assert error_histogram(rows) == {"memory": 4, "unknown": 1}


def test_warnings_for_mixed_protocols_and_missing_results() -> None:
    rows = hand_rows()[:-1]  # B has no row for c4
    rows[0]["protocol"] = {"hash": "other"}
    s = summarize(rows, {**META, "systems": ["A", "B", "C"], "unfinished": 2}, n_resamples=100)
    text = " | ".join(s["warnings"])
    assert "2 different protocol fingerprints" in text and "not comparable" in text
    assert "system 'B' has no result for 1 of 4 cases" in text
    assert "system 'C' has no results" in text
    assert "2 case/system pipelines are unfinished" in text


def test_ranking_follows_direction_and_vs_best() -> None:
    rows = []
    for i in range(30):
        rows.append(row(f"c{i:02d}", "good", 0.8 + 0.001 * i, 0.001))
        rows.append(row(f"c{i:02d}", "bad", 0.3 + 0.001 * i, 0.004))
    s = summarize(rows, {**META, "systems": ["bad", "good"]}, n_resamples=1000)
    assert [x["system"] for x in s["systems"]] == ["good", "bad"]
    vs = s["systems"][1]["vs_best"]
    assert vs["system"] == "good" and vs["metric"] == "volume_iou"
    assert vs["diff"] == pytest.approx(-0.5) and vs["significant"]
    assert vs["lo"] == pytest.approx(-0.5) and vs["hi"] == pytest.approx(-0.5)  # constant paired difference
    # Ranked by a lower-is-better headline the other way round.
    s2 = summarize(rows, META, n_resamples=200, headline="chamfer_l2")
    assert s2["headline"] == "chamfer_l2" and s2["systems"][0]["system"] == "good"


# --- the bootstrap ---------------------------------------------------------------------------------------


def _slow_bootstrap(values: list[float], statistic: str, n_resamples: int, seed: int) -> tuple[float, float]:
    """An independent pure-Python loop following the documented definition."""
    v = sorted(values)
    n = len(v)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_resamples):
        u = rng.random(n)
        sample = sorted(v[min(int(x * n), n - 1)] for x in u)
        if statistic == "mean":
            reps.append(math.fsum(sample) / n)
        else:
            reps.append((sample[(n - 1) // 2] + sample[n // 2]) / 2)
    reps.sort()

    def q(p: float) -> float:
        h = (len(reps) - 1) * p
        lo = math.floor(h)
        hi = min(lo + 1, len(reps) - 1)
        return reps[lo] + (reps[hi] - reps[lo]) * (h - lo)

    return q(0.025), q(0.975)


@pytest.mark.parametrize("statistic", ["mean", "median"])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_bootstrap_matches_a_slow_loop(statistic: str, n: int) -> None:
    values = list(np.random.default_rng(n).gamma(2.0, 1.0, size=n))
    got = bootstrap_ci(values, statistic=statistic, n_resamples=3000, seed=0)
    want = _slow_bootstrap(values, statistic, 3000, 0)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    # The interval does not depend on the order of the cases.
    assert bootstrap_ci(values[::-1], statistic=statistic, n_resamples=3000) == got


def test_bootstrap_default_is_10000_resamples_seed_0() -> None:
    values = list(np.random.default_rng(5).normal(size=25))
    assert bootstrap_ci(values) == pytest.approx(_slow_bootstrap(values, "mean", 10_000, 0), rel=1e-12)
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values)


def test_chunked_path_equals_cached_path(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(3).normal(size=57)
    cached = {s: resample_statistics(values, statistic=s, n_resamples=2000) for s in ("mean", "median")}
    monkeypatch.setattr(boot, "_CACHE_MAX_ENTRIES", 10)
    monkeypatch.setattr(boot, "_CHUNK_ENTRIES", 57 * 3 + 5)  # 3 resamples a chunk
    for s, want in cached.items():
        np.testing.assert_allclose(
            resample_statistics(values, statistic=s, n_resamples=2000), want, rtol=1e-12, atol=1e-14
        )


def test_constant_column_gives_a_point_interval() -> None:
    for statistic in ("mean", "median"):
        est = estimate([0.25] * 17, statistic=statistic)
        assert est.value == est.lo == est.hi == 0.25
    est = estimate([math.inf] * 5, statistic="median")
    assert est.value == est.lo == est.hi == math.inf
    assert estimate([], statistic="mean") == agg.Estimate(None, None, None, 0, "mean")


def test_interval_width_matches_the_normal_theory() -> None:
    # Mean of n standard normals: the 95% interval is about +-1.96 / sqrt(n) around the sample mean.
    x = np.random.default_rng(11).normal(size=2000)
    lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(x.mean(), abs=0.2 * half)


def test_coverage_of_the_mean_of_a_normal_sample() -> None:
    rng = np.random.default_rng(2024)
    trials, hits = 300, 0
    for _ in range(trials):
        lo, hi = bootstrap_ci(rng.normal(loc=3.0, size=40), n_resamples=1000)
        hits += lo <= 3.0 <= hi
    # Percentile bootstrap at n = 40 covers a bit under 95%; 300 trials give +-2.5% noise.
    assert 0.88 <= hits / trials <= 0.99


def test_mean_with_infinite_values() -> None:
    reps = resample_statistics([1.0, 2.0, math.inf], statistic="mean", n_resamples=500)
    idx = np.minimum((np.random.default_rng(0).random((500, 3)) * 3).astype(int), 2)
    np.testing.assert_array_equal(np.isinf(reps), (idx == 2).any(axis=1))
    assert not np.isnan(reps).any()


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=60)
    a = base + 0.1 + rng.normal(scale=0.05, size=60)
    d = paired_bootstrap(a, base, n_resamples=4000)
    assert d.diff == pytest.approx(float(np.mean(a) - np.mean(base)))
    assert d.significant and d.lo > 0 and d.share_positive == 1.0
    # Pairing removes the shared per-case variation: much narrower than two independent intervals.
    lo_a, hi_a = bootstrap_ci(a, n_resamples=4000)
    assert (d.hi - d.lo) < 0.5 * (hi_a - lo_a)
    same = paired_bootstrap(base, base, n_resamples=500)
    assert (same.diff, same.lo, same.hi, same.significant) == (0.0, 0.0, 0.0, False)
    # Against a slow loop: same draws, pairs kept together, in the given order.
    r = np.random.default_rng(0)
    n = len(a)
    reps = []
    for _ in range(500):
        idx = [min(int(u * n), n - 1) for u in r.random(n)]
        reps.append(float(np.median(a[idx]) - np.median(base[idx])))
    want = (float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5)))
    got = paired_bootstrap(a, base, statistic="median", n_resamples=500)
    assert (got.lo, got.hi) == pytest.approx(want, rel=1e-12)
    # Two medians of failures (+inf) are a tie, not NaN.
    inf = paired_bootstrap([math.inf] * 3, [math.inf] * 3, statistic="median", n_resamples=100)
    assert (inf.diff, inf.lo, inf.hi) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([1.0], [1.0, 2.0])


# --- issue 8: one statistic per metric, failures scored worst, undefined counted apart ----------------------


@pytest.mark.parametrize("seed", range(6))
def test_all_cases_never_better_than_valid_only(seed: int) -> None:
    """Random runs with failures, skewed distances and negative SSIM: for every metric the all-cases value
    is never better than the valid-only one, and both use the metric's own statistic (the registry's)."""
    rng = np.random.default_rng(seed)
    keys = ("volume_iou", "chamfer_l2", "hausdorff", "ssim", "psnr", "fscore@0.02", "normal_consistency")
    rows = []
    for i in range(int(rng.integers(5, 40))):
        for system in ("A", "B"):
            ok = bool(rng.random() > rng.uniform(0.05, 0.6))
            r = row(f"c{i}", system, None, None, ok=ok)
            if ok:
                r.update(
                    volume_iou=float(rng.random()),
                    chamfer_l2=float(rng.lognormal(-6, 2)),  # heavy tail: mean >> median
                    hausdorff=float(rng.lognormal(-2, 1)),
                    ssim=float(rng.uniform(-0.6, 0.3)),  # negative SSIM: worse than a 0 failure score
                    psnr=float(rng.uniform(5, 40)),
                    normal_consistency=float(rng.random()),
                    **{"fscore@0.02": float(rng.random())},
                )
            rows.append(r)
    s = summarize(rows, {"systems": ["A", "B"]}, n_resamples=200)
    for sys_ in s["systems"]:
        for key in keys:
            if key not in s["metrics"]:
                continue
            m, info = sys_["metrics"][key], s["metrics"][key]
            assert m["valid"].statistic == m["all"].statistic == metric_info(key).aggregate
            if m["valid"].value is None:
                continue
            if info["higher_is_better"]:
                assert m["all"].value <= m["valid"].value + 1e-12, (key, m)
            else:
                assert m["all"].value >= m["valid"].value - 1e-12, (key, m)


def test_undefined_is_counted_apart_from_failures() -> None:
    rows = [
        row("c1", "A", 0.8, 0.001),
        row("c2", "A", None, 0.002, volume_iou_method="undefined", volume_iou_reason="no volume"),
        row("c3", "A", None, 0.003, volume_iou_method="undefined"),
        row("c4", "A", None, None, ok=False),
        row("c5", "A", None, 0.001, volume_iou_method="grid"),  # None for another reason: not "undefined"
    ]
    s = summarize(rows, META, n_resamples=100)
    iou = s["systems"][0]["metrics"]["volume_iou"]
    assert iou["undefined"] == 2
    assert iou["valid"].n == 1 and iou["valid"].value == pytest.approx(0.8)
    assert iou["all"].n == 2 and iou["all"].value == pytest.approx(0.4)  # 0.8 and the failure's 0
    assert s["systems"][0]["metrics"]["chamfer_l2"]["undefined"] == 0
    # A metric undefined on every valid case is still reported, with n = 0 and its count.
    only = [row("c1", "A", None, 0.1, volume_iou_method="undefined"), row("c2", "A", None, None, ok=False)]
    s2 = summarize(only, META, n_resamples=100)
    assert "volume_iou" in s2["metrics"]
    m = s2["systems"][0]["metrics"]["volume_iou"]
    assert m["undefined"] == 1 and m["valid"].n == 0 and m["valid"].value is None


def test_headline_is_the_first_metric() -> None:
    s = summarize(hand_rows(), META, n_resamples=100, headline="chamfer_l2")
    assert next(iter(s["metrics"])) == "chamfer_l2" == s["headline"]
    assert next(iter(s["systems"][0]["metrics"])) == "chamfer_l2"
