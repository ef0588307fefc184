"""Where the dashboard's page is: the plain files served at ``/``, with no build step.

In a checkout they are ``web/`` beside the package. A wheel (or ``pip install .``) carries the
same files as the package data ``flowboard/web`` (pyproject.toml maps ``web/`` there), which is
where an installed Flowboard finds them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def page_dir() -> Path:
    """The directory of the page's files: the installed package data, else the checkout's."""
    installed = resources.files("flowboard") / "web"
    if installed.is_dir():
        # pip installs a wheel as plain files, so the resource is a real directory on disk,
        # which the server reads its files from.
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / "web"
