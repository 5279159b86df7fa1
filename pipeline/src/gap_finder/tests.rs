//! The search on in-memory id sets: exact answers for random tables, gaps and options.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::buckets::{id_hash, BitmapQuery, BucketPrint, Fingerprint, GroupQuery, Word, WORD_BITS};
use super::*;

/// An id set answering the search's queries the way the SQL does.
struct Memory(BTreeSet<i64>);

impl Memory {
    /// Each id of the ranges.
    fn in_ranges<'a>(&'a self, ranges: &'a [IdRange]) -> impl Iterator<Item = i64> + 'a {
        ranges
            .iter()
            .flat_map(|r| self.0.range(r.lo..=r.hi).copied())
    }
}

impl IdSet for Memory {
    type Leaf = Word;

    async fn fingerprints(&self, query: &GroupQuery) -> Result<Vec<BucketPrint>, GapError> {
        let mut buckets = std::collections::BTreeMap::<i64, Fingerprint>::new();
        for id in self.in_ranges(&query.ranges) {
            let bucket = (i128::from(id) - i128::from(query.anchor)) / i128::from(query.width);
            let f = buckets.entry(bucket as i64).or_default();
            f.count += 1;
            f.sum += i128::from(id) - i128::from(query.anchor) - bucket * i128::from(query.width);
            f.hash += i128::from(id_hash(id));
        }
        Ok(buckets
            .into_iter()
            .map(|(bucket, print)| BucketPrint { bucket, print })
            .collect())
    }

    async fn leaves(&self, query: &BitmapQuery) -> Result<Vec<Word>, GapError> {
        let mut words = std::collections::BTreeMap::<i64, i64>::new();
        for id in self.in_ranges(&query.ranges) {
            let offset = i128::from(id) - i128::from(query.anchor);
            let word = (offset / i128::from(WORD_BITS)) as i64;
            *words.entry(word).or_default() |= 1 << (offset % i128::from(WORD_BITS));
        }
        Ok(words
            .into_iter()
            .map(|(word, bits)| Word { word, bits })
            .collect())
    }
}

fn search(
    options: GapFinderOptions,
    source: &BTreeSet<i64>,
    target: &BTreeSet<i64>,
    range: IdRange,
) -> GapReport {
    let finder = GapFinder::new(options).unwrap();
    futures::executor::block_on(finder.search(
        &Memory(source.clone()),
        &Memory(target.clone()),
        range,
    ))
    .unwrap()
}

