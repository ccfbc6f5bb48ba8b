//! Bearer-token authentication with two roles.
//!
//! Tokens are held only as blake3 hashes; a presented token is hashed and
//! compared against every stored hash with blake3's constant-time equality,
//! without stopping at the first match, so timing says nothing about which
//! token (or how much of it) matched; the presented token's length only
//! changes how long hashing it takes. GET and HEAD need the read role;
//! every other method needs admin. An identified caller is then held to its
//! token's rate ([`crate::limits`]): past it, 429 `rate_limited`. Error
//! bodies and logs name a token by its name, never by its value.
//!
//! Event-stream tickets ([`EventTickets`]): a browser's EventSource cannot
//! send a header, so `GET /events/ticket` hands any valid token a ticket,
//! MAC'd with a key that lives only in this node's memory over the token's
//! name, role and expiry ([`TICKET_TTL`]). Only `GET /events` accepts one
//! (`?ticket=`), only on the node that issued it, only before it expires;
//! the stream it opened stays open. Its holder is the token's name for
//! the rate limit.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::ApiState;
use crate::Shared;

/// How long an event-stream ticket may be used to open a stream.
pub const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// The only path that accepts a ticket instead of a bearer token.
pub const TICKET_PATH: &str = "/api/v1/events";
/// Longest ticket looked at (a real one is well under 300 bytes).
const MAX_TICKET_BYTES: usize = crate::rules::TICKET.max_chars;
/// Format tag of tickets, first field and part of the MAC input.
const TICKET_VERSION: &str = "t1";

/// Why a ticket was refused (all answer 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is not well formed")]
    Malformed,
    #[error("the ticket was not issued by this node, or was altered")]
    Forged,
    #[error("the ticket expired; ask GET /api/v1/events/ticket for a new one")]
    Expired,
}

/// Issues and checks event-stream tickets with a node-local random key.
pub struct EventTickets {
    key: [u8; 32],
}

impl std::fmt::Debug for EventTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventTickets { key: <secret> }")
    }
}

impl EventTickets {
    /// `key` must be random and never leave memory.
    pub fn new(key: [u8; 32]) -> Self {
        EventTickets { key }
    }

    fn mac(&self, name: &str, role: Role, expires_ms: u64) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(TICKET_VERSION.as_bytes());
        h.update(&[0]);
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(role.as_str().as_bytes());
        h.update(&[0]);
        h.update(&expires_ms.to_be_bytes());
        h.finalize()
    }

    /// A ticket for `caller` issued at `now_ms`; returns it and its expiry (ms).
    pub fn issue(&self, caller: &Caller, now_ms: u64) -> (String, u64) {
        let expires_ms = now_ms + TICKET_TTL.as_millis() as u64;
        let mac = self.mac(&caller.name, caller.role, expires_ms);
        let name_hex: String = caller.name.bytes().map(|b| format!("{b:02x}")).collect();
        let ticket = format!(
            "{TICKET_VERSION}.{expires_ms}.{}.{name_hex}.{}",
            caller.role.as_str(),
            mac.to_hex()
        );
        (ticket, expires_ms)
    }

    /// The caller a ticket stands for, if this node issued it and it has
    /// not expired at `now_ms`. The MAC is compared in constant time.
    pub fn verify(&self, ticket: &str, now_ms: u64) -> Result<Caller, TicketError> {
        if ticket.len() > MAX_TICKET_BYTES {
            return Err(TicketError::Malformed);
        }
        let parts: Vec<&str> = ticket.split('.').collect();
        let [version, expires, role, name_hex, mac_hex] = parts[..] else {
            return Err(TicketError::Malformed);
        };
        if version != TICKET_VERSION {
            return Err(TicketError::Malformed);
        }
        let expires_ms: u64 = expires.parse().map_err(|_| TicketError::Malformed)?;
        let role = match role {
            "read" => Role::Read,
            "admin" => Role::Admin,
            _ => return Err(TicketError::Malformed),
        };
        let name = decode_hex(name_hex)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(TicketError::Malformed)?;
        let mac = blake3::Hash::from_hex(mac_hex).map_err(|_| TicketError::Malformed)?;
        // blake3::Hash's == is constant-time.
        if mac != self.mac(&name, role, expires_ms) {
            return Err(TicketError::Forged);
        }
        if now_ms >= expires_ms {
            return Err(TicketError::Expired);
        }
        Ok(Caller { name, role })
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The `ticket` query parameter of a request, if any.
fn ticket_param(req: &Request) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
}

