"""jinja2 environment for the files under provision/: StrictUndefined, no autoescape, kept newlines."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import jinja2

from mpicloud.assets import provision_dir
from mpicloud.errors import RenderError


def render_template(relative: str, **values: Any) -> str:
    """Render provision/<relative> with the given values; a missing variable is a RenderError."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(provision_dir())), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    try:
        return env.get_template(relative).render(**values)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"provision/{relative}: {exc.message}") from None
    except jinja2.TemplateNotFound:
        raise RenderError(f"provision/{relative} is missing from this installation") from None


def gzip_base64(data: bytes) -> str:
    """gzip (deterministic: mtime 0) then base64: how bootstraps carry files inside scripts and parameters."""
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")
