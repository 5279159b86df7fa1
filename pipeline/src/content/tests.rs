//! The content walk on in-memory tables: exactly the edited ids, for random tables and edits.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::queries::RowHash;
use crate::gap_finder::buckets::{
    id_hash, BitmapQuery, BucketPrint, Fingerprint, GroupQuery, Leaf,
};
use crate::gap_finder::{GapError, GapFinder, GapFinderOptions, IdRange, IdSet};

/// Rows (id -> content hash, below 2^32) answering the walk's queries as the SQL does.
struct Rows(BTreeMap<i64, i64>);

impl Rows {
    fn in_ranges<'a>(&'a self, ranges: &'a [IdRange]) -> impl Iterator<Item = (i64, i64)> + 'a {
        ranges
            .iter()
            .flat_map(|r| self.0.range(r.lo..=r.hi).map(|(k, v)| (*k, *v)))
    }
}

impl IdSet for Rows {
    type Leaf = RowHash;

    async fn fingerprints(&self, query: &GroupQuery) -> Result<Vec<BucketPrint>, GapError> {
        let mut buckets = BTreeMap::<i64, Fingerprint>::new();
        for (id, hash) in self.in_ranges(&query.ranges) {
            let bucket = (i128::from(id) - i128::from(query.anchor)) / i128::from(query.width);
            let f = buckets.entry(bucket as i64).or_default();
            f.count += 1;
            f.sum += i128::from(id) - i128::from(query.anchor) - bucket * i128::from(query.width);
            f.hash += i128::from(id_hash(id));
            f.content += i128::from(hash);
        }
        Ok(buckets
            .into_iter()
            .map(|(bucket, print)| BucketPrint { bucket, print })
            .collect())
    }

