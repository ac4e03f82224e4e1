//! `muster migrate`: converts a keyspace written under an older schema version in place
//! (`docs/redis-schema.md` lists the versions). Run with every `muster serve` of the
//! namespace stopped: a server refuses to start on a version it does not know.

use super::keys::{KeyFamily, SCHEMA_VERSION};
use super::{Result, Store, StoreError};
use redis::AsyncCommands;

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Migrated {
    /// The version found (`None`: an empty keyspace, nothing to do).
    pub from: Option<String>,
    /// The version now stored.
    pub to: String,
    /// Task hashes converted.
    pub tasks: u64,
    /// Fields removed from them.
    pub fields_removed: u64,
}

impl Store {
    /// The schema version stored under the namespace (`None` on an empty keyspace).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schema_version(&self) -> Result<Option<String>> {
        Ok(self.conn().get(self.keys.schema()).await?)
    }

    /// Converts the keyspace to [`SCHEMA_VERSION`]; `progress(done, total)` is called
    /// per queue. A keyspace already at this version is left alone.
    ///
    /// # Errors
    /// Redis errors; [`StoreError::Unfit`] for a version this muster cannot convert.
    pub async fn migrate(&self, progress: impl Fn(u64, u64)) -> Result<Migrated> {
        let from = self.schema_version().await?;
        let mut done = Migrated {
            from: from.clone(),
            to: SCHEMA_VERSION.to_string(),
            tasks: 0,
            fields_removed: 0,
        };
        match from.as_deref() {
            None => return Ok(done),
            Some(v) if v == SCHEMA_VERSION => return Ok(done),
            Some("1") => {}
            Some(v) => {
                return Err(StoreError::Unfit(format!(
                    "schema version {v:?} is newer than this muster's {SCHEMA_VERSION}: \
                     use the muster that wrote it"
                )));
            }
        }
        let queues = self.queues().await?;
        let total = queues.len() as u64;
        let mut c = self.conn();
        self.scripts.load(&mut c).await?;
        for (i, q) in queues.iter().enumerate() {
            let family = KeyFamily::of(|id| self.keys.task(q, id));
            let keys = super::doctor::scan(&mut c, &family).await?;
            for chunk in keys.chunks(500) {
                let mut pipe = redis::pipe();
                for (_, key) in chunk {
                    pipe.invoke_script(&self.scripts.migrate_task.key(key));
                }
                let removed: Vec<u64> = pipe.query_async(&mut c).await?;
                done.tasks += removed.len() as u64;
                done.fields_removed += removed.iter().sum::<u64>();
            }
            progress(i as u64 + 1, total);
        }
        let () = c.set(self.keys.schema(), SCHEMA_VERSION).await?;
        Ok(done)
    }
}
