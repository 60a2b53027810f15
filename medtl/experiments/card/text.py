"""The card's sections written from the authors' intended-use file and from facts: intended use, sample size,
external evaluations, limitations, and how to reproduce the run."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from medtl.core.config import dump_yaml
from medtl.core.config.yaml_io import read_yaml
from medtl.core.errors import MedtlError
from medtl.evaluation.sample_size import sample_size_report
from medtl.experiments.card.facts import RunFacts
from medtl.experiments.card.render import Section
from medtl.experiments.card.sections import interval, num

# the intended-use file: key -> (card section anchor, title, what the authors write there)
FIELDS = {
    "title": (None, None, "the card's title"),
    "intended_use": ("intended-use", "Intended use", "what the model is for: task, setting, point in the care pathway"),
    "intended_users": ("intended-use", "Intended users", "who uses its output, with what expertise"),
    "out_of_scope": ("intended-use", "Out of scope", "uses it is not meant for"),
    "population": ("population", "Population", "the patients the data represent: age, sex, sites, scanners, dates, "
                                               "inclusion and exclusion"),
    "reference_standard": ("reference-standard", "Reference standard", "how the labels were obtained, by whom"),
    "ethics": ("ethics", "Ethics", "approval, consent or its waiver, de-identification"),
    "funding": ("funding", "Funding", "sources of funding and their role"),
    "contact": ("contact", "Contact", "who answers questions about the model"),
}
TEMPLATE = ("# Intended use of the model, for `medtl card RUN --intended-use card.yaml`.\n"
            "# Fill in what you can; what is left empty shows as 'for the authors: ...' in the card.\n"
            + "".join(f"{k}: \"\"   # {v[2]}\n" for k, v in FIELDS.items()))
DEFAULT_WIDTH = 0.1  # the 95 % interval width the card holds a test split to


def load_intended(path: str | Path | None) -> dict[str, str]:
    """The authors' answers; {} without a file. Refused in one line when it is not a mapping of known keys."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise MedtlError(f"--intended-use {path} not found; write a template with `medtl card RUN --template` and "
                         "fill it in")
    data = read_yaml(path, "intended-use file") or {}
    if not isinstance(data, dict):
        raise MedtlError(f"--intended-use {path} is not a mapping of keys to text; start from `medtl card RUN "
                         "--template`")
    unknown = sorted(set(map(str, data)) - set(FIELDS))
    if unknown:
        raise MedtlError(f"--intended-use {path}: unknown keys {unknown}; valid: {', '.join(FIELDS)}")
    return {k: "" if v is None else str(v).strip() for k, v in data.items()}


def intended_sections(intended: dict[str, str]) -> list[Section]:
    sections: dict[str, Section] = {}
    for key, (anchor, title, asks) in FIELDS.items():
        if anchor is None:
            continue
        section = sections.setdefault(anchor, Section(anchor, title, filled=False))
        value = intended.get(key, "")
        label = f"{title}: " if anchor == "intended-use" else ""
        section.p(f"{label}{value}" if value else f"for the authors: {asks} (`{key}` in the intended-use file)")
        section.filled = section.filled or bool(value)
    use = sections["intended-use"]
    use.filled = bool(intended.get("intended_use") and intended.get("intended_users"))
    return list(sections.values())


def needed(n: int, width: float, target: float) -> int:
    """Test images for a 95 % interval `target` wide, from one `width` wide on `n` (width shrinks as 1/sqrt(n))."""
    return int(math.ceil(n * (width / target) ** 2))


def wide_intervals(f: RunFacts, target: float) -> list[tuple[str, float, int, int | None]]:
    """(metric, width, test n, test images needed) for every test interval wider than `target`: for
    sensitivity, specificity and AUC of two classes the sample-size section's figure (evaluation/sample_size.py),
    for the other metrics the observed width scaled by the square root of the size."""
    test = f.metrics.splits.get("test") or {}
    n = test.get("n") or 0
    report = _report(test, target) or {}
    out = []
    for metric, ci in (test.get("ci95") or {}).items():
        if ci and None not in ci and ci[1] - ci[0] > target and n:
            need = report[metric].get("needed_images") if metric in report else needed(n, ci[1] - ci[0], target)
            out.append((metric, ci[1] - ci[0], n, need))
    return out


def _report(test: dict, target: float) -> dict | None:
    """evaluation/sample_size.py's report for a two-class test split at its observed values; None otherwise."""
    cm = test.get("confusion_matrix")
    if not (cm and len(cm) == 2):
        return None
    return sample_size_report(int(sum(cm[1])), int(sum(cm[0])), test.get("auc"), target, test.get("sensitivity"),
                              test.get("specificity"))


def sample_size(f: RunFacts, target: float) -> Section:
    test = f.metrics.splits.get("test") or {}
    s = Section("sample-size", "Sample size")
    if not test:
        return s.p("No test split was scored.")
    report = _report(test, target)
    if report:  # two classes: expected widths at the observed prevalence (evaluation/sample_size.py)
        s.p(f"The test split holds {test.get('n')} images ({report['n_pos']} positive, prevalence "
            f"{report['prevalence']:.2f}). Expected 95 % interval widths (Wilson for sensitivity and specificity, "
            f"Hanley-McNeil for AUC, at the observed values) and the test images a {target:g} wide interval "
            "needs at this prevalence:")
        rows = [[m, f"{report[m]['value']:.3f}", f"{report[m]['width']:.3f}", report[m].get("needed_images") or "-"]
                for m in ("sensitivity", "specificity", "auc")]
        s.table(["metric", "observed", "expected interval width", f"test images for width {target:g}"], rows)
        return s.p("The size was not planned by medtl: for the authors: how the study size was arrived at.")
    s.p(f"The test split holds {test.get('n')} images. Observed 95 % interval widths, and the test images a "
        f"{target:g} wide interval would need (assuming the width shrinks with the square root of the size):")
    rows = [[k, f"{ci[1] - ci[0]:.3f}", needed(test["n"], ci[1] - ci[0], target) if ci[1] - ci[0] > 0 else "-"]
            for k, ci in (test.get("ci95") or {}).items() if ci and None not in ci]
    s.table(["metric", "interval width", f"test images for width {target:g}"], rows)
    return s.p("The size was not planned by medtl: for the authors: how the study size was arrived at.")


