//! Snapshot files: the cache's state in a compact binary form (`proto/proto/snapshot.proto`).
//!
//! A file is a sequence of records, each a 4-byte big-endian length and one protobuf `Record`:
//! the header, then every entry and claim in key order. It is written and read one record at a
//! time, so building, sending or installing a snapshot of 100,000 entries never holds its whole
//! encoding in memory, and never holds the state lock (the state is cloned in O(1) first).
//!
//! Files live in `<data-dir>/snapshots/`. A new one is written under a temporary name, synced,
//! and renamed into place only when complete; only then does the node's database point at it.
//! A crash at any step leaves the previous snapshot in force and, at worst, a stray file that
//! the next start removes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use tokengate_proto::cache as pc;
use tokengate_proto::snapshot as ps;
use tokengate_proto::snapshot::record::Item;

use super::state::{CacheState, RefreshLease};
use crate::cacheclient::convert::{key_from, sealed_from, sealed_to};

/// The file format's version.
pub const FORMAT: u32 = 1;
/// Largest record accepted when reading: one entry (bounded far below this when stored, see
/// [`super::bounds::MAX_ENTRY_BYTES`]) or the header.
pub const MAX_RECORD_BYTES: u32 = 1 << 20;
/// Bytes of snapshot data per streamed chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot a follower accepts: 100,000 entries with 900-byte tokens are about 150 MB.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// A snapshot file, open for reading: published (the node's current snapshot or an older one
/// still being sent), or received and not yet installed (removed if dropped before).
#[derive(Debug)]
pub struct SnapshotFile {
    /// The open file; reading it is unaffected by the file being replaced or removed meanwhile.
    pub file: File,
    /// The file's length in bytes.
    pub len: u64,
    /// Set while the file is a received one not yet published: dropping it removes the file.
    pending: Option<tempfile::TempPath>,
}

impl SnapshotFile {
    /// A received file, to be installed (published) or dropped.
    pub fn pending(file: File, path: tempfile::TempPath) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            pending: Some(path),
        })
    }
}

/// Why a snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading failed.
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a snapshot of this format.
    #[error("snapshot malformed: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(what.into())
}

/// Writes `state` to `out`, a record at a time; returns the bytes written.
pub fn write(state: &CacheState, out: impl Write) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut written = 0u64;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut record = |item: Item, out: &mut BufWriter<_>| -> io::Result<()> {
        buf.clear();
        ps::Record { item: Some(item) }
            .encode(&mut buf)
            .expect("a Vec grows as needed");
        let len = u32::try_from(buf.len()).map_err(io::Error::other)?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(&buf)?;
        written += 4 + u64::from(len);
        Ok(())
    };
    let header = ps::Header {
        format: FORMAT,
        entries: state.entries.len() as u64,
        claims: state.claims.len() as u64,
        max_fence: state.max_fence,
        refresh_lease: state.refresh_lease.as_ref().map(|l| ps::RefreshLease {
            holder: l.holder.clone(),
            until: l.until,
            fence: l.fence,
        }),
        swept_at: state.swept_at,
    };
    record(Item::Header(header), &mut out)?;
    for (key, entry) in &state.entries {
        let listed = pc::ListedEntry {
            key: key.as_bytes().to_vec(),
            entry: Some(sealed_to(entry)),
        };
        record(Item::Entry(listed), &mut out)?;
    }
    for (key, until) in &state.claims {
        let claim = ps::Claim {
            key: key.as_bytes().to_vec(),
            until: *until,
        };
        record(Item::Claim(claim), &mut out)?;
    }
    out.flush()?;
    Ok(written)
}

/// Reads a state written by [`write()`]. Every record is bounded and checked: the bytes may
/// come from a peer.
pub fn read(input: impl Read) -> Result<CacheState, SnapshotError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut buf = Vec::new();
    let mut next = |input: &mut BufReader<_>| -> Result<Option<Item>, SnapshotError> {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len);
        if len > MAX_RECORD_BYTES {
            return Err(malformed(format!(
                "a record of {len} bytes; at most {MAX_RECORD_BYTES}"
            )));
        }
        buf.resize(len as usize, 0);
        input.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => malformed("truncated record"),
            _ => e.into(),
        })?;
        let record = ps::Record::decode(buf.as_slice()).map_err(|e| malformed(e.to_string()))?;
        record
            .item
            .map(Some)
            .ok_or_else(|| malformed("empty record"))
    };
    let Some(Item::Header(header)) = next(&mut input)? else {
        return Err(malformed("no header"));
    };
    if header.format != FORMAT {
        return Err(malformed(format!(
            "format {}; expected {FORMAT}",
            header.format
        )));
    }
    let mut state = CacheState {
        max_fence: header.max_fence,
        refresh_lease: header.refresh_lease.map(|l| RefreshLease {
            holder: l.holder,
            until: l.until,
            fence: l.fence,
        }),
        swept_at: header.swept_at,
        ..CacheState::default()
    };
    while let Some(item) = next(&mut input)? {
        match item {
            Item::Entry(e) => {
                let key = key_from(&e.key).map_err(|s| malformed(s.message()))?;
                let entry = sealed_from(e.entry).map_err(|s| malformed(s.message()))?;
                state.entries.insert(key, std::sync::Arc::new(entry));
            }
            Item::Claim(c) => {
                let key = key_from(&c.key).map_err(|s| malformed(s.message()))?;
                state.claims.insert(key, c.until);
            }
            Item::Header(_) => return Err(malformed("a second header")),
        }
    }
    if state.entries.len() as u64 != header.entries || state.claims.len() as u64 != header.claims {
        return Err(malformed(format!(
            "the header announces {} entries and {} claims; the file holds {} and {}",
            header.entries,
            header.claims,
            state.entries.len(),
            state.claims.len()
        )));
    }
    Ok(state)
}

