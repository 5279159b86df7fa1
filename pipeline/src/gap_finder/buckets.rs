//! Bucket arithmetic of the gap finder: id ranges, fingerprints, and how differing buckets are split.
//!
//! Nothing here talks to a database, so the search itself is tested on in-memory id sets.

use std::collections::BTreeMap;

use super::{GapError, IdRange};

/// The prime of the fingerprint's hash; products of two residues stay below 2^62.
pub(crate) const HASH_PRIME: i64 = 2_147_483_647;

/// The per-id hash summed into a fingerprint: the cube of the id modulo [`HASH_PRIME`].
///
/// Count and sum alone cannot tell {1, 4} from {2, 3}; a nonlinear term can. SQL computes the
/// same value with truncating `%` (PostgreSQL and Redshift agree with Rust on negative ids);
/// this definition serves the in-memory model the tests check the search against.
#[cfg(test)]
pub(crate) fn id_hash(id: i64) -> i64 {
    let r = id % HASH_PRIME;
    (r * r % HASH_PRIME) * r % HASH_PRIME
}

/// What one side holds in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fingerprint {
    pub count: i64,
    /// Sum of the ids' offsets from the start of their bucket (so the sum stays small).
    pub sum: i128,
    /// Sum of [`id_hash`] over the bucket.
    pub hash: i128,
    /// Sum of the rows' content hashes (0 where only ids are compared): the content
    /// comparison's addition, so a bucket whose rows changed differs too.
    pub content: i128,
}

/// One row of a grouped query: a bucket number and its fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketPrint {
    pub bucket: i64,
    pub print: Fingerprint,
}

/// A grouped query: fingerprints of `(id - anchor) / width` buckets over `ranges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupQuery {
    pub anchor: i64,
    pub width: u64,
    /// Sorted, disjoint ranges, each inside one bucket grid cell of the parent level.
    pub ranges: Vec<IdRange>,
}

/// Ids per bitmap word. A word's bits fit a bigint with room to spare, and the power of two
/// keeps words aligned with buckets (whose widths are powers of two too).
pub(crate) const WORD_BITS: u64 = 32;

/// A bitmap query: for every word of [`WORD_BITS`] ids counted from `anchor`, which ids of
/// `ranges` are present. One row carries up to 32 ids, so a dense gap costs 32 times fewer rows
/// than listing it, and a sparse one is settled in one round instead of splitting further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BitmapQuery {
    pub anchor: i64,
    pub ranges: Vec<IdRange>,
}

/// One row of a bitmap query: bit `k` of `bits` is set when id `anchor + word * 32 + k` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word {
    pub word: i64,
    pub bits: i64,
}

/// Number of ids in an inclusive range (up to 2^64).
pub(crate) fn span(range: IdRange) -> u128 {
    (i128::from(range.hi) - i128::from(range.lo) + 1) as u128
}

/// The ids bucket `bucket` of width `width` anchored at `anchor` covers, clipped to `within`.
pub(crate) fn bucket_range(anchor: i64, width: u64, bucket: i64, within: IdRange) -> IdRange {
    let lo = i128::from(anchor) + i128::from(bucket) * i128::from(width);
    let hi = lo + i128::from(width) - 1;
    let lo = lo.max(i128::from(within.lo));
    let hi = hi.min(i128::from(within.hi));
    // Both ends are clipped into `within`, so they fit an i64.
    IdRange {
        lo: lo as i64,
        hi: hi as i64,
    }
}

/// The smallest power of two at least `n` (n >= 1).
fn pow2_at_least(n: u128) -> u64 {
    let p = n.max(1).next_power_of_two();
    u64::try_from(p).unwrap_or(1 << 63)
}

/// First-level bucket width for a request: a power of two giving at most `max_buckets` buckets
/// per query, never narrower than `min_width` nor wider than a query's span.
pub(crate) fn first_width(
    request: IdRange,
    max_buckets: u64,
    min_width: u64,
    max_span: u64,
) -> u64 {
    let per_query = span(request).min(u128::from(max_span));
    let width = pow2_at_least(per_query.div_ceil(u128::from(max_buckets.max(1))));
    width.max(min_width).min(max_span)
}

