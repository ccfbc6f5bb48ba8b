//! The rules every API input is checked against, each defined once: the
//! handlers check input with them, and the OpenAPI document gets its
//! constraints from the same values (`schema::refine`), so a request the
//! document calls valid is never refused as malformed.
//!
//! Lengths are in characters (Unicode scalar values), as JSON Schema's
//! `minLength`/`maxLength` count them. Each [`Charset`] has a check and an
//! ECMA-262 pattern; a property test holds the two to the same answer.

use plexi_util::limits::{MAX_DATA_ID_CHARS, MAX_DATA_TYPE_CHARS, MAX_NAME_CHARS};

use crate::ApiError;

/// Which characters a text input may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// Anything but control characters (Unicode `Cc`: U+0000-U+001F, U+007F-U+009F).
    NoControl,
    /// Anything but control characters, except that `\n` is allowed.
    NoControlButNewline,
    /// Printable ASCII, space included (U+0020-U+007E): what an HTTP header carries.
    PrintableAscii,
    /// ASCII letters, digits and `-` (a uuid).
    Token,
    /// ASCII letters, digits, `.`, `_` and `-` (node names).
    Name,
    /// Lowercase hex digits.
    Hex,
    /// A semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`, numbers of at
    /// most 19 digits so each fits a u64): the whole string, not per char.
    SemVer,
}

/// `^(0|[1-9][0-9]{0,18})`: a version number without leading zeros that fits a u64.
const NUM: &str = "(0|[1-9][0-9]{0,18})";
/// A pre-release identifier: numeric without leading zeros, or alphanumeric.
const PRE_ID: &str = "(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)";

impl Charset {
    pub fn allows(self, c: char) -> bool {
        match self {
            Charset::NoControl => !c.is_control(),
            Charset::NoControlButNewline => c == '\n' || !c.is_control(),
            Charset::PrintableAscii => (' '..='~').contains(&c),
            Charset::Token => c.is_ascii_alphanumeric() || c == '-',
            Charset::Name => c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
            Charset::Hex => c.is_ascii_digit() || ('a'..='f').contains(&c),
            Charset::SemVer => true,
        }
    }

    /// The ECMA-262 pattern (anchored) that says the same as [`Charset::allows`]
    /// on every character (for [`Charset::SemVer`], the whole grammar).
    pub fn pattern(self) -> String {
        match self {
            Charset::NoControl => "^[^\\u0000-\\u001F\\u007F-\\u009F]*$".into(),
            Charset::NoControlButNewline => "^[^\\u0000-\\u0009\\u000B-\\u001F\\u007F-\\u009F]*$".into(),
            Charset::PrintableAscii => "^[ -~]*$".into(),
            Charset::Token => "^[A-Za-z0-9-]*$".into(),
            Charset::Name => "^[A-Za-z0-9._-]*$".into(),
            Charset::Hex => "^[0-9a-f]*$".into(),
            Charset::SemVer => format!(
                "^{NUM}\\.{NUM}\\.{NUM}(-{PRE_ID}(\\.{PRE_ID})*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$"
            ),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Charset::NoControl => "without control characters",
            Charset::NoControlButNewline => "without control characters but newlines",
            Charset::PrintableAscii => "of printable ASCII",
            Charset::Token => "of letters, digits or dashes",
            Charset::Name => "of letters, digits, '.', '_' or '-'",
            Charset::Hex => "of lowercase hex digits",
            Charset::SemVer => "forming a version such as 1.2.3",
        }
    }
}

/// A text input: its name (as in the API), length bounds and characters.
#[derive(Clone, Copy, Debug)]
pub struct TextRule {
    pub name: &'static str,
    /// The error code of a value that breaks the rule.
    pub code: &'static str,
    pub min_chars: usize,
    pub max_chars: usize,
    pub charset: Charset,
    /// Whole values refused although their characters are allowed.
    pub forbidden: &'static [&'static str],
}

impl TextRule {
    /// Whether `value` keeps the rule (no error built: cheap for tests).
    pub fn holds(&self, value: &str) -> bool {
        let n = value.chars().count();
        if n < self.min_chars || n > self.max_chars || self.forbidden.contains(&value) {
            return false;
        }
        match self.charset {
            Charset::SemVer => semver_shape(value),
            cs => value.chars().all(|c| cs.allows(c)),
        }
    }