def external_sections(f: RunFacts) -> list[Section]:
    if not f.evaluations:
        return []
    s = Section("external", "External evaluation")
    for path, m in f.evaluations:
        for split, r in _evaluation_splits(m).items():
            s.p(f"{path} ({split}, {r.get('n')} images):")
            s.table(["metric", "value", "95 % interval"],
                    [[k, num(r.get(k)), interval((r.get("ci95") or {}).get(k))]
                     for k in ("accuracy", "sensitivity", "specificity", "auc") if k in r])
        s.ul(shift_notes(m))
    return [s]


def _evaluation_splits(m: dict) -> dict[str, dict]:
    if isinstance(m.get("splits"), dict):
        return {k: v for k, v in m["splits"].items() if isinstance(v, dict)}
    return {str(m.get("split", "evaluated")): m}


def shift_notes(m: dict) -> list[str]:
    """What an evaluation folder says about a shifted data set (any key naming a shift), as sentences."""
    notes = []
    for key, value in m.items():
        if "shift" in key.lower() and value:
            if isinstance(value, dict) and "verdict" in value:  # medtl evaluate's shift test: its one-line verdict
                flagged = (value.get("per_image") or {}).get("flagged_fraction")
                text = value["verdict"] + (f"; {flagged:.1%} of the images flagged as unlike the training images"
                                           if isinstance(flagged, float) else "")
            else:
                text = value if isinstance(value, str) else "; ".join(map(str, value)) if isinstance(value, list) \
                    else ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
            notes.append(f"{key}: {text}")
    return notes


def limitations(f: RunFacts, target: float) -> Section:
    s = Section("limitations", "Limitations (written from the facts above)")
    items = [f"test {metric} interval is {width:.3f} wide on {n} images (more than {target:g}): "
             + (f"about {need} test images would be needed for that width" if need else
                "no test size within reach gives that width") for metric, width, n, need in wide_intervals(f, target)]
    for split, table in ((k, v.get("per_class")) for k, v in f.metrics.splits.items() if k == "test"):
        for cls, v in (table or {}).items():
            ci = (v.get("ci95") or {}).get("recall")
            if ci and None not in ci and ci[1] - ci[0] > target:
                items.append(f"class {cls}: {split} recall interval {interval(ci)} is wide")
    items += [f"the audit warned: {line}" for line in f.audit_lines]
    items += _copies(f)
    items += [f"data: {f.data_note}"] if "changed" in f.data_note else []
    items += _external_limits(f)
    if f.skipped:
        items.append(f"{f.skipped} unreadable images were left out; a deployed model meets such files too")
    val = f.metrics.splits.get("val") or {}
    if val.get("n") and val["n"] < 100 and len(f.metrics.classes) == 2:
        items.append(f"the threshold was chosen on {val['n']} validation images: it may not hold on new data")
    items.append("only the data named above were used: performance elsewhere (other sites, scanners, populations) "
                 "is not known unless an external evaluation is listed")
    return s.ul(items)


def _copies(f: RunFacts) -> list[str]:
    if f.data is None:
        return []
    a = f.data["audit"]
    cross = sum(len(g["splits"]) > 1 for g in a.exact_duplicates)
    near = sum(len(p["splits"]) > 1 for p in a.near_duplicates)
    out = [f"{cross} groups of byte-identical images span splits: test scores may be optimistic"] if cross else []
    return out + ([f"{near} near-copy pairs span splits (perceptual hash): test scores may be optimistic; "
                   "data.group=near_duplicates keeps them together"] if near else [])


def _external_limits(f: RunFacts) -> list[str]:
    out = []
    test_ci = ((f.metrics.splits.get("test") or {}).get("ci95") or {}).get("auc")
    for path, m in f.evaluations:
        out += [f"{path}: {note}" for note in shift_notes(m)]
        for split, r in _evaluation_splits(m).items():
            auc = r.get("auc")
            if test_ci and auc is not None and None not in test_ci and auc < test_ci[0]:
                out.append(f"{path} ({split}): AUC {auc:.3f} is below the internal test interval {interval(test_ci)}")
    return out


def reproduce(f: RunFacts) -> Section:
    env = f.environment
    data = shlex.quote(f.cfg.data.path or "DATA")
    s = Section("reproduce", "How to reproduce")
    s.p("Train again with the resolved config below (saved as config.yaml in the run folder):")
    s.code(f"medtl train {data} --config {shlex.quote(str(f.folder.config))} --name reproduced")
    s.code(dump_yaml(f.cfg).rstrip())
    s.table(["package", "version"], [[k, v] for k, v in env.get("versions", {}).items()])
    s.p(f"medtl source commit: {env.get('commit') or 'not known (not a git checkout)'}; versions and commit "
        f"{env.get('when', 'recorded by the run')}.")
    return s
