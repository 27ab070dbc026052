"""The study's findings, each one sentence with its number and seed spread.

Pure functions over run rows (see :mod:`parcae.fit.study`) and fitted law records:

1. depth, not parameters: looped k⊗L against iso-parameter k⊗1 and iso-FLOP kL⊗1;
2. stability (:mod:`parcae.fit.outcomes`): injection × learning rate;
3. test-time depth: per trained μ, the metric at T = 1, T = μ and the largest T;
4. compute: the compute-optimal loop count per FLOP budget, and the fitted compute laws;
5. runs that learned nothing or collapsed, with their reasons (:mod:`parcae.fit.outcomes`).

A finding that the table cannot support says why in its sentence (``numbers.available`` is
false); nothing here raises on a table that lacks columns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from parcae.fit.outcomes import flagged_runs, stability
from parcae.fit.study import (
    FAILED,
    Finding,
    Row,
    Stat,
    Study,
    cell,
    compare,
    conditions,
    depth_label,
    fmt,
    has,
    number,
    role,
    spread_note,
    unavailable,
    unit,
    varying,
)

if TYPE_CHECKING:
    from parcae.fit.pipeline import TableFit

#: Finding kind -> heading, in report order.
KINDS = {"depth": "Depth, not parameters", "stability": "Stability",
         "test_time": "Test-time depth", "compute": "Compute", "runs": "Runs flagged"}

_BUDGET_TOL = 0.05  # FLOP counts within 5% are one budget (recomputed 6ND values differ)
_SINGLE_SEED_TOL = 0.01  # relative closeness taken as "saturated" when there is no spread


def of_study(study: Study, laws: dict[str, dict[str, dict]]) -> list[Finding]:
    """Every finding of a table, in report order."""
    return [*depth(study.runs), *stability(study.runs), *test_time(study.runs, study.curves),
            *compute(study.runs, laws), *flagged_runs(study.runs)]


def of_fit(result: TableFit) -> list[Finding]:
    """The findings of a fitted table, read from its folder once and kept on the result
    (fits.json, report.md and the terminal all show them)."""
    from parcae.fit.study import load

    if result.findings is None:
        result.findings = of_study(load(result.table.source), result.laws)
    return result.findings


def _metric(rows: Iterable[Row]) -> tuple[str, str, bool]:
    """(column, words with unit, higher is better): accuracy where measured, else loss."""
    rows = list(rows)
    if has(rows, "val_accuracy"):
        return "val_accuracy", "answer accuracy", True
    return "val_loss", f"val loss ({unit(rows)})", False


def _learned_nothing(rows: Iterable[Row]) -> int:
    return sum(r.get("learned", "").strip().lower() == "false" for r in rows)


# ---------------------------------------------------------------- 1. depth, not parameters

_VERDICT = {
    "iso-parameter": {"better": "beats iso-parameter beyond the seed spread",
                      "worse": "is worse than iso-parameter beyond the seed spread",
                      "within": "is within the seed spread of iso-parameter",
                      "unjudged": "is not judged against iso-parameter (one seed)"},
    "iso-FLOP": {"better": "beats iso-FLOP beyond the seed spread",
                 "worse": "falls short of iso-FLOP beyond the seed spread",
                 "within": "matches iso-FLOP within the seed spread",
                 "unjudged": "is not judged against iso-FLOP (one seed)"},
}


def depth(runs: list[Row]) -> list[Finding]:
    """Looped k⊗L vs iso-parameter k⊗1 vs iso-FLOP kL⊗1 at each effective depth k·L."""
    need = [c for c in ("injection", "loops", "core_layers", "effective_depth")
            if not any(r.get(c) for r in runs)]
    if need:
        return [unavailable("depth", f"the table has no values in {', '.join(need)}, so the "
                            "looped / iso-parameter / iso-FLOP roles cannot be told apart")]
    rows = [r for r in runs if role(r) and r.get("status") not in FAILED]
    column, words, higher = _metric(rows)
    rows = [r for r in rows if math.isfinite(number(r, column))]
    context = varying(rows, ("source", "tokens"))
    looped: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        if role(r) == "looped":
            key = (*(r.get(c, "") for c in context), number(r, "core_layers"),
                   number(r, "loops"), r.get("injection", ""))
            looped[key].append(r)
    if not looped:
        return [unavailable("depth", "no finished looped runs (loops > 1) with a "
                            f"{column} to compare")]
    if not any(role(r) in ("iso-parameter", "iso-FLOP") for r in rows):
        return [unavailable("depth", "the table has no finished iso-parameter (looped, loops = 1) "
                            "or iso-FLOP (baseline) runs to compare the looped runs with")]
    several = len({k[-1] for k in looped}) > 1
    out = []
    for key, arm in sorted(looped.items()):
        where = dict(zip(context, key, strict=False))
        k, loops, injection = key[-3:]
        same = [r for r in rows if all(r.get(c, "") == v for c, v in where.items())]
        iso_param = [r for r in same if role(r) == "iso-parameter"
                     and number(r, "core_layers") == k]
        if any(r.get("injection") == injection for r in iso_param):
            iso_param = [r for r in iso_param if r.get("injection") == injection]
        # else the single-pass runs of other injections stand in, and their labels say so
        iso_flop = [r for r in same if role(r) == "iso-FLOP"
                    and number(r, "effective_depth") == k * loops]
        if iso_param or iso_flop:
            out.append(_depth_finding(where, k, loops, injection if several else "", arm,
                                      iso_param, iso_flop, column, words, higher))
    return out or [unavailable("depth", "no looped run has an iso-parameter or iso-FLOP run at "
                               "the same source and tokens")]


def _depth_finding(where: dict, k: float, loops: float, injection: str, arm: list[Row],
                   iso_param: list[Row], iso_flop: list[Row], column: str, words: str,
                   higher: bool) -> Finding:
    stand_in = sorted({r.get("injection", "") for r in iso_param} - {injection}) \
        if injection else []
    param_label = depth_label(k, 1) + (f" ({', '.join(stand_in)})" if stand_in else "")
    arms = {"looped": (depth_label(k, loops), arm), "iso-parameter": (param_label, iso_param),
            "iso-FLOP": (depth_label(k * loops, 1), iso_flop)}
    stats = {name: Stat.of(number(r, column) for r in rs) for name, (_, rs) in arms.items()}
    inj = f" ({injection})" if injection else ""
    at = "".join(f", {c} {cell(v)}" for c, v in where.items())
    parts = [f"looped {arms['looped'][0]}{inj} reaches {stats['looped'].text()} {words}"]
    verdicts, numbers = [], {"effective_depth": k * loops, "metric": column, **where}
    for name in ("iso-parameter", "iso-FLOP"):
        label, rs = arms[name]
        if not rs:
            parts.append(f"no {name} {label} runs")
            numbers[name] = None
            continue
        parts.append(f"{name} {label} {stats[name].text()}")
        verdict = compare(stats["looped"], stats[name], higher)
        verdicts.append(_VERDICT[name][verdict])
        numbers[f"looped_vs_{name}"] = verdict
    stuck = [f"{name} {n} of {len(rs)} runs learned nothing" for name, (_, rs) in arms.items()
             if (n := _learned_nothing(rs))]
    for name, (label, rs) in arms.items():
        if rs:
            numbers[name] = {"label": label, **stats[name].record(),
                             "learned_nothing": _learned_nothing(rs),
                             "injection": ", ".join(sorted({r.get("injection", "")
                                                            for r in rs}))}
    sentence = (f"Effective depth {k * loops:g}{at}: " + ", ".join(parts)
                + f" ({spread_note(s.n for s in stats.values() if s.n)})")
    if verdicts:
        sentence += ": looped " + " and ".join(verdicts)
    if stuck:
        sentence += "; " + "; ".join(stuck)
    numbers["injection"] = injection
    return Finding("depth", sentence + ".", numbers)


# ---------------------------------------------------------------- 3. test-time depth


def test_time(runs: list[Row], curves: list[Row]) -> list[Finding]:
    """Per trained μ: the metric at T = 1, T = μ and the largest T; saturation; overthinking."""
    if not curves:
        return [unavailable("test_time", "the table has no test-time curves (test_time.csv)")]
    by_id = {r.get("run_id"): r for r in runs
             if role(r) in ("looped", "iso-parameter") and r.get("status") not in FAILED}
    curves = [c for c in curves if c.get("run_id") in by_id]
    if not curves:
        return [unavailable("test_time", "no finished looped run has a test-time curve")]
    column, words, higher = _metric(curves)
    words = words if column == "val_accuracy" else f"val loss ({unit(by_id.values())})"
    keys = ["injection", "loops", *[c for c in conditions(list(by_id.values()))
                                    if c not in ("injection", "loops", "tokens", "flops",
                                                 "effective_depth")]]
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in by_id.values():
        groups[tuple(r.get(c, "") for c in keys)].append(r)
    budget_of = budgets([f for r in by_id.values() if math.isfinite(f := number(r, "flops"))])
    out = []
    for key, rows in sorted(groups.items(), key=lambda kv: (kv[0][0], float(kv[0][1] or 0))):
        budget = max((budget_of[f] for r in rows if (f := number(r, "flops")) in budget_of),
                     default=math.nan)  # the group's largest budget; seeds' counts may differ
        if math.isfinite(budget):
            rows = [r for r in rows if budget_of.get(number(r, "flops")) == budget]
        mine = {r.get("run_id") for r in rows}
        points: dict[float, list[float]] = defaultdict(list)
        for c in curves:
            t, value = number(c, "T"), number(c, column)
            if c.get("run_id") in mine and math.isfinite(t) and math.isfinite(value):
                points[t].append(value)
        if points:
            out.append(_curve_finding(dict(zip(keys, key, strict=True)), points, column, words,
                                      higher, budget))
    return out or [unavailable("test_time", f"no curve has values in {column}")]


def _curve_finding(where: dict, points: dict[float, list[float]], column: str, words: str,
                   higher: bool, budget: float) -> Finding:
    ts = sorted(points)
    stats = {t: Stat.of(points[t]) for t in ts}
    mu = number(where, "loops")
    t_mu = min(ts, key=lambda t: abs(t - mu))
    best = (max if higher else min)(ts, key=lambda t: stats[t].mean)

    def close(t: float) -> bool:
        a, b = stats[t], stats[best]
        if a.n > 1 and b.n > 1:
            return abs(a.mean - b.mean) <= a.sd + b.sd
        return abs(a.mean - b.mean) <= _SINGLE_SEED_TOL * abs(b.mean)

    saturates = next(t for t in ts if close(t))
    head = f"{where['injection'] or 'looped'}, trained μ = {mu:g}" + "".join(
        f", {c} {cell(v)}" for c, v in where.items() if c not in ("injection", "loops"))
    at = f"T = μ = {t_mu:g}" if t_mu == mu else f"T = {t_mu:g} (nearest to μ)"
    parts = [f"{words} {stats[ts[0]].text()} at T = {ts[0]:g}", f"{stats[t_mu].text()} at {at}"]
    if ts[-1] > t_mu:
        parts.append(f"{stats[ts[-1]].text()} at T = {ts[-1]:g}")
    tol = ("within the seed spread" if stats[best].n > 1
           else f"within {_SINGLE_SEED_TOL:.0%}, one seed")
    still = saturates == ts[-1] and len(ts) > 1  # only the last T reaches the best
    sat = (f"not saturated by T = {ts[-1]:g}" if still
           else f"saturates at T = {saturates:g} ({tol} of the best)")
    numbers: dict[str, Any] = {**where, "metric": column, "flops": budget, "T_mu": t_mu,
                               "saturates_at": None if still else saturates,
                               "by_T": {f"{t:g}": stats[t].record() for t in ts}}
    sentence = f"{head}: " + ", ".join(parts) + f"; {sat}"
    if ts[-1] > t_mu:
        verdict = compare(stats[ts[-1]], stats[t_mu], higher)
        numbers["past_mu"] = verdict
        sentence += "; " + {
            "worse": f"overthinks: worse at T = {ts[-1]:g} than at T = μ beyond the spread",
            "better": "still gains past μ beyond the spread",
            "within": "no overthinking beyond the seed spread",
            "unjudged": "past μ not judged (one seed)"}[verdict]
    return Finding("test_time", sentence + ".", numbers)


# ---------------------------------------------------------------- 4. compute


def budgets(flops: list[float], tol: float = _BUDGET_TOL) -> dict[float, float]:
    """FLOP count -> its budget (the smallest count of its group; counts within tol join)."""
    out: dict[float, float] = {}
    anchor = math.nan
    for c in sorted(set(flops)):
        if not c <= anchor * (1 + tol):
            anchor = c
        out[c] = anchor
    return out


def compute(runs: list[Row], laws: dict[str, dict[str, dict]]) -> list[Finding]:
    """Compute-optimal loop count per FLOP budget, loss against compute, the fitted laws."""
    rows = [r for r in runs if role(r) in ("looped", "iso-parameter")
            and (r.get("status") or "ok") == "ok"
            and all(math.isfinite(number(r, c)) for c in ("flops", "val_loss", "loops"))]
    out = []
    budget_of = budgets([number(r, "flops") for r in rows])
    context = [c for c in conditions(rows) if c not in ("loops", "effective_depth", "tokens",
                                                         "flops")]
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(c, "") for c in context)].append(r)
    for key, mine in sorted(groups.items()):
        out += _optimal_loops(dict(zip(context, key, strict=True)), mine, budget_of)
    if not out:
        out.append(unavailable("compute", "no FLOP budget has finished looped runs at two or "
                               "more loop counts"))
    return out + _laws(laws, unit(runs))


def _optimal_loops(where: dict, rows: list[Row], budget_of: dict[float, float]
                   ) -> list[Finding]:
    per: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per[budget_of[number(r, "flops")]][number(r, "loops")].append(number(r, "val_loss"))
    per = {c: v for c, v in per.items() if len(v) > 1}
    if not per:
        return []
    parts, entries, bests = [], [], []
    for c in sorted(per):
        stats = {mu: Stat.of(v) for mu, v in per[c].items()}
        best = min(stats, key=lambda mu: stats[mu].mean)
        verdicts = {mu: compare(stats[mu], stats[best], False) for mu in stats if mu != best}
        tied = [mu for mu, v in verdicts.items() if v == "within"]
        unjudged = [mu for mu, v in verdicts.items() if v == "unjudged"]
        tie = "".join(f"; {words} μ = {', '.join(f'{m:g}' for m in mus)}" for words, mus in (
            ("tied within the seed spread with", tied), ("one seed, not judged against", unjudged))
            if mus)
        parts.append(f"{c:.3g} FLOPs: μ = {best:g} ({stats[best].text()}{tie})")
        bests.append((c, stats[best]))
        entries.append({"flops": c, "best_loops": best, "tied_loops": tied,
                        "unjudged_loops": unjudged,
                        "loss": {f"{mu:g}": s.record() for mu, s in stats.items()}})
    at = "".join(f", {c} {cell(v)}" for c, v in where.items())
    note = spread_note(s.n for _, s in bests)
    u = unit(rows)
    found = [Finding("compute", f"Compute-optimal loop count per budget{at} (val loss {u}, "
                     f"{note}): " + "; ".join(parts) + ".", {**where, "budgets": entries})]
    if len(bests) > 1:
        (c0, s0), (c1, s1) = bests[0], bests[-1]
        verdict = compare(s1, s0, False)
        trend = {"better": "falls beyond the seed spread", "worse": "rises beyond the spread",
                 "within": "does not fall beyond the seed spread",
                 "unjudged": "changes (one seed: not judged)"}[verdict]
        found.append(Finding(
            "compute", f"Best val loss{at} {trend} from {s0.text()} {u} at {c0:.3g} FLOPs to "
            f"{s1.text()} at {c1:.3g} FLOPs.", {**where, "from": [c0, s0.record()],
                                                  "to": [c1, s1.record()], "verdict": verdict}))
    return found


def law_state(record: dict) -> tuple[str, str]:
    """(status, reason in words) of a law record; ``flagged`` carries its flags' messages."""
    status = record.get("status", "?")
    flags = record.get("flags") or []
    if status == "ok" and flags:
        status = "flagged"
    reason = "; ".join(f.get("message", f.get("code", "")) for f in flags) or record.get(
        "reason", "")
    return status, reason


