# -*- test-case-name: tests.test_benchreport -*-
"""
Unit tests (in memory) of bench/report.py, which turns the benchmark's
results into RESULTS.md: pure functions of a results dictionary.

bench/ is a directory of scripts, not a package, so the module is loaded
from its file (it imports nothing from bench/).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase


def _loadReport() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "report.py"
    spec = importlib.util.spec_from_file_location("_bench_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = _loadReport()


def _machine() -> dict[str, Any]:
    return {
        "date": "2026-12-01 12:00 UTC",
        "git": "abc1234",
        "duration_s": 12.5,
        "nproc": 2,
        "cpu_model": "Test CPU",
        "mem_gb": 4.0,
        "kernel": "6.1",
        "python": "3.11.7",
        "loadavg_start": ["0.10", "0.20", "0.30"],
        "loadavg_end": ["1.00", "0.50", "0.40"],
        "ours": "responses-api-proxy 1.0 (/venv/bin/responses-api-proxy)",
        "reference": None,
        "nginx": None,
        "wrk": None,
    }


def _throughput(ours: float, reference: float) -> dict[str, Any]:
    return {
        "throughput_c32": {
            "ours": {"rps": ours, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0},
            "reference": {"rps": reference, "p50_ms": 0.5, "p99_ms": 1.0, "errors": 0},
        }
    }


class FormatTests(SynchronousTestCase):
    """
    L{report.fmt} and L{report.get}: how one figure is found and shown.
    """

    def test_missing(self) -> None:
        """
        Nothing measured is shown as a dash, not as "None".
        """
        self.assertEqual(report.fmt(None), "—")

    def test_flags(self) -> None:
        """
        A false flag is shouted ("NO"), so that a failed check stands out.
        """
        self.assertEqual(report.fmt(True), "yes")
        self.assertEqual(report.fmt(False), "NO")

    def test_integers(self) -> None:
        """
        Integers get thousands separators.
        """
        self.assertEqual(report.fmt(12345), "12,345")

    def test_floats(self) -> None:
        """
        Floats get fewer decimals as they grow: the figures are noisy, so
        more digits would be noise.
        """
        self.assertEqual(
            [report.fmt(x) for x in (1234.5, 123.4, 12.34, 1.234, -0.5)],
            ["1,234", "123", "12.3", "1.23", "-0.50"],
        )

    def test_getNested(self) -> None:
        """
        A dotted field reaches into nested results; anything missing on
        the way is C{None}.
        """
        results = {"big_body": {"ours": {"slow": {"peak_growth_mb": 0.5}}}}
        self.assertEqual(
            report.get(results, "big_body", "ours", "slow.peak_growth_mb"), 0.5
        )
        self.assertIsNone(report.get(results, "big_body", "ours", "slow.nope"))
        self.assertIsNone(report.get(results, "big_body", "nginx", "slow"))
        self.assertIsNone(report.get(results, "upload", "ours", "seconds"))


class AddedLatencyTests(SynchronousTestCase):
    """
    L{report.addedLatency}: an implementation's SSE latency over direct's.
    """

    def test_subtractsDirect(self) -> None:
        """
        p50 and p99 are less direct's p50 and p99; max is less direct's
        p50 (two maxima of separate runs are unrelated hiccups).
        """
        byImpl = {
            "direct": {"p50_ms": 0.25, "p99_ms": 0.5, "max_ms": 3.0},
            "ours": {"p50_ms": 0.75, "p99_ms": 2.5, "max_ms": 10.25},
        }
        report.addedLatency(byImpl)
        ours = byImpl["ours"]
        self.assertEqual(
            (ours["added_p50_ms"], ours["added_p99_ms"], ours["added_max_ms"]),
            (0.5, 2.0, 10.0),
        )
        self.assertEqual(byImpl["direct"]["added_p50_ms"], 0.0)

    def test_withoutDirect(self) -> None:
        """
        Without direct's figures nothing is added (rather than a guess).
        """
        byImpl: dict[str, dict[str, Any]] = {"ours": {"p50_ms": 1.0}}
        report.addedLatency(byImpl)
        self.assertEqual(byImpl, {"ours": {"p50_ms": 1.0}})

    def test_missingFigure(self) -> None:
        """
        A figure missing on either side adds nothing for that figure.
        """
        byImpl = {"direct": {"p50_ms": 0.25}, "ours": {"p99_ms": 2.0}}
        report.addedLatency(byImpl)
        self.assertNotIn("added_p99_ms", byImpl["ours"])
        self.assertNotIn("added_p50_ms", byImpl["ours"])


class CellAndRatioTests(SynchronousTestCase):
    """
    L{report.cell} and L{report.ratio}: one cell of the table.
    """

    def test_pair(self) -> None:
        """
        C{"a|b"} shows both figures; one missing is a dash.
        """
        results = {"t": {"ours": {"p50_ms": 1.0, "p99_ms": None}}}
        self.assertEqual(report.cell(results, "t", "ours", "p50_ms|p99_ms"), "1.00 / —")
        self.assertEqual(report.cell(results, "t", "nginx", "p50_ms|p99_ms"), "—")

    def test_variant(self) -> None:
        """
        C{field@variant} is the figure of the implementation's variant,
        recorded under C{<impl>-<variant>}.
        """
        results = {"startup": {"ours": {"ready_ms": 300.0}}}
        results["startup"]["ours-twistd"] = {"ready_ms": 350.0}
        self.assertEqual(
            report.cell(results, "startup", "ours", "ready_ms@twistd"), "350"
        )
        self.assertEqual(
            report.cell(results, "startup", "reference", "ready_ms@twistd"), "—"
        )

    def test_ratio(self) -> None:
        """
        The ratio is ours over the reference by default, to three figures.
        """
        self.assertEqual(
            report.ratio(_throughput(3000, 4000), "throughput_c32", "rps"), "0.75×"
        )

    def test_ratioFirstOfPair(self) -> None:
        """
        Of an C{"a|b"} cell, the ratio is that of the first figure.
        """
        results = _throughput(3000, 4000)
        self.assertEqual(report.ratio(results, "throughput_c32", "p50_ms|p99_ms"), "2×")

    def test_ratioTiny(self) -> None:
        """
        A ratio under 0.01 is shown as such, not as a long decimal.
        """
        results = {"s": {"ours": {"p50_ms": 0.001}, "reference": {"p50_ms": 500.0}}}
        self.assertEqual(report.ratio(results, "s", "p50_ms"), "<0.01×")

    def test_ratioUndefined(self) -> None:
        """
        No ratio without both figures, over zero, or of an added latency
        whose base is not positive (the quotient would mean nothing).
        """
        self.assertEqual(report.ratio(_throughput(1, 0), "throughput_c32", "rps"), "—")
        self.assertEqual(report.ratio({}, "throughput_c32", "rps"), "—")
        results = {
            "s": {"ours": {"added_p50_ms": 0.1}, "reference": {"added_p50_ms": -0.2}}
        }
        self.assertEqual(report.ratio(results, "s", "added_p50_ms"), "—")

    def test_ratioOtherPair(self) -> None:
        """
        Any two implementations can be compared, variants included.
        """
        results = {
            "startup": {
                "ours": {"ready_ms": 200.0},
                "ours-twistd": {"ready_ms": 400.0},
                "ours-old": {"ready_ms": 100.0},
                "ours-old-twistd": {"ready_ms": 100.0},
            }
        }
        self.assertEqual(
            report.ratio(results, "startup", "ready_ms", "ours-old", "ours"), "0.5×"
        )
        self.assertEqual(
            report.ratio(results, "startup", "ready_ms@twistd", "ours-old", "ours"),
            "0.25×",
        )


class TargetsTests(SynchronousTestCase):
    """
    L{report.targets}: the issue's targets, pass or miss, for ours.
    """

    def verdicts(self, results: dict[str, Any]) -> dict[str, bool | None]:
        return {name: ok for name, _, _, ok in report.targets(results)}

    def test_notMeasured(self) -> None:
        """
        With no results every target is "not measured", never a pass.
        """
        self.assertEqual(set(self.verdicts({}).values()), {None})

    def test_relativeTarget(self) -> None:
        """
        A target relative to the reference passes or misses on its bound.
        """
        name = "throughput c=32 ≥ 0.5 × reference req/s"
        self.assertTrue(self.verdicts(_throughput(2500, 4000))[name])
        self.assertFalse(self.verdicts(_throughput(1500, 4000))[name])

    def test_boundShown(self) -> None:
        """
        The bound of a relative target is computed from the reference.
        """
        rows = {
            name: bound for name, _, bound, _ in report.targets(_throughput(1, 4000))
        }
        self.assertEqual(rows["throughput c=32 ≥ 0.5 × reference req/s"], "2,000 req/s")


class ColumnOrderTests(SynchronousTestCase):
    """
    L{report.columnOrder}: which column goes where.
    """

    def test_builtins(self) -> None:
        """
        The built-in implementations keep their fixed order.
        """
        self.assertEqual(
            report.columnOrder(["nginx", "reference", "ours", "direct"]),
            ["direct", "ours", "reference", "nginx"],
        )

    def test_definedNextToOurs(self) -> None:
        """
        Implementations defined on the command line go right after ours,
        which they are compared with, in the order given.
        """
        self.assertEqual(
            report.columnOrder(["nginx", "ours-old", "ours", "ours-features"]),
            ["ours", "ours-old", "ours-features", "nginx"],
        )


class RenderTests(SynchronousTestCase):
    """
    L{report.renderResults} and L{report.resultsPayload}: the whole report.
    """

    def render(self, impls: list[str], results: dict[str, Any], **machine: Any) -> str:
        m = {**_machine(), **machine}
        rendered: str = report.renderResults(
            report.Report(results, m, ["a note"], impls, quick=True, only="throughput")
        )
        return rendered

    def test_header(self) -> None:
        """
        The header says how the run was made, on what, and how busy the
        machine was.
        """
        text = self.render(["ours", "reference"], _throughput(3000, 4000))
        self.assertIn("Generated by `bench/run --quick --only throughput`", text)
        self.assertIn(
            "load average at start 0.10 0.20 0.30, at end 1.00 0.50 0.40", text
        )
        self.assertIn("- reference: not measured", text)
        self.assertIn("- a note", text)

    def test_table(self) -> None:
        """
        Only scenarios that ran have rows; a row has one cell per
        implementation and the ratio.
        """
        text = self.render(["ours", "reference"], _throughput(3000, 4000))
        self.assertIn("| metric | ours | reference | ours/ref |", text)
        self.assertIn("| throughput c=32: req/s | 3,000 | 4,000 | 0.75× |", text)
        self.assertNotIn("| upload 20 MB", text)

    def test_directColumn(self) -> None:
        """
        Direct shows the raw floor, in parentheses, where the row shows an
        added figure; a dash where it has no figure of its own.
        """
        results = {
            "sse_latency_1": {
                "direct": {"p50_ms": 0.25, "p99_ms": 0.5, "max_ms": 1.0},
                "ours": {"p50_ms": 0.5, "p99_ms": 1.0, "max_ms": 2.0},
            },
            "upload": {"direct": {"seconds": 0.5}, "ours": {"seconds": 1.0}},
        }
        report.addedLatency(results["sse_latency_1"])
        text = self.render(["direct", "ours"], results)
        self.assertIn("| sse 1 stream: added p50, ms | (0.25 raw) | 0.25 | — |", text)
        self.assertIn("| upload 20 MB: seconds | 0.50 | 1.00 | — |", text)
        self.assertIn("| upload 20 MB: peak RSS, MB | — | — | — |", text)

    def test_definedImplementations(self) -> None:
        """
        An implementation defined on the command line gets a column next to
        ours, a line saying what it is, and a ratio column over ours.
        """
        results = _throughput(3000, 4000)
        results["throughput_c32"]["ours-features"] = {"rps": 2700.0}
        text = self.render(
            ["reference", "ours", "ours-features"],
            results,
            extra_impls={"ours-features": "ours with `--state-dir /tmp/x`"},
        )
        self.assertIn(
            "| metric | ours | ours-features | reference | ours/ref "
            "| ours-features/ours |",
            text,
        )
        self.assertIn("|---|---|---|---|---|---|", text)
        self.assertIn(
            "| throughput c=32: req/s | 3,000 | 2,700 | 4,000 | 0.75× | 0.9× |", text
        )
        self.assertIn("- ours-features: ours with `--state-dir /tmp/x`", text)

    def test_targetsSection(self) -> None:
        """
        The targets table says pass, **MISS** or not measured.
        """
        text = self.render(["ours", "reference"], _throughput(1500, 4000))
        self.assertIn(
            "| throughput c=32 ≥ 0.5 × reference req/s | 1,500 req/s | 2,000 req/s "
            "| **MISS** |",
            text,
        )
        self.assertIn(
            "| startup ≤ 500 ms (console script) | — | 500 ms | not measured |", text
        )

    def test_payload(self) -> None:
        """
        results.json holds the columns in order, the results and the
        targets, so that C{--rereport} can render it again.
        """
        results = _throughput(3000, 4000)
        payload = report.resultsPayload(
            report.Report(results, _machine(), [], ["reference", "ours"])
        )
        self.assertEqual(payload["implementations"], ["ours", "reference"])
        self.assertIs(payload["scenarios"], results)
        self.assertEqual(len(payload["targets"]), len(report.targets(results)))
