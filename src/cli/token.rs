//! `plexi token create NAME --role admin|read`: a new random API token,
//! printed once, and the `node.tokens` line (its blake3 hash) to add to the
//! config of every node. Nothing is stored and no node is asked: the token
//! exists only in this output until the config line is added.

use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};

/// Random bytes in a token (printed as hex: 64 characters).
const TOKEN_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenRoleArg {
    Admin,
    Read,
}

impl TokenRoleArg {
    fn as_str(self) -> &'static str {
        match self {
            TokenRoleArg::Admin => "admin",
            TokenRoleArg::Read => "read",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Print a new token once, and the config line that makes nodes accept it.
    Create {
        /// The token's name: what the audit log and the logs show for it.
        name: String,
        #[arg(long, value_enum)]
        role: TokenRoleArg,
    },
}

/// A new token and its config line.
pub struct NewToken {
    pub token: String,
    pub config_line: String,
}

/// Draws a token from the OS's random source and builds its config line.
pub fn create(name: &str, role: TokenRoleArg) -> Result<NewToken> {
    if !plexi_util::types::NodeId::is_valid(name) {
        bail!("token name {name:?} must be 1-64 characters of letters, digits, '.', '_' or '-'");
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = hex::encode(bytes);
    let hash = blake3::hash(token.as_bytes()).to_hex();
    let config_line = format!(
        "- {{ name: {name}, role: {}, blake3: \"{hash}\" }}",
        role.as_str()
    );
    Ok(NewToken { token, config_line })
}

pub fn command(cmd: &TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create { name, role } => {
            let t = create(name, *role)?;
            println!("{}", t.token);
            println!();
            println!("# The token above is shown only now and stored nowhere. Add this entry");
            println!("# under node.tokens in the config of every node, then restart them:");
            println!("{}", t.config_line);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, TokenRole};

    #[test]
    fn the_config_line_parses_and_matches_the_token() {
        let t = create("ci-reader", TokenRoleArg::Read).unwrap();
        assert_eq!(t.token.len(), 2 * TOKEN_BYTES);
        assert!(!t.config_line.contains(&t.token));
        let yaml = format!("node:\n  tokens:\n    {}\n", t.config_line);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clustering.yml");
        std::fs::write(&path, yaml).unwrap();
        let (config, _) = Config::load(Some(&path), &Default::default()).unwrap();
        let entry = &config.node.tokens[0];
        assert_eq!(
            (entry.name.as_str(), entry.role),
            ("ci-reader", TokenRole::Read)
        );
        assert_eq!(
            entry.blake3,
            blake3::hash(t.token.as_bytes()).to_hex().as_str()
        );
        assert_ne!(create("x", TokenRoleArg::Admin).unwrap().token, t.token);
        assert!(create("bad name", TokenRoleArg::Admin).is_err());
    }
}
