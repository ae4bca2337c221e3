"""One self-contained HTML report of a set of runs. Findings first: the paper's claims with their
statistic, 95% interval over seeds and verdict (:mod:`mmclshift.analysis.claims`), each linking
to its figure; then the figures beside the claims they test; theory vs measurement; effective
robustness with intervals; the result tables; and last the inventory of runs and configs.

The page is a list of section builders (:data:`SECTIONS`), each a function of a
:class:`ReportContext` returning HTML, so a section can be added without touching the others.

Figures are embedded as base64 PNG data URIs and the style is inline, so the file opens anywhere
without a network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mmclshift.analysis.claims import (
    CLAIMS as CLAIM_REGISTRY,
)
from mmclshift.analysis.claims import (
    DOC,
    THEORY_AXES,
    ClaimResult,
    error_line,
    evaluate_claims,
    format_interval,
    groups_of,
    holds_if,
)
from mmclshift.analysis.collect import (
    ROW_KEYS,
    Collected,
    binomial_ci,
    collect,
    group_over_seeds,
)
from mmclshift.analysis.er_baseline import table_support
from mmclshift.analysis.figures import DATA_NAMES, all_figures, er_points
from mmclshift.analysis.groups import claim_groups, drop_moved_aside, format_label, same_value
from mmclshift.analysis.robustness import effective_robustness, shift_pairs
from mmclshift.analysis.stats import t_interval
from mmclshift.analysis.theory_map import REPORT_MAPS, describe, load_map, report_maps
from mmclshift.errors import UserError
from mmclshift.report_text import format_value
from mmclshift.runs import ENV_FILE, atomic_write_text

#: flag a measured accuracy this many binomial standard errors (of its test set) from the theory
DEVIATION_SE = 4.0

CLAIMS = {
    "theory": ("Theory vs trained models (Sections 3-5)",
               "The closed-form predictions (Lemma 3.2, Theorems 4.3-4.8) match linear models "
               "trained on samples of the data models: points on y = x within test-set noise."),
    "figure2": ("Figure 2: caption richness, OOD",
                "A large pi_core (captions that name the core feature) is crucial for MMCL to beat "
                "SL out of distribution; pi_spu has little effect."),
    "figure5": ("Figure 5: ID accuracy",
                "In distribution, MMCL and SL are both accurate once captions are rich enough."),
    "figure3": ("Effective robustness (the paper's Figure 3a)",
                "MMCL lies above the line fitted to SL models: higher OOD accuracy at equal ID "
                "accuracy."),
    "figure3_real": ("Figure 3a-c: effective robustness on shifted ImageNets",
                     "CLIP trained on captions is more robust than SL; richer captions and "
                     "intra-class contrasting add robustness."),
}

#: the repository's documentation of the claims (linked from a verdict's reason)
DOC_PATH = Path(__file__).resolve().parents[3] / DOC

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#222;line-height:1.45;padding:0 1em}.tw{overflow-x:auto;max-width:100%}
.map img{width:100%;max-width:1300px;border:1px solid #eee}.map .claim{max-width:none}
.why{font-size:.85em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#f3f3f3}
.fig{display:flex;gap:1.5em;align-items:flex-start;margin:1em 0;flex-wrap:wrap}
.fig img{max-width:min(620px,100%);border:1px solid #eee}.claim{max-width:420px}
.fig .figtitle{flex-basis:100%;margin:0}.fig .grow{flex:1 1 360px;max-width:none;min-width:0}
.fig .grow p{margin:.3em 0}
.flag{background:#ffe0e0}.ok{background:#e6f6e6}.v-holds td{background:#e6f6e6}
.v-fails td{background:#ffe0e0}.v-inconclusive td{background:#fff6d6}pre{background:#f7f7f7;padding:.6em;font-size:.8em;
overflow-x:auto}.muted{color:#777}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table_html(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="muted">no rows</p>'
    return ('<div class="tw">' + df.to_html(index=False, float_format=format_value, na_rep="-", border=0)
            + "</div>")


def theory_deviations(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with a prediction: measured, theory, deviation in test-set SEs, and a flag."""
    if table.empty or "theory" not in table.columns:
        return pd.DataFrame()
    t = table[table["theory"].notna()].copy()
    if t.empty:
        return pd.DataFrame()
    se = (t["theory"] * (1 - t["theory"])).clip(lower=1e-6).pow(0.5) / t["n"].astype(float).pow(0.5)
    t["dev_se"] = (t["accuracy"] - t["theory"]) / se
    t["flagged"] = t["dev_se"].abs() > DEVIATION_SE
    cols = [c for c in ["kind", "name", "seed", "method", "split", "theory", "accuracy",
                        "population", "n", "dev_se", "flagged"] if c in t.columns]
    return t[cols].reset_index(drop=True)


