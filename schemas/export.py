"""Writes the JSON Schema of every event under schemas/json/ (`python -m schemas.export`)."""

from pathlib import Path

from schemas.envelope import dumps_schema, json_schemas

OUT = Path(__file__).parent / "json"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, schema in json_schemas().items():
        (OUT / name).write_text(dumps_schema(schema))
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
