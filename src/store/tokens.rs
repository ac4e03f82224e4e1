//! Hashing of secrets before they are stored: node tokens and idempotency keys are kept
//! only as their SHA-256.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `s`.
pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Hex SHA-256 of a token, as stored.
pub fn token_sha(token: &str) -> String {
    sha256_hex(token)
}
