//! A user's sieve scripts: versions, the active script, and deleted markers (seed item c).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::merge::{merge_option, Lww, Merge};
use crate::version::Version;

/// A script's content, or `None` for a deleted marker that keeps an older edit from reviving it.
pub type ScriptContent = Option<ByteBuf>;

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct UserSieve {
    pub scripts: BTreeMap<String, Lww<ScriptContent>>,
    /// The active script's name (`None`: no script active). One register per user, so two nodes
    /// activating different scripts concurrently still end with exactly one active.
    pub active: Option<Lww<Option<String>>>,
}

impl UserSieve {
    pub fn put(&mut self, name: &str, content: Vec<u8>, version: Version) {
        self.write(name, Some(ByteBuf::from(content)), version);
    }

    pub fn delete(&mut self, name: &str, version: Version) {
        self.write(name, None, version);
    }

    fn write(&mut self, name: &str, content: ScriptContent, version: Version) {
        match self.scripts.get_mut(name) {
            Some(state) => {
                state.set(content, version);
            }
            None => {
                self.scripts.insert(name.to_string(), Lww::new(content, version));
            }
        }
    }

    pub fn set_active(&mut self, name: Option<String>, version: Version) {
        match &mut self.active {
            Some(active) => {
                active.set(name, version);
            }
            None => self.active = Some(Lww::new(name, version)),
        }
    }

    /// A script that exists (not a deleted marker).
    pub fn script(&self, name: &str) -> Option<&[u8]> {
        self.scripts
            .get(name)
            .and_then(|s| s.value.as_ref())
            .map(|b| b.as_slice())
    }

    /// The active script, if it names a script that exists. A script deleted concurrently with its
    /// activation leaves the user with no active script, never a dangling one.
    pub fn active_script(&self) -> Option<&str> {
        let name = self.active.as_ref()?.value.as_deref()?;
        self.script(name).map(|_| name)
    }

    /// Names of existing scripts, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.scripts
            .iter()
            .filter(|(_, s)| s.value.is_some())
            .map(|(n, _)| n.as_str())
    }
}

impl Merge for UserSieve {
    fn merge(&self, other: &Self) -> Self {
        let mut scripts = self.scripts.clone();
        for (name, theirs) in &other.scripts {
            scripts
                .entry(name.clone())
                .and_modify(|ours| *ours = ours.merge(theirs))
                .or_insert_with(|| theirs.clone());
        }
        UserSieve {
            scripts,
            active: merge_option(&self.active, &other.active),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::version_at;

    fn v(counter: u64) -> Version {
        version_at(counter, "n1")
    }

    #[test]
    fn a_deleted_script_leaves_a_marker_and_no_active_script() {
        let mut s = UserSieve::default();
        s.put("vacation", b"keep;".to_vec(), v(1));
        s.put("spam", b"discard;".to_vec(), v(2));
        s.set_active(Some("vacation".into()), v(3));
        assert_eq!(s.active_script(), Some("vacation"));
        assert_eq!(s.names().collect::<Vec<_>>(), ["spam", "vacation"]);

        s.delete("vacation", v(4));
        assert_eq!(s.script("vacation"), None);
        assert!(s.scripts.contains_key("vacation"), "the deleted marker stays");
        assert_eq!(
            s.active_script(),
            None,
            "an active name with no script is no active script"
        );
        assert_eq!(s.names().collect::<Vec<_>>(), ["spam"]);

        // An older edit does not revive it; a newer one does.
        s.put("vacation", b"old;".to_vec(), v(2));
        assert_eq!(s.script("vacation"), None);
        s.put("vacation", b"new;".to_vec(), v(5));
        assert_eq!(s.script("vacation"), Some(&b"new;"[..]));

        s.set_active(Some("spam".into()), v(6));
        assert_eq!(s.active_script(), Some("spam"));
        s.set_active(None, v(7));
        assert_eq!(s.active_script(), None);
        s.set_active(Some("vacation".into()), v(6));
        assert_eq!(
            s.active_script(),
            None,
            "an older activation loses to the later none"
        );
    }
}
