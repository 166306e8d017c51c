"""The rendered Windows bootstrap matches its golden file (embedded payloads abbreviated to their names).

Regenerate after an intended change: MPICLOUD_UPDATE_GOLDEN=1 pytest tests/golden/test_azure_bootstrap_golden.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mpicloud.render.windows_bootstrap import bootstrap_ps1
from mpicloud.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("azure") / "bootstrap.ps1"


def abbreviated(script: str) -> str:
    """The script with gzip+base64 payloads (runner sources, helper scripts) replaced by a placeholder."""
    return re.sub(r"(Write-Packed \(Join-Path \$Data '([^']+)'\)) '[A-Za-z0-9+/=]+'",
                  r"\1 '<gzip+base64 of \2>'", script)


def test_bootstrap_matches_golden() -> None:
    text = abbreviated(bootstrap_ps1(load_spec(ROOT / "examples" / "azure-windows.yaml")))
    if os.environ.get("MPICLOUD_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), "rerun with MPICLOUD_UPDATE_GOLDEN=1 after an intended change"
