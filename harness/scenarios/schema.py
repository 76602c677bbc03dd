"""``python -m harness.scenarios.schema``: writes scenarios/scenario.schema.json from the models.

Editors that understand JSON Schema (``# yaml-language-server: $schema=scenario.schema.json``)
then complete and check scenario files; a unit test fails when the file is stale.
"""

from __future__ import annotations

import json

from harness.scenarios.model import SCHEMA_PATH, json_schema


def main() -> None:
    """Writes the schema and says where."""
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
