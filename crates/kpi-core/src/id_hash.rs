//! 128-bit digests of event ids: what the aggregator's duplicate window and ingest's recent-id table hold, and what names a stored batch.

use std::hash::{BuildHasherDefault, Hasher};

use sha2::{Digest, Sha256};

/// For hash sets and maps keyed by [`event_id_hash`] values: those are
/// SHA-256 prefixes already, so hashing them again is wasted work.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// Takes a key's low 64 bits as its hash (see [`IdBuildHasher`]).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// The first 128 bits of SHA-256 of an `event_id`. A cryptographic hash, so
/// no publisher can craft an id that collides with another's and have it
/// counted as a duplicate; 128 bits, so an accidental collision among the
/// ids of a window is practically impossible.
pub fn event_id_hash(event_id: &str) -> u128 {
    let digest = Sha256::digest(event_id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// A message id for a batch of events: hex of the first 128 bits of SHA-256
/// over the ids, each length-prefixed so that ("ab","c") and ("a","bc")
/// differ. The same chunk sent again gets the same id, so JetStream stores an
/// exact retry once.
pub fn batch_id<'a>(event_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for id in event_ids {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_tell_ids_apart() {
        assert_eq!(event_id_hash("a-1"), event_id_hash("a-1"));
        assert_ne!(event_id_hash("a-1"), event_id_hash("a-2"));
        assert_eq!(batch_id(["ab", "c"]), batch_id(["ab", "c"]));
        assert_ne!(batch_id(["ab", "c"]), batch_id(["a", "bc"]));
        assert_eq!(batch_id(["x"]).len(), 32);
    }
}