def er_table(table: pd.DataFrame) -> pd.DataFrame:
    """Effective robustness of every (run, method) against the SL fit, for each ID/OOD pair."""
    if table.empty:
        return pd.DataFrame()
    parts = [_er_rows(t, str(kind)) for kind, t in table.groupby("kind")]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _er_rows(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    rows = []
    for id_split, ood_split in shift_pairs(set(table["split"])):
        pts = er_points(table, id_split, ood_split)
        extra = [k for k in ("seed", *_config_keys(table)) if k in table.columns]
        if not pts.empty and extra:
            pts = pts.merge(table[["run", "method", *extra]].drop_duplicates(["run", "method"]),
                            on=["run", "method"], how="left")
        if pts.empty or (pts["method"] == "sl").sum() < 2:
            continue
        if not table_support(table, id_split, ood_split)[0].ok:
            continue  # a baseline that cannot carry a line gives no ER (er_refusals says why)
        try:
            er = effective_robustness(pts["accuracy_id"], pts["accuracy_ood"],
                                      (pts["method"] == "sl").to_numpy(), n_boot=0)
        except UserError:  # degenerate baseline (e.g. equal ID accuracies): no line
            continue
        for (_, p), pred, e in zip(pts.iterrows(), er.predicted, er.er, strict=True):
            lo, hi = binomial_ci(p.get("correct_ood"), p.get("n_ood"))
            rows.append({"kind": kind, "id": id_split, "ood": ood_split, "run": Path(p["run"]).name,
                         "method": p["method"], "id_acc": p["accuracy_id"],
                         "ood_acc": p["accuracy_ood"], "predicted_ood": float(pred),
                         "effective_robustness": float(e),
                         # the run's OOD Clopper-Pearson interval, shifted by the line's prediction
                         "er_ci_low": None if lo is None else lo - float(pred),
                         "er_ci_high": None if hi is None else hi - float(pred),
                         **{k: p[k] for k in ("seed", *_config_keys(table)) if k in p}})
    return pd.DataFrame(rows)


def er_refusals(table: pd.DataFrame) -> list[str]:
    """One sentence per (kind, ID/OOD pair) whose SL baseline cannot carry a line, and why."""
    out = []
    if table.empty:
        return out
    for kind, t in table.groupby("kind"):
        for id_split, ood_split in shift_pairs(set(t["split"])):
            support, pts = table_support(t, id_split, ood_split)
            if len(pts) >= 2 and not support.ok:
                out.append(f"{DATA_NAMES.get(str(kind), str(kind))} ({ood_split} vs {id_split}): no "
                           f"effective robustness and no figure -- the SL baseline cannot carry a "
                           f"line: {support.describe()}")
    return out


def _config_keys(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ROW_KEYS]


def er_summary(er: pd.DataFrame) -> pd.DataFrame:
    """Effective robustness over seeds per (kind, OOD set, method, config): mean, standard error,
    95% t-interval and ``n_seeds``."""
    if er.empty:
        return er
    fixed = {"kind", "id", "ood", "run", "method", "id_acc", "ood_acc", "predicted_ood",
             "effective_robustness", "er_ci_low", "er_ci_high", "seed"}
    keys = ["kind", "id", "ood", "method"] + [c for c in er.columns if c not in fixed and er[c].nunique(dropna=False) > 1]
    rows = []
    for key, g in er.groupby(keys, dropna=False, sort=True):
        iv = t_interval(g["effective_robustness"].astype(float).to_numpy())
        rows.append({**dict(zip(keys, key, strict=True)), "er_mean": iv.mean, "se": iv.se,
                     "ci_low": iv.low, "ci_high": iv.high, "n_seeds": iv.n})
    return pd.DataFrame(rows)


@dataclass
class ReportGroup:
    """Runs of one kind that agree on every config key but the seed and the axes its claims vary
    (:func:`report_groups`); ``label``: the keys that set it apart from its kind's other groups."""

    kind: str
    label: dict[str, Any]
    table: pd.DataFrame

    @property
    def title(self) -> str:
        data = DATA_NAMES.get(self.kind, self.kind)
        return f"{data}: {format_label(self.label)}" if self.label else data


def _grouping(kind: str) -> tuple[Sequence[str], Any]:
    """The axes and baseline rule by which ``kind``'s claims group runs (the first claim of that
    kind in the registry), so the report's groups are the claims' groups."""
    for claim in CLAIM_REGISTRY.values():
        if kind in claim.kinds:
            return claim.axes, claim.wildcard
    return THEORY_AXES, None


def report_groups(table: pd.DataFrame) -> list[ReportGroup]:
    """The collected rows split into the groups the report draws separately: per kind, the runs
    that agree on every config key but the seed and the axes its claims vary (runs moved aside by
    ``--force`` left out; SL baseline runs may join several groups, as in the claims)."""
    table, _ = drop_moved_aside(table)
    if table.empty or "kind" not in table.columns:
        return []
    out = []
    for kind in sorted({str(k) for k in table["kind"].dropna()}):
        axes, wildcard = _grouping(kind)
        out += [ReportGroup(kind, dict(g.label), g.table)
                for g in claim_groups(table, [kind], axes, wildcard) if not g.table.empty]
    return out


def _claim_in_group(r: ClaimResult, g: ReportGroup) -> bool:
    """Whether claim result ``r`` was computed from ``g``'s runs (its kinds include ``g``'s and
    its group label agrees with ``g``'s)."""
    claim = CLAIM_REGISTRY.get(r.claim)
    if claim is None or g.kind not in claim.kinds:
        return False
    for key, value in r.group.items():
        prefix, sep, rest = key.partition(":")  # "kind:key" in a label over several kinds
        if sep:
            if prefix != g.kind:
                continue
            key = rest
        if key in g.label and not same_value(g.label[key], value):
            return False
    return True


@dataclass
class ReportContext:
    """What every section builder sees: the collected runs, the figures written, the claims."""

    col: Collected
    figures: dict[str, list[Path]]
    claims: list[ClaimResult]
    claim_errors: list[tuple[str, str]]
    root: Path | None = None  # run paths are shown relative to this folder when given
    maps: list[dict] = field(default_factory=list)  # theory maps (analysis.theory_map.load_map)
    prefix: str = ""  # anchor prefix of a group's figures ("g2-")
    #: with several groups: each group and the context its sections are built from
    groups: list[tuple[ReportGroup, ReportContext]] = field(default_factory=list)
    aside: list[str] = field(default_factory=list)  # runs moved aside by --force (not read)

    def rel(self, path: Path | str) -> str:
        if self.root is None:
            return str(path)
        try:
            return os.path.relpath(Path(path).resolve(), self.root.resolve())
        except ValueError:
            return str(path)

    def anchor(self, figure: str) -> str | None:
        """The id of the figure block of ``figure``: the exact key (``figure3:semisynthetic``),
        else the first figure of that name (kind suffix ignored)."""
        if figure in self.figures:
            return _anchor(figure, self.prefix)
        if ":" in figure:
            return None
        for key in self.figures:
            if key.partition(":")[0] == figure:
                return _anchor(key, self.prefix)
        return None

    def claim_anchor(self, r: ClaimResult) -> str | None:
        """The id of the figure block that shows claim result ``r`` (in its group's section)."""
        for _, sub in self.groups:
            if any(x is r for x in sub.claims):
                return sub.anchor(r.figure)
        return self.anchor(r.figure)


def _anchor(key: str, prefix: str = "") -> str:
    return "fig-" + prefix + key.replace(":", "-").replace("_", "-")


def _doc_href(ctx: ReportContext, claim: str) -> str:
    target = str(DOC_PATH) if DOC_PATH.is_file() else DOC
    if ctx.root is not None and DOC_PATH.is_file():
        try:
            target = os.path.relpath(DOC_PATH, ctx.root.resolve())
        except ValueError:
            pass
    return f"{target}#{claim}"


def _why_html(ctx: ReportContext, r: ClaimResult) -> str:
    """For fails / inconclusive: one sentence on why, and a link to the claim's documentation (for
    holds: its caveat, if any)."""
    if not r.reason:
        return ""
    return (f"<div class='why'>{'Caveat' if r.verdict == 'holds' else 'Why'}: {html.escape(r.reason)}. "
            f"<a href=\"{html.escape(_doc_href(ctx, r.claim))}\">{DOC}#{html.escape(r.claim)}</a></div>")


def _verdict_html(r: ClaimResult) -> str:
    if r.verdict == r.verdict_unadjusted:
        return f"<b>{r.verdict}</b>"
    return f"<b>{r.verdict}</b> <span class='muted'>(unadjusted: {r.verdict_unadjusted})</span>"


def _claims_group_title(label: str, rs: list[ClaimResult]) -> str:
    """A claims table's group label; one without distinguishing keys names the data it read (its
    kinds had one group each), so it never reads as all the runs on the page."""
    if rs and not rs[0].group:
        kinds = dict.fromkeys(k for r in rs if r.claim in CLAIM_REGISTRY for k in CLAIM_REGISTRY[r.claim].kinds)
        return "all runs of " + ", ".join(DATA_NAMES.get(k, k) for k in kinds) if kinds else label
    return label


def _claims_section(ctx: ReportContext) -> str:
    if not ctx.claims and not ctx.claim_errors:
        return ""
    counts = {v: sum(r.verdict == v for r in ctx.claims) for v in ("holds", "fails", "inconclusive")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    body = ("<h2 id='claims'>Findings: the paper's claims, measured</h2>"
            f"<p>{len(ctx.claims)} claim(s) computed: {summary}. Statistic: mean over seeds of a "
            "per-seed value; interval: 95% Student-t over seeds (for effective robustness, widened by "
            "the SL line's bootstrap uncertainty). A claim <b>holds</b> when the whole interval is on "
            "the claimed side of its threshold (for an equivalence claim: inside the margin), "
            "<b>fails</b> when it is wholly on the other side, and is <b>inconclusive</b> otherwise. "
            "The verdict is after Holm's correction over the claims of one table; the verdict of the "
            "interval alone is shown beside it. A claim reads only runs that agree on every config key "
            "except the seed and the axes it varies: each group of runs has its own table.</p>")
    for label, rs in groups_of(ctx.claims):
        rows = []
        for r in rs:
            a = ctx.claim_anchor(r)
            name = f'<a href="#{a}">{html.escape(r.claim)}</a>' if a else html.escape(r.claim)
            rows.append(
                f"<tr class='v-{r.verdict}'><td>{name}</td><td>{html.escape(r.paper)}</td>"
                f"<td>{html.escape(r.description)}<br><span class='muted'>{html.escape(r.note)}</span></td>"
                f"<td>{r.statistic:+.3f}</td><td>{html.escape(format_interval(r))}</td>"
                f"<td>{html.escape(holds_if(r))}</td><td>{r.n_seeds}</td>"
                f"<td>{r.verdict_unadjusted}</td><td><b>{r.verdict}</b>{_why_html(ctx, r)}</td></tr>")
        if len(groups_of(ctx.claims)) > 1 or label != "all runs":
            body += f"<h3>Group: {html.escape(_claims_group_title(label, rs))}</h3>"
        body += ("<div class='tw'><table><tr><th>claim</th><th>paper</th><th>statistic computed</th>"
                 "<th>value</th><th>95% CI</th><th>holds if</th><th>n_seeds</th><th>unadjusted</th>"
                 "<th>verdict (Holm)</th></tr>" + "".join(rows) + "</table></div>")
    if ctx.claim_errors:
        body += ("<p>Not computed:</p><ul>" + "".join(
            f"<li>{html.escape(error_line(n, why))}</li>" for n, why in ctx.claim_errors) + "</ul>")
    return body


def _figure_title(base: str, kind: str) -> str:
    title = CLAIMS.get(base, (base, ""))[0]
    return f"{title}: {DATA_NAMES.get(kind, kind)}" if kind else title


def _claim_items(ctx: ReportContext, rs: list[ClaimResult]) -> str:
    return "".join(
        f"<li>{html.escape(r.claim)}"
        + (f" <span class='muted'>[{html.escape(r.group_label)}]</span>" if r.group else "")
        + f": {r.statistic:+.3f} {html.escape(format_interval(r))} -> {_verdict_html(r)}"
        f"{_why_html(ctx, r)}</li>" for r in rs)


def _figures_section(ctx: ReportContext) -> str:
    parts = ["<h2>Figures and the claims they test</h2>"]
    if not ctx.figures:
        parts.append('<p class="muted">The collected runs hold no data for the paper\'s figures.</p>')
    shown_claims: set[int] = set()
    for key, paths in ctx.figures.items():
        base, _, kind = key.partition(":")
        claim = CLAIMS.get(base, (base, ""))[1]
        pngs = [p for p in paths if p.suffix == ".png"]
        # each claim beside the one figure that shows it (its figure key, kind included)
        mine = [r for r in ctx.claims if id(r) not in shown_claims and ctx.anchor(r.figure) == _anchor(key, ctx.prefix)]
        shown_claims.update(id(r) for r in mine)
        verdicts = _claim_items(ctx, mine)
        # title first; the claims beside the figure, or below it at full width when it is two panels
        parts.append(f'<div class="fig" id="{_anchor(key, ctx.prefix)}">'
                     f'<h3 class="figtitle">{html.escape(_figure_title(base, kind))}</h3>'
                     f'{"".join(_img(p) for p in pngs)}<div class="claim grow">'
                     f"<p>Paper: {html.escape(claim)}</p>"
                     + (f"<p>Measured:</p><ul>{verdicts}</ul>" if verdicts else "") + "</div></div>")
    orphans = [r for r in ctx.claims if id(r) not in shown_claims]
    if orphans:
        parts.append("<h3>Claims without a figure</h3><p>Their figure is not drawn (for effective "
                     "robustness: the baseline cannot carry a line).</p><ul>" + _claim_items(ctx, orphans)
                     + "</ul>")
    refusals = er_refusals(ctx.col.table)
    if refusals:
        parts.append("<ul>" + "".join(f"<li class='muted'>{html.escape(x)}</li>" for x in refusals) + "</ul>")
    shown = {k.partition(":")[0] for k in ctx.figures}
    missing = [CLAIMS[k][0] for k in CLAIMS if k not in shown]
    if missing:
        parts.append('<p class="muted">Not shown (no runs with the data): '
                     + html.escape("; ".join(missing)) + ".</p>")
    return "".join(parts)


def _maps_section(ctx: ReportContext) -> str:
    if not ctx.maps:
        return ""
    parts = ["<h2 id='theory-maps'>Where the claims hold: theory maps</h2>"
             "<p>The closed-form predictions evaluated on a grid of two settings, everything else at "
             "the config's values. Left: MMCL's OOD accuracy minus SL's (black line: equal); middle "
             "and right: each method's OOD accuracy. These maps are theory only (no sampling, no "
             "seeds); they give the region of validity of the theory-tier claims above.</p>"]
    for m in ctx.maps:
        name = m["dir"].name
        parts.append(f'<div class="map" id="map-{html.escape(name)}">{_img(m["png"])}'
                     f'<div class="claim"><h3>{html.escape(name)}: {html.escape(m["summary"]["x"])} x '
                     f'{html.escape(m["summary"]["y"])}</h3><p>{html.escape(describe(m["summary"]))}</p>'
                     f'<p class="muted">{html.escape(ctx.rel(m["dir"]))}</p></div></div>')
    return "".join(parts)


def _theory_section(ctx: ReportContext) -> str:
    dev = theory_deviations(ctx.col.table)
    if dev.empty:
        return ""
    n_flag = int(dev["flagged"].sum())
    body = _table_html(dev)
    return ("<h2>Theory vs measurement</h2>"
            f"<p>A row is flagged when the measured test accuracy is more than {DEVIATION_SE:g} "
            "binomial standard errors of its test set (sqrt(a(1-a)/n) at the predicted a) from the "
            f"closed-form prediction. {n_flag} of {len(dev)} rows flagged.</p>"
            + body.replace("<td>True</td>", '<td class="flag">True</td>')
            .replace("<td>False</td>", '<td class="ok">False</td>'))


def _er_section(ctx: ReportContext) -> str:
    er = er_table(ctx.col.table)
    refusals = er_refusals(ctx.col.table)
    if er.empty and not refusals:
        return ""
    refused = "".join(f"<li>{html.escape(x)}</li>" for x in refusals)
    if er.empty:
        return f"<h2>Effective robustness</h2><ul>{refused}</ul>"
    return ("<h2>Effective robustness</h2><p>Observed OOD accuracy minus the OOD accuracy "
            "predicted at the same ID accuracy by the line fitted (logit axes) to the SL models, "
            "where the SL baseline can carry a line (its ID accuracies span more than their noise "
            "and the line's correlation is significant). "
            "Over seeds: mean, standard error and 95% t-interval per method and configuration.</p>"
            + (f"<ul>{refused}</ul>" if refused else "")
            + _table_html(er_summary(er))
            + "<p>Per run (interval: the run's OOD Clopper-Pearson 95% interval minus the line's "
              "prediction):</p>" + _table_html(er))


def _testbed_section(ctx: ReportContext) -> str:
    """Real-data runs against imagenet-testbed's lines (:mod:`mmclshift.analysis.testbed`)."""
    from mmclshift.analysis.testbed import testbed_report

    with tempfile.TemporaryDirectory() as tmp:
        res = testbed_report(ctx.col.table, Path(tmp) / "testbed.png")
        if res is None:
            return ""
        png, er, notes = res
        img = _img(png)
    er = er.assign(run=[ctx.rel(r) for r in er["run"]])
    return ("<h2 id='testbed'>On the field's line: imagenet-testbed</h2><p>Each shifted ImageNet "
            "against ImageNet val (restricted to the shift's classes for -R, -A and ObjectNet), "
            "logit axes: the testbed's models as faded points by type, the line fitted (OLS) to "
            "its 85 standard models with a 95% bootstrap band (ImageNet-A: two pieces, split "
            "where ResNet-50 scores 0%), y = x, and these runs (stars: CLIP, squares: SL). "
            "ER = OOD accuracy minus the line's.</p>" + img + _table_html(er)
            + "".join(f"<p class='muted'>{html.escape(n)}</p>" for n in notes))


def _results_section(ctx: ReportContext) -> str:
    col = ctx.col
    grouped = group_over_seeds(col.table, [k for k in col.varying if k in col.table.columns])
    if not grouped.empty:  # accuracy intervals inside [0, 1]
        grouped = grouped.assign(ci_low=grouped["ci_low"].clip(lower=0.0), ci_high=grouped["ci_high"].clip(upper=1.0))
    table = col.table.assign(run=[ctx.rel(r) for r in col.table["run"]]) if not col.table.empty else col.table
    return ("<h2>Results over seeds (mean, standard error, 95% t-interval)</h2>" + _table_html(grouped)
            + "<h2>All results (per run; ci: 95% Clopper-Pearson of the test accuracy)</h2>"
            + _table_html(table))


def _runs_section(ctx: ReportContext) -> str:
    col = ctx.col
    rows, details = [], []
    hardware = set()
    for run in col.runs:
        env = json.loads((run / ENV_FILE).read_text()) if (run / ENV_FILE).is_file() else {}
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        hardware.add(f"{env.get('platform', '?')}; {env.get('cpu_count', '?')} CPUs"
                     + (f"; GPU {env['gpu']}" if env.get("gpu") else ""))
        rows.append({"run": ctx.rel(run), "kind": cfg.get("kind"), "seed": cfg.get("seed"),
                     "device": env.get("device"), "mmclshift": env.get("mmclshift"),
                     "torch": env.get("torch"), "git": (env.get("git_revision") or "-")[:10],
                     "started": env.get("started")})
        details.append(f"<details><summary>{html.escape(ctx.rel(run))}</summary><pre>"
                       f"{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>")
    skipped = ""
    if col.failed or col.incomplete:
        n = len(col.failed) + len(col.incomplete)
        skipped = (f"<p>Skipped {len(col.failed)} failed and {len(col.incomplete)} incomplete run "
                   f"director{'y' if n == 1 else 'ies'}: "
                   + html.escape(", ".join(ctx.rel(p) for p in col.failed + col.incomplete)) + "</p>")
    if ctx.aside:
        skipped += ("<p>Not read (moved aside by <code>--force</code>, superseded by the run that "
                    "replaced them): " + html.escape(", ".join(ctx.rel(p) for p in ctx.aside)) + "</p>")
    hw = "".join(f"<li>{html.escape(h)}</li>" for h in sorted(hardware))
    return (f"<h2>What was run</h2><p>{html.escape(col.summary())}.</p>{skipped}"
            f"<p>Hardware:</p><ul>{hw}</ul>{_table_html(pd.DataFrame(rows))}"
            f"<p>Resolved configs:</p>{''.join(details)}")


def _group_contexts(ctx: ReportContext, groups: list[ReportGroup],
                    fig_dir: Path) -> list[tuple[ReportGroup, ReportContext]]:
    """One context per group: its rows, its figures (under ``fig_dir/group-<i>``) and the claims
    computed from its runs (each claim in the first group it matches)."""
    owner: dict[int, int] = {}
    for r in ctx.claims:
        i = next((i for i, g in enumerate(groups) if _claim_in_group(r, g)), 0)
        owner[id(r)] = i
    out = []
    for i, g in enumerate(groups, start=1):
        col = replace(ctx.col, table=g.table.reset_index(drop=True))
        figs = all_figures(col.table, fig_dir / f"group-{i}")
        mine = [r for r in ctx.claims if owner[id(r)] == i - 1]
        out.append((g, ReportContext(col, figs, mine, [], ctx.root, [], prefix=f"g{i}-")))
    return out


def _demote(page: str) -> str:
    """Headings one level down (a section inside a group's block)."""
    for level in (4, 3, 2):
        page = page.replace(f"<h{level}", f"<h{level + 1}").replace(f"</h{level}>", f"</h{level + 1}>")
    return page


def _groups_html(ctx: ReportContext, builders: Sequence[SectionBuilder]) -> str:
    parts = [f"<h2 id='groups'>Results by group of runs</h2><p>The runs form {len(ctx.groups)} groups: "
             "runs of one kind that agree on every config key except the seed and the axes the "
             "claims vary (the groups of the claims tables). Each group's figures and tables read "
             "only its own runs; a group is named by the keys that set it apart.</p>"]
    for i, (g, sub) in enumerate(ctx.groups, start=1):
        body = "".join(b(sub) for b in builders)
        parts.append(f"<section class='group' id='group-{i}'><h2>Group {i}: {html.escape(g.title)}</h2>"
                     f"<p class='muted'>{len(set(g.table['run']))} run(s).</p>{_demote(body)}</section>")
    return "".join(parts)


SectionBuilder = Callable[[ReportContext], str]
#: the report's sections in order: findings first, the inventory of runs and configs last.
#: Other modules may insert their own builders (each returns HTML, or "" to be left out).
SECTIONS: list[SectionBuilder] = [_claims_section, _figures_section, _maps_section, _theory_section,
                                  _er_section, _testbed_section, _results_section, _runs_section]
#: the sections drawn once per group of runs when the runs form several groups
GROUP_SECTIONS: list[SectionBuilder] = [_figures_section, _theory_section, _er_section, _testbed_section,
                                        _results_section]


def build_report(col: Collected, fig_dir: Path, *, root: Path | None = None,
                 claims: tuple[list[ClaimResult], list[tuple[str, str]]] | None = None,
                 sections: Sequence[SectionBuilder] | None = None,
                 maps: Sequence[dict] = ()) -> str:
    """The page's HTML; ``maps`` are theory maps as :func:`~mmclshift.analysis.theory_map.load_map`
    returns them."""
    results, errors = claims if claims is not None else evaluate_claims(col.table, relative_to=root)
    table, aside = drop_moved_aside(col.table)  # superseded by --force: in no figure or table
    col = replace(col, table=table.reset_index(drop=True))
    groups = report_groups(col.table)
    if not any(g.label for g in groups):  # one group per kind: every figure and table over all runs
        ctx = ReportContext(col, all_figures(col.table, fig_dir), results, errors, root, list(maps))
    else:
        ctx = ReportContext(col, {}, results, errors, root, list(maps))
        ctx.groups = _group_contexts(ctx, groups, fig_dir)
    ctx.aside = aside
    parts = [f"<h1>mmclshift report</h1><p class='muted'>generated "
             f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}</p>"]
    builders = list(SECTIONS if sections is None else sections)
    if not ctx.groups:
        parts += [b(ctx) for b in builders]
    else:  # the per-group sections at the place of the first of them, one block per group
        grouped = [b for b in builders if b in GROUP_SECTIONS]
        for b in builders:
            if b not in GROUP_SECTIONS:
                parts.append(b(ctx))
            elif b is grouped[0]:
                parts.append(_groups_html(ctx, grouped))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmclshift report"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(run_dirs: Sequence[str | Path], out_html: str | Path, *,
                 figures_dir: str | Path | None = None, relative_paths: bool = True,
                 claims: tuple[list[ClaimResult], list[tuple[str, str]]] | None = None,
                 maps: Sequence[str | Path] = (), default_maps: bool = False) -> Path:
    """Collect ``run_dirs`` and write the self-contained report to ``out_html``.

    Figures (PNG and SVG) are also kept in ``figures_dir`` when given. Run directories are shown
    relative to the report's folder (``relative_paths``). ``claims`` (results, errors) skips
    recomputing them when the caller already has them. ``maps`` are theory-map folders
    (``mmclshift theory-map --out``) shown in the section on where the claims hold;
    ``default_maps`` also computes one map per data model among the collected runs
    (:func:`mmclshift.analysis.theory_map.report_maps`, under the figures folder).
    """
    col = collect(run_dirs)
    loaded = [load_map(m) for m in maps]  # a bad folder fails here, before any figure is drawn
    out = Path(out_html)
    root = out.parent if relative_paths else None
    with tempfile.TemporaryDirectory() as tmp:
        fig_dir = Path(figures_dir) if figures_dir is not None else Path(tmp)
        if default_maps:
            kinds = sorted(set(col.table["kind"])) if "kind" in col.table.columns else []
            kinds = [k for k in kinds if k in REPORT_MAPS]
            if kinds:
                loaded += [load_map(d) for d in report_maps(fig_dir / "theory-maps", kinds)]
        page = build_report(col, fig_dir, root=root, claims=claims, maps=loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


__all__ = ["CLAIMS", "DEVIATION_SE", "GROUP_SECTIONS", "SECTIONS", "ReportContext", "ReportGroup", "build_report", "er_refusals", "er_summary",
           "er_table", "report_groups", "theory_deviations", "write_report"]
