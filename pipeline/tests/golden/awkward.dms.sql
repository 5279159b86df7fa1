-- public.awkward: from source public.awkward; DMS-compatible types, default encodings.
-- WARNING: doc: `jsonb` as VARCHAR(65535) text (no SUPER): longer values are refused
-- WARNING: tags: array `text[]` as VARCHAR(65535) text (no SUPER): longer values are refused
-- WARNING: note: `text` has no length limit; Redshift VARCHAR holds at most 65535 bytes, longer values are refused
-- WARNING: blob: bytea as hex text in VARCHAR(65535): values over 32766 bytes are refused
-- WARNING: wide_number: numeric precision 50 is over Redshift's 38: stored as text
-- WARNING: any_number: numeric without precision as NUMERIC(28,6): values needing more digits are refused
-- WARNING: raw_json: `json` as VARCHAR(65535) text (no SUPER): longer values are refused
-- PRIMARY KEY is informational on Redshift: it is not enforced.
-- DISTKEY(id): the id is unique, so rows spread evenly over slices, and DMS's UPDATE/DELETE and the repairs join on it.
-- SORTKEY(id): the gap finder and the repairs scan by id ranges; the sort key column is RAW so range restriction works best.
CREATE TABLE "public"."awkward" (
    "id" BIGINT NOT NULL ENCODE RAW,
    "flag" VARCHAR(5) NOT NULL ENCODE ZSTD,
    "doc" VARCHAR(65535) ENCODE ZSTD,
    "tags" VARCHAR(65535) ENCODE ZSTD,
    "ref" VARCHAR(36) ENCODE ZSTD,
    "at" TIMESTAMP ENCODE AZ64,
    "local_at" TIMESTAMP ENCODE AZ64,
    "day" DATE ENCODE AZ64,
    "amount" NUMERIC(12,2) ENCODE AZ64,
    "ratio" DOUBLE PRECISION ENCODE ZSTD,
    "small" SMALLINT ENCODE AZ64,
    "note" VARCHAR(65535) ENCODE ZSTD,
    "status" VARCHAR(64) ENCODE ZSTD,
    "maybe" INTEGER ENCODE AZ64,
    "mixedcase" VARCHAR(10) ENCODE ZSTD,
    "blob" VARCHAR(65535) ENCODE ZSTD,
    "code" VARCHAR(3) ENCODE ZSTD,
    "huge_text" VARCHAR(20000) ENCODE ZSTD,
    "wide_number" VARCHAR(65535) ENCODE ZSTD,
    "any_number" NUMERIC(28,6) ENCODE AZ64,
    "opens" VARCHAR(20) ENCODE ZSTD,
    "took" VARCHAR(128) ENCODE ZSTD,
    "score" REAL ENCODE ZSTD,
    "raw_json" VARCHAR(65535) ENCODE ZSTD,
    PRIMARY KEY ("id")
)
DISTSTYLE KEY
DISTKEY ("id")
SORTKEY ("id");
