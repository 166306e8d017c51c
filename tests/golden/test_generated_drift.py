"""The checked-in generated templates match what the renderers produce from the current sources."""

from __future__ import annotations

from pathlib import Path

from mpicloud.render.generated import GENERATED, stale

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_templates_are_current() -> None:
    assert stale(ROOT) == [], "run `make render` and commit templates/"


def test_every_generated_file_is_checked_in() -> None:
    for rel in GENERATED:
        assert (ROOT / rel).is_file(), f"{rel} missing: run `make render`"
