"""The study report's subgroup table: each run's test metrics per subgroup value (manifest columns such as
sex or site, data.subgroups), with intervals, and the largest gap between a column's values with its paired
bootstrap interval; values too small to score are named with the reason, not dropped."""

from __future__ import annotations

import math

from medtl.experiments.study.compare import Run, label

GAP_METRICS = ("auc", "sensitivity", "specificity")


def _interval(entry: dict, metric: str) -> str:
    value = entry.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    ci = (entry.get("ci95") or {}).get(metric)
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _gap(gaps: dict, metric: str) -> str:
    g = gaps.get(metric) or {}
    if "gap" not in g:
        return g.get("not_compared", "")
    ci = g.get("ci95")
    interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci and None not in ci else ""
    return f"{g['gap']:+.3f}{interval} ({g.get('highest')} vs {g.get('lowest')})"


def subgroup_table(runs: list[Run]) -> tuple[list[str], list[list[tuple[str, bool]]]] | None:
    """(head, rows) of every run's test subgroups, or None when no run scored any."""
    head = ["configuration", "seed", "column", "value", "n", "AUC", "sensitivity", "specificity",
            *[f"largest {m} gap [95 % CI]" for m in GAP_METRICS]]
    body = []
    for run in runs:
        groups, gaps = run.test.get("subgroups") or {}, run.test.get("subgroup_gaps") or {}
        for column, values in groups.items():
            for value, entry in values.items():
                n = str(entry.get("n", sum((entry.get("counts") or {}).values())))
                scores = ([_interval(entry, m) for m in GAP_METRICS] if entry.get("scored")
                          else [entry.get("reason", "not scored"), "", ""])
                body.append([label(run.group), str(run.seed), column, str(value), n, *scores,
                             *[_gap(gaps.get(column) or {}, m) for m in GAP_METRICS]])
    return (head, [[(cell, False) for cell in row] for row in body]) if body else None
