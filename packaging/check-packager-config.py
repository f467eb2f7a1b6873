#!/usr/bin/env python3
"""Checks packaging/Packager.toml against cargo-packager's JSON schema and that
every file it names exists. The schema file is cargo-packager's own
(crates/packager/schema.json); pass its path, e.g. from a checkout:

    python3 packaging/check-packager-config.py path/to/schema.json

Needs the `jsonschema` package (pip install jsonschema)."""
import glob
import json
import pathlib
import sys
import tomllib

import jsonschema

root = pathlib.Path(__file__).resolve().parent.parent
config = tomllib.loads((root / "packaging/Packager.toml").read_text())


def camel(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def to_camel(value):
    """The tool accepts kebab-case aliases; the schema lists camelCase names."""
    if isinstance(value, dict):
        return {camel(k): to_camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_camel(v) for v in value]
    return value


schema = json.loads(pathlib.Path(sys.argv[1]).read_text())
jsonschema.validate(to_camel(config), schema)
missing = [p for p in config["icons"] if not glob.glob(str(root / p))]
missing += [r["src"] for r in config["resources"] if not (root / r["src"]).exists()]
if missing:
    sys.exit(f"Packager.toml names files that do not exist: {missing}")
print("packaging/Packager.toml: valid against the schema; all icons and resources exist")
