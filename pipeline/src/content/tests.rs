//! The content walk on in-memory tables: exactly the edited ids, for random tables and edits.
