"""Licence listing of an image's Python packages: reads the installed distributions' metadata, writes a TSV (name, version, licence) and exits 1 on a GPL package that was not allowed.

    python licences.py OUTPUT.tsv [--allow NAME ...]

Runs inside the image at build time (docker/serving/Dockerfile), with the standard library only. The licence is
the distribution's License-Expression, else its licence classifiers, else its License field (first line).
GPL means the GNU General Public License or Affero GPL (not the Lesser GPL, which allows linking).
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata

# GPL-2.0, GPLv3, AGPL-3.0-only, "GNU General Public License v3 (GPLv3)", "GNU Affero ..."; not LGPL.
GPL = re.compile(r"(?<![L\w])A?GPL|GNU (Affero )?General Public License", re.IGNORECASE)


def licence_of(distribution: metadata.Distribution) -> str:
    """One line that names the licence, as the distribution declares it."""
    meta = distribution.metadata
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return expression
    classifiers = [
        value.split("::")[-1].strip() for value in meta.get_all("Classifier") or [] if value.startswith("License ::")
    ]
    if classifiers:
        return " / ".join(classifiers)
    text = (meta.get("License") or "").strip().splitlines()
    return text[0][:120] if text else "UNKNOWN"


def listing() -> list[tuple[str, str, str]]:
    rows = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            rows[name.lower()] = (name, distribution.version, licence_of(distribution))
    return sorted(rows.values(), key=lambda row: row[0].lower())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="TSV file to write")
    parser.add_argument("--allow", action="append", default=[], help="a GPL package that may stay (repeatable)")
    arguments = parser.parse_args(argv)
    rows = listing()
    with open(arguments.output, "w", encoding="utf-8") as handle:
        handle.write("package\tversion\tlicence\n")
        handle.writelines(f"{name}\t{version}\t{licence}\n" for name, version, licence in rows)
    allowed = {name.lower() for name in arguments.allow}
    refused = [
        f"{name} {version} ({licence})"
        for name, version, licence in rows
        if GPL.search(licence) and name.lower() not in allowed
    ]
    print(f"{len(rows)} Python packages listed in {arguments.output}")
    if refused:
        print(f"GPL packages in the image: {'; '.join(refused)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
