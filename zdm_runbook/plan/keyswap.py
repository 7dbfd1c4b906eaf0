"""The SQL of ``change_key_type``: a key column (primary key, or referenced by foreign keys, or fed by
a sequence or an identity), or a foreign key column that holds such a key, widened to bigint with
zero downtime, after GitLab's conversion of integer keys to bigint: a shadow column kept in sync
and backfilled, a unique index built concurrently (a key), each foreign key that references the
column or goes from it re-created NOT VALID on the shadow's side and validated, then one short
swap transaction.

What the swap moves is read from the catalog when it runs, not when the plan is made: the foreign
keys that reference the key or go from the column, its primary key or unique constraint, its
sequence or identity, the twins of its plain indexes. So the plan is the same before and after the
swap, and a key gains or loses a referencing table between phases without a new plan. Each piece
is a ``DO`` block whose names are composed literals; :mod:`zdm_runbook.plan.recipes` places the
steps in their phases; the sync trigger after the swap is in :mod:`zdm_runbook.plan.dual_write`.
"""

from __future__ import annotations

from psycopg import sql

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
    EXECUTE format('LOCK TABLE %s IN {mode} MODE', p);
    PERFORM {held};
    IF children IS NOT NULL THEN
      EXECUTE format('LOCK TABLE %s IN {child_mode} MODE', children);
    END IF;
  END;"""


SHARE_ROW_EXCLUSIVE, ACCESS_EXCLUSIVE = Q("SHARE ROW EXCLUSIVE"), Q("ACCESS EXCLUSIVE")


def _lock_family(mode: sql.SQL, child_mode: sql.SQL | None = None, parents: bool = True) -> sql.Composed:
    """The lock fragment: ``parents`` in ``mode`` too (dropping or adding a foreign key takes its
    referenced table's lock: ACCESS EXCLUSIVE and SHARE ROW EXCLUSIVE, measured on 15 and 18)."""
    return Q(_LOCK_FAMILY).format(
        parents=Q("true" if parents else "false"),
        mode=mode,
        child_mode=child_mode or mode,
        held=HELD_LOCK_TIMEOUT,
    )


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

# The twin of f, one of the column's own foreign keys: from the shadow column n of p to what f
# references, then NOT VALID.
_ADD_OUT_TWIN = """EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %s (%s)'
        ' ON UPDATE %s ON DELETE %s%s NOT VALID',
      p, {twin}, n, f.parent,
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
    " AND (SELECT relkind FROM pg_class WHERE oid = f.child) = 'p')"
)

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
    {add_out}
  END LOOP;
END"""

_VALIDATE_TWINS = """
DECLARE
  f record;
BEGIN
  FOR f IN SELECT r.conname, r.conrelid::regclass AS child FROM pg_constraint r
      WHERE r.contype = 'f' AND NOT r.convalidated AND r.conparentid = 0
        AND ((r.confrelid = p AND r.confkey = ARRAY[natt]::int2[])
          OR (r.conrelid = p AND r.conkey = ARRAY[natt]::int2[]))
        AND NOT EXISTS (SELECT 1 FROM pg_constraint o WHERE o.contype = 'f' AND o.conrelid = r.conrelid
          AND NOT o.convalidated AND {twin_of_o} = r.conname)  -- its original was never validated
      ORDER BY r.conrelid::regclass::text, r.conname LOOP
    EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', f.child, f.conname);
  END LOOP;
END"""

_ATTACH_TWINS = """
DECLARE
  f record;
  locked bool := false;
  action text[] := ARRAY['NO ACTION', 'RESTRICT', 'CASCADE', 'SET NULL', 'SET DEFAULT'];
BEGIN
  FOR f IN {referencing} LOOP
    CONTINUE WHEN NOT {split} OR {has_twin};
    IF NOT locked THEN  -- no lock where there is nothing to attach (always, from PostgreSQL 18)
      {lock}
      locked := true;
    END IF;
    {add}
  END LOOP;
END"""

_SWAP = """
DECLARE
  f record;
  clone record;
  kc record;
  ix record;
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
    -- A partitioned table's partitions hold clones of the twin, under its name: theirs too.
    FOR clone IN SELECT r.conrelid::regclass AS part FROM pg_partition_tree(f.child) t
        JOIN pg_constraint r ON r.conrelid = t.relid
        WHERE t.level > 0 AND r.conname = {twin} AND r.conparentid <> 0 LOOP
      CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = clone.part AND conname = f.conname);
      EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', clone.part, {twin}, f.conname);
    END LOOP;
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


def _do(table: Table, key: str, shadow: str, block: sql.Composable) -> sql.Composed:
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


def _has_twin(target: str) -> sql.Composed:
    return Q(_HAS_TWIN).format(target=Q(target), twin=TWIN)


def _add_twin(target: str, valid: bool) -> sql.Composed:
    return Q(_ADD_TWIN).format(
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
        lock=_lock_family(SHARE_ROW_EXCLUSIVE),
        split=Q(_SPLIT),
        add=_add_twin("f.child", valid=False),
        add_leaf=_add_twin("leaf.rel", valid=False),
        outgoing=OUTGOING,
        own_has_twin=_has_twin("p"),
        add_out=Q(_ADD_OUT_TWIN).format(twin=TWIN, actions=Q(_ACTIONS)),
    )
    return _do(table, key, shadow, block)


def attach_replacement_fks(table: Table, key: str, shadow: str) -> sql.Composed:
    """Before PostgreSQL 18, each partitioned referencing table's own twin, added valid once its
    partitions' twins are validated: PostgreSQL attaches those instead of scanning (catalog only).
    Attaching drops each partition's own triggers on the key's table, so that table is locked
    ACCESS EXCLUSIVE (measured on 15), first, not upgraded to later; the referencing tables SHARE
    ROW EXCLUSIVE. Nothing to do, and no lock, elsewhere."""
    block = Q(_ATTACH_TWINS).format(
        referencing=REFERENCING,
        has_twin=_has_twin("f.child"),
        split=Q(_SPLIT),
        lock=_lock_family(ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, parents=False),
        add=_add_twin("f.child", valid=True),
    )
    return _do(table, key, shadow, block)


def validate_replacement_fks(table: Table, key: str, shadow: str) -> sql.Composed:
    """VALIDATE each twin: scans the child under SHARE UPDATE EXCLUSIVE, writes keep going. Not the
    twin of a foreign key left NOT VALID by its owner (rows it would refuse may be there on purpose):
    the twin stays NOT VALID too, and the swap moves it as it is."""
    return _do(table, key, shadow, Q(_VALIDATE_TWINS).format(twin_of_o=Q(TWIN_OF.format(a="o.conname"))))


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


def swap(table: Table, key: str, shadow: str, temp: str, index: str) -> sql.Composed:
    """One transaction: lock the tables the column references, the table, then every table
    referencing it (each group sorted by name, so two swaps never deadlock); move the foreign keys
    to their twins (keeping their names); give each index twin its original's name; drop the key
    constraint; swap the two columns' names, so ``key`` names the bigint column for the old app and
    the new one alike; move the identity or the default and its sequence (widened to bigint,
    current value kept); re-create the key constraint on the prebuilt unique index."""
    block = Q(_SWAP).format(
        index_twins=SWAP_FRAGMENT,
        referencing=REFERENCING,
        outgoing=OUTGOING,
        twin=TWIN,
        temp=sql.Literal(temp),
        index=sql.Literal(index),
        lock=_lock_family(ACCESS_EXCLUSIVE),
    )
    return _do(table, key, shadow, block)


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
