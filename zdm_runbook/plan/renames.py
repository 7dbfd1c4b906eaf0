"""Renames the old app survives: a table (behind an updatable view under its old name until
contract), an index (apps never name one), a constraint (in contract: the old app may name it in
``ON CONFLICT ON CONSTRAINT``). pgroll's rename_table, rename_constraint and index renames."""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan import alterations as alt
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.steps import StepBuilder
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.operations import RenameConstraint, RenameIndex, RenameTable
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL
GRANTS_TAG = Q("$zdm_grants$")
# The grants on the renamed table, repeated on the view under its old name, so every role that
# could use the table by its old name still can (the view runs as the caller: security_invoker).
_COPY_GRANTS = """
DECLARE
  g record;
BEGIN
  FOR g IN SELECT a.privilege_type,
        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS who
      FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
      WHERE c.oid = {table} AND a.grantee <> c.relowner LOOP
    EXECUTE format('GRANT %s ON %s TO %s', g.privilege_type, {view}::text, g.who);
  END LOOP;
END
"""


def rename_table(b: StepBuilder, op: RenameTable) -> None:
    """Expand: rename, and an updatable view under the old name in the same short transaction, so
    the old app reads and writes through it; contract: drop the view."""
    old, new = op.table, Table(op.table.schema, op.new)
    b.add(
        "rename",
        Phase.EXPAND,
        f"rename {old} to {new.name} and leave an updatable view under the old name, in one transaction",
        (
            Q("ALTER TABLE {} RENAME TO {}").format(s.qname(old), sql.Identifier(new.name)),
            Q("CREATE VIEW {} WITH (security_invoker = true) AS SELECT * FROM {}").format(
                s.qname(old), s.qname(new)
            ),
            Q("DO {tag}{body}{tag}").format(
                tag=GRANTS_TAG,
                body=Q(_COPY_GRANTS).format(
                    table=regclass(new.schema, new.name), view=regclass(old.schema, old.name)
                ),
            ),
        ),
        Q("SELECT ({}) AND ({})").format(
            s.relation_exists(new.schema, new.name), alt.is_view(old.schema, old.name)
        ),
        (old,),
        locks=f"{old} AccessExclusiveLock (catalog: rename, view; no scan), for the transaction",
    )
    b.add(
        "drop-view",
        Phase.CONTRACT,
        f"drop the view {old} (the old app's name for {new.name})",
        Q("DROP VIEW IF EXISTS {}").format(s.qname(old)),
        s.relation_absent(old.schema, old.name),
        (new,),
    )


def rename_index(b: StepBuilder, op: RenameIndex) -> None:
    b.add(
        "rename",
        Phase.EXPAND,
        f"rename index {op.schema}.{op.old} to {op.new} (catalog only)",
        Q("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
            sql.Identifier(op.schema, op.old), sql.Identifier(op.new)
        ),
        Q("SELECT ({}) AND ({})").format(
            s.relation_exists(op.schema, op.new), s.relation_absent(op.schema, op.old)
        ),
    )


def rename_constraint(b: StepBuilder, op: RenameConstraint) -> None:
    b.add(
        "rename",
        Phase.CONTRACT,
        f"rename constraint {op.old} on {op.table} to {op.new} (in contract: the old app may name it)",
        Q("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            s.qname(op.table), sql.Identifier(op.old), sql.Identifier(op.new)
        ),
        Q("SELECT ({}) AND ({})").format(
            s.constraint_exists(op.table, op.new), s.constraint_absent(op.table, op.old)
        ),
        (op.table,),
    )
