//! Stable assignment of KPI codes to aggregator partitions.

use crate::code::KpiCode;

/// FNV-1a of the code, modulo `partitions`. Stable across processes, builds and
/// platforms (unlike `std`'s randomly seeded hasher), because ingest and every
/// aggregator replica must agree on it forever.
pub fn partition_of(code: &KpiCode, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in code.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    const PINNED: u32 = 950;

    #[test]
    fn is_stable_and_in_range() {
        let c = KpiCode::parse("sales_eu").expect("valid");
        assert_eq!(partition_of(&c, 1), 0);
        // Pinned: changing the hash would move every KPI to another partition
        // and split its buckets between two aggregators.
        assert_eq!(partition_of(&c, 1024), PINNED);
        assert!(partition_of(&c, 7) < 7);
    }
}