    async fn leaves(&self, query: &BitmapQuery) -> Result<Vec<RowHash>, GapError> {
        Ok(self
            .in_ranges(&query.ranges)
            .map(|(id, hash)| RowHash { id, hash })
            .collect())
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    divergent: Vec<i64>,
    extra: Vec<i64>,
    missing: Vec<i64>,
}

fn walk(
    options: GapFinderOptions,
    source: &BTreeMap<i64, i64>,
    target: &BTreeMap<i64, i64>,
    range: IdRange,
) -> Expected {
    let finder = GapFinder::new(options).unwrap();
    let r = futures::executor::block_on(finder.walk(
        &Rows(source.clone()),
        &Rows(target.clone()),
        range,
    ))
    .unwrap();
    Expected {
        divergent: r.divergent,
        extra: r.extra,
        missing: r.missing,
    }
}

/// A source table, and a target that lost some updates, deletes and inserts.
fn tables() -> impl Strategy<Value = (BTreeMap<i64, i64>, BTreeMap<i64, i64>, Expected)> {
    (
        prop_oneof![Just(1i64), -500i64..500, Just(i64::MAX - 5_000)],
        1usize..3_000,
        0u32..40,
        0u32..20,
        0u32..5,
        0u32..5,
        any::<u64>(),
    )
        .prop_map(
            |(base, len, hole_pct, stale_pct, extra_pct, missing_pct, seed)| {
                let mut rng = seed;
                let mut next = move || {
                    rng = rng
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    rng >> 33
                };
                let (mut s, mut t) = (BTreeMap::new(), BTreeMap::new());
                let mut want = Expected::default();
                for i in 0..len as i64 {
                    let id = base + i;
                    let hash = (next() & 0xffff_ffff) as i64;
                    if next() % 100 < u64::from(hole_pct) {
                        if next() % 100 < u64::from(extra_pct) {
                            t.insert(id, hash);
                            want.extra.push(id);
                        }
                        continue;
                    }
                    s.insert(id, hash);
                    if next() % 100 < u64::from(missing_pct) {
                        want.missing.push(id);
                    } else if next() % 100 < u64::from(stale_pct) {
                        // Any other value, even one summing like a neighbour's.
                        t.insert(id, (hash + 1 + (next() % 7) as i64) & 0xffff_ffff);
                        want.divergent.push(id);
                    } else {
                        t.insert(id, hash);
                    }
                }
                (s, t, want)
            },
        )
}

fn small_options() -> impl Strategy<Value = GapFinderOptions> {
    (0u32..8, 0u32..4, 1u32..4, 0u64..20, 1usize..6, 3u32..12).prop_map(
        |(buckets, min_width, fanout, list, ranges, max_span)| GapFinderOptions {
            max_buckets_per_query: 1 << buckets,
            min_first_width: 1 << min_width,
            fanout: 1 << fanout,
            list_threshold: list,
            max_ranges_per_query: ranges,
            max_span_per_query: 1 << max_span.max(min_width),
            max_list_span_per_query: 1 << max_span,
            ..GapFinderOptions::default()
        },
    )
}

fn full_range(s: &BTreeMap<i64, i64>, t: &BTreeMap<i64, i64>) -> Option<IdRange> {
    let keys: BTreeSet<i64> = s.keys().chain(t.keys()).copied().collect();
    Some(IdRange::new(*keys.first()?, *keys.last()?).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reports_exactly_the_edited_ids((s, t, want) in tables(), options in small_options()) {
        let Some(range) = full_range(&s, &t) else { return Ok(()) };
        prop_assert_eq!(walk(options, &s, &t, range), want);
    }

    #[test]
    fn default_options_report_exactly_the_edited_ids((s, t, want) in tables()) {
        let Some(range) = full_range(&s, &t) else { return Ok(()) };
        prop_assert_eq!(walk(GapFinderOptions::default(), &s, &t, range), want);
    }
}

#[test]
fn swapped_contents_and_duplicated_ids_are_divergent() {
    // Rows 10 and 11 swap contents: the canonical text starts with the id, so each row's hash
    // changes (to unrelated values) rather than the two trading hashes.
    let s: BTreeMap<i64, i64> = (1..=64).map(|id| (id, id * 7)).collect();
    let mut t = s.clone();
    t.insert(10, 1_234_567);
    t.insert(11, 89);
    let got = walk(
        GapFinderOptions::default(),
        &s,
        &t,
        IdRange::new(1, 64).unwrap(),
    );
    assert_eq!(got.divergent, vec![10, 11]);
    assert!(got.extra.is_empty() && got.missing.is_empty());
    // A target holding an id twice: divergent (Redshift enforces no key).
    let diff = RowHash::diff(
        0,
        &[RowHash { id: 5, hash: 1 }],
        &[RowHash { id: 5, hash: 1 }, RowHash { id: 5, hash: 1 }],
    );
    assert_eq!(diff.divergent, vec![5]);
}

#[test]
fn target_statements_are_redshift_sql() {
    use crate::catalogue::{SourceColumn, SourceTable, SourceTypeKind, TargetColumn, TargetTable};
    use crate::config::QualifiedName;
    use crate::content::{ContentComparer, ContentOptions, Dialect};
    use crate::gap_finder::{Side, TableSpec};
    let name = QualifiedName::parse("public.t").unwrap();
    let s = |n: &str, t: &str, udt: &str| SourceColumn {
        name: n.to_owned(),
        type_name: t.to_owned(),
        udt_name: udt.to_owned(),
        kind: SourceTypeKind::Base,
        element_type: None,
        not_null: false,
        char_max_length: None,
        numeric_precision: None,
        numeric_scale: None,
    };
    let t = |n: &str, t: &str, len: Option<i32>| TargetColumn {
        name: n.to_owned(),
        data_type: t.to_owned(),
        char_max_length: len,
        numeric_precision: None,
        numeric_scale: None,
        nullable: true,
        udt_name: String::new(),
    };
    let source = SourceTable {
        name: name.clone(),
        columns: vec![
            s("id", "bigint", "int8"),
            s("flag", "boolean", "bool"),
            s("note", "text", "text"),
            s("at", "timestamp with time zone", "timestamptz"),
        ],
        primary_key: vec!["id".to_owned()],
    };
    let target = TargetTable {
        name: name.clone(),
        columns: vec![
            t("id", "bigint", None),
            t("flag", "character varying", Some(5)),
            t("note", "character varying", Some(100)),
            t("at", "timestamp without time zone", None),
        ],
    };
    let spec = TableSpec {
        source: name.clone(),
        target: name,
        id_column: "id".to_owned(),
    };
    let comparer =
        ContentComparer::new(&spec, &source, &target, ContentOptions::default()).unwrap();
    let sql = comparer.fingerprint_sql(
        Side::Target,
        Dialect::Redshift,
        IdRange::new(1, 1_000_000).unwrap(),
    );
    assert!(sql.contains("STRTOL(SUBSTRING(MD5("), "{sql}");
    for banned in ["LATERAL", "generate_series", "::", "ANY("] {
        assert!(!sql.contains(banned), "{banned} in {sql}");
    }
    crate::statement_parser::is_valid_redshift_sql(&sql).unwrap();
}
