//! Finding identity that survives moved lines.

use sha2::{Digest, Sha256};

/// Version of `derive`; stored next to each fingerprint so that a later
/// algorithm can re-key old findings.
pub const DERIVED_VERSION: i32 = 1;

/// Version recorded for fingerprints taken from the analyzer itself (SARIF
/// `partialFingerprints` or `fingerprints`) or given by the client.
pub const EXTERNAL_VERSION: i32 = 0;

/// Derives a fingerprint from the rule id, the relative file path and the
/// message: none of them changes when code above the finding moves. Returns
/// 32 hex digits (the first 128 bits of SHA-256).
pub fn derive(rule_id: &str, file_path: &str, message: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [rule_id, file_path, message] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::derive;

    #[test]
    fn derived_fingerprint_ignores_nothing_but_lines() {
        let base = derive("B007", "lib/a.py", "unused variable");
        assert_eq!(base.len(), 32);
        assert_eq!(base, derive("B007", "lib/a.py", "unused variable"));
        assert_ne!(base, derive("B008", "lib/a.py", "unused variable"));
        assert_ne!(base, derive("B007", "lib/b.py", "unused variable"));
        // Length prefixes keep the parts apart.
        assert_ne!(derive("ab", "c", ""), derive("a", "bc", ""));
    }
}