def _param(record: dict, name: str) -> str:
    value = record["params"][name]
    ci = (record.get("ci95") or {}).get(name)
    return f"{name} = {fmt(value)}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


_CITED: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "compute": ("loss against compute L = E + A C^-alpha, E in {unit}",
                lambda r: [_param(r, "alpha"), _param(r, "E")]),
    "isoflop": ("optimum against compute, mu* = k C^x",
                lambda r: [_param(r, n) for n in r["params"] if n.endswith("_exponent")]),
}


def _laws(laws: dict[str, dict[str, dict]], u: str) -> list[Finding]:
    """Identified laws cited with their intervals; flagged ones named with the reason; the
    others named by reason (each law's section of the report has the details)."""
    out = []
    for law, (words, cite) in _CITED.items():
        ok, flagged, other = [], [], defaultdict(list)
        for subset, record in laws.get(law, {}).items():
            status, reason = law_state(record)
            if status == "ok":
                ok.append((subset, cite(record)))
            elif status == "flagged":
                flagged.append({"subset": subset, "reason": reason})
            else:
                other[(status, reason)].append(subset)
        if ok:
            fits = "; ".join(f"{name}: {', '.join(ps)}" for name, ps in ok)
            out.append(Finding("compute", f"Fitted {law} law ({words.format(unit=u)}; 95% "
                               f"bootstrap intervals): {fits}.",
                               {"law": law, "ok": [n for n, _ in ok]}))
        if flagged:
            why = "; ".join(f"{f['subset']} ({f['reason']})" for f in flagged)
            out.append(Finding("compute", f"Flagged, so not cited: {law} law {why}.",
                               {"law": law, "flagged": flagged}))
        for (status, reason), subsets in other.items():
            out.append(Finding("compute", f"The {law} law was {status} for "
                               f"{'; '.join(subsets)}: {reason}.",
                               {"law": law, status: subsets, "reason": reason}))
    return out