/// The caller of a request: its bearer token, or on [`TICKET_PATH`] (GET)
/// without one, its ticket.
fn identify(state: &ApiState, req: &Request) -> Result<Caller, ApiError> {
    if let Some(token) = bearer(req) {
        return state
            .tokens
            .identify(token)
            .ok_or_else(ApiError::unauthorized);
    }
    let ticket = ticket_param(req).filter(|_| {
        req.uri().path() == TICKET_PATH && matches!(*req.method(), Method::GET | Method::HEAD)
    });
    let Some(ticket) = ticket else {
        return Err(ApiError::unauthorized());
    };
    state
        .tickets
        .verify(ticket, plexi_util::clock::wall_ms())
        .map_err(|e| {
            tracing::debug!(error = %e, "event-stream ticket refused");
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        })
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
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

    /// Every accepted token (names, roles and hashes; never a token).
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
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
    State(state): State<Shared>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    if crate::PUBLIC_PATHS.contains(&path) || crate::panel::is_panel_path(path) {
        return Ok(next.run(req).await);
    }
    let needed = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Role::Read
    } else {
        Role::Admin
    };
    let caller = identify(&state, &req)?;
    if let Err(wait) = state.limiter.take(&caller.name) {
        let rate = state.limiter.limits().token_requests_per_second;
        tracing::debug!(token = %caller.name, "request over the token's rate refused");
        return Ok(crate::retry_after(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "token {} is over its rate of {rate} requests per second on this node; retry after the Retry-After seconds",
                    caller.name
                ),
            ),
            wait.as_secs_f64().ceil() as u64,
        ));
    }
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

    fn caller() -> Caller {
        Caller {
            name: "viewer.1".into(),
            role: Role::Read,
        }
    }

    #[test]
    fn a_ticket_stands_for_its_token_until_it_expires() {
        let t = EventTickets::new([7; 32]);
        let (ticket, expires) = t.issue(&caller(), 1_000);
        assert_eq!(expires, 1_000 + TICKET_TTL.as_millis() as u64);
        assert_eq!(t.verify(&ticket, 1_000).unwrap(), caller());
        assert_eq!(t.verify(&ticket, expires - 1).unwrap(), caller());
        assert_eq!(t.verify(&ticket, expires), Err(TicketError::Expired));
    }

    #[test]
    fn forged_altered_and_foreign_tickets_are_refused() {
        let t = EventTickets::new([7; 32]);
        let (ticket, _) = t.issue(&caller(), 1_000);
        // Another node's key.
        assert_eq!(
            EventTickets::new([8; 32]).verify(&ticket, 1_000),
            Err(TicketError::Forged)
        );
        // A read ticket turned into an admin one, or made to last longer.
        let admin = ticket.replace(".read.", ".admin.");
        assert_eq!(t.verify(&admin, 1_000), Err(TicketError::Forged));
        let parts: Vec<&str> = ticket.split('.').collect();
        let later = format!("t1.{}.{}", u64::MAX, parts[2..].join("."));
        assert_eq!(t.verify(&later, 1_000), Err(TicketError::Forged));
        for bad in [
            "",
            "t1",
            "t1.x.read.00.00",
            "t2.1.read.00.00",
            &"a".repeat(600),
        ] {
            assert_eq!(t.verify(bad, 0), Err(TicketError::Malformed), "{bad}");
        }
    }
}
