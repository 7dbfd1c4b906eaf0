"""The SQL of ``change_key_type``: a key column (primary key, or referenced by foreign keys, or fed by
a sequence or an identity), or a foreign key column that holds such a key, widened to bigint with
zero downtime, after GitLab's conversion of integer keys to bigint: a shadow column kept in sync
and backfilled, a unique index built concurrently (a key), each foreign key that references the
column or goes from it re-created NOT VALID on the shadow's side and validated, then one short
swap transaction.

What the swap moves is read from the catalog when it runs, not when the plan is made: the foreign
keys that reference the key or go from the column, its primary key or unique constraint, its
sequence or identity, the twins of its indexes. So the plan is the same before and after the
swap, and a key gains or loses a referencing table between phases without a new plan. Each piece
is a ``DO`` block whose names are composed literals; :mod:`zdm_runbook.plan.recipes` places the
steps in their phases; the foreign keys' twins are made in :mod:`zdm_runbook.plan.fk_twins`, and
the sync trigger after the swap is in :mod:`zdm_runbook.plan.dual_write`.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan.column_carry import carry_fragment
from zdm_runbook.plan.index_twins import SWAP_FRAGMENT, TWIN_OF
from zdm_runbook.plan.steps import HELD_LOCK_TIMEOUT
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL
DO_TAG = Q("$zdm_key$")
# A foreign key's twin (on the shadow's side until the swap): named as an index's twin is.
TWIN = Q(TWIN_OF.format(a="f.conname"))
# The one-column foreign keys that reference p at the key column (attribute katt). Not the clones
# a foreign key on a partitioned table has on each partition (conparentid): the parent's own
# ADD, VALIDATE and DROP act on them, and the swap would otherwise drop a clone already dropped.
REFERENCING = Q(
    "SELECT c.conname, c.conrelid::regclass AS child, c.conkey, c.confupdtype, c.confdeltype,"
    " c.condeferrable, c.condeferred, c.convalidated FROM pg_constraint c"
    " WHERE c.contype = 'f' AND c.confrelid = p AND c.confkey = ARRAY[katt]::int2[] AND c.conparentid = 0"
    " ORDER BY c.conrelid::regclass::text, c.conname"
)

# The column's own one-column foreign keys, when it is a foreign key column (orders.customer_id):
# each gets a twin on the shadow column, validated, and the swap moves it like the others.
OUTGOING = Q(
    "SELECT c.conname, c.confrelid::regclass AS parent, c.confkey, c.confupdtype, c.confdeltype,"
    " c.condeferrable, c.condeferred, c.convalidated FROM pg_constraint c"
    " WHERE c.contype = 'f' AND c.conrelid = p AND c.conkey = ARRAY[katt]::int2[] AND c.conparentid = 0"
    " ORDER BY c.conname"
)

# Lock the tables the widened column's own foreign keys reference (its parents, when it is a
# foreign key column), then p, then every table whose foreign keys reference p, each group sorted
# by name: the order an app that writes a parent row and then its children takes them in (ADD
# FOREIGN KEY alone would lock the child first and wait, inverted, on every transaction between
# its parent and child writes), and a fixed order, so two swaps never deadlock. Every lock after
# the first group's waits at most HELD_LOCK_TIMEOUT. Each group in one LOCK TABLE, which takes them in the
# order listed; in a block of its own, whose names cannot clobber the enclosing block's.
_LOCK_FAMILY = """DECLARE
    parents text := (SELECT string_agg(DISTINCT confrelid::regclass::text, ', '
      ORDER BY confrelid::regclass::text) FROM pg_constraint
      WHERE {parents} AND contype = 'f' AND conrelid = p AND conkey = ARRAY[katt]::int2[] AND confrelid <> p);
    children text := (SELECT string_agg(DISTINCT conrelid::regclass::text, ', '
      ORDER BY conrelid::regclass::text) FROM pg_constraint
      WHERE contype = 'f' AND confrelid = p AND conrelid <> p);
  BEGIN
    IF parents IS NOT NULL THEN
      EXECUTE format('LOCK TABLE %s IN {mode} MODE', parents);
      PERFORM {held};
    END IF;
    EXECUTE format('LOCK TABLE %s IN {own_mode} MODE', p);
    PERFORM {held};
    IF children IS NOT NULL THEN
      EXECUTE format('LOCK TABLE %s IN {child_mode} MODE', children);
    END IF;
  END;"""


SHARE_ROW_EXCLUSIVE, ACCESS_EXCLUSIVE = Q("SHARE ROW EXCLUSIVE"), Q("ACCESS EXCLUSIVE")


def lock_family(
    mode: sql.SQL, child_mode: sql.SQL | None = None, parents: bool = True, own_mode: sql.SQL | None = None
) -> sql.Composed:
    """The lock fragment: ``parents`` in ``mode`` too (dropping or adding a foreign key takes its
    referenced table's lock: ACCESS EXCLUSIVE and SHARE ROW EXCLUSIVE, measured on 15 and 18); p in
    ``own_mode`` (default ``mode``), the referencing tables in ``child_mode`` (default ``mode``)."""
    return Q(_LOCK_FAMILY).format(
        parents=Q("true" if parents else "false"),
        mode=mode,
        own_mode=own_mode or mode,
        child_mode=child_mode or mode,
        held=HELD_LOCK_TIMEOUT,
    )


_SWAP = """
DECLARE
  f record;
  clone record;
  kc record;
  seq text := pg_get_serial_sequence(p::text, k);
  ident "char" := (SELECT attidentity FROM pg_attribute WHERE attrelid = p AND attnum = katt);
  dflt text := (SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = p AND adnum = katt);
  last bigint;
  nn text;
BEGIN
  {lock}
  FOR f IN {referencing} LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_constraint r WHERE r.conrelid = f.child AND r.conname = {twin}
        AND (r.convalidated OR NOT f.convalidated)) THEN
      RAISE EXCEPTION 'foreign key % on % references the key but has no validated twin (it was added'
        ' after the twins step): nothing is swapped; re-run switch, which twins and validates it first',
        f.conname, f.child USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', f.child, f.conname);
    EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', f.child, {twin}, f.conname);
    {clones_child}
  END LOOP;
  FOR f IN {outgoing} LOOP  -- the column's own foreign keys
    IF NOT EXISTS (SELECT 1 FROM pg_constraint r WHERE r.conrelid = p AND r.conname = {twin}
        AND (r.convalidated OR NOT f.convalidated)) THEN
      RAISE EXCEPTION 'foreign key % on % has no validated twin (it was added after the twins step):'
        ' nothing is swapped; re-run switch, which twins and validates it first',
        f.conname, p USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p, f.conname);
    EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', p, {twin}, f.conname);
    {clones_p}
  END LOOP;
  {index_twins}
  SELECT conname, contype INTO kc FROM pg_constraint  -- a second one is refused by the check
    WHERE conrelid = p AND contype IN ('p', 'u') AND conkey = ARRAY[katt]::int2[]
    ORDER BY contype, conname LIMIT 1;
  IF kc.conname IS NOT NULL THEN
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p, kc.conname);
  END IF;
  IF ident IN ('a', 'd') THEN
    last := pg_sequence_last_value(seq::regclass);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP IDENTITY', p, k);
  ELSIF dflt IS NOT NULL THEN
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', p, k);
  END IF;
  {carry}
  EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', p, k, {temp});
  EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', p, n, k);
  EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', p, {temp}, n);
  IF ident IN ('a', 'd') THEN
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I ADD GENERATED %s AS IDENTITY', p, k,
      CASE ident WHEN 'a' THEN 'ALWAYS' ELSE 'BY DEFAULT' END);
    IF last IS NOT NULL THEN
      PERFORM setval(pg_get_serial_sequence(p::text, k)::regclass, last);
    END IF;
  ELSIF dflt IS NOT NULL THEN
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', p, k, dflt);
    IF seq IS NOT NULL THEN
      EXECUTE format('ALTER SEQUENCE %s AS bigint OWNED BY %s.%I', seq, p, k);
    END IF;
  END IF;
  IF kc.conname IS NOT NULL THEN
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s USING INDEX %I', p, kc.conname,
      CASE kc.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, {index});
  END IF;
  -- PostgreSQL 18 names NOT NULL constraints: the key's keeps the name it had (none before 18).
  nn := (SELECT conname FROM pg_constraint
    WHERE conrelid = p AND contype = 'n' AND conkey = ARRAY[katt]::int2[]);
  EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', p, n);
  IF nn IS NOT NULL THEN
    EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', p, (SELECT conname FROM pg_constraint
      WHERE conrelid = p AND contype = 'n' AND conkey = ARRAY[natt]::int2[]), nn);
  END IF;