/// The directory of a node's snapshot files.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
    publishing: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Snapshots {
    /// Opens (creating) `dir`.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            publishing: std::sync::Arc::default(),
        })
    }

    /// Held while a snapshot is published and made current, so that a snapshot being built and
    /// one being installed never remove each other's file.
    pub fn exclusive(&self) -> std::sync::MutexGuard<'_, ()> {
        self.publishing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the published file `name`.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    /// A new temporary file in the directory (removed unless published).
    pub fn temporary(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("incoming-")
            .suffix(".part")
            .tempfile_in(&self.dir)
    }

    /// The path of the published file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `state` to a new file and publishes it as `name`; the file, open for reading.
    pub fn create(&self, name: &str, state: &CacheState) -> io::Result<SnapshotFile> {
        let tmp = self.temporary()?;
        write(state, tmp.as_file())?;
        let (file, path) = tmp.into_parts();
        let mut published = SnapshotFile::pending(file, path)?;
        self.publish(&mut published, name)?;
        Ok(published)
    }

    /// Makes a pending file durable under `name`: synced, renamed into place, the directory
    /// synced. The file stays open for reading, from its start.
    pub fn publish(&self, snapshot: &mut SnapshotFile, name: &str) -> io::Result<()> {
        use std::io::Seek;
        snapshot.file.sync_all()?;
        if let Some(pending) = snapshot.pending.take() {
            pending
                .persist(self.path(name))
                .map_err(|e| io::Error::other(e.error))?;
        }
        File::open(&self.dir)?.sync_all()?;
        snapshot.file.rewind()?;
        Ok(())
    }

    /// Opens the published file `name`.
    pub fn open_file(&self, name: &str) -> io::Result<SnapshotFile> {
        let file = File::open(self.path(name))?;
        let len = file.metadata()?.len();
        Ok(SnapshotFile {
            file,
            len,
            pending: None,
        })
    }

    /// Removes every file in the directory but `keep` (older snapshots, and temporary files a
    /// crash left behind). Files still open for sending stay readable until closed.
    pub fn remove_all_but(&self, keep: Option<&str>) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for item in dir.flatten() {
            let name = item.file_name();
            if keep.is_some_and(|k| name == k) {
                continue;
            }
            if let Err(e) = std::fs::remove_file(item.path()) {
                tracing::warn!(file = %item.path().display(), error = %e, "cannot remove an old snapshot file");
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cachenode::state::{Command, Stamped};
    use crate::store::conformance::entry;
    use crate::token::TokenKey;

    fn state_with(n: u32) -> CacheState {
        let mut s = CacheState::default();
        let now = entry(1, 0, 0).meta.issued_at;
        let mut changes = Vec::new();
        let lease = Command::AcquireRefreshLease {
            holder: "a".into(),
            ttl_ms: 60_000,
        };
        s.apply(
            1,
            Stamped {
                now,
                command: lease,
                trace: None,
            },
            &mut changes,
        );
        for i in 0..n {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            let put = Command::Put {
                key: TokenKey::from_bytes(k),
                entry: Box::new(entry(1, 60_000, 120_000)),
                fence: None,
            };
            s.apply(
                2,
                Stamped {
                    now,
                    command: put,
                    trace: None,
                },
                &mut changes,
            );
            s.apply(
                3,
                Stamped {
                    now,
                    command: Command::ClaimOnce {
                        key: TokenKey::from_bytes([i as u8; 32]),
                        until: now + 60_000,
                    },
                    trace: None,
                },
                &mut changes,
            );
        }
        s
    }

    #[test]
    fn a_state_round_trips_through_its_file() {
        let s = state_with(300);
        let mut bytes = Vec::new();
        let n = write(&s, &mut bytes).unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(read(bytes.as_slice()).unwrap(), s);
    }

    #[test]
    fn a_truncated_or_corrupted_file_is_refused() {
        let s = state_with(20);
        let mut bytes = Vec::new();
        write(&s, &mut bytes).unwrap();
        // Cut inside a record, and cut at a record boundary (the count gives it away).
        assert!(read(&bytes[..bytes.len() - 3]).is_err());
        let mut at_boundary = bytes.clone();
        let last_len = {
            // Walk the records to find the last one's start.
            let mut at = 0;
            let mut last = 0;
            while at < bytes.len() {
                last = at;
                at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            }
            last
        };
        at_boundary.truncate(last_len);
        assert!(matches!(
            read(at_boundary.as_slice()),
            Err(SnapshotError::Malformed(m)) if m.contains("announces")
        ));
        // A length beyond the bound is refused before anything is allocated for it.
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            matches!(read(huge.as_slice()), Err(SnapshotError::Malformed(m)) if m.contains("at most"))
        );
        assert!(read(&b""[..]).is_err(), "no header");
    }

    #[test]
    fn a_published_file_replaces_the_previous_and_strays_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path().join("snapshots")).unwrap();
        let first = snaps.create("a.snap", &state_with(3)).unwrap();
        let stray = snaps.temporary().unwrap().into_temp_path().keep().unwrap();
        let second = snaps.create("b.snap", &state_with(5)).unwrap();
        snaps.remove_all_but(Some("b.snap"));
        assert!(!stray.exists());
        assert!(!snaps.path("a.snap").exists());
        // The removed file stays readable through a handle opened before (a transfer in flight).
        assert_eq!(read(&first.file).unwrap().entries.len(), 3);
        assert_eq!(read(&second.file).unwrap().entries.len(), 5);
        assert_eq!(
            read(&snaps.open_file("b.snap").unwrap().file)
                .unwrap()
                .entries
                .len(),
            5
        );
    }
}
