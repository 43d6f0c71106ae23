//! Where results are kept between solves.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::key::CacheKey;
use crate::op::BoxFuture;

/// The error a cache store returns: the store's own error type, boxed.
pub type CacheError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Results by cache key. The engine keeps snapshot names in SQLite; tests use [`MemoryCache`].
///
/// A vertex's outputs are saved and loaded together. A store error fails the vertex
/// ([`SolveError::CacheLoad`](crate::SolveError::CacheLoad) or `CacheSave`) rather than being
/// taken for a miss, so a broken cache is seen.
pub trait CacheStore<R>: Send + Sync {
    /// The outputs saved under `key`, if any.
    fn load<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<Vec<R>>, CacheError>>;

    /// Records `outputs` under `key`, replacing what was there.
    fn save<'a>(
        &'a self,
        key: &'a CacheKey,
        outputs: &'a [R],
    ) -> BoxFuture<'a, Result<(), CacheError>>;
}

/// A cache store in memory, lost with the process.
#[derive(Debug)]
pub struct MemoryCache<R> {
    entries: Mutex<HashMap<CacheKey, Vec<R>>>,
}

impl<R> MemoryCache<R> {
    /// An empty store.
    pub fn new() -> Self {
        MemoryCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<R> Default for MemoryCache<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Clone + Send + Sync + 'static> CacheStore<R> for MemoryCache<R> {
    fn load<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<Vec<R>>, CacheError>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let found = entries.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(
        &'a self,
        key: &'a CacheKey,
        outputs: &'a [R],
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), outputs.to_vec());
        Box::pin(async { Ok(()) })
    }
}
