//! Read-modify-write of a cluster member's config (`node label`, `node drain`, `node
//! restore`), guarded by the member's ETag (`If-Match`), retried when someone else changed it
//! in between, then read back (see [`Check`]), so concurrent edits of other keys are not lost.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ic_incus::Client;

/// Attempts of a read-modify-write before giving up on a member others keep changing.
pub const ATTEMPTS: u32 = 20;

/// How long a written change must stay before it is trusted (see [`Check`]).
const SETTLE: Duration = Duration::from_millis(200);

/// Verification of a read-modify-write. Incus 6.0 checks `If-Match` before, not inside, the
/// transaction that writes, so two writes arriving together can both pass and the later one
/// drops the other's keys (seen with six concurrent `node label` runs on one member). So after
/// writing, read again until the changes are there, and once more after [`SETTLE`], and write
/// again when they were lost.
#[derive(Default)]
pub struct Check {
    wrote: bool,
    seen_once: bool,
}

impl Check {
    pub fn wrote(&mut self) {
        self.wrote = true;
        self.seen_once = false;
    }

    /// Given whether the state just read still needs a write: whether we are done (after a
    /// pause when it is the first time a written change is seen in place).
    pub async fn done(&mut self, needed: bool) -> bool {
        if needed {
            self.seen_once = false;
            return false;
        }
        if !self.wrote || self.seen_once {
            return true;
        }
        self.seen_once = true;
        tokio::time::sleep(SETTLE).await;
        false
    }
}

/// Applies `edit` to member `member`'s config until it holds (`edit` returns whether it
/// changed anything: it must be idempotent); returns the config then.
pub async fn edit_member(
    base: &Client,
    member: &str,
    edit: impl Fn(&mut BTreeMap<String, String>) -> bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut check = Check::default();
    for _ in 0..ATTEMPTS {
        let (m, etag) = match base.cluster_member_with_etag(member).await {
            Ok(x) => x,
            Err(e) if e.is_not_found() => {
                let names: Vec<String> = base
                    .cluster_members()
                    .await
                    .map(|ms| ms.into_iter().map(|m| m.server_name).collect())
                    .unwrap_or_default();
                bail!(
                    "no cluster member {member:?} (members: {}); see `incus-compose node ls`",
                    names.join(", ")
                );
            }
            Err(e) => return Err(e).context(format!("cannot read cluster member {member:?}")),
        };
        let mut put = m.writable();
        let needed = edit(&mut put.config);
        if check.done(needed).await {
            return Ok(put.config);
        }
        if !needed {
            continue;
        }
        match base
            .update_cluster_member_if_match(member, &put, etag)
            .await
        {
            Ok(()) => check.wrote(),
            // Someone changed the member since we read it: read again.
            Err(e) if e.status() == Some(412) => continue,
            Err(e) => return Err(e).context(format!("cannot update cluster member {member:?}")),
        }
    }
    bail!("cluster member {member:?} kept changing under us ({ATTEMPTS} attempts); try again")
}
