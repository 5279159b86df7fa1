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
    aborted                    integer,     -- 1 when the query was stopped or its transaction rolled back
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
