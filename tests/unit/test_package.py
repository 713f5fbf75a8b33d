"""The package docstring draws the architecture as it is: it names every module."""

from __future__ import annotations

from pathlib import Path

import proxy

PACKAGE = Path(proxy.__file__).parent


def test_the_package_docstring_names_every_module():
    doc = proxy.__doc__ or ""
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    names |= {p.stem for sub in ("upstream", "provider") for p in (PACKAGE / sub).glob("*.py") if p.stem != "__init__"}
    missing = sorted(n for n in names if f"``{n}``" not in doc and f"``{n}/``" not in doc
                     and not (n.startswith("http1") and "``http1*``" in doc))
    assert missing == []
