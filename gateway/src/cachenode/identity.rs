//! A node's id belongs to its disk.
//!
//! Raft's safety rests on a voter remembering what it acknowledged and whom it voted for. A
//! node that comes back under its old id with an empty disk has forgotten both: it may vote
//! twice in one term, and an entry it helped commit may be left on a minority. So:
//!
//! - the data directory records the id it was created under (`node-id`), and a start under
//!   another id is refused: a disk cannot change hands;
//! - a node that starts with an empty data directory and `--init` first asks the other initial
//!   members whether the cluster already has entries replicated to this id; if the leader says
//!   so, the node lost its disk and is refused. It must come back under a new id (the runbook
//!   "A cache node lost its disk"). The leader knows this while it leads: a disk lost during a
//!   leader change, or while no member answers, goes unnoticed, which the runbook covers.

use std::path::Path;
use std::time::Duration;

use tokengate_proto::admin as pa;
use tokengate_proto::admin::admin_client::AdminClient;

use crate::cacheclient::Dialer;
use crate::secret::Secret;

/// The file in the data directory that names its node.
const FILE: &str = "node-id";
/// How long the check waits for each member's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Records `id` in `dir`, or checks that `dir` was created under it.
pub fn claim(dir: &Path, id: u64) -> Result<(), String> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: u64 = text
                .trim()
                .parse()
                .map_err(|_| format!("{} does not hold a node id", path.display()))?;
            if recorded == id {
                Ok(())
            } else {
                Err(format!(
                    "it belongs to node {recorded}, not {id}: a node keeps its id for the life of \
                     its disk, and a new id starts with an empty directory"
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let write = || {
                let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
                std::io::Write::write_all(&mut tmp, format!("{id}\n").as_bytes())?;
                tmp.as_file().sync_all()?;
                tmp.persist(&path).map_err(|e| e.error)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| format!("cannot record the node id: {e}"))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// With an empty data directory: refuses (`Err`, saying why) when a member of `members` leads
/// a cluster that has replicated entries to `id`.
pub async fn check_not_forgotten(
    id: u64,
    members: impl IntoIterator<Item = &String>,
    token: Option<&Secret>,
    dialer: &Dialer,
) -> Result<(), String> {
    let bearer = crate::cacheclient::bearer(token);
    for addr in members {
        let Ok(channel) = dialer.channel(addr) else {
            continue;
        };
        let mut req = tonic::Request::new(pa::StatusRequest {});
        req.set_timeout(ASK_TIMEOUT);
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        let mut client = AdminClient::new(channel);
        let call = client.status(req);
        let Ok(Ok(status)) = tokio::time::timeout(ASK_TIMEOUT, call).await else {
            continue;
        };
        let status = status.into_inner();
        if status.state != "leader" {
            continue;
        }
        if let Some(index) = status
            .members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.matched_index)
        {
            return Err(format!(
                "it is empty, but the leader (node {}) has replicated entries up \
                 to {index} to node {id}: this node lost its disk. Start it under a new id and \
                 replace {id} with it (docs/runbooks.md, \"A cache node lost its disk\")",
                status.id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_keeps_the_id_it_was_created_under() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), 2).unwrap();
        claim(dir.path(), 2).unwrap();
        let refused = claim(dir.path(), 5).unwrap_err();
        assert!(refused.contains("belongs to node 2, not 5"), "{refused}");
        std::fs::write(dir.path().join(FILE), "two").unwrap();
        assert!(claim(dir.path(), 2).unwrap_err().contains("does not hold"));
    }
}