END"""


# After a twin on a partitioned table is renamed: its partitions hold clones of it under the twin's
# name, which get the original's name too (the original's clones went with it).
_CLONES = """FOR clone IN SELECT r.conrelid::regclass AS part FROM pg_partition_tree({rel}) t
        JOIN pg_constraint r ON r.conrelid = t.relid
        WHERE t.level > 0 AND r.conname = {twin} AND r.conparentid <> 0 LOOP
      CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = clone.part AND conname = f.conname);
      EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', clone.part, {twin}, f.conname);
    END LOOP;"""


def do_block(table: Table, key: str, shadow: str, block: sql.Composable) -> sql.Composed:
    """``DO`` with the table (``p``), the key and shadow columns' names (``k``, ``n``) and their
    attribute numbers (``katt``, ``natt``) declared, around one inner block."""
    return Q(
        "DO {tag}\nDECLARE\n"
        "  p regclass := {p};\n"
        "  k text := {k};\n"
        "  n text := {n};\n"
        "  katt int2 := (SELECT attnum FROM pg_attribute WHERE attrelid = {p} AND attname = {k});\n"
        "  natt int2 := (SELECT attnum FROM pg_attribute WHERE attrelid = {p} AND attname = {n});\n"
        "BEGIN{block};\nEND\n{tag}"
    ).format(
        tag=DO_TAG,
        p=regclass(table.schema, table.name),
        k=sql.Literal(key),
        n=sql.Literal(shadow),
        block=block,
    )


def swap(table: Table, key: str, shadow: str, temp: str, index: str) -> sql.Composed:
    """One transaction: lock the tables the column references, the table, then every table
    referencing it (each group sorted by name, so two swaps never deadlock); move the foreign keys
    to their twins (keeping their names); give each index twin its original's name; drop the key
    constraint; swap the two columns' names, so ``key`` names the bigint column for the old app and
    the new one alike; move the identity or the default and its sequence (widened to bigint,
    current value kept); re-create the key constraint on the prebuilt unique index."""
    block = Q(_SWAP).format(
        index_twins=SWAP_FRAGMENT,
        carry=carry_fragment(Q("p"), Q("k"), Q("n")),  # privileges, comment, statistics target
        referencing=REFERENCING,
        outgoing=OUTGOING,
        twin=TWIN,
        clones_child=Q(_CLONES).format(rel=Q("f.child"), twin=TWIN),
        clones_p=Q(_CLONES).format(rel=Q("p"), twin=TWIN),
        temp=sql.Literal(temp),
        index=sql.Literal(index),
        lock=lock_family(ACCESS_EXCLUSIVE),
    )
    return do_block(table, key, shadow, block)


def not_a_key(table: Table, column: str) -> sql.Composed:
    """True when ``column`` is under no one-column primary key or unique constraint: a foreign key
    column, which needs no unique index and keeps no key constraint through the swap."""
    return Q(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid"
        " AND c.conkey = ARRAY[a.attnum]"
        " WHERE c.conrelid = {p} AND c.contype IN ('p', 'u') AND a.attname = {k})"
    ).format(p=regclass(table.schema, table.name), k=sql.Literal(column))


def swapped(table: Table, key: str, type_name: str = "bigint") -> sql.Composed:
    """True once ``key`` is the bigint column: the swap has run (and later phases may have too)."""
    return Q(
        "SELECT coalesce((SELECT format_type(atttypid, NULL) = {t} FROM pg_attribute"
        " WHERE attrelid = {p} AND attname = {k} AND NOT attisdropped), false)"
    ).format(t=sql.Literal(type_name), p=regclass(table.schema, table.name), k=sql.Literal(key))
