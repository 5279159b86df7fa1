-- Redshift system views modelled as plain tables in the lab's `redshift` database.
-- Columns, names and types follow the Redshift documentation; see tests/REDSHIFT-STANDIN.md.
-- `character(n)` columns are declared as Redshift documents them: their values come back
-- blank-padded to n characters, as on Redshift.
-- Idempotent: safe to run on a database that already has them.

-- SYS_QUERY_HISTORY: one row per query (current monitoring views).
CREATE TABLE IF NOT EXISTS sys_query_history (
    user_id            integer,
    query_id           bigint PRIMARY KEY,
    query_label        char(320),
    transaction_id     bigint,
    session_id         integer,
    database_name      char(128),
    query_type         char(32),          -- SELECT, INSERT, UPDATE, DELETE, COPY, DDL, UTILITY, ...
    status             char(10),          -- planning, queued, running, returning, failed, canceled, success
    result_cache_hit   boolean,
    start_time         timestamp,
    end_time           timestamp,
    elapsed_time       bigint,            -- microseconds
    queue_time         bigint,
    execution_time     bigint,
    error_message      char(512),
    returned_rows      bigint,
    returned_bytes     bigint,
    query_text         char(4000),        -- truncated at 4000 characters
    redshift_version   char(256),
    usage_limit        varchar(150),
    compute_type       varchar(32),
    compile_time       bigint,
    planning_time      bigint,
    lock_wait_time     bigint
);
CREATE INDEX IF NOT EXISTS sys_query_history_start_time ON sys_query_history (start_time);

-- SYS_TRANSACTION_HISTORY: whether a transaction committed or rolled back.
CREATE TABLE IF NOT EXISTS sys_transaction_history (
    user_id                integer,
    transaction_id         bigint PRIMARY KEY,
    isolation_level        text,           -- Serializable, Snapshot Isolation
    status                 text,           -- committed, rolledback
    transaction_start_time timestamp,
    commit_start_time      timestamp,
    commit_end_time        timestamp,
    blocks_committed       bigint,
    undo_transaction_id    bigint          -- -1 when nothing was undone
);

-- SYS_QUERY_TEXT: the full text of a query in 4000-character pieces.
CREATE TABLE IF NOT EXISTS sys_query_text (
    user_id        integer,
    query_id       bigint,
    transaction_id bigint,
    session_id     integer,
    start_time     timestamp,
    sequence       integer,
    text           char(4000),
    PRIMARY KEY (query_id, sequence)
);

-- STL_QUERY: the older per-query log (ids differ from the SYS family: never join the two).
CREATE TABLE IF NOT EXISTS stl_query (
    userid                     integer,
    query                      integer PRIMARY KEY,
    label                      char(320),
    xid                        bigint,
    pid                        integer,
    database                   char(32),
    querytxt                   char(4000),  -- truncated at 4000 characters
    starttime                  timestamp,
    endtime                    timestamp,
    aborted                    integer,     -- 1 when the system stopped it or a user cancelled it; 0 when
                                            -- it ran to completion, even if its transaction then rolled back
    insert_pristine            integer,
    concurrency_scaling_status integer
);
CREATE INDEX IF NOT EXISTS stl_query_starttime ON stl_query (starttime);

-- STL_QUERYTEXT: the full text in 200-character pieces.
CREATE TABLE IF NOT EXISTS stl_querytext (
    userid   integer,
    xid      bigint,
    pid      integer,
    query    integer,
    sequence integer,
    text     char(200),
    PRIMARY KEY (query, sequence)
);

-- STL_UTILITYTEXT: non-SELECT commands such as ABORT, BEGIN, COMMIT, END, ROLLBACK, LOCK, in
-- 200-character pieces. How a non-superuser tells that a transaction rolled back.
CREATE TABLE IF NOT EXISTS stl_utilitytext (
    userid    integer,
    xid       bigint,
    pid       integer,
    label     char(320),
    starttime timestamp,
    endtime   timestamp,
    sequence  integer,
    text      char(200)
);
CREATE INDEX IF NOT EXISTS stl_utilitytext_xid ON stl_utilitytext (xid);

-- PG_TABLE_DEF: column definitions of tables on the search path.
CREATE TABLE IF NOT EXISTS pg_table_def (
    schemaname name,
    tablename  name,
    "column"   name,
    type       text,
    encoding   char(32),
    distkey    boolean,
    sortkey    integer,
    "notnull"  boolean
);

-- awsdms_apply_exceptions: created by DMS on the target; one row per statement it could not apply.
CREATE TABLE IF NOT EXISTS awsdms_apply_exceptions (
    "TASK_NAME"   varchar(128) NOT NULL,
    "TABLE_OWNER" varchar(128) NOT NULL,
    "TABLE_NAME"  varchar(128) NOT NULL,
    "ERROR_TIME"  timestamp NOT NULL,
    "STATEMENT"   varchar(65535) NOT NULL,
    "ERROR"       varchar(65535) NOT NULL
);

-- Sequences the stand-in uses to number queries and transactions as Redshift would.
CREATE SEQUENCE IF NOT EXISTS lab_query_id_seq START 1000;
CREATE SEQUENCE IF NOT EXISTS lab_transaction_id_seq START 5000;