/// Splits `request` into first-level pieces: cells of `max_span` ids anchored at its start.
pub(crate) fn first_ranges(request: IdRange, max_span: u64) -> Vec<IdRange> {
    let mut out = Vec::new();
    let mut lo = i128::from(request.lo);
    let hi = i128::from(request.hi);
    while lo <= hi {
        let end = (lo + i128::from(max_span) - 1).min(hi);
        out.push(IdRange {
            lo: lo as i64,
            hi: end as i64,
        });
        lo = end + 1;
    }
    out
}

/// Groups sorted ranges into queries: at most `max_ranges` ranges and `max_span` ids each.
pub(crate) fn batch_ranges(
    ranges: &[IdRange],
    max_ranges: usize,
    max_span: u64,
) -> Vec<Vec<IdRange>> {
    let mut batches = Vec::new();
    let mut current: Vec<IdRange> = Vec::new();
    let mut current_span = 0u128;
    for &r in ranges {
        let s = span(r);
        if !current.is_empty()
            && (current.len() >= max_ranges.max(1) || current_span + s > u128::from(max_span))
        {
            batches.push(std::mem::take(&mut current));
            current_span = 0;
        }
        current.push(r);
        current_span += s;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Merges ranges that touch (`a.hi + 1 == b.lo`) while the merged span stays within `max_span`.
pub(crate) fn coalesce(ranges: &[IdRange], max_span: u64) -> Vec<IdRange> {
    let mut out: Vec<IdRange> = Vec::with_capacity(ranges.len());
    for &r in ranges {
        match out.last_mut() {
            Some(last)
                if i128::from(last.hi) + 1 == i128::from(r.lo)
                    && span(IdRange {
                        lo: last.lo,
                        hi: r.hi,
                    }) <= u128::from(max_span) =>
            {
                last.hi = r.hi;
            }
            _ => out.push(r),
        }
    }
    out
}

/// What to do with the buckets of one grouped query, after comparing both sides.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Ids settled by the fingerprints alone (single-id buckets).
    pub missing: Vec<i64>,
    pub extra: Vec<i64>,
    /// Single-id buckets present on both sides whose content differs.
    pub divergent: Vec<i64>,
    /// Differing buckets to read as bitmaps on both sides.
    pub bitmap: Vec<IdRange>,
    /// Differing buckets to split at the next level.
    pub split: Vec<IdRange>,
    /// Buckets compared.
    pub compared: u64,
}

/// Compares both sides' fingerprints of one grouped query and sorts the differing buckets.
///
/// A differing bucket is read as a bitmap when splitting it would not pay: when it is narrow
/// (its bitmap has at most `fanout` words, no more rows than its children's fingerprints), when
/// it holds few rows, when one side is empty (every id there is in the answer), or when the
/// counts differ by at least `fanout` (then most children would differ too).
pub(crate) fn compare(
    query: &GroupQuery,
    request: IdRange,
    source: &[BucketPrint],
    target: &[BucketPrint],
    list_threshold: u64,
    fanout: u64,
) -> Result<Verdict, GapError> {
    let mut buckets: BTreeMap<i64, (Fingerprint, Fingerprint)> = BTreeMap::new();
    for row in source {
        buckets.entry(row.bucket).or_default().0 = row.print;
    }
    for row in target {
        buckets.entry(row.bucket).or_default().1 = row.print;
    }
    let mut verdict = Verdict {
        compared: buckets.len() as u64,
        ..Verdict::default()
    };
    for (bucket, (s, t)) in buckets {
        if s == t {
            continue;
        }
        let cell = bucket_range(query.anchor, query.width, bucket, request);
        let Some(within) = query
            .ranges
            .iter()
            .find(|r| cell.lo <= cell.hi && r.contains(cell.lo))
        else {
            return Err(GapError::Decode(format!(
                "bucket {bucket} (width {}) lies outside the queried ranges",
                query.width
            )));
        };
        let range = IdRange {
            lo: cell.lo,
            hi: cell.hi.min(within.hi),
        };
        if span(range) == 1 {
            match (s.count, t.count) {
                (1, 0) => verdict.missing.push(range.lo),
                (0, 1) => verdict.extra.push(range.lo),
                (1, 1) => verdict.divergent.push(range.lo),
                _ => {
                    return Err(GapError::Decode(format!(
                        "id {} counted {} times in source and {} in target",
                        range.lo, s.count, t.count
                    )))
                }
            }
        } else if s.count == 0
            || t.count == 0
            || s.count.max(t.count).unsigned_abs() <= list_threshold
            || span(range) <= u128::from(fanout) * u128::from(WORD_BITS)
            || s.count.abs_diff(t.count) >= fanout
        {
            verdict.bitmap.push(range);
        } else {
            verdict.split.push(range);
        }
    }
    Ok(verdict)
}

/// Next level's width: `fanout` times narrower, at least 1.
pub(crate) fn child_width(width: u64, fanout: u64) -> u64 {
    (width / fanout.max(2)).max(1)
}

/// What both sides' leaves of one leaf query tell apart.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LeafDiff {
    pub missing: Vec<i64>,
    pub extra: Vec<i64>,
    pub divergent: Vec<i64>,
}

