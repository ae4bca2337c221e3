"""A finished reproduction as a small folder to commit: claims, tables, figures, curves, provenance.

:func:`publish` reads a demo / reproduction folder (``mmclshift demo --out DIR``, ``make reproduce``)
and writes to ``dest``:

* ``claims.json`` -- every claim's statistic, interval, seeds and verdict, as the run wrote it;
* ``runs.csv`` -- the collected table (one row per run x method x test set) and ``by_seed.csv``,
  the same grouped over seeds (mean, standard error, 95% interval);
* the Figure 2 and Figure 5 images (``figure2_*``, ``figure5_*``, PNG and SVG);
* ``convergence.json`` -- the grid's learning curves and per-statistic verdicts, where the run has one;
* ``provenance.json`` -- the command, commit, wall time, machine, training digits and steps
  (:mod:`mmclshift.runs.provenance`);
* ``README.md`` -- the claims table and the provenance, in words.

Nothing in ``dest`` other than these files is touched; each is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from mmclshift.analysis.claims import CLAIMS_FILE, criterion_text
from mmclshift.analysis.collect import collect, group_over_seeds
from mmclshift.analysis.stats import Direction
from mmclshift.errors import UserError
from mmclshift.runs.atomic import atomic_write_bytes, atomic_write_text
from mmclshift.runs.provenance import PROVENANCE_FILE, read_json_file, read_provenance

CONVERGENCE_FILE = "convergence.json"
FIGURE_PREFIXES = ("figure2_", "figure5_")
FIGURE_SUFFIXES = (".png", ".svg")
#: what publish reads of each claim (ClaimResult.to_json writes them all)
CLAIM_KEYS = frozenset({"claim", "statistic", "ci_low", "ci_high", "direction", "threshold", "verdict"})


def _figures(src: Path) -> list[Path]:
    folder = src / "figures"
    found = sorted(p for p in folder.glob("*") if p.is_file() and p.name.startswith(FIGURE_PREFIXES)
                   and p.suffix in FIGURE_SUFFIXES) if folder.is_dir() else []
    if not found:
        raise UserError(f"{folder}: no Figure 2 / 5 images (figure2_*, figure5_*); has the run finished?")
    return found


def _is_claim(c: object) -> bool:
    """A claim record as :meth:`ClaimResult.to_json` writes it, in the fields publish reads."""
    def number(v: object, none: bool = True) -> bool:
        return (v is None and none) or (isinstance(v, int | float) and not isinstance(v, bool))

    return (isinstance(c, dict) and CLAIM_KEYS <= set(c) and c["direction"] in get_args(Direction)
            and number(c["threshold"], none=False) and all(number(c[k]) for k in ("statistic", "ci_low", "ci_high"))
            and isinstance(c.get("group") or {}, dict))


def _copy(src: Path, dest: Path) -> Path:
    atomic_write_bytes(dest / src.name, src.read_bytes())
    return dest / src.name


def _readme(claims: list[dict], prov: dict) -> str:
    hours = prov["wall_seconds"] / 3600
    m = prov["machine"]
    lines = [
        "# Reproduction results",
        "",
        f"Made by `{prov['command']}` at commit `{prov['commit']}`: {prov['n_train']:,} training "
        f"digits, {prov['steps']:,} steps per run; measured wall time {prov['wall_seconds']:,.0f} s "
        f"({hours:.2f} h) over {len(prov.get('invocations', [])) or 1} invocation(s) on "
        f"{m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores, device {m.get('device', '?')}, "
        f"{m.get('workers', '?')} worker(s) x {m.get('torch_threads_per_worker', '?')} torch thread(s)).",
        "",
        "| claim | group | statistic | 95% CI | holds if | seeds | verdict (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        lo, hi = c.get("ci_low"), c.get("ci_high")
        ci = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else "-"
        stat = f"{c['statistic']:+.3f}" if c.get("statistic") is not None else "-"
        group = ", ".join(f"{k}={v}" for k, v in (c.get("group") or {}).items()) or "all runs"
        lines.append(f"| {c.get('claim')} | {group} | {stat} | {ci} | {criterion_text(c['direction'], c['threshold'])} | "
                     f"{c.get('n_seeds', '')} | {c.get('verdict')} |")
    lines += ["", "Files: `claims.json`, `runs.csv`, `by_seed.csv`, the Figure 2 / 5 images, "
              "`convergence.json` (learning curves) and `provenance.json`. Written by "
              "`mmclshift publish`.", ""]
    return "\n".join(lines)


def publish(src: str | Path, dest: str | Path) -> list[Path]:
    """Write ``src``'s results to ``dest`` (see the module doc); returns the files written."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise UserError(f"{src}: no such reproduction folder")
    prov = read_provenance(src)
    claims_path = src / CLAIMS_FILE
    claims = read_json_file(claims_path, "claims", "claims (has the run finished?)")
    if not isinstance(claims, list) or not all(_is_claim(c) for c in claims):
        raise UserError(f"{claims_path}: not a claims file (a JSON list of claims with "
                        f"{', '.join(sorted(CLAIM_KEYS))}, as mmclshift claims / demo write it)")
    figures = _figures(src)
    parts = [p for p in (src / "theory", src / "semisynthetic") if p.is_dir()]
    col = collect(parts, strict=True)
    varying = [k for k in col.varying if k in col.table.columns]
    texts = {"runs.csv": col.table.to_csv(index=False),
             "by_seed.csv": group_over_seeds(col.table, varying).to_csv(index=False),
             "README.md": _readme(claims, prov)}  # everything is built before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    written = [_copy(claims_path, dest), _copy(src / PROVENANCE_FILE, dest)]
    if (src / CONVERGENCE_FILE).is_file():
        written.append(_copy(src / CONVERGENCE_FILE, dest))
    written += [_copy(f, dest) for f in figures]
    for name, text in texts.items():
        atomic_write_text(dest / name, text)
        written.append(dest / name)
    return written


