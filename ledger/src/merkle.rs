//! RFC 9162 (Certificate Transparency v2) Merkle tree over entry hashes.
//!
//! The leaves are the entries' chain hashes in sequence order (leaf `i` is entry `seq = i + 1`).
//! `leaf = SHA-256(0x00 ‖ entry_hash)`, `node = SHA-256(0x01 ‖ left ‖ right)`, and a tree of `n`
//! leaves splits at `k`, the largest power of two smaller than `n` (RFC 9162 §2.1.1). The empty
//! tree's root is `SHA-256("")`.

use sha2::{Digest, Sha256};

use crate::entry::Hash;

/// Deepest tree we handle: a tree of `u64` leaves has at most 64 levels, so a proof has at most
/// 64 hashes and a frontier at most 64 subtree roots.
pub const PROOF_HASHES_MAX: usize = 64;

/// `SHA-256(0x00 ‖ entry_hash)`.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Root over the given leaf hashes (already passed through [`leaf_hash`]).
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Merkle tree head over entry hashes.
pub fn root(entry_hashes: &[Hash]) -> Hash {
    let leaves: Vec<Hash> = entry_hashes.iter().map(leaf_hash).collect();
    mth(&leaves)
}

/// Inclusion proof (audit path) for leaf `index` in the tree over `entry_hashes`
/// (RFC 9162 §2.1.3.1). Returns `None` if `index` is out of range.
pub fn inclusion_proof(entry_hashes: &[Hash], index: u64) -> Option<Vec<Hash>> {
    if index >= entry_hashes.len() as u64 {
        return None;
    }
    let leaves: Vec<Hash> = entry_hashes.iter().map(leaf_hash).collect();
    let mut path = Vec::new();
    inclusion_path(index as usize, &leaves, &mut path);
    Some(path)
}

fn inclusion_path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n as u64) as usize;
    if m < k {
        inclusion_path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        inclusion_path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2) of the entry with chain hash `entry_hash` at
/// leaf `index` in a tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    entry_hash: &Hash,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size || path.len() > PROOF_HASHES_MAX {
        return false;
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = leaf_hash(entry_hash);
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Consistency proof between the tree of the first `m` entries and the tree of all
/// `entry_hashes` (RFC 9162 §2.1.4.1). Returns `None` if `m` exceeds the tree size.
/// For `m == 0` or `m == n` the proof is empty.
pub fn consistency_proof(entry_hashes: &[Hash], m: u64) -> Option<Vec<Hash>> {
    let n = entry_hashes.len() as u64;
    if m > n {
        return None;
    }
    if m == 0 || m == n {
        return Some(Vec::new());
    }
    let leaves: Vec<Hash> = entry_hashes.iter().map(leaf_hash).collect();
    let mut out = Vec::new();
    subproof(m as usize, &leaves, true, &mut out);
    Some(out)
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(mth(leaves));
        }
        return;
    }
    let k = split(n as u64) as usize;
    if m <= k {
        subproof(m, &leaves[..k], whole, out);
        out.push(mth(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(mth(&leaves[..k]));
    }
}

/// Verifies that the tree of size `m` with root `root_m` is a prefix of the tree of size `n`
/// with root `root_n` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, root_m: &Hash, root_n: &Hash, proof: &[Hash]) -> bool {
    if m > n || proof.len() > PROOF_HASHES_MAX {
        return false;
    }
    if m == n {
        return proof.is_empty() && root_m == root_n;
    }
    if m == 0 {
        // Every tree extends the empty tree.
        return proof.is_empty() && *root_m == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*root_m);
    }
    path.extend_from_slice(proof);
    let mut f_n = m - 1;
    let mut s_n = n - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *root_m && sr == *root_n && s_n == 0
}

