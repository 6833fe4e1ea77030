"""Shared record contracts: the rejects table every stage writes, and table validation."""

from __future__ import annotations

import pyarrow as pa

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),  # path or id of what was rejected
        pa.field("key", pa.string()),  # the item's key (clip id, sample key, shard)
        pa.field("reason", pa.string(), nullable=False),  # short machine-friendly code
        pa.field("detail", pa.string()),  # the human-readable explanation
    ]
)


class SchemaError(ValueError):
    """A table or record does not match its contract."""


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, order and types, or raise.

    Why: every manifest is validated on write, so a reader can trust its types.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"missing columns {missing}")
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        raise SchemaError(f"unexpected columns {extra}")
    table = table.select(schema.names)
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise SchemaError(f"cannot cast to schema: {e}") from e
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(f"column {field.name!r} has nulls but is required")
    return table
