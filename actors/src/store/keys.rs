//! Storage keys. Fixed-width big-endian numbers after a fixed-width mailbox id, so that byte order
//! is numeric order and a prefix scan returns one mailbox's rows sorted.

use mailmesh_protocol::ids::{AppendId, MailboxId, ModSeq, Uid};

pub fn mailbox(id: MailboxId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

pub fn message(id: MailboxId, append: &AppendId) -> Vec<u8> {
    let mut k = mailbox(id);
    k.extend_from_slice(&append.to_key_bytes());
    k
}

/// The uid index key; `uid_prefix` of the same uid is its prefix.
pub fn uid(id: MailboxId, uid: Uid, append: &AppendId) -> Vec<u8> {
    let mut k = uid_prefix(id, uid);
    k.extend_from_slice(&append.to_key_bytes());
    k
}

pub fn uid_prefix(id: MailboxId, uid: Uid) -> Vec<u8> {
    let mut k = mailbox(id);
    k.extend_from_slice(&uid.0.to_be_bytes());
    k
}

/// Splits a uid index key into its uid and AppendId.
pub fn parse_uid(key: &[u8]) -> Option<(Uid, AppendId)> {
    let uid = u32::from_be_bytes(key.get(16..20)?.try_into().ok()?);
    Some((Uid(uid), AppendId::from_key_bytes(key.get(20..)?)?))
}

pub fn modseq(id: MailboxId, modseq: ModSeq) -> Vec<u8> {
    let mut k = mailbox(id);
    k.extend_from_slice(&modseq.0.to_be_bytes());
    k
}

pub fn parse_modseq(key: &[u8]) -> Option<ModSeq> {
    Some(ModSeq(u64::from_be_bytes(key.get(16..24)?.try_into().ok()?)))
}

pub fn annotation(id: MailboxId, entry: &str) -> Vec<u8> {
    let mut k = mailbox(id);
    k.extend_from_slice(entry.as_bytes());
    k
}

/// Prefix of every name row of `user`. User names cannot contain a zero byte, so no user's
/// prefix is another's.
pub fn user_names(user: &str) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(0);
    k
}

pub fn name(user: &str, name: &str, id: MailboxId) -> Vec<u8> {
    let mut k = name_prefix(user, name);
    k.extend_from_slice(&id.to_bytes());
    k
}

pub fn name_prefix(user: &str, name: &str) -> Vec<u8> {
    let mut k = user_names(user);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// The mailbox id at the end of a name row key.
pub fn parse_name_id(key: &[u8]) -> Option<MailboxId> {
    let tail: [u8; 16] = key.get(key.len().checked_sub(16)?..)?.try_into().ok()?;
    Some(MailboxId::from_bytes(tail))
}

/// A row of the per-user entry index; `user_names(user)` is its prefix.
pub fn user_entry(user: &str, id: MailboxId) -> Vec<u8> {
    let mut k = user_names(user);
    k.extend_from_slice(&id.to_bytes());
    k
}

pub fn user(user: &str) -> Vec<u8> {
    user.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailmesh_protocol::ids::NodeId;

    #[test]
    fn uid_keys_sort_numerically_and_parse_back() {
        let a = AppendId {
            origin: NodeId::new("n").unwrap(),
            counter: 9,
        };
        let k1 = uid(MailboxId(1), Uid(2), &a);
        let k2 = uid(MailboxId(1), Uid(256), &a);
        assert!(k1 < k2);
        assert_eq!(parse_uid(&k2), Some((Uid(256), a)));
        assert!(modseq(MailboxId(1), ModSeq(5)) < modseq(MailboxId(1), ModSeq(70000)));
        assert_eq!(
            parse_name_id(&name("u", "INBOX", MailboxId(77))),
            Some(MailboxId(77))
        );
    }
}
