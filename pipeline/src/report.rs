//! How an error reads for a person: its whole cause chain on one line, and for a database error
//! the server's own message, SQLSTATE, detail and hint (the driver's `Display` says only
//! "db error"). Job outcomes in the ledger, log lines, the CLI and API error bodies all go
//! through [`error_chain`].

use std::error::Error;
use std::fmt;

/// The error and every cause below it, on one line.
///
/// A level whose message already embeds its cause's message (`"… failed: {source}"`) has that
/// text replaced by the richer rendering of the cause; otherwise the cause is appended after
/// `": "`. A `tokio_postgres::Error` carrying a server error reads as
/// `ERROR: <message> (SQLSTATE <code>); DETAIL: <detail>; HINT: <hint>`.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    if let Some(db) = db_error(error) {
        return server_error(db);
    }
    let own = error.to_string();
    let Some(cause) = error.source() else {
        return own;
    };
    let rest = error_chain(cause);
    let plain = cause.to_string();
    // Wrappers put their cause last (`"… failed: {source}"`): replace the last occurrence.
    if let Some(at) = own.rfind(&plain).filter(|_| !plain.is_empty()) {
        return format!("{}{rest}{}", &own[..at], &own[at + plain.len()..]);
    }
    if own.is_empty() || rest.contains(&own) {
        return rest;
    }
    format!("{own}: {rest}")
}

/// [`error_chain`] as a `Display` value, for log fields: `error = %ErrorChain(&error)`.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

/// The server error behind `error`, if it is one (the driver's error or the server's itself).
fn db_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a tokio_postgres::error::DbError> {
    if let Some(pg) = error.downcast_ref::<tokio_postgres::Error>() {
        return pg.as_db_error();
    }
    error.downcast_ref::<tokio_postgres::error::DbError>()
}

/// A server error on one line: severity, message, SQLSTATE, then detail and hint when sent.
pub fn server_error(db: &tokio_postgres::error::DbError) -> String {
    let mut out = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(detail) = db.detail() {
        out.push_str(&format!("; DETAIL: {}", one_line(detail)));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; HINT: {}", one_line(hint)));
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("disk on fire")]
        Fire,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("saving failed: {0}")]
        Embeds(#[source] Inner),
        #[error("saving failed")]
        Separate(#[source] Inner),
        #[error("{0}")]
        Transparent(#[from] Inner),
    }

    #[test]
    fn chain_is_rendered_once_whether_or_not_levels_embed_their_cause() {
        assert_eq!(
            error_chain(&Outer::Embeds(Inner::Fire)),
            "saving failed: disk on fire"
        );
        assert_eq!(
            error_chain(&Outer::Separate(Inner::Fire)),
            "saving failed: disk on fire"
        );
        assert_eq!(
            error_chain(&Outer::Transparent(Inner::Fire)),
            "disk on fire"
        );
        let any = anyhow::Error::new(Outer::Separate(Inner::Fire)).context("job 7");
        assert_eq!(
            error_chain(any.as_ref()),
            "job 7: saving failed: disk on fire"
        );
        assert_eq!(
            ErrorChain(&Outer::Separate(Inner::Fire)).to_string(),
            "saving failed: disk on fire"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("saving failed twice; last: {0}")]
    struct Repeats(#[source] Outer);

    #[test]
    fn the_embedded_cause_is_the_last_occurrence() {
        assert_eq!(
            error_chain(&Repeats(Outer::Separate(Inner::Fire))),
            "saving failed twice; last: saving failed: disk on fire"
        );
    }

    #[test]
    fn an_io_cause_of_a_driver_error_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let any = anyhow::Error::new(io).context("cannot connect to db:5432/x");
        assert_eq!(
            error_chain(any.as_ref()),
            "cannot connect to db:5432/x: refused"
        );
    }
}
