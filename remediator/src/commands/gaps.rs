//! `dmsguard-remediator gaps`: prints the ids missing from (and extra in) a table's target.

use anyhow::{bail, Context};
use chrono::NaiveDate;
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::gap_finder::{
    id_range_for_day, id_range_of_tables, GapFinder, GapReport, IdRange, TableSpec,
};

/// Which ids to compare.
#[derive(Debug, Clone, clap::Args)]
pub struct GapsArgs {
    /// The configured table, by source or target name (`schema.table`, parts quoted as
    /// PostgreSQL does: `public."Subscriber Events"`).
    #[arg(long)]
    pub table: String,
    /// First id to compare (with `--to`); without a range the tables' whole id span is compared.
    #[arg(
        long,
        requires = "to",
        conflicts_with = "day",
        allow_negative_numbers = true
    )]
    pub from: Option<i64>,
    /// Last id to compare (inclusive).
    #[arg(
        long,
        requires = "from",
        conflicts_with = "day",
        allow_negative_numbers = true
    )]
    pub to: Option<i64>,
    /// A UTC day (YYYY-MM-DD): compare the ids of the source rows whose `day_column` falls in it.
    #[arg(long)]
    pub day: Option<NaiveDate>,
}

/// Runs the search and writes one `missing<TAB>id` or `extra<TAB>id` line per id, then a
/// `#` summary line.
pub async fn run(
    config: &Config,
    args: &GapsArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<GapReport> {
    let table = config
        .table(&args.table)
        .with_context(|| format!("no [[tables]] entry is named `{}`", args.table))?;
    let spec = TableSpec::from_config(table)?;
    let redshift = config.redshift.database();
    let (source, target) = tokio::try_join!(
        dmsguard_pipeline::db::connect(config.source_reads()),
        dmsguard_pipeline::db::connect(&redshift),
    )
    .context("connecting to the source and Redshift")?;
    let range = match (args.from, args.to, args.day) {
        (Some(from), Some(to), _) => Some(IdRange::new(from, to)?),
        (_, _, Some(day)) => {
            let Some(column) = &table.day_column else {
                bail!("table `{}` has no day_column configured", table.source);
            };
            id_range_for_day(&source, &spec, column, day).await?
        }
        _ => id_range_of_tables(&source, &target, &spec).await?,
    };
    let Some(range) = range else {
        writeln!(out, "# {}: no rows in range", spec.source)?;
        return Ok(GapReport::default());
    };
    let report = GapFinder::default()
        .find(&source, &target, &spec, range)
        .await
        .with_context(|| format!("searching {} ids {range}", spec.source))?;
    for id in &report.missing {
        writeln!(out, "missing\t{id}")?;
    }
    for id in &report.extra {
        writeln!(out, "extra\t{id}")?;
    }
    writeln!(
        out,
        "# {} ids {range}: {} missing, {} extra ({} queries, {} rows read)",
        spec.source,
        report.missing.len(),
        report.extra.len(),
        report.stats.queries,
        report.stats.rows_transferred
    )?;
    Ok(report)
}
