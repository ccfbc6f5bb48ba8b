//! Bearer-token authentication with two roles.
//!
//! Tokens are held only as blake3 hashes; a presented token is hashed and
//! compared against every stored hash with blake3's constant-time equality,
//! without stopping at the first match, so timing says nothing about which
//! token (or how much of it) matched. GET and HEAD need the read role; every
//! other method needs admin.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::ApiState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub hash: blake3::Hash,
}

/// Who made a request; put in the request's extensions for handlers (audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Clone, Debug, Default)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
}

impl TokenSet {
    pub fn new(entries: Vec<TokenEntry>) -> Self {
        TokenSet { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a presented token belongs to, compared in constant time.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let hash = blake3::hash(presented.as_bytes());
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.entries {
            // blake3::Hash's == is constant-time.
            if entry.hash == hash && found.is_none() {
                found = Some(entry);
            }
        }
        found.map(|e| Caller {
            name: e.name.clone(),
            role: e.role,
        })
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Middleware: 401 without a valid token, 403 for the wrong role.
pub async fn require_token(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if crate::PUBLIC_PATHS.contains(&req.uri().path()) {
        return Ok(next.run(req).await);
    }
    let needed = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Role::Read
    } else {
        Role::Admin
    };
    let caller = bearer(&req)
        .and_then(|t| state.tokens.identify(t))
        .ok_or_else(ApiError::unauthorized)?;
    if caller.role < needed {
        return Err(ApiError::forbidden(needed.as_str()));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_by_hash() {
        let set = TokenSet::new(vec![
            TokenEntry {
                name: "ops".into(),
                role: Role::Admin,
                hash: blake3::hash(b"secret-a"),
            },
            TokenEntry {
                name: "viewer".into(),
                role: Role::Read,
                hash: blake3::hash(b"secret-r"),
            },
        ]);
        assert_eq!(set.identify("secret-a").unwrap().role, Role::Admin);
        assert_eq!(set.identify("secret-r").unwrap().name, "viewer");
        assert!(set.identify("secret").is_none());
        assert!(set.identify("").is_none());
    }
}
