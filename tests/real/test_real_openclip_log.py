"""Only OpenCLIP's own log records are quietened while a model is created; the root logger's
level, filters and handlers are left as they were."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import open_clip

from mmclshift.evaluate.openclip_log import PackageFilter, quiet_open_clip
from mmclshift.models.clip_models import create_clip

OPEN_CLIP_DIR = os.path.dirname(open_clip.__file__)
RANDOM_INIT = "Model initialized randomly"


def _root_state():
    root = logging.getLogger()
    return root.level, list(root.filters), list(root.handlers)


def _from_open_clip(records):
    return [r for r in records if r.pathname.startswith(OPEN_CLIP_DIR)]


def test_open_clip_records_dropped_others_kept_root_untouched(caplog):
    caplog.set_level(logging.INFO)
    create_clip("mmcl-tiny")  # unquietened: open_clip warns about its random weights
    assert any(RANDOM_INIT in r.getMessage() for r in _from_open_clip(caplog.records))
    caplog.clear()
    before = _root_state()
    with quiet_open_clip():
        create_clip("mmcl-tiny")
        logging.getLogger("mmclshift.test").warning("a child logger's warning")
        logging.info("a root info")
    assert _root_state() == before
    assert _from_open_clip(caplog.records) == []
    assert [r.getMessage() for r in caplog.records] == ["a child logger's warning", "a root info"]
    logging.info("after the block")
    assert caplog.records[-1].getMessage() == "after the block"


def test_open_clip_errors_pass():
    quiet = PackageFilter()
    path = os.path.join(OPEN_CLIP_DIR, "factory.py")
    record = {lvl: logging.LogRecord("root", lvl, path, 1, "m", None, None)
              for lvl in (logging.WARNING, logging.ERROR)}
    assert not quiet.filter(record[logging.WARNING])
    assert quiet.filter(record[logging.ERROR])
    elsewhere = logging.LogRecord("root", logging.INFO, __file__, 1, "m", None, None)
    assert quiet.filter(elsewhere)


def test_unconfigured_root_logger_stays_unconfigured():
    """A fresh process: open_clip's logging.info inside the block does not install a stderr
    handler, the root level stays WARNING, and the process's own warnings still print."""
    src = Path(__file__).resolve().parents[2] / "src"
    code = ("import logging\n"
            "from mmclshift.evaluate.openclip_log import quiet_open_clip\n"
            "from mmclshift.models.clip_models import create_clip\n"
            "with quiet_open_clip():\n"
            "    create_clip('mmcl-tiny')\n"
            "root = logging.getLogger()\n"
            "print(root.level, root.handlers, root.filters)\n"
            "logging.warning('mine after')\n")
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True, timeout=300)
    assert done.stdout.strip() == f"{logging.WARNING} [] []"
    assert "WARNING:root:mine after" in done.stderr
    assert RANDOM_INIT not in done.stderr