    /// `Ok` when `value` keeps the rule, else 400 with the rule's code.
    pub fn check(&self, value: &str) -> Result<(), ApiError> {
        if self.holds(value) {
            return Ok(());
        }
        if self.forbidden.contains(&value) {
            return Err(ApiError::bad_request(
                self.code,
                format!("{} may not be {value:?}", self.name),
            ));
        }
        let len = if self.min_chars == self.max_chars {
            format!("{}", self.max_chars)
        } else {
            format!("{}-{}", self.min_chars, self.max_chars)
        };
        Err(ApiError::bad_request(
            self.code,
            format!(
                "{} must be {len} characters {}",
                self.name,
                self.charset.describe()
            ),
        ))
    }
}

/// The SemVer grammar of [`Charset::SemVer`], checked by hand so it is the
/// same language as its pattern (the `semver` crate parses the result).
fn semver_shape(v: &str) -> bool {
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let num = |s: &str| {
        !s.is_empty()
            && s.len() <= 19
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'))
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| num(p)) {
        return false;
    }
    if let Some(pre) = pre {
        let ok = pre.split('.').all(|id| {
            ident(id)
                && (!id.bytes().all(|b| b.is_ascii_digit()) || id == "0" || !id.starts_with('0'))
        });
        if !ok {
            return false;
        }
    }
    build.is_none_or(|b| b.split('.').all(ident))
}

/// A whole-number input with its inclusive range.
#[derive(Clone, Copy, Debug)]
pub struct IntRule {
    pub name: &'static str,
    pub code: &'static str,
    pub min: u64,
    pub max: u64,
}

impl IntRule {
    /// `raw` as a number in range, else 400 with the rule's code.
    pub fn parse(&self, raw: &str) -> Result<u64, ApiError> {
        match raw.parse::<u64>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(self.error(raw)),
        }
    }

    pub fn check(&self, n: u64) -> Result<u64, ApiError> {
        if (self.min..=self.max).contains(&n) {
            Ok(n)
        } else {
            Err(self.error(&n.to_string()))
        }
    }

    fn error(&self, raw: &str) -> ApiError {
        ApiError::bad_request(
            self.code,
            format!(
                "{} {raw:?} is not a whole number from {} to {}",
                self.name, self.min, self.max
            ),
        )
    }

    /// The same rule with another upper bound (one set by the node's config).
    pub const fn up_to(self, max: u64) -> IntRule {
        IntRule { max, ..self }
    }
}

/// An object's id (path segment of the data routes).
pub const DATA_ID: TextRule = TextRule {
    name: "data_id",
    code: "invalid_data_id",
    min_chars: 1,
    max_chars: MAX_DATA_ID_CHARS,
    charset: Charset::NoControl,
    // URLs resolve these as path segments: no client can send them.
    forbidden: &[".", ".."],
};

/// An object's content type: printable ASCII, so it fits `X-Data-Type`.
pub const DATA_TYPE: TextRule = TextRule {
    name: "data_type",
    code: "invalid_data_type",
    min_chars: 1,
    max_chars: MAX_DATA_TYPE_CHARS,
    charset: Charset::PrintableAscii,
    forbidden: &[],
};

/// An update operation's id (a uuid, but any token is looked up).
pub const OPERATION_ID: TextRule = TextRule {
    name: "operation_id",
    code: "invalid_operation_id",
    min_chars: 1,
    max_chars: 64,
    charset: Charset::Token,
    forbidden: &[],
};

/// A job's id.
pub const JOB_ID: TextRule = TextRule {
    name: "job_id",
    code: "invalid_job_id",
    min_chars: 1,
    max_chars: 64,
    charset: Charset::Token,
    forbidden: &[],
};

/// A node named in a path (its name or its peer id).
pub const NODE_ID: TextRule = TextRule {
    name: "node_id",
    code: "invalid_node_id",
    min_chars: 1,
    max_chars: 128,
    charset: Charset::Name,
    forbidden: &[],
};

/// A node named in a plan's `target_nodes`.
pub const TARGET_NODE: TextRule = TextRule {
    name: "target_nodes",
    code: "invalid_target_nodes",
    min_chars: 1,
    max_chars: MAX_NAME_CHARS,
    charset: Charset::Name,
    forbidden: &[],
};

/// A version in a plan or a release manifest.
pub const VERSION: TextRule = TextRule {
    name: "target_version",
    code: "invalid_target_version",
    min_chars: 5,
    max_chars: 64,
    charset: Charset::SemVer,
    forbidden: &[],
};

/// A maintenance reason.
pub const REASON: TextRule = TextRule {
    name: "reason",
    code: "invalid_reason",
    min_chars: 0,
    max_chars: 1024,
    charset: Charset::NoControlButNewline,
    forbidden: &[],
};

