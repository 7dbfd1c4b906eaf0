"""The foreign keys of a key that ``change_key_type`` widens, moved to the bigint side before the
swap: each foreign key that references the column, or goes from it (a holder's own), gains a
twin on the shadow's side, added NOT VALID (no scan), then validated (a scan under SHARE UPDATE
EXCLUSIVE, writes go on). The swap (:mod:`.keyswap`) then drops each original and gives its twin
the original's name.

Before PostgreSQL 18 a partitioned table takes no NOT VALID foreign key: there each leaf partition
gets the twin instead, validated one by one, and a last step adds the partitioned table's own twin,
which PostgreSQL attaches to the validated leaves' rather than scanning.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan.index_twins import TWIN_OF
from zdm_runbook.plan.keyswap import (
    ACCESS_EXCLUSIVE,
    OUTGOING,
    REFERENCING,
    SHARE_ROW_EXCLUSIVE,
    TWIN,
    do_block,
    lock_family,
)
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL

# f's actions and deferrability, as the ALTER TABLE of its twin says them.
_ACTIONS = """action[strpos('arcnd', f.confupdtype)], action[strpos('arcnd', f.confdeltype)],
      CASE WHEN f.condeferrable
        THEN ' DEFERRABLE' || CASE WHEN f.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END
        ELSE '' END"""

# The twin's ALTER TABLE: on {target}, the columns of f (by name: a partition's attribute numbers
# may differ from its parent's), its actions and deferrability, then {valid}.
_ADD_TWIN = """EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%s) REFERENCES %s (%I)'
        ' ON UPDATE %s ON DELETE %s%s{valid}',
      {target}, {twin},
      (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY u.ord)
         FROM unnest(f.conkey) WITH ORDINALITY u(attnum, ord)
         JOIN pg_attribute a ON a.attrelid = f.child AND a.attnum = u.attnum),
      p, n, {actions});"""

# The twin of f, one of the column's own foreign keys: on {target} (p, or one of its partitions),
# from the shadow column n to what f references, then {valid}.
_ADD_OUT_TWIN = """EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %s (%s)'
        ' ON UPDATE %s ON DELETE %s%s{valid}',
      {target}, {twin}, n, f.parent,
      (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY u.ord)
         FROM unnest(f.confkey) WITH ORDINALITY u(attnum, ord)
         JOIN pg_attribute a ON a.attrelid = f.parent AND a.attnum = u.attnum),
      {actions});"""

# Before PostgreSQL 18 a partitioned table takes no NOT VALID foreign key ("not yet supported on
# partitioned tables"). There each leaf partition gets the twin NOT VALID instead; the validation
# step validates them one by one, and the attach step then adds the twin, valid, on the
# partitioned table, which attaches its partitions' validated twins rather than scanning them.
_SPLIT = (  # parenthesised: it is negated and combined where it is used
    "(current_setting('server_version_num')::int < 180000"
    " AND (SELECT relkind FROM pg_class WHERE oid = {rel}) = 'p')"
)
SPLIT_IN, SPLIT_OUT = Q(_SPLIT.format(rel="f.child")), Q(_SPLIT.format(rel="p"))  # referencing, own

# Whether {target} already has f's twin (a re-run: each step is idempotent).
_HAS_TWIN = "EXISTS (SELECT 1 FROM pg_constraint r WHERE r.conrelid = {target} AND r.conname = {twin})"

_ADD_TWINS = """
DECLARE
  f record;
  leaf record;
  action text[] := ARRAY['NO ACTION', 'RESTRICT', 'CASCADE', 'SET NULL', 'SET DEFAULT'];
BEGIN
  {lock}
  FOR f IN {referencing} LOOP
    CONTINUE WHEN {has_twin};
    IF {split} THEN
      FOR leaf IN SELECT relid::regclass AS rel FROM pg_partition_tree(f.child) WHERE isleaf ORDER BY 1 LOOP
        CONTINUE WHEN {leaf_has_twin};
        {add_leaf}
      END LOOP;
    ELSE
      {add}
    END IF;
  END LOOP;
  FOR f IN {outgoing} LOOP
    CONTINUE WHEN {own_has_twin};
    IF {split_out} THEN
      FOR leaf IN SELECT relid::regclass AS rel FROM pg_partition_tree(p) WHERE isleaf ORDER BY 1 LOOP
        CONTINUE WHEN {leaf_has_twin};
        {add_out_leaf}
      END LOOP;
    ELSE
      {add_out}
    END IF;
  END LOOP;
END"""

_VALIDATE_TWINS = """
DECLARE
  f record;
BEGIN
  FOR f IN SELECT r.conname, r.conrelid::regclass AS child FROM pg_constraint r
      WHERE r.contype = 'f' AND NOT r.convalidated AND r.conparentid = 0
        AND ((r.confrelid = p AND r.confkey = ARRAY[natt]::int2[])
          OR (r.conrelid = p AND r.conkey = ARRAY[natt]::int2[])
          OR (r.conrelid IN (SELECT relid FROM pg_partition_tree(p) WHERE isleaf AND level > 0)
            AND r.conname IN (SELECT {twin_of_o} FROM pg_constraint o  -- a leaf's twin of p's own
              WHERE o.contype = 'f' AND o.conrelid = p AND o.conkey = ARRAY[katt]::int2[])))
        AND NOT EXISTS (SELECT 1 FROM pg_constraint o WHERE o.contype = 'f' AND o.conrelid = r.conrelid
          AND NOT o.convalidated AND {twin_of_o} = r.conname)  -- its original was never validated
      ORDER BY r.conrelid::regclass::text, r.conname LOOP
    EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', f.child, f.conname);
  END LOOP;
