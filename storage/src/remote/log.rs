//! The commit log of a dataset on object storage: `_log/<seq>.json`, one record per commit,
//! each created with a create-only compare-and-swap at the next sequence number.
//!
//! A record adds manifest entries, removes them, or says that a new lease holder took over
//! (with its epoch). The manifest is the log replayed. Two writers that both append at `seq`
//! cannot both win; the loser reads what won and either retries at `seq + 1` (another shard's
//! commit of other blocks) or stops: an entry it would add overlaps one that won (a lost race,
//! reported), or a holder with a higher epoch took over (fenced). A writer appends only at the
//! sequence after the last it has read, so a leader paused past its lease cannot commit past
//! the takeover record of its successor: that record holds the sequence number it would need.

use super::cas::Cas;
use crate::error::{Error, Result};
use crate::manifest::ChunkEntry;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Folder of log records (in the coordinator's key space).
pub(crate) const LOG_DIR: &str = "_log";
/// Folder of log checkpoints (in the bucket): the replayed state at a sequence number.
pub(crate) const CHECKPOINT_DIR: &str = "_log_checkpoints";
/// Records between checkpoints.
const CHECKPOINT_EVERY: u64 = 256;

/// What one record does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// A committed chunk.
    Add(ChunkEntry),
    /// A chunk removed (rollback, or replaced by a merge in the same record).
    Remove {
        /// First block.
        start: u64,
        /// Last block.
        end: u64,
    },
    /// A new holder of the writer lease: records of lower epochs are not appended after it.
    Takeover,
}

/// One commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    /// The writer's lease epoch (0: a writer without a lease, a backfill shard).
    pub(crate) epoch: u64,
    pub(crate) writer: String,
    pub(crate) actions: Vec<Action>,
}

/// The log replayed up to `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogState {
    /// Last applied record (0: none).
    pub(crate) seq: u64,
    /// Highest epoch that took over.
    pub(crate) epoch: u64,
    /// Entries by start block.
    pub(crate) entries: BTreeMap<u64, ChunkEntry>,
    /// Ranges removed and not added since (what a replica must drop).
    pub(crate) removed: Vec<(u64, u64)>,
}

pub(crate) fn key(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl LogState {
    /// Whether `actions` can follow this state: no added entry overlaps a kept one.
    fn conflict(&self, actions: &[Action]) -> Option<Error> {
        let removed: Vec<(u64, u64)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { start, end } => Some((*start, *end)),
                _ => None,
            })
            .collect();
        for a in actions {
            let Action::Add(e) = a else { continue };
            let hit = self
                .entries
                .range(..=e.end)
                .rev()
                .find(|(_, c)| c.end >= e.start && !removed.contains(&(c.start, c.end)));
            if let Some((_, c)) = hit {
                return Some(Error::Overlap {
                    start: e.start,
                    end: e.end,
                    other_start: c.start,
                    other_end: c.end,
                });
            }
        }
        None
    }

    pub(crate) fn apply(&mut self, r: &Record) -> Result<()> {
        if r.seq != self.seq + 1 {
            return Err(Error::Coordinator {
                what: format!("commit log record {} follows {}", r.seq, self.seq),
            });
        }
        for a in &r.actions {
            match a {
                Action::Add(e) => {
                    self.removed.retain(|&(s, en)| !(s == e.start && en == e.end));
                    self.entries.insert(e.start, e.clone());
                }
                Action::Remove { start, end } => {
                    if self.entries.get(start).is_some_and(|c| c.end == *end) {
                        self.entries.remove(start);
                    }
                    if !self.removed.contains(&(*start, *end)) {
                        self.removed.push((*start, *end));
                    }
                }
                Action::Takeover => self.epoch = self.epoch.max(r.epoch),
            }
        }
        self.seq = r.seq;
        Ok(())
    }
}

/// Reads the records after `state.seq` and applies them.
pub(crate) async fn catch_up(cas: &Cas, state: &mut LogState) -> Result<()> {
    let after = (state.seq > 0).then(|| key(state.seq));
    for (k, bytes) in cas.list(LOG_DIR, after.as_deref()).await? {
        let r: Record = serde_json::from_slice(&bytes)
            .map_err(|source| Error::Json { path: std::path::PathBuf::from(&k), source })?;
        if r.seq <= state.seq {
            continue;
        }
        state.apply(&r)?;
    }
    Ok(())
}

/// Appends `actions` as the writer `writer` of lease epoch `epoch` (0: none), retrying at the
/// next sequence number while other writers' records do not conflict. Returns the record.
pub(crate) async fn append(
    cas: &Cas,
    state: &mut LogState,
    epoch: u64,
    writer: &str,
    mut actions: Vec<Action>,
) -> Result<Record> {
    let mut unknown = 0u32;
    loop {
        // A commit retried after its record landed (the replica's entry failed, a timeout):
        // the entry is there already, byte for byte (file names carry the writer's tag).
        actions.retain(|a| !matches!(a, Action::Add(e) if state.entries.get(&e.start) == Some(e)));
        if actions.is_empty() {
            return Ok(Record { seq: state.seq, epoch, writer: writer.to_string(), actions });
        }
        if epoch > 0 && state.epoch > epoch {
            return Err(Error::Fenced {
                path: std::path::PathBuf::from(cas.describe()),
                epoch,
                now: Some((state.epoch, "a newer holder (commit log)".into())),
            });
        }
        if let Some(e) = state.conflict(&actions) {
            return Err(e);
        }
        let r = Record {
            seq: state.seq + 1,
            epoch,
            writer: writer.to_string(),
            actions: actions.clone(),
        };
        let bytes = Bytes::from(serde_json::to_vec(&r).map_err(|source| Error::Json {
            path: std::path::PathBuf::from(key(r.seq)),
            source,
        })?);
        let k = format!("{LOG_DIR}/{}", key(r.seq));
        match cas.create(&k, bytes.clone()).await {
            Ok(Some(_)) => {
                state.apply(&r)?;
                return Ok(r);
            }
            Ok(None) => {}
            Err(e) => {
                // The outcome is unknown (a timeout after the store took it): read it back.
                match cas.get(&k).await {
                    Ok(Some((got, _))) if got == bytes => {
                        state.apply(&r)?;
                        return Ok(r);
                    }
                    Ok(Some(_)) => {}
                    _ => {
                        unknown += 1;
                        if unknown >= 3 {
                            return Err(e);
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(200 << unknown)).await;
                    }
                }
            }
        }
        catch_up(cas, state).await?;
    }
}