/// The right edge of a tree being built left to right: the roots of the perfect subtrees that
/// make up the first `size` leaves, largest first (one per set bit of `size`). Appending a leaf
/// and computing the root are O(log n), so the writer never re-reads old entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Number of leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the entry with chain hash `entry_hash`.
    pub fn push(&mut self, entry_hash: &Hash) {
        let mut h = leaf_hash(entry_hash);
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.peaks.pop().expect("a set bit has a peak");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
        debug_assert_eq!(self.peaks.len() as u32, self.size.count_ones());
    }

    /// The Merkle tree head of the leaves so far.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Serialises as the concatenated peaks (the size is stored beside it).
    pub fn peaks_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    /// Rebuilds a frontier from its size and [`Frontier::peaks_bytes`]. Returns `None` if the
    /// byte length does not match the number of set bits of `size`.
    pub fn from_parts(size: u64, peaks: &[u8]) -> Option<Self> {
        if peaks.len() != size.count_ones() as usize * 32 {
            return None;
        }
        let peaks = peaks
            .chunks_exact(32)
            .map(|c| <Hash>::try_from(c).expect("chunks of 32"))
            .collect();
        Some(Frontier { size, peaks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(i: u8) -> Hash {
        [i; 32]
    }

    fn hashes(n: usize) -> Vec<Hash> {
        (0..n).map(|i| h(i as u8)).collect()
    }

    #[test]
    fn small_trees_match_hand_built_roots() {
        let (l0, l1, l2) = (leaf_hash(&h(0)), leaf_hash(&h(1)), leaf_hash(&h(2)));
        assert_eq!(root(&[]), empty_root());
        assert_eq!(root(&hashes(1)), l0);
        assert_eq!(root(&hashes(2)), node_hash(&l0, &l1));
        // n = 3 splits at k = 2: ((0 1) 2)
        assert_eq!(root(&hashes(3)), node_hash(&node_hash(&l0, &l1), &l2));
        // n = 5 splits at 4: (((0 1)(2 3)) 4)
        let l: Vec<Hash> = hashes(5).iter().map(leaf_hash).collect();
        let four = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        assert_eq!(root(&hashes(5)), node_hash(&four, &l[4]));
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn inclusion_path_for_leaf_2_of_5_is_hand_built() {
        // Tree (((0 1)(2 3)) 4): path of leaf 2 is [l3, (0 1), l4].
        let l: Vec<Hash> = hashes(5).iter().map(leaf_hash).collect();
        let p = inclusion_proof(&hashes(5), 2).unwrap();
        assert_eq!(p, vec![l[3], node_hash(&l[0], &l[1]), l[4]]);
        assert!(verify_inclusion(2, 5, &h(2), &p, &root(&hashes(5))));
        assert!(!verify_inclusion(3, 5, &h(2), &p, &root(&hashes(5))));
    }

    #[test]
    fn consistency_3_to_7_matches_rfc_example_shape() {
        // RFC 9162 §2.1.5: proof(3, D[7]) = [c, d, g, l] = [l2, l3, (0 1), ((4 5) 6)].
        let l: Vec<Hash> = hashes(7).iter().map(leaf_hash).collect();
        let p = consistency_proof(&hashes(7), 3).unwrap();
        let right = node_hash(&node_hash(&l[4], &l[5]), &l[6]);
        assert_eq!(p, vec![l[2], l[3], node_hash(&l[0], &l[1]), right]);
        assert!(verify_consistency(
            3,
            7,
            &root(&hashes(3)),
            &root(&hashes(7)),
            &p
        ));
        // proof(4, D[7]) = [(4 5) 6] with the old root prepended by the verifier.
        let p4 = consistency_proof(&hashes(7), 4).unwrap();
        assert_eq!(p4, vec![right]);
        assert!(verify_consistency(
            4,
            7,
            &root(&hashes(4)),
            &root(&hashes(7)),
            &p4
        ));
    }

    #[test]
    fn frontier_round_trips_through_bytes() {
        let mut f = Frontier::new();
        for x in hashes(13) {
            f.push(&x);
        }
        let g = Frontier::from_parts(13, &f.peaks_bytes()).unwrap();
        assert_eq!(f, g);
        assert!(Frontier::from_parts(12, &f.peaks_bytes()).is_none());
    }

    proptest! {
        #[test]
        fn frontier_root_equals_recursive_root(n in 0usize..300) {
            let hs = hashes(n);
            let mut f = Frontier::new();
            for x in &hs { f.push(x); }
            prop_assert_eq!(f.root(), root(&hs));
        }

        #[test]
        fn inclusion_proofs_verify_and_fail_when_tampered(
            n in 1usize..200, idx in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let hs = hashes(n);
            let i = idx.index(n) as u64;
            let r = root(&hs);
            let p = inclusion_proof(&hs, i).unwrap();
            prop_assert!(verify_inclusion(i, n as u64, &hs[i as usize], &p, &r));
            // Wrong leaf data.
            let mut other = hs[i as usize];
            other[0] ^= 0x80;
            prop_assert!(!verify_inclusion(i, n as u64, &other, &p, &r));
            // A flipped bit anywhere in the path.
            if !p.is_empty() {
                let mut bad = p.clone();
                let j = flip.index(bad.len());
                bad[j][0] ^= 1 << bit;
                prop_assert!(!verify_inclusion(i, n as u64, &hs[i as usize], &bad, &r));
                // A truncated path.
                prop_assert!(!verify_inclusion(i, n as u64, &hs[i as usize], &p[..p.len() - 1], &r));
            }
        }

        #[test]
        fn consistency_proofs_verify_and_fail_when_tampered(
            n in 1usize..200, m_ix in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let hs = hashes(n);
            let m = m_ix.index(n + 1);
            let (rm, rn) = (root(&hs[..m]), root(&hs));
            let p = consistency_proof(&hs, m as u64).unwrap();
            prop_assert!(verify_consistency(m as u64, n as u64, &rm, &rn, &p));
            if !p.is_empty() {
                let mut bad = p.clone();
                let j = flip.index(bad.len());
                bad[j][0] ^= 1 << bit;
                prop_assert!(!verify_consistency(m as u64, n as u64, &rm, &rn, &bad));
            }
            if 0 < m && m < n {
                // A rewritten prefix: the old root no longer matches.
                let mut rewritten = hs.clone();
                rewritten[m - 1][5] ^= 1;
                let rn2 = root(&rewritten);
                prop_assert!(!verify_consistency(m as u64, n as u64, &rm, &rn2, &p));
                let p2 = consistency_proof(&rewritten, m as u64).unwrap();
                prop_assert!(!verify_consistency(m as u64, n as u64, &rm, &rn2, &p2));
            }
        }
    }
}
