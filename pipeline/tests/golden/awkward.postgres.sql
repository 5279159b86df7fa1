-- public.awkward: from source public.awkward; recommended types, PostgreSQL check: Redshift-only clauses left out.
-- WARNING: note: `text` has no length limit; Redshift VARCHAR holds at most 65535 bytes, longer values are refused
-- WARNING: huge_text: `character varying(20000)` may need 80000 bytes; Redshift VARCHAR holds at most 65535
-- WARNING: wide_number: numeric precision 50 is over Redshift's 38: values needing more digits are refused
-- WARNING: any_number: numeric without precision as NUMERIC(38,10): values needing more digits are refused
CREATE TABLE "public"."awkward" (
    "id" BIGINT NOT NULL,
    "flag" BOOLEAN NOT NULL,
    "doc" JSONB,
    "tags" JSONB,
    "ref" CHAR(36),
    "at" TIMESTAMPTZ,
    "local_at" TIMESTAMP,
    "day" DATE,
    "amount" NUMERIC(12,2),
    "ratio" DOUBLE PRECISION,
    "small" SMALLINT,
    "note" VARCHAR(65535),
    "status" VARCHAR(64),
    "maybe" INTEGER,
    "mixedcase" VARCHAR(40),
    "blob" BYTEA,
    "code" VARCHAR(12),
    "huge_text" VARCHAR(65535),
    "wide_number" NUMERIC(38,4),
    "any_number" NUMERIC(38,10),
    "opens" TIME,
    "took" VARCHAR(128),
    "score" REAL,
    "raw_json" JSONB,
    PRIMARY KEY ("id")
);