/// Whether a checkpoint is due after `seq`.
pub(crate) fn checkpoint_due(seq: u64) -> bool {
    seq.is_multiple_of(CHECKPOINT_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cas() -> Cas {
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        Cas::Store {
            store,
            prefix: object_store::path::Path::from("ds"),
            url: "memory://ds".into(),
        }
    }

    fn entry(start: u64, end: u64, tag: &str) -> ChunkEntry {
        ChunkEntry {
            start,
            end,
            first_block_hash: Default::default(),
            last_block_hash: Default::default(),
            tables: BTreeMap::from([(
                "logs".to_string(),
                crate::FileEntry {
                    path: format!("logs/{start}-{end}-{tag}.parquet"),
                    rows: 1,
                    bytes: 1,
                    sha256: String::new(),
                },
            )]),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_paused_leader_cannot_append_past_its_successors_takeover() {
        rt().block_on(async {
            let cas = cas();
            // The old leader (epoch 1) read the log up to its own takeover.
            let mut old = LogState::default();
            append(&cas, &mut old, 1, "old", vec![Action::Takeover]).await.unwrap();
            append(&cas, &mut old, 1, "old", vec![Action::Add(entry(0, 9, "a"))]).await.unwrap();
            // It pauses; a standby takes over (epoch 2) and commits.
            let mut new = LogState::default();
            catch_up(&cas, &mut new).await.unwrap();
            append(&cas, &mut new, 2, "new", vec![Action::Takeover]).await.unwrap();
            append(&cas, &mut new, 2, "new", vec![Action::Add(entry(10, 19, "b"))]).await.unwrap();
            // The old leader wakes with blocks 10..=19 of its own: its append collides with the
            // takeover's sequence number, it reads it, and it is fenced: nothing lands.
            let r = append(&cas, &mut old, 1, "old", vec![Action::Add(entry(10, 19, "c"))]).await;
            assert!(matches!(r, Err(Error::Fenced { epoch: 1, .. })), "{r:?}");
            let r = append(&cas, &mut old, 1, "old", vec![Action::Add(entry(20, 29, "c"))]).await;
            assert!(matches!(r, Err(Error::Fenced { .. })), "{r:?}");
            let mut reader = LogState::default();
            catch_up(&cas, &mut reader).await.unwrap();
            assert_eq!(reader.seq, 4);
            assert_eq!(reader.entries[&10].tables["logs"].path, "logs/10-19-b.parquet");
            assert!(!reader.entries.contains_key(&20));
        });
    }

    #[test]
    fn shards_retry_past_each_other_and_a_lost_range_is_reported() {
        rt().block_on(async {
            let cas = cas();
            let (mut a, mut b) = (LogState::default(), LogState::default());
            append(&cas, &mut a, 0, "a", vec![Action::Add(entry(0, 9, "a"))]).await.unwrap();
            // b has not read a's record: it loses seq 1, reads it, commits at seq 2.
            let r =
                append(&cas, &mut b, 0, "b", vec![Action::Add(entry(10, 19, "b"))]).await.unwrap();
            assert_eq!(r.seq, 2);
            // Both believed they owned 20..=29: the first wins, the second is told.
            append(&cas, &mut a, 0, "a", vec![Action::Add(entry(20, 29, "a"))]).await.unwrap();
            let r = append(&cas, &mut b, 0, "b", vec![Action::Add(entry(20, 29, "b"))]).await;
            assert!(matches!(r, Err(Error::Overlap { start: 20, .. })), "{r:?}");
            // A retry of a commit that landed appends nothing.
            let before = a.seq;
            append(&cas, &mut a, 0, "a", vec![Action::Add(entry(20, 29, "a"))]).await.unwrap();
            assert_eq!(a.seq, before);
            // A merge replaces its parts in one record; a rollback removes.
            let merged = entry(0, 19, "m");
            append(
                &cas,
                &mut a,
                0,
                "a",
                vec![
                    Action::Add(merged.clone()),
                    Action::Remove { start: 0, end: 9 },
                    Action::Remove { start: 10, end: 19 },
                ],
            )
            .await
            .unwrap();
            append(&cas, &mut a, 0, "a", vec![Action::Remove { start: 20, end: 29 }])
                .await
                .unwrap();
            let mut reader = LogState::default();
            catch_up(&cas, &mut reader).await.unwrap();
            assert_eq!(reader.entries.values().cloned().collect::<Vec<_>>(), vec![merged]);
            assert!(reader.removed.contains(&(20, 29)) && reader.removed.contains(&(0, 9)));
        });
    }
}
