"""What breaks the old app by name, or takes more than it names: renames and drops of the objects an
app's statements name (a type in a cast, a sequence in ``nextval('…')``, a view, a function), a
revoked privilege, and a ``DROP … CASCADE`` that drops columns, defaults or indexes along.

Each was measured (``tests/test_lint_measured.py``): what the catalog binds by oid (a column's type,
a default's sequence, a trigger's function) follows a rename, and a statement that names the
object does not. Whether the old app names it is not in the text, so those are warnings; catalog
mode runs the old app's statements and measures it. A CASCADE that drops data is an error.
"""

from __future__ import annotations

from typing import Any

from pglast import ast
from pglast.enums.parsenodes import DropBehavior, ObjectType

# Objects an app's statements name, but which the catalog binds by oid, and how a statement names it.
_NAMED_BY_APPS = {
    ObjectType.OBJECT_TYPE: "a cast to it",
    ObjectType.OBJECT_DOMAIN: "a cast to it",
    ObjectType.OBJECT_SEQUENCE: "nextval('…')",
    ObjectType.OBJECT_FUNCTION: "a call",
    ObjectType.OBJECT_PROCEDURE: "a CALL",
    ObjectType.OBJECT_SCHEMA: "a qualified name",
    ObjectType.OBJECT_VIEW: "a query",
    ObjectType.OBJECT_MATVIEW: "a query",
}
# What a DROP … CASCADE of each also drops, without naming it (measured: types, functions, sequences).
_CASCADES = {
    ObjectType.OBJECT_TYPE: "every column of that type, with its data",
    ObjectType.OBJECT_DOMAIN: "every column of that domain, with its data",
    ObjectType.OBJECT_EXTENSION: "every column of the extension's types, with its data",
    ObjectType.OBJECT_SCHEMA: "every table in the schema, with its data",
    ObjectType.OBJECT_FUNCTION: "the defaults, indexes, triggers and generated columns that call it",
    ObjectType.OBJECT_PROCEDURE: "what calls it",
    ObjectType.OBJECT_SEQUENCE: "the column defaults that take their values from it",
}
Hazard = tuple[str, str, str, str]  # rule, severity, message, safe alternative


def _kind(objtype: ObjectType) -> str:
    return objtype.name[7:].lower().replace("matview", "materialized view")


def name_hazards(node: Any) -> list[Hazard]:
    """The hazards of one statement that renames, drops or revokes what an app names."""
    if isinstance(node, ast.RenameStmt) and ObjectType(int(node.renameType or 0)) in _NAMED_BY_APPS:
        renamed = ObjectType(int(node.renameType or 0))
        if renamed in (ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW):
            return []  # the rename rule's: a relation the app reads
        return [
            (
                "rename-object",
                "warning",
                f"renaming a {_kind(renamed)} breaks the old app's statements that name it"
                f" ({_NAMED_BY_APPS[renamed]}); the columns, defaults and triggers that use it follow it",
                "search the old app for the name first; keep the old name until it is gone",
            )
        ]
    if isinstance(node, ast.AlterEnumStmt) and node.oldVal is not None:
        return [
            (
                "rename-enum-value",
                "warning",
                f"renaming the label '{node.oldVal}' breaks the old app's statements that use it, reads"
                " and writes alike (invalid input value for enum)",
                "ADD VALUE the new label and move the rows to it in batches once the new app writes it;"
                " keep the old one (PostgreSQL cannot drop a label)",
            )
        ]
    if isinstance(node, ast.DropStmt):
        dropped = ObjectType(int(node.removeType or 0))
        out: list[Hazard] = []
        if DropBehavior(int(node.behavior or 0)) == DropBehavior.DROP_CASCADE and dropped in _CASCADES:
            out.append(
                (
                    "drop-cascade",
                    "error",
                    f"DROP {_kind(dropped).upper()} … CASCADE also drops {_CASCADES[dropped]}, without"
                    " naming them",
                    "drop what depends on it first, each by name (RESTRICT, the default, names them)",
                )
            )
        if dropped in _NAMED_BY_APPS:
            out.append(
                (
                    "drop-object",
                    "warning",
                    f"dropping a {_kind(dropped)} breaks the old app's statements that use it"
                    f" ({_NAMED_BY_APPS[dropped]})",
                    "drop it in contract only, once no instance of the old app runs",
                )
            )
        return out
    if isinstance(node, ast.GrantStmt) and not node.is_grant:
        return [
            (
                "revoke",
                "warning",
                "revoking a privilege makes the old app's statements that need it fail (permission"
                " denied), if its role had it",
                "revoke in contract only, once no instance of the old app runs",
            )
        ]
    return []