fn expected(a: &BTreeSet<i64>, b: &BTreeSet<i64>, range: IdRange) -> Vec<i64> {
    a.difference(b)
        .copied()
        .filter(|id| range.contains(*id))
        .collect()
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

/// A source table with holes, and a target that lost some rows and kept some deleted ones.
fn tables() -> impl Strategy<Value = (i64, BTreeSet<i64>, BTreeSet<i64>)> {
    let base = prop_oneof![
        Just(0i64),
        Just(1),
        -1_000i64..1_000,
        Just(i64::MAX - 3_000),
        Just(i64::MIN),
        any::<i64>().prop_map(|b| b.clamp(i64::MIN, i64::MAX - 3_000)),
    ];
    (
        base,
        1usize..2_500,
        0u32..100,
        0u32..30,
        0u32..10,
        any::<u64>(),
    )
        .prop_map(|(base, len, hole_pct, missing_pct, extra_pct, seed)| {
            let mut rng = seed;
            let mut next = move || {
                rng = rng
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (rng >> 33) % 100
            };
            let (mut source, mut target) = (BTreeSet::new(), BTreeSet::new());
            for i in 0..len as i64 {
                let id = base + i;
                if next() < u64::from(hole_pct) {
                    // Never written at the source; sometimes a row deleted there survives in the target.
                    if next() < u64::from(extra_pct) {
                        target.insert(id);
                    }
                    continue;
                }
                source.insert(id);
                if next() >= u64::from(missing_pct) {
                    target.insert(id);
                }
            }
            (base, source, target)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn finds_exactly_the_missing_and_extra_ids(
        (base, source, target) in tables(),
        options in small_options(),
        lo_off in 0i64..2_600,
        len in 0i64..2_600,
    ) {
        let lo = base.saturating_add(lo_off);
        let range = IdRange::new(lo, lo.saturating_add(len)).unwrap();
        let report = search(options, &source, &target, range);
        prop_assert_eq!(&report.missing, &expected(&source, &target, range));
        prop_assert_eq!(&report.extra, &expected(&target, &source, range));
    }

    #[test]
    fn default_options_find_exact_answers(
        (base, source, target) in tables(),
    ) {
        let range = IdRange::new(base, base + 2_600).unwrap();
        let report = search(GapFinderOptions::default(), &source, &target, range);
        prop_assert_eq!(&report.missing, &expected(&source, &target, range));
        prop_assert_eq!(&report.extra, &expected(&target, &source, range));
    }
}

fn dense(lo: i64, hi: i64) -> BTreeSet<i64> {
    (lo..=hi).collect()
}

#[test]
fn first_and_last_ids_missing_are_found() {
    let source = dense(1, 10_000);
    let mut target = source.clone();
    target.remove(&1);
    target.remove(&10_000);
    let report = search(
        GapFinderOptions::default(),
        &source,
        &target,
        IdRange::new(1, 10_000).unwrap(),
    );
    assert_eq!(report.missing, vec![1, 10_000]);
    assert!(report.extra.is_empty());
}

#[test]
fn empty_range_on_both_sides_costs_one_round() {
    let report = search(
        GapFinderOptions::default(),
        &BTreeSet::new(),
        &BTreeSet::new(),
        IdRange::new(100, 1_000_000).unwrap(),
    );
    assert_eq!(
        report,
        GapReport {
            stats: GapStats {
                queries: 2,
                rows_transferred: 0,
                ranges_compared: 0,
                rounds: 1,
                ..GapStats::default()
            },
            ..GapReport::default()
        }
    );
}

#[test]
fn empty_target_lists_every_source_id_without_splitting() {
    let source = dense(0, 99_999);
    let report = search(
        GapFinderOptions::default(),
        &source,
        &BTreeSet::new(),
        IdRange::new(0, 99_999).unwrap(),
    );
    assert_eq!(report.missing.len(), 100_000);
    assert_eq!(report.stats.rounds, 2);
}

#[test]
fn missing_and_extra_with_equal_count_and_sum_in_one_bucket_are_told_apart() {
    // {1, 4} missing and {2, 3} extra leave count and sum of the bucket unchanged.
    let source: BTreeSet<i64> = [1, 4, 5, 6, 7].into();
    let target: BTreeSet<i64> = [2, 3, 5, 6, 7].into();
    let options = GapFinderOptions {
        min_first_width: 8,
        list_threshold: 0,
        ..GapFinderOptions::default()
    };
    let report = search(options, &source, &target, IdRange::new(0, 7).unwrap());
    assert_eq!(report.missing, vec![1, 4]);
    assert_eq!(report.extra, vec![2, 3]);
}

#[test]
fn rows_moved_grow_with_missing_ids_not_table_size() {
    let options = GapFinderOptions::default();
    let range = IdRange::new(1, 1_000_000).unwrap();
    let source = dense(1, 1_000_000);
    let first_round_rows = 2 * 1_000_000 / 64;
    for missing in [0usize, 10, 100, 1_000] {
        let mut target = source.clone();
        for i in 0..missing {
            target.remove(&(1 + (i as i64 * 7_919 * 113) % 1_000_000));
        }
        let report = search(options, &source, &target, range);
        assert_eq!(report.missing.len(), missing);
        let per_missing = 2 * (options.fanout + 64 / options.fanout);
        assert!(
            report.stats.rows_transferred <= first_round_rows + per_missing * missing as u64,
            "{missing} missing moved {} rows",
            report.stats.rows_transferred
        );
    }
}

#[test]
fn invalid_ranges_and_options_are_errors() {
    assert!(IdRange::new(5, 4).is_err());
    let bad = GapFinderOptions {
        fanout: 3,
        ..GapFinderOptions::default()
    };
    assert!(GapFinder::new(bad).is_err());
    let finder = GapFinder::default();
    let whole = IdRange {
        lo: i64::MIN,
        hi: i64::MAX,
    };
    let result = futures::executor::block_on(finder.search(
        &Memory(BTreeSet::new()),
        &Memory(BTreeSet::new()),
        whole,
    ));
    assert!(
        matches!(result, Err(GapError::InvalidRange(_))),
        "{result:?}"
    );
}

#[test]
fn table_spec_from_config_uses_target_and_id_column() {
    let config = TableConfig {
        source: "public.orders".to_owned(),
        target: Some("dw.orders".to_owned()),
        id_column: "order_id".to_owned(),
        day_column: None,
        task: None,
        divergent_rows: false,
        delete_extra: false,
        scan_budget_rows: None,
    };
    let spec = TableSpec::from_config(&config).unwrap();
    assert_eq!(spec.target.to_string(), "dw.orders");
    assert_eq!(spec.id_column, "order_id");
    let bad = TableConfig {
        id_column: "id; drop".to_owned(),
        ..config
    };
    assert!(TableSpec::from_config(&bad).is_err());
}

#[test]
fn up_to_keeps_the_replicated_part() {
    let r = IdRange::new(10, 20).unwrap();
    assert_eq!(r.up_to(15), Some(IdRange { lo: 10, hi: 15 }));
    assert_eq!(r.up_to(25), Some(r));
    assert_eq!(r.up_to(10), Some(IdRange { lo: 10, hi: 10 }));
    assert_eq!(r.up_to(9), None);
}
