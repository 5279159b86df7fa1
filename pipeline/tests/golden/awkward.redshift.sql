-- public.awkward: from source public.awkward; recommended types, default encodings.
-- WARNING: note: `text` has no length limit; Redshift VARCHAR holds at most 65535 bytes, longer values are refused
-- WARNING: huge_text: `character varying(20000)` may need 80000 bytes; Redshift VARCHAR holds at most 65535
-- WARNING: wide_number: numeric precision 50 is over Redshift's 38: values needing more digits are refused
-- WARNING: any_number: numeric without precision as NUMERIC(38,10): values needing more digits are refused
-- PRIMARY KEY is informational on Redshift: it is not enforced.
-- DISTKEY(id): the id is unique, so rows spread evenly over slices, and DMS's UPDATE/DELETE and the repairs join on it.
-- SORTKEY(id): the gap finder and the repairs scan by id ranges; the sort key column is RAW so range restriction works best.
CREATE TABLE "public"."awkward" (
    "id" BIGINT NOT NULL ENCODE RAW,
    "flag" BOOLEAN NOT NULL ENCODE ZSTD,
    "doc" SUPER ENCODE ZSTD,
    "tags" SUPER ENCODE ZSTD,
    "ref" CHAR(36) ENCODE ZSTD,
    "at" TIMESTAMPTZ ENCODE AZ64,
    "local_at" TIMESTAMP ENCODE AZ64,
    "day" DATE ENCODE AZ64,
    "amount" NUMERIC(12,2) ENCODE AZ64,
    "ratio" DOUBLE PRECISION ENCODE ZSTD,
    "small" SMALLINT ENCODE AZ64,
    "note" VARCHAR(65535) ENCODE ZSTD,
    "status" VARCHAR(64) ENCODE ZSTD,
    "maybe" INTEGER ENCODE AZ64,
    "mixedcase" VARCHAR(40) ENCODE ZSTD,
    "blob" VARBYTE(1024000) ENCODE ZSTD,
    "code" VARCHAR(12) ENCODE ZSTD,
    "huge_text" VARCHAR(65535) ENCODE ZSTD,
    "wide_number" NUMERIC(38,4) ENCODE AZ64,
    "any_number" NUMERIC(38,10) ENCODE AZ64,
    "opens" TIME ENCODE RAW,
    "took" VARCHAR(128) ENCODE ZSTD,
    "score" REAL ENCODE ZSTD,
    "raw_json" SUPER ENCODE ZSTD,
    PRIMARY KEY ("id")
)
DISTSTYLE KEY
DISTKEY ("id")
SORTKEY ("id");