-- Visibility ("Visibility of data in system tables and views" and each view's page): SYS_QUERY_HISTORY,
-- SYS_QUERY_TEXT and the STL views are visible to all users; superusers see every row, a regular
-- user only its own rows unless it has SYSLOG ACCESS UNRESTRICTED. SYS_TRANSACTION_HISTORY is
-- visible only to superusers. Modelled with row-level security (superusers bypass it). A user's
-- id is its `pg_user.usesysid`, as `user_id`/`userid` on Redshift.
--
-- `ALTER USER name SYSLOG ACCESS UNRESTRICTED` is modelled as a row in lab_syslog_access.
CREATE TABLE IF NOT EXISTS lab_syslog_access (usename name PRIMARY KEY);
GRANT SELECT ON lab_syslog_access TO PUBLIC;

CREATE OR REPLACE FUNCTION lab_user_id() RETURNS integer LANGUAGE sql STABLE AS
  $$ SELECT usesysid::bigint::integer FROM pg_user WHERE usename = current_user $$;
CREATE OR REPLACE FUNCTION lab_syslog_unrestricted() RETURNS boolean LANGUAGE sql STABLE AS
  $$ SELECT EXISTS (SELECT 1 FROM lab_syslog_access WHERE usename = current_user) $$;

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['sys_query_history', 'sys_query_text'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = t AND policyname = 'own_rows_or_unrestricted') THEN
      EXECUTE format('CREATE POLICY own_rows_or_unrestricted ON %I FOR SELECT USING (user_id = lab_user_id() OR lab_syslog_unrestricted())', t);
    END IF;
    EXECUTE format('GRANT SELECT ON %I TO PUBLIC', t);
  END LOOP;
  FOREACH t IN ARRAY ARRAY['stl_query', 'stl_querytext', 'stl_utilitytext'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = t AND policyname = 'own_rows_or_unrestricted') THEN
      EXECUTE format('CREATE POLICY own_rows_or_unrestricted ON %I FOR SELECT USING (userid = lab_user_id() OR lab_syslog_unrestricted())', t);
    END IF;
    EXECUTE format('GRANT SELECT ON %I TO PUBLIC', t);
  END LOOP;
  -- Superusers only: no policy, so every other user sees no row.
  ALTER TABLE sys_transaction_history ENABLE ROW LEVEL SECURITY;
  GRANT SELECT ON sys_transaction_history TO PUBLIC;
END $$;
GRANT SELECT ON pg_table_def TO PUBLIC;

-- The role the DMS simulator writes as (the DMS endpoint's database user). Roles are shared by
-- every database of the server; creating one that exists is not an error.
DO $$ BEGIN
  CREATE ROLE lab_dms LOGIN PASSWORD 'lab';
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- Isolation: new provisioned clusters and Serverless default to SNAPSHOT isolation ("Isolation
-- levels in Amazon Redshift"), a database's level is set by CREATE DATABASE … ISOLATION LEVEL,
-- and BEGIN's isolation levels have no operational impact (BEGIN). Modelled as PostgreSQL's
-- REPEATABLE READ (snapshot isolation) for every new session. Target tables have no enforced key
-- (Redshift does not enforce PRIMARY KEY or UNIQUE).
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = %L',
                 current_database(), 'repeatable read');
END $$;

-- A way for tests to make the next INSERTs of a user into a table fail as Redshift fails a
-- transaction it cannot serialize: SQLSTATE XX000, "1023", "Serializable isolation violation on
-- table" ("Troubleshooting serializable isolation errors"). Armed per user by
-- `dmsguard_lab::harness::inject_serializable_violations`; a sequence counts the failures so that
-- the count survives the failed transaction's rollback.
CREATE TABLE IF NOT EXISTS lab_injected_conflicts (usename name PRIMARY KEY, fail_up_to bigint NOT NULL);
CREATE SEQUENCE IF NOT EXISTS lab_injected_conflict_seq;
CREATE OR REPLACE FUNCTION lab_injected_conflict() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_catalog AS $$
DECLARE
  up_to bigint;
BEGIN
  SELECT fail_up_to INTO up_to FROM lab_injected_conflicts WHERE usename = session_user;
  IF up_to IS NOT NULL AND nextval('lab_injected_conflict_seq') <= up_to THEN
    RAISE EXCEPTION USING ERRCODE = 'XX000', MESSAGE = '1023',
      DETAIL = format('Serializable isolation violation on table - %s, transactions forming the cycle are: %s, %s (pid:%s)',
                      TG_RELID, txid_current(), txid_current() - 1, pg_backend_pid());
  END IF;
  RETURN NULL;
END $$;

-- version() answers as Redshift does ("VERSION": "PostgreSQL 8.0.2 on i686-pc-linux-gnu, compiled
-- by GCC gcc (GCC) 3.4.2 20041017 (Red Hat 3.4.2-6.fc3), Redshift 1.0.12103"), so code that
-- branches on it takes its Redshift path against the stand-in. pg_catalog is searched after
-- public in this database so that public.version() answers unqualified calls.
CREATE OR REPLACE FUNCTION public.version() RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT 'PostgreSQL 8.0.2 on i686-pc-linux-gnu, compiled by GCC gcc (GCC) 3.4.2 20041017 (Red Hat 3.4.2-6.fc3), Redshift 1.0.78881'::text $$;
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET search_path = "$user", public, pg_catalog', current_database());
END $$;

-- STRTOL(num_string, base) returns BIGINT (r_STRTOL: "Converts a string expression of a number
-- of the specified base to the equivalent integer value"; STRTOL('abcd1234', 16) = 2882343476).
-- PostgreSQL has no such function. Modelled for what dmsguard sends, hexadecimal strings of at
-- most 15 digits (the content comparison's 8-digit MD5 prefixes); any other base gives NULL.
CREATE OR REPLACE FUNCTION public.strtol(num_string text, base integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN base = 16 AND length(num_string) BETWEEN 1 AND 15
          THEN CAST(CAST('x' || lpad(num_string, 16, '0') AS bit(64)) AS bigint) END $$;
GRANT EXECUTE ON FUNCTION public.strtol(text, integer) TO PUBLIC;
