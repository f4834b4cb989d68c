//! A set of uids given as inclusive ranges, as IMAP writes them (`1:5,9,20:*`).

use mailmesh_protocol::ids::Uid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UidSet(Vec<(u32, u32)>);

impl UidSet {
    /// Every uid (`1:*`).
    pub fn all() -> Self {
        UidSet(vec![(1, u32::MAX)])
    }

    pub fn single(uid: Uid) -> Self {
        UidSet(vec![(uid.0, uid.0)])
    }

    /// `first:last`, in either order as IMAP allows.
    pub fn range(first: Uid, last: Uid) -> Self {
        UidSet(vec![(first.0.min(last.0), first.0.max(last.0))])
    }

    pub fn from_uids(uids: impl IntoIterator<Item = Uid>) -> Self {
        let mut v: Vec<u32> = uids.into_iter().map(|u| u.0).collect();
        v.sort_unstable();
        v.dedup();
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for u in v {
            match ranges.last_mut() {
                Some((_, hi)) if *hi + 1 == u => *hi = u,
                _ => ranges.push((u, u)),
            }
        }
        UidSet(ranges)
    }

    /// The set of `uids` given ascending (a session's sequence map, or a chunk of it): its runs
    /// made in one pass, with no copy to sort. A chunk of a map is mostly one run or a few, so
    /// this is the uids' length in comparisons and a few ranges, where [`UidSet::from_uids`]
    /// collected, sorted and deduplicated 4,096 uids for each `FetchFlags`. Uids out of order
    /// are taken as `from_uids` takes them.
    pub fn from_ascending(uids: &[u32]) -> Self {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for &u in uids {
            match ranges.last_mut() {
                Some((_, hi)) if hi.checked_add(1) == Some(u) => *hi = u,
                Some((_, hi)) if *hi >= u => return UidSet::from_uids(uids.iter().map(|&u| Uid(u))),
                _ => ranges.push((u, u)),
            }
        }
        UidSet(ranges)
    }

    pub fn contains(&self, uid: Uid) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= uid.0 && uid.0 <= hi)
    }

    /// The ranges, merged and sorted, so a scan visits each uid once.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut r = self.0.clone();
        r.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::new();
        for (lo, hi) in r {
            match out.last_mut() {
                Some((_, prev_hi)) if lo <= prev_hi.saturating_add(1) => *prev_hi = (*prev_hi).max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let s = UidSet::from_uids([Uid(5), Uid(1), Uid(2), Uid(3), Uid(9)]);
        assert_eq!(s.ranges(), vec![(1, 3), (5, 5), (9, 9)]);
        assert!(s.contains(Uid(2)) && !s.contains(Uid(4)));
        assert_eq!(UidSet::range(Uid(7), Uid(3)).ranges(), vec![(3, 7)]);
    }

    /// Runs of ascending uids are the set `from_uids` makes of them; uids out of order or
    /// repeated are taken as `from_uids` takes them.
    #[test]
    fn ascending_uids_make_their_runs() {
        let cases: [&[u32]; 8] = [
            &[],
            &[7],
            &[1, 2, 3, 4],
            &[1, 2, 3, 7, 9, 10],
            &[4_294_967_294, 4_294_967_295],
            &[1, 3, 2],
            &[1, 2, 2, 3],
            &[5, 1, 9],
        ];
        for uids in cases {
            let expected = UidSet::from_uids(uids.iter().map(|&u| Uid(u)));
            assert_eq!(UidSet::from_ascending(uids), expected, "{uids:?}");
        }
        assert_eq!(
            UidSet::from_ascending(&[1, 2, 3, 7, 9, 10]).0,
            vec![(1, 3), (7, 7), (9, 10)]
        );
        let chunk: Vec<u32> = (1..=4096).collect();
        assert_eq!(UidSet::from_ascending(&chunk).0, vec![(1, 4096)]);
    }
}
