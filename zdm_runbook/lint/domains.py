"""``ADD COLUMN`` of a domain type that has constraints rewrites the table.

Measured on 15.18 and 18.6 (``relfilenode`` of a 10-row table, in a rolled-back transaction):
``ADD COLUMN a d`` where ``d`` is a domain with a ``CHECK`` rewrites every row under ACCESS
EXCLUSIVE, with no default and with a constant one, and so does a domain that is ``NOT NULL``.
PostgreSQL has to run the domain's constraints on each row's new value, even a NULL. A plain domain,
an enum and an array of the constrained domain add the column in the catalog only.

Text alone knows a domain's constraints only when the file creates it (or adds a constraint to it)
before the ``ADD COLUMN``; of any other type that is not built in, the linter says, as info, that a
constrained domain would rewrite. Catalog mode measures it.
"""

from __future__ import annotations

from typing import Any

from pglast import ast
from pglast.enums.parsenodes import AlterTableType, ConstrType

# Types that are no domain: PostgreSQL's own, spelled as pglast leaves them unqualified (the SQL
# keywords, int, varchar, numeric..., come as pg_catalog.*), and the base types of common extensions.
BUILTIN_TYPES = frozenset(
    """bool bytea char name text oid json jsonb jsonpath xml uuid date time timetz timestamp
    timestamptz interval money inet cidr macaddr macaddr8 bit varbit tsvector tsquery point
    line lseg box path polygon circle int2 int4 int8 float4 float8 numeric varchar bpchar
    regclass regtype regproc pg_lsn int4range int8range numrange tsrange tstzrange daterange
    int4multirange int8multirange nummultirange tsmultirange tstzmultirange datemultirange
    serial bigserial smallserial serial2 serial4 serial8 citext hstore ltree geometry geography
    vector""".split()  # noqa: SIM905
)


def _type_name(type_name: Any) -> tuple[str, bool]:
    """The last part of a type's name, and whether it is an array of it."""
    names = [str(n.sval) for n in type_name.names or ()]
    return (names[-1] if names else ""), bool(type_name.arrayBounds)


def type_made(node: Any) -> tuple[str, bool] | None:
    """A type the statement creates or constrains, and whether it is then a domain with
    constraints: ``CREATE DOMAIN`` (with a ``CHECK`` or ``NOT NULL``, or not), ``ALTER DOMAIN … ADD
    CONSTRAINT | SET NOT NULL``, ``CREATE TYPE … AS ENUM`` or a composite type (never)."""
    if isinstance(node, ast.CreateDomainStmt) and node.domainname:
        kinds = {ConstrType(int(c.contype or 0)) for c in node.constraints or ()}
        constrained = bool(kinds & {ConstrType.CONSTR_CHECK, ConstrType.CONSTR_NOTNULL})
        return str(node.domainname[-1].sval), constrained
    if isinstance(node, ast.AlterDomainStmt) and node.subtype in ("C", "O") and node.typeName:
        return str(node.typeName[-1].sval), True
    if isinstance(node, ast.CreateEnumStmt) and node.typeName:
        return str(node.typeName[-1].sval), False
    if isinstance(node, ast.CompositeTypeStmt) and node.typevar is not None:
        return str(node.typevar.relname), False
    return None


def added_column_types(node: Any) -> list[tuple[str, bool]]:
    """Each column an ``ALTER TABLE`` adds: its type's last name part, and whether an array."""
    if not isinstance(node, ast.AlterTableStmt):
        return []
    return [
        _type_name(cmd.def_.typeName)
        for cmd in node.cmds or ()
        if AlterTableType(int(cmd.subtype or 0)) == AlterTableType.AT_AddColumn
        and isinstance(cmd.def_, ast.ColumnDef)
        and cmd.def_.typeName is not None
    ]


def adds_constrained_domain(node: Any, known: dict[str, bool]) -> bool:
    """Whether the statement adds a column of a type ``known`` as a constrained domain (not an
    array of it). ``known``: the types the file made so far, each constrained or not."""
    return any(known.get(name, False) and not array for name, array in added_column_types(node))


def maybe_domains(node: Any, known: dict[str, bool]) -> tuple[str, ...]:
    """The types of added columns that may be constrained domains: neither built in nor known."""
    return tuple(
        sorted(
            {
                name
                for name, array in added_column_types(node)
                if not array and name not in BUILTIN_TYPES and name not in known
            }
        )
    )