/// Total copies of an object; the upper bound is the node's
/// `max_replication_factor` (see [`IntRule::up_to`]).
pub const REPLICATION_FACTOR: IntRule = IntRule {
    name: "replication_factor",
    code: "invalid_replication_factor",
    min: 1,
    max: 255,
};

/// How long maintenance mode lasts.
pub const MAINTENANCE_TIMEOUT: IntRule = IntRule {
    name: "timeout_seconds",
    code: "invalid_timeout",
    min: 1,
    max: plexi_util::limits::MAX_MAINTENANCE_SECONDS,
};

/// `prefix` and `after` of the listing: any start of a data id.
pub const LIST_PREFIX: TextRule = TextRule {
    name: "prefix",
    code: "invalid_query",
    min_chars: 0,
    max_chars: MAX_DATA_ID_CHARS,
    charset: Charset::NoControl,
    forbidden: &[],
};

/// `limit` of the listing (default 100).
pub const LIST_LIMIT: IntRule = IntRule {
    name: "limit",
    code: "invalid_query",
    min: 1,
    max: plexi_util::limits::MAX_LIST_OBJECTS as u64,
};

/// An event-stream ticket (`GET /events?ticket=`), as `auth::EventTickets` issues them.
pub const TICKET: TextRule = TextRule {
    name: "ticket",
    code: "invalid_ticket",
    min_chars: 1,
    max_chars: 512,
    charset: Charset::Name,
    forbidden: &[],
};

/// `limit` of `GET .../clustering/alerts` (default 100).
pub const ALERTS_LIMIT: IntRule = IntRule {
    name: "limit",
    code: "invalid_limit",
    min: 1,
    max: 1000,
};
pub const ALERTS_LIMIT_DEFAULT: u64 = 100;

/// `limit` of `GET .../updates/history` (default 10).
pub const HISTORY_LIMIT: IntRule = IntRule {
    name: "limit",
    code: "invalid_limit",
    min: 1,
    max: 1000,
};
pub const HISTORY_LIMIT_DEFAULT: u64 = 10;

/// `limit` of `GET .../audit` (default 100).
pub const AUDIT_LIMIT: IntRule = IntRule {
    name: "limit",
    code: "invalid_limit",
    min: 1,
    max: 10_000,
};
pub const AUDIT_LIMIT_DEFAULT: u64 = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Charset; 7] = [
        Charset::NoControl,
        Charset::NoControlButNewline,
        Charset::PrintableAscii,
        Charset::Token,
        Charset::Name,
        Charset::Hex,
        Charset::SemVer,
    ];

    fn matches(cs: Charset, s: &str) -> bool {
        regex::Regex::new(&cs.pattern()).unwrap().is_match(s)
    }

    proptest! {
        #[test]
        fn each_charset_check_and_pattern_agree(s in "\\PC{0,12}|[\\x00-\\x{a0}]{0,6}|[0-9a-zA-Z.+-]{0,14}") {
            for cs in ALL {
                let by_check = if cs == Charset::SemVer {
                    semver_shape(&s)
                } else {
                    s.chars().all(|c| cs.allows(c))
                };
                prop_assert_eq!(by_check, matches(cs, &s), "{:?} on {:?}", cs, s);
            }
        }

        #[test]
        fn every_semver_shape_parses(s in proptest::string::string_regex(
            Charset::SemVer.pattern().trim_start_matches('^').trim_end_matches('$')
        ).unwrap()) {
            prop_assert!(semver_shape(&s));
            prop_assert!(semver::Version::parse(&s).is_ok(), "{}", s);
        }
    }

    #[test]
    fn lengths_count_characters() {
        let id: String = "é".repeat(MAX_DATA_ID_CHARS);
        assert!(DATA_ID.holds(&id));
        assert!(!DATA_ID.holds(&format!("{id}a")));
        assert!(!DATA_ID.holds(""));
        assert!(!DATA_TYPE.holds("tëxt/plain"));
        assert!(VERSION.holds("1.2.3-rc.1+b.7"));
        assert!(!VERSION.holds("01.2.3"));
        assert!(!VERSION.holds("1.2.3-01"));
    }

    #[test]
    fn int_rules_name_the_range() {
        assert_eq!(HISTORY_LIMIT.parse("10").unwrap(), 10);
        let e = HISTORY_LIMIT.parse("0").unwrap_err();
        assert_eq!(e.code, "invalid_limit");
        assert!(REPLICATION_FACTOR.up_to(5).parse("6").is_err());
    }
}