/// The finest unit a search reads once buckets are narrow: a bitmap word of ids (the gap
/// finder) or one row with its content hash (the content comparison).
pub(crate) trait Leaf: Sized {
    /// Compares both sides' leaves of one query anchored at `anchor`.
    fn diff(anchor: i64, source: &[Self], target: &[Self]) -> LeafDiff;
}

impl Leaf for Word {
    fn diff(anchor: i64, source: &[Self], target: &[Self]) -> LeafDiff {
        let (missing, extra) = diff_words(anchor, source, target);
        LeafDiff {
            missing,
            extra,
            divergent: Vec::new(),
        }
    }
}

/// Ids in `source` but not `target`, and in `target` but not `source`, from both sides'
/// bitmaps of one query (words in any order, a word at most once per side).
pub(crate) fn diff_words(anchor: i64, source: &[Word], target: &[Word]) -> (Vec<i64>, Vec<i64>) {
    let mut words: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for w in source {
        words.entry(w.word).or_default().0 |= w.bits;
    }
    for w in target {
        words.entry(w.word).or_default().1 |= w.bits;
    }
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let id = |word: i64, bit: u32| {
        // Inside the request, whose span fits an i64.
        (i128::from(anchor) + i128::from(word) * i128::from(WORD_BITS) + i128::from(bit)) as i64
    };
    for (word, (s, t)) in words {
        for (bits, out) in [(s & !t, &mut missing), (t & !s, &mut extra)] {
            let mut bits = bits;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                out.push(id(word, bit));
                bits &= bits - 1;
            }
        }
    }
    (missing, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: i64, hi: i64) -> IdRange {
        IdRange { lo, hi }
    }

    #[test]
    fn hash_tells_apart_sets_with_equal_count_and_sum() {
        let a: i64 = [1, 4].iter().map(|&i| id_hash(i)).sum();
        let b: i64 = [2, 3].iter().map(|&i| id_hash(i)).sum();
        assert_ne!(a, b);
        // Equal count, sum and sum of squares (a Prouhet-Tarry-Escott pair).
        let a: i64 = [1, 5, 6].iter().map(|&i| id_hash(i)).sum();
        let b: i64 = [2, 3, 7].iter().map(|&i| id_hash(i)).sum();
        assert_ne!(a, b);
    }

    #[test]
    fn hash_matches_sql_truncating_modulo_on_negative_ids() {
        // Worked by hand: 2^31 = 1 (mod 2^31 - 1), so 2^63 - 1 = 1 and -2^63 = -2; the cube
        // keeps the sign under truncating `%`.
        for (id, hash) in [
            (1, 1),
            (2, 8),
            (-2, -8),
            (1000, 1_000_000_000),
            (HASH_PRIME - 1, HASH_PRIME - 1),
            (HASH_PRIME, 0),
            (HASH_PRIME + 1, 1),
            (i64::MAX, 1),
            (i64::MIN, -8),
        ] {
            assert_eq!(id_hash(id), hash, "id {id}");
        }
    }

    #[test]
    fn first_width_is_a_power_of_two_within_bounds() {
        assert_eq!(first_width(r(1, 10_000_000), 65_536, 64, 1 << 24), 256);
        assert_eq!(first_width(r(1, 1_000), 65_536, 64, 1 << 24), 64);
        assert_eq!(first_width(r(i64::MIN, i64::MAX), 65_536, 64, 1 << 24), 256);
        assert_eq!(first_width(r(5, 5), 65_536, 1, 1 << 24), 1);
    }

    #[test]
    fn first_ranges_cover_the_request_exactly() {
        assert_eq!(first_ranges(r(0, 9), 4), vec![r(0, 3), r(4, 7), r(8, 9)]);
        assert_eq!(
            first_ranges(r(i64::MAX - 1, i64::MAX), 4),
            vec![r(i64::MAX - 1, i64::MAX)]
        );
        let all = first_ranges(r(i64::MIN, i64::MIN + 10), 1 << 24);
        assert_eq!(all, vec![r(i64::MIN, i64::MIN + 10)]);
    }

    #[test]
    fn bucket_range_is_clipped_to_the_request() {
        assert_eq!(bucket_range(10, 4, 0, r(10, 100)), r(10, 13));
        assert_eq!(bucket_range(10, 4, 2, r(10, 100)), r(18, 21));
        assert_eq!(bucket_range(10, 4, 2, r(10, 19)), r(18, 19));
        assert_eq!(
            bucket_range(i64::MAX - 3, 8, 0, r(i64::MAX - 3, i64::MAX)),
            r(i64::MAX - 3, i64::MAX)
        );
    }

    #[test]
    fn batches_respect_range_count_and_span() {
        let ranges: Vec<IdRange> = (0..10).map(|i| r(i * 10, i * 10 + 3)).collect();
        let b = batch_ranges(&ranges, 3, 1_000);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let b = batch_ranges(&ranges, 100, 8);
        assert!(b.iter().all(|q| q.len() == 2));
        assert_eq!(b.concat(), ranges);
    }

    #[test]
    fn coalesce_merges_touching_ranges_up_to_a_span() {
        let merged = coalesce(&[r(0, 3), r(4, 7), r(8, 11), r(20, 21)], 8);
        assert_eq!(merged, vec![r(0, 7), r(8, 11), r(20, 21)]);
    }

    #[test]
    fn word_diff_reports_both_directions() {
        let w = |word, bits| Word { word, bits };
        // Word 0 holds ids 100..=131, word 2 ids 164..=195.
        let source = [w(0, 0b1011), w(2, 1 << 31)];
        let target = [w(2, 1 << 31), w(0, 0b0110), w(5, 1)];
        let (missing, extra) = diff_words(100, &source, &target);
        assert_eq!(missing, vec![100, 103]);
        assert_eq!(extra, vec![102, 260]);
        let (missing, _) = diff_words(i64::MAX - 31, &[w(0, 1 << 31)], &[]);
        assert_eq!(missing, vec![i64::MAX]);
    }

    #[test]
    fn compare_routes_differing_buckets() {
        let q = GroupQuery {
            anchor: 0,
            width: 1024,
            ranges: vec![r(0, 8191)],
        };
        let fp = |count, sum, hash| Fingerprint {
            count,
            sum,
            hash,
            content: 0,
        };
        let row = |bucket, print| BucketPrint { bucket, print };
        let source = vec![
            row(0, fp(1024, 28, 1)),
            row(1, fp(2, 17, 2)),     // few rows: bitmap
            row(2, fp(1000, 156, 3)), // one row apart: split
            row(3, fp(1000, 156, 3)), // 20 rows apart: bitmap
        ];
        let target = vec![
            row(0, fp(1024, 28, 1)),
            row(2, fp(999, 140, 3)),
            row(3, fp(980, 140, 3)),
            row(5, fp(1, 41, 4)), // target only: bitmap
        ];
        let v = compare(&q, r(0, 8191), &source, &target, 2, 16).unwrap();
        assert_eq!(v.compared, 5);
        assert_eq!(v.bitmap, vec![r(1024, 2047), r(3072, 4095), r(5120, 6143)]);
        assert_eq!(v.split, vec![r(2048, 3071)]);
        // Buckets whose bitmap is no longer than their children's fingerprints: bitmap.
        let v = compare(&q, r(0, 8191), &source, &target, 2, 32).unwrap();
        assert!(v.split.is_empty());
        assert_eq!(v.bitmap.len(), 4);
        let bad = vec![row(99, fp(1, 0, 0))];
        assert!(compare(&q, r(0, 8191), &bad, &[], 2, 16).is_err());
    }
}