END"""

_ATTACH_TWINS = """
DECLARE
  f record;
  action text[] := ARRAY['NO ACTION', 'RESTRICT', 'CASCADE', 'SET NULL', 'SET DEFAULT'];
  attach_in bool := false;
  attach_out bool := false;
BEGIN
  FOR f IN {referencing} LOOP
    attach_in := attach_in OR ({split} AND NOT {has_twin});
  END LOOP;
  FOR f IN {outgoing} LOOP
    attach_out := attach_out OR ({split_out} AND NOT {own_has_twin});
  END LOOP;
  -- No lock where there is nothing to attach (always, from PostgreSQL 18); the tables p references
  -- first where its own twins attach (their triggers there are dropped), in the swap's order.
  IF attach_out THEN
    {lock_out}
  ELSIF attach_in THEN
    {lock}
  END IF;
  FOR f IN {referencing} LOOP
    CONTINUE WHEN NOT {split} OR {has_twin};
    {add}
  END LOOP;
  FOR f IN {outgoing} LOOP
    CONTINUE WHEN NOT {split_out} OR {own_has_twin};
    {add_out}
  END LOOP;
END"""


def _has_twin(target: str) -> sql.Composed:
    return Q(_HAS_TWIN).format(target=Q(target), twin=TWIN)


def _add_twin(target: str, valid: bool) -> sql.Composed:
    return Q(_ADD_TWIN).format(
        target=Q(target), twin=TWIN, valid=Q("" if valid else " NOT VALID"), actions=Q(_ACTIONS)
    )


def _add_out_twin(target: str, valid: bool) -> sql.Composed:
    return Q(_ADD_OUT_TWIN).format(
        target=Q(target), twin=TWIN, valid=Q("" if valid else " NOT VALID"), actions=Q(_ACTIONS)
    )


def add_replacement_fks(table: Table, key: str, shadow: str) -> sql.Composed:
    """Each foreign key referencing ``key`` gains a twin referencing ``shadow``, NOT VALID: no scan,
    a brief SHARE ROW EXCLUSIVE on both tables; new rows are checked against both from now on.
    (Before PostgreSQL 18, on each leaf of a partitioned referencing table: see ``_SPLIT``.)"""
    block = Q(_ADD_TWINS).format(
        referencing=REFERENCING,
        has_twin=_has_twin("f.child"),
        leaf_has_twin=_has_twin("leaf.rel"),
        lock=lock_family(SHARE_ROW_EXCLUSIVE),
        split=SPLIT_IN,
        add=_add_twin("f.child", valid=False),
        add_leaf=_add_twin("leaf.rel", valid=False),
        outgoing=OUTGOING,
        own_has_twin=_has_twin("p"),
        split_out=SPLIT_OUT,
        add_out=_add_out_twin("p", valid=False),
        add_out_leaf=_add_out_twin("leaf.rel", valid=False),
    )
    return do_block(table, key, shadow, block)


def attach_replacement_fks(table: Table, key: str, shadow: str) -> sql.Composed:
    """Before PostgreSQL 18, each partitioned referencing table's own twin, added valid once its
    partitions' twins are validated: PostgreSQL attaches those instead of scanning (catalog only).
    Attaching drops each partition's own triggers on the key's table, so that table is locked
    ACCESS EXCLUSIVE (measured on 15), first, not upgraded to later; the referencing tables SHARE
    ROW EXCLUSIVE. The same for the column's own foreign keys when its table is partitioned (a
    holder): the tables they reference ACCESS EXCLUSIVE first, then the table SHARE ROW EXCLUSIVE
    (measured on 15). Nothing to do, and no lock, elsewhere."""
    block = Q(_ATTACH_TWINS).format(
        referencing=REFERENCING,
        has_twin=_has_twin("f.child"),
        split=SPLIT_IN,
        lock=lock_family(ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, parents=False),
        lock_out=lock_family(ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, own_mode=SHARE_ROW_EXCLUSIVE),
        add=_add_twin("f.child", valid=True),
        outgoing=OUTGOING,
        own_has_twin=_has_twin("p"),
        split_out=SPLIT_OUT,
        add_out=_add_out_twin("p", valid=True),
    )
    return do_block(table, key, shadow, block)


def validate_replacement_fks(table: Table, key: str, shadow: str) -> sql.Composed:
    """VALIDATE each twin: scans the child under SHARE UPDATE EXCLUSIVE, writes keep going. Not the
    twin of a foreign key left NOT VALID by its owner (rows it would refuse may be there on purpose):
    the twin stays NOT VALID too, and the swap moves it as it is."""
    return do_block(table, key, shadow, Q(_VALIDATE_TWINS).format(twin_of_o=Q(TWIN_OF.format(a="o.conname"))))


def replacements_done(table: Table, key: str, validated: bool) -> sql.Composed:
    """No foreign key references ``key``, or goes from it, without a (validated) twin."""
    p = regclass(table.schema, table.name)
    katt = Q("(SELECT attnum FROM pg_attribute WHERE attrelid = {} AND attname = {})").format(
        p, sql.Literal(key)
    )
    return Q(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conparentid = 0"
        " AND ((f.confrelid = {p} AND f.confkey = ARRAY[{katt}]::int2[])"
        " OR (f.conrelid = {p} AND f.conkey = ARRAY[{katt}]::int2[]))"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint r"
        " WHERE r.conrelid = f.conrelid AND r.conname = {twin}{validated}))"
    ).format(
        p=p,
        katt=katt,
        twin=TWIN,
        validated=Q(" AND (r.convalidated OR NOT f.convalidated)") if validated else Q(""),
    )
