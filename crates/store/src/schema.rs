//! What both backends say about their schema version: the migrations a newer binary would
//! apply (`tollgate migrate --dry-run`), and the refusal to run on a schema newer than the
//! binary knows (docs/operations.md, "Upgrades").
//!
//! Migrations are forward-only and each is applied once, in order, in its own transaction
//! (PostgreSQL: all pending ones in one). A binary opens any older database and brings it up;
//! it refuses a newer one rather than write to tables it does not understand.

use crate::StoreError;

/// A migration the database has not had yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMigration {
    /// The schema version the database is at once this migration is applied.
    pub version: usize,
    /// Its statements, each as its first line (`CREATE TABLE captures (`, `ALTER TABLE …`).
    pub statements: Vec<String>,
}

/// Where a database's schema stands against this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The database's version: 0 for a new database.
    pub current: usize,
    /// The version this binary writes.
    pub newest: usize,
    pub pending: Vec<PendingMigration>,
}

impl SchemaStatus {
    /// The status of a database at `current` against `migrations` (index i takes the
    /// schema to version i + 1); a newer database is refused.
    pub fn of(current: usize, migrations: &[&str]) -> Result<SchemaStatus, StoreError> {
        refuse_newer(current, migrations.len())?;
        let pending = migrations
            .iter()
            .enumerate()
            .skip(current)
            .map(|(i, sql)| PendingMigration {
                version: i + 1,
                statements: statement_heads(sql),
            })
            .collect();
        Ok(SchemaStatus {
            current,
            newest: migrations.len(),
            pending,
        })
    }
}

/// `Err` when the database's schema is newer than this binary's: it was written by a newer
/// Tollgate, and running an older one on it is a downgrade, which is not supported.
pub fn refuse_newer(current: usize, newest: usize) -> Result<(), StoreError> {
    if current > newest {
        return Err(StoreError::Unavailable(format!(
            "the database is at schema version {current}, newer than this binary's \
             {newest}: a newer Tollgate wrote it. Run that version or newer; to go back, \
             restore a backup taken before the upgrade (docs/operations.md)"
        )));
    }
    Ok(())
}

/// The first line of each statement of a migration, comments and blank lines left out.
fn statement_heads(sql: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut in_statement = false;
    for line in sql.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("--") {
            continue;
        }
        if !in_statement {
            heads.push(line.trim_end_matches([';', '(']).trim_end().to_string());
        }
        in_statement = !line.ends_with(';');
    }
    heads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_migrations_name_their_statements() {
        let migrations = [
            "CREATE TABLE a (\n  x INTEGER\n);\n",
            "-- the b table\nCREATE TABLE b (x INTEGER);\nCREATE INDEX b_x ON b (x);\n\nALTER TABLE a\n  ADD COLUMN y TEXT;\n",
        ];
        let status = SchemaStatus::of(1, &migrations).expect("older is fine");
        assert_eq!(status.current, 1);
        assert_eq!(status.newest, 2);
        assert_eq!(
            status.pending,
            vec![PendingMigration {
                version: 2,
                statements: vec![
                    "CREATE TABLE b (x INTEGER)".to_string(),
                    "CREATE INDEX b_x ON b (x)".to_string(),
                    "ALTER TABLE a".to_string(),
                ],
            }]
        );
        assert!(SchemaStatus::of(2, &migrations)
            .expect("current")
            .pending
            .is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let err = SchemaStatus::of(3, &["", ""]).expect_err("newer");
        assert!(err
            .to_string()
            .contains("schema version 3, newer than this binary's 2"));
    }
}
