"""Validate docker-compose.yml against the compose-spec JSON schema, without a Docker engine.

    python scripts/check_compose.py [docker-compose.yml ...]

The schema is vendored as docker/compose-spec.schema.json (see docker/compose-spec.NOTICE),
so no network is needed. YAML anchors, merge keys (``<<``) and extension fields are resolved
by PyYAML's safe loader before validation, as Compose itself does; Compose's merge tags are
read as it reads them: ``!reset`` as null (the key is removed from the merged file) and
``!override`` as its value. Exit 0 when every file is valid, 1 with one line per error
otherwise, 2 when the file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "docker" / "compose-spec.schema.json"


def load_schema(path: Path = SCHEMA) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _loader() -> Any:
    """PyYAML's safe loader, plus Compose's ``!reset`` and ``!override`` merge tags."""
    import yaml

    class ComposeLoader(yaml.SafeLoader):
        pass

    def reset(loader: Any, node: Any) -> None:
        return None

    def override(loader: Any, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    ComposeLoader.add_constructor("!reset", reset)
    ComposeLoader.add_constructor("!override", override)
    return ComposeLoader


def load_compose(path: Path) -> Any:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_loader())  # noqa: S506 (a safe loader with two tags)


def compose_errors(document: Any, schema: Optional[Any] = None) -> List[str]:
    """Every schema violation in ``document``, as 'location: message' lines (empty when valid)."""
    import jsonschema

    schema = load_schema() if schema is None else schema
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}" for error in errors]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=[str(ROOT / "docker-compose.yml")])
    args = parser.parse_args(argv)
    status = 0
    for name in args.files:
        try:
            document = load_compose(Path(name))
        except OSError as exc:
            print(f"{name}: cannot be read: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # yaml.YAMLError; yaml is imported lazily, so caught broadly
            print(f"{name}: is not valid YAML: {exc}", file=sys.stderr)
            return 2
        errors = compose_errors(document)
        for line in errors:
            print(f"{name}: {line}", file=sys.stderr)
        if errors:
            status = 1
        else:
            services = len((document or {}).get("services") or {})
            print(f"{name}: valid against the compose-spec schema ({services} services)")
    return status


if __name__ == "__main__":
    sys.exit(main())
