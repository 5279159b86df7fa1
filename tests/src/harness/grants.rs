//! The least-privilege database users of `docs/grants.md`, created in a test's databases by
//! running exactly the SQL blocks of that page.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// `docs/grants.md`, whose `sql <side>-<user>` blocks the lab runs as they are.
pub const GRANTS_MD: &str = include_str!("../../../docs/grants.md");

/// The user the exporter connects as.
pub const EXPORTER_USER: &str = "dmsguard_exporter";
/// The user the remediator connects as.
pub const REMEDIATOR_USER: &str = "dmsguard_remediator";

/// The SQL block of `docs/grants.md` tagged ```` ```sql <tag> ````, e.g. `redshift-exporter`.
pub fn grants_block(tag: &str) -> anyhow::Result<String> {
    let fence = format!("```sql {tag}\n");
    let start = GRANTS_MD
        .find(&fence)
        .ok_or_else(|| anyhow::anyhow!("docs/grants.md has no `{fence}` block"))?
        + fence.len();
    let end = GRANTS_MD[start..]
        .find("```")
        .ok_or_else(|| anyhow::anyhow!("docs/grants.md: `{tag}` block not closed"))?;
    Ok(GRANTS_MD[start..start + end].to_owned())
}

/// The statements of a block, with its placeholders replaced.
pub fn grant_statements(block: &str, substitutions: &[(&str, &str)]) -> Vec<String> {
    let mut text = block.to_owned();
    for (placeholder, value) in substitutions {
        text = text.replace(placeholder, value);
    }
    text.split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|s| s.trim().trim_end_matches(';').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs one statement of `docs/grants.md` on the lab. `ALTER USER u SYSLOG ACCESS UNRESTRICTED`
/// (Redshift only) becomes the stand-in's marker of the same meaning; creating a user that
/// exists is not an error (users are shared by every database of the server).
async fn run_grant(client: &Client, statement: &str) -> anyhow::Result<()> {
    let words: Vec<String> = statement
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    if words.len() == 6
        && words[0] == "ALTER"
        && words[1] == "USER"
        && words[3..] == ["SYSLOG", "ACCESS", "UNRESTRICTED"]
    {
        let user = statement.split_whitespace().nth(2).unwrap_or_default();
        client
            .execute(
                "INSERT INTO lab_syslog_access (usename) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&user],
            )
            .await?;
        return Ok(());
    }
    match client.batch_execute(statement).await {
        Ok(()) => Ok(()),
        Err(e)
            if words.first().map(String::as_str) == Some("CREATE")
                && (e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION)) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{statement}: {e}")),
    }
}

/// Runs the `docs/grants.md` blocks `tags` on `client`'s database.
pub async fn apply_grants(
    client: &Client,
    tags: &[&str],
    substitutions: &[(&str, &str)],
) -> anyhow::Result<()> {
    for tag in tags {
        for statement in grant_statements(&grants_block(tag)?, substitutions) {
            run_grant(client, &statement).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_is_there_and_splits_into_statements() {
        for tag in [
            "redshift-exporter",
            "redshift-remediator",
            "postgresql-exporter",
            "postgresql-remediator",
        ] {
            let statements = grant_statements(&grants_block(tag).unwrap(), &[("<password>", "pw")]);
            assert!(statements.len() >= 4, "{tag}: {statements:?}");
            assert!(statements[0].starts_with("CREATE USER"), "{tag}");
            assert!(statements.iter().all(|s| !s.contains(";\n")), "{tag}");
        }
        let rs = grants_block("redshift-exporter").unwrap();
        assert!(rs.contains("SYSLOG ACCESS UNRESTRICTED"));
    }
}
