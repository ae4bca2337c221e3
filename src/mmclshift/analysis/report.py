"""One self-contained HTML report of a set of runs: what was run, the paper's figures beside the
claims they test, the tables, theory vs measurement, and effective robustness.

Figures are embedded as base64 PNG data URIs and the style is inline, so the file opens anywhere
without a network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from mmclshift.analysis.collect import Collected, collect, group_over_seeds
from mmclshift.analysis.figures import all_figures, er_points
from mmclshift.analysis.robustness import effective_robustness
from mmclshift.errors import UserError
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
    "figure3": ("Figure 3a: effective robustness",
                "MMCL lies above the line fitted to SL models: higher OOD accuracy at equal ID "
                "accuracy."),
    "figure3_real": ("Figure 3a-c: effective robustness on shifted ImageNets",
                     "CLIP trained on captions is more robust than SL; richer captions and "
                     "intra-class contrasting add robustness."),
}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#f3f3f3}
.fig{display:flex;gap:1.5em;align-items:flex-start;margin:1em 0;flex-wrap:wrap}
.fig img{max-width:520px;border:1px solid #eee}.claim{max-width:420px}
.flag{background:#ffe0e0}.ok{background:#e6f6e6}pre{background:#f7f7f7;padding:.6em;font-size:.8em;
overflow-x:auto}.muted{color:#777}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table_html(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="muted">no rows</p>'
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0)


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
    splits = set(table["split"])
    pairs = [("id", s) for s in ("ood", "ood_reversed") if s in splits and "id" in splits]
    # ImageNet-R and -A are scored with 200-class heads: their ID axis is ImageNet val restricted to
    # the same 200 classes (id_r200 / id_a200) when the run evaluated it
    own_id = {"imagenet-r": "id_r200", "imagenet-a": "id_a200", "objectnet": "id_objectnet"}
    for s in sorted(splits):
        if s.startswith(("imagenet-", "objectnet")):
            id_split = own_id.get(s) if own_id.get(s) in splits else "imagenet"
            if id_split in splits:
                pairs.append((id_split, s))
    for id_split, ood_split in pairs:
        pts = er_points(table, id_split, ood_split)
        if pts.empty or (pts["method"] == "sl").sum() < 2:
            continue
        try:
            er = effective_robustness(pts["accuracy_id"], pts["accuracy_ood"],
                                      (pts["method"] == "sl").to_numpy(), n_boot=0)
        except UserError:  # degenerate baseline (e.g. equal ID accuracies): no line
            continue
        for (_, p), pred, e in zip(pts.iterrows(), er.predicted, er.er, strict=True):
            rows.append({"kind": kind, "id": id_split, "ood": ood_split, "run": Path(p["run"]).name,
                         "method": p["method"], "id_acc": p["accuracy_id"],
                         "ood_acc": p["accuracy_ood"], "predicted_ood": float(pred),
                         "effective_robustness": float(e)})
    return pd.DataFrame(rows)


def _runs_section(col: Collected) -> str:
    rows, details = [], []
    hardware = set()
    for run in col.runs:
        env = json.loads((run / ENV_FILE).read_text()) if (run / ENV_FILE).is_file() else {}
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        hardware.add(f"{env.get('platform', '?')}; {env.get('cpu_count', '?')} CPUs"
                     + (f"; GPU {env['gpu']}" if env.get("gpu") else ""))
        rows.append({"run": str(run), "kind": cfg.get("kind"), "seed": cfg.get("seed"),
                     "device": env.get("device"), "mmclshift": env.get("mmclshift"),
                     "torch": env.get("torch"), "git": (env.get("git_revision") or "-")[:10],
                     "started": env.get("started")})
        details.append(f"<details><summary>{html.escape(str(run))}</summary><pre>"
                       f"{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>")
    skipped = ""
    if col.failed or col.incomplete:
        skipped = (f"<p>Skipped {len(col.failed)} failed and {len(col.incomplete)} incomplete run "
                   f"director{'y' if len(col.failed) + len(col.incomplete) == 1 else 'ies'}: "
                   + html.escape(", ".join(str(p) for p in col.failed + col.incomplete)) + "</p>")
    hw = "".join(f"<li>{html.escape(h)}</li>" for h in sorted(hardware))
    return (f"<h2>What was run</h2><p>{html.escape(col.summary())}.</p>{skipped}"
            f"<p>Hardware:</p><ul>{hw}</ul>{_table_html(pd.DataFrame(rows))}"
            f"<p>Resolved configs:</p>{''.join(details)}")


def build_report(col: Collected, fig_dir: Path) -> str:
    figs = all_figures(col.table, fig_dir)
    parts = [f"<h1>mmclshift report</h1><p class='muted'>generated "
             f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}</p>", _runs_section(col)]
    parts.append("<h2>Figures and the claims they test</h2>")
    if not figs:
        parts.append('<p class="muted">The collected runs hold no data for the paper\'s figures.</p>')
    for key, paths in figs.items():
        base, _, kind = key.partition(":")
        title, claim = CLAIMS.get(base, (base, ""))
        title = f"{title} [{kind}]" if kind else title
        png = next(p for p in paths if p.suffix == ".png")
        parts.append(f'<div class="fig">{_img(png)}<div class="claim"><h3>{html.escape(title)}</h3>'
                     f"<p>Paper: {html.escape(claim)}</p></div></div>")
    shown = {k.partition(":")[0] for k in figs}
    missing = [CLAIMS[k][0] for k in CLAIMS if k not in shown]
    if missing:
        parts.append('<p class="muted">Not shown (no runs with the data): '
                     + html.escape("; ".join(missing)) + ".</p>")

    dev = theory_deviations(col.table)
    if not dev.empty:
        n_flag = int(dev["flagged"].sum())
        parts.append(
            "<h2>Theory vs measurement</h2>"
            f"<p>A row is flagged when the measured test accuracy is more than {DEVIATION_SE:g} "
            "binomial standard errors of its test set (sqrt(a(1-a)/n) at the predicted a) from the "
            f"closed-form prediction. {n_flag} of {len(dev)} rows flagged.</p>")
        body = dev.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0)
        parts.append(body.replace("<td>True</td>", '<td class="flag">True</td>')
                     .replace("<td>False</td>", '<td class="ok">False</td>'))

    er = er_table(col.table)
    if not er.empty:
        parts.append("<h2>Effective robustness</h2><p>Observed OOD accuracy minus the OOD accuracy "
                     "predicted at the same ID accuracy by the line fitted (logit axes) to the SL "
                     "models.</p>" + _table_html(er))
    grouped = group_over_seeds(col.table, [k for k in col.varying if k in col.table.columns])
    parts.append("<h2>Results (mean and standard error over seeds)</h2>" + _table_html(grouped))
    parts.append("<h2>All results</h2>" + _table_html(col.table.drop(columns=["run"], errors="ignore")))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmclshift report"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(run_dirs: Sequence[str | Path], out_html: str | Path, *,
                 figures_dir: str | Path | None = None) -> Path:
    """Collect ``run_dirs`` and write the self-contained report to ``out_html``.

    Figures (PNG and SVG) are also kept in ``figures_dir`` when given.
    """
    col = collect(run_dirs)
    out = Path(out_html)
    if figures_dir is not None:
        page = build_report(col, Path(figures_dir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            page = build_report(col, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


__all__ = ["CLAIMS", "DEVIATION_SE", "build_report", "er_table", "theory_deviations",
           "write_report"]
