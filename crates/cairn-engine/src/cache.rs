//! The engine's cache store: results by cache key in a table of the store's `metadata.db`.
//!
//! A record is the JSON of a vertex's outputs (snapshot name, image config state, stdout,
//! stderr, exit code). Records are written with `INSERT OR IGNORE` in an immediate transaction:
//! two processes that compute the same key race harmlessly, the first record stays, and both
//! name the same deterministic snapshot (`exec-<key hex>`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_solver::{BoxFuture, CacheError, CacheKey, CacheStore};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::EngineError;
use crate::Output;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS engine_cache (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    created INTEGER NOT NULL
);
";

/// Results by cache key, in SQLite.
pub(crate) struct SqliteCache {
    path: PathBuf,
    db: Mutex<Connection>,
}

impl SqliteCache {
    pub(crate) fn open(path: &Path) -> Result<Self, EngineError> {
        let err = |source| EngineError::Database {
            path: path.to_owned(),
            source,
        };
        let db = cairn_snapshot::open_database(path).map_err(err)?;
        cairn_snapshot::apply_schema(&db, "cache", SCHEMA).map_err(err)?;
        Ok(SqliteCache {
            path: path.to_owned(),
            db: Mutex::new(db),
        })
    }

    fn db_err(&self, source: rusqlite::Error) -> EngineError {
        EngineError::Database {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Result<Option<Vec<Output>>, EngineError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let text: Option<String> = db
            .query_row(
                "SELECT result FROM engine_cache WHERE key = ?1",
                [key.digest().hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| EngineError::CacheRecord {
                key: key.to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    pub(crate) fn put(&self, key: &CacheKey, outputs: &[Output]) -> Result<(), EngineError> {
        let text = serde_json::to_string(outputs).map_err(|e| EngineError::CacheRecord {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT OR IGNORE INTO engine_cache (key, result, created) VALUES (?1, ?2, ?3)",
            params![key.digest().hex(), text, now],
        )
        .map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))
    }
}

impl CacheStore<Output> for SqliteCache {
    fn load<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<Vec<Output>>, CacheError>> {
        Box::pin(async move { self.get(key).map_err(CacheError::from) })
    }

    fn save<'a>(
        &'a self,
        key: &'a CacheKey,
        outputs: &'a [Output],
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move { self.put(key, outputs).map_err(CacheError::from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_oci::Digest;

    #[test]
    fn two_handles_share_records_and_the_first_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let (a, b) = (
            SqliteCache::open(&path).unwrap(),
            SqliteCache::open(&path).unwrap(),
        );
        let key = CacheKey::from_digest(Digest::sha256_of(b"k"));
        assert!(a.get(&key).unwrap().is_none());
        let first = Output {
            stdout: "one".into(),
            ..Output::default()
        };
        let second = Output {
            stdout: "two".into(),
            ..Output::default()
        };
        a.put(&key, std::slice::from_ref(&first)).unwrap();
        b.put(&key, std::slice::from_ref(&second)).unwrap();
        assert_eq!(b.get(&key).unwrap().unwrap()[0].stdout, "one");
    }
}
