//! Fenced locks for handlers (`/v1/locks`): one holder key with a TTL and a fence
//! counter per lock name, both under the lock's own hash tag `{~lock:<name>}`. The
//! counter expires [`LOCK_FENCE_KEEP_MS`] after the lock's last expiry (every grant and
//! extend pushes it on), so fences strictly increase per name while an earlier holder
//! could still matter, and names nobody uses any more leave no key behind. Scripts:
//! `lock_acquire.lua`, `lock_extend.lua`, `lock_release.lua`.

use super::{Code, Result, Store, StoreError, coded, int, int_unless, ok_unless, text};
pub use crate::domain::coord::LOCK_FENCE_KEEP_MS;

/// Outcome of [`Store::lock_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTaken {
    /// The caller holds the lock.
    Held {
        /// `<fence>.<128-bit random hex>`.
        token: String,
        /// The fence.
        fence: i64,
        /// Expiry (ms, Redis clock).
        expires_ms: i64,
    },
    /// Someone else holds it for `remaining_ms` more.
    Busy {
        /// Time left on the holder's lease.
        remaining_ms: i64,
    },
}

/// Parses a lock token `<fence>.<32 hex>`; `None` when malformed.
pub fn parse_lock_token(token: &str) -> Option<i64> {
    let (fence, nonce) = token.split_once('.')?;
    let fence: i64 = fence.parse().ok()?;
    (fence > 0 && nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(fence)
}

impl Store {
    /// Takes the lock `name` for `ttl_ms` when nobody holds it.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn lock_acquire(&self, name: &str, ttl_ms: i64) -> Result<LockTaken> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let mut c = self.conn();
        let v = self
            .scripts
            .lock_acquire
            .key(self.keys.lock_holder(name))
            .key(self.keys.lock_fence(name))
            .arg(ttl_ms)
            .arg(nonce)
            .arg(LOCK_FENCE_KEEP_MS)
            .invoke_async(&mut c)
            .await?;
        let (code, rest) = coded(v)?;
        let at = |i: usize| rest.get(i).and_then(int);
        match code {
            Code::Ok => Ok(LockTaken::Held {
                token: rest
                    .first()
                    .and_then(text)
                    .ok_or_else(|| StoreError::Protocol("lock_acquire: no token".into()))?,
                fence: at(1).unwrap_or(0),
                expires_ms: at(2).unwrap_or(0),
            }),
            Code::Conflict => Ok(LockTaken::Busy {
                remaining_ms: at(0).unwrap_or(0),
            }),
            c => Err(c.unexpected("lock_acquire")),
        }
    }

    /// Pushes the expiry of a lock held with `token` to now + `ttl_ms`; `None` when the
    /// token is not the current holder's (nothing changed).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn lock_extend(&self, name: &str, token: &str, ttl_ms: i64) -> Result<Option<i64>> {
        let mut c = self.conn();
        let v = self
            .scripts
            .lock_extend
            .key(self.keys.lock_holder(name))
            .key(self.keys.lock_fence(name))
            .arg(token)
            .arg(ttl_ms)
            .arg(LOCK_FENCE_KEEP_MS)
            .invoke_async(&mut c)
            .await?;
        int_unless(coded(v)?, Code::Conflict, "lock_extend")
    }

    /// Frees a lock held with `token`; `false` when the token is not the current
    /// holder's (nothing changed).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn lock_release(&self, name: &str, token: &str) -> Result<bool> {
        let mut c = self.conn();
        let v = self
            .scripts
            .lock_release
            .key(self.keys.lock_holder(name))
            .arg(token)
            .invoke_async(&mut c)
            .await?;
        ok_unless(coded(v)?.0, Code::Conflict, "lock_release")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tokens_carry_their_fence() {
        assert_eq!(
            parse_lock_token("7.0123456789abcdef0123456789abcdef"),
            Some(7)
        );
        for bad in [
            "",
            "7",
            "0.0123456789abcdef0123456789abcdef",
            "7.xyz",
            "-1.0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(parse_lock_token(bad), None, "{bad}");
        }
    }
}
