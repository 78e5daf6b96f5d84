//! Bearer tokens: the tokens file, roles, and which role each RPC needs.
//!
//! The tokens file contains one token a line as `NAME ROLE sha256:HEX`, where
//! HEX is the SHA-256 of the token text; the token itself is never stored.
//! Blank lines and lines that start with `#` are ignored.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Prefix of every token this server creates, so that a leaked token is
/// easy to recognise in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "cat_";

/// Random bytes in a new token.
const TOKEN_BYTES: usize = 32;

/// Permission level of a token. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Get, list, query, tail and export.
    Reader,
    /// Reader, plus record, ingest, import, update and the task calls.
    Writer,
    /// Everything, including deletes.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected reader, writer or admin"
            )),
        }
    }
}

/// The holder of a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The tokens a server accepts, by the hex SHA-256 of the token. A running
/// server swaps in a new list with `replace` when the file is reloaded.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: RwLock<HashMap<String, Caller>>,
}

impl Tokens {
    /// Reads a tokens file; an error names the file and the line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read tokens file {}: {error}", path.display()))?;
        Tokens::parse(&text).map_err(|error| format!("tokens file {}: {error}", path.display()))
    }

    /// Parses the text of a tokens file.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut by_hash = HashMap::new();
        let mut names = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(format!("line {number}: expected NAME ROLE sha256:HEX"));
            };
            check_name(name).map_err(|error| format!("line {number}: {error}"))?;
            let role: Role = role
                .parse()
                .map_err(|error| format!("line {number}: {error}"))?;
            let hash = hash
                .strip_prefix("sha256:")
                .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    format!("line {number}: the hash must be sha256: and 64 hex digits")
                })?
                .to_ascii_lowercase();
            if let Some(first) = names.insert(name.to_string(), number) {
                return Err(format!(
                    "line {number}: the name {name:?} is already used on line {first}"
                ));
            }
            let caller = Caller {
                name: name.to_string(),
                role,
            };
            if by_hash.insert(hash, caller).is_some() {
                return Err(format!("line {number}: the same token is listed twice"));
            }
        }
        Ok(Tokens {
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Returns the holder of `token`, if the file lists it.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        self.read().get(&token_hash(token)).cloned()
    }

    /// Replaces the accepted tokens with those of `other`.
    pub fn replace(&self, other: Tokens) {
        let new = other
            .by_hash
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Caller>> {
        self.by_hash.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hex SHA-256 of a token's text.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Token names appear in the audit trail and in logs, so they are short
/// and plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "invalid token name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

/// Creates a token for `name` with `role`, appends its hash to the tokens
/// file (created with owner-only permissions if missing), and returns the
/// token, which exists nowhere else.
pub fn create_token(path: &Path, name: &str, role: Role) -> Result<String, String> {
    check_name(name)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(format!(
                "cannot read tokens file {}: {error}",
                path.display()
            ));
        }
    };
    Tokens::parse(&existing).map_err(|error| format!("tokens file {}: {error}", path.display()))?;
    if existing
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
    {
        return Err(format!(
            "the tokens file {} already has a token named {name:?}",
            path.display()
        ));
    }

    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_string())?;
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));

    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|error| format!("cannot open tokens file {}: {error}", path.display()))?;
    let separator = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(
        file,
        "{separator}{name} {role} sha256:{}",
        token_hash(&token)
    )
    .map_err(|error| format!("cannot write tokens file {}: {error}", path.display()))?;
    Ok(token)
}

/// Access rule and call shape of one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodRule {
    /// Minimum role that may call it.
    pub role: Role,
    /// Whether the request or the response is a stream; the default timeout
    /// for unary calls does not apply to these.
    pub streaming: bool,
}

const fn unary(role: Role) -> MethodRule {
    MethodRule {
        role,
        streaming: false,
    }
}

const fn streaming(role: Role) -> MethodRule {
    MethodRule {
        role,
        streaming: true,
    }
}

/// Returns the rule for a gRPC path such as `/code_analyzer.v1.CrewService/GetCrew`.
/// Paths of this server's services that are not listed need the admin role,
/// so a new RPC is closed until it is given a rule here.
pub fn method_rule(path: &str) -> MethodRule {
    use Role::{Admin, Reader, Writer};
    let method = path.strip_prefix("/code_analyzer.v1.").unwrap_or_default();
    match method {
        "CrewService/CreateCrewOutput" => unary(Writer),
        "CrewService/GetCrewOutput" => unary(Reader),
        "CrewService/ListCrewOutputs" => unary(Reader),
        "CrewService/UpdateCrewOutput" => unary(Writer),
        "CrewService/DeleteCrewOutput" => unary(Admin),
        "CrewService/ListCrews" => unary(Reader),
        "CrewService/GetCrew" => unary(Reader),
        "AnalysisService/RecordFindings" => unary(Writer),
        "AnalysisService/GetFinding" => unary(Reader),
        "AnalysisService/ListFindings" => unary(Reader),
        "AnalysisService/UpdateFinding" => unary(Writer),
        "AnalysisService/GetFileHistory" => unary(Reader),
        "AnalysisService/ImportSarif" => streaming(Writer),
        "AnalysisService/CompareRuns" => unary(Reader),
        "FixService/RecordFix" => unary(Writer),
        "FixService/GetFix" => unary(Reader),
        "FixService/ListFixes" => unary(Reader),
        "FixService/UpdateFix" => unary(Writer),
        "LogService/IngestLogs" => streaming(Writer),
        "LogService/QueryLogs" => unary(Reader),
        "LogService/TailLogs" => streaming(Reader),
        "TaskService/EnqueueTask" => unary(Writer),
        "TaskService/ClaimTasks" => unary(Writer),
        "TaskService/HeartbeatTask" => unary(Writer),
        "TaskService/CompleteTask" => unary(Writer),
        "TaskService/FailTask" => unary(Writer),
        "TaskService/GetTask" => unary(Reader),
        "TaskService/ListTasks" => unary(Reader),
        "TaskService/RetryTask" => unary(Writer),
        "TaskService/CancelTask" => unary(Writer),
        "StatsService/GetStats" => unary(Reader),
        "AuditService/ListAuditEvents" => unary(Reader),
        "AuditService/VerifyAuditTrail" => unary(Reader),
        "ReportService/ExportSarif" => streaming(Reader),
        "ReportService/DraftPullRequest" => unary(Writer),
        _ => unary(Admin),
    }
}

/// Returns whether `path` is a health or reflection call. These need no
/// token, so that load balancers and grpcurl work before anyone has one.
pub fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_served_method_has_a_rule() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut unlisted = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let rule = method_rule(&path);
                    let streams = method.client_streaming() || method.server_streaming();
                    if rule == unary(Role::Admin) && !path.contains("Delete") {
                        unlisted.push(path.clone());
                    }
                    assert_eq!(rule.streaming, streams, "{path}");
                }
            }
        }
        assert!(unlisted.is_empty(), "methods without a rule: {unlisted:?}");
    }

    #[test]
    fn parses_and_verifies_tokens() {
        let hash = token_hash("cat_secret");
        let tokens = Tokens::parse(&format!("# crews\n\nci-bot writer sha256:{hash}\n")).unwrap();
        let caller = tokens.verify("cat_secret").unwrap();
        assert_eq!(caller.name, "ci-bot");
        assert_eq!(caller.role, Role::Writer);
        assert!(tokens.verify("cat_other").is_none());

        let other = format!("ops admin sha256:{}\n", token_hash("cat_other"));
        tokens.replace(Tokens::parse(&other).unwrap());
        assert!(tokens.verify("cat_secret").is_none());
        assert_eq!(tokens.verify("cat_other").unwrap().role, Role::Admin);
    }

    #[test]
    fn rejects_bad_lines_with_their_number() {
        let hash = token_hash("x");
        for (text, expected) in [
            (
                "a reader".to_string(),
                "line 1: expected NAME ROLE sha256:HEX",
            ),
            (
                format!("a owner sha256:{hash}"),
                "line 1: unknown role \"owner\"",
            ),
            ("a reader sha256:12".to_string(), "line 1: the hash must be"),
            (
                format!("a reader sha256:{hash}\na admin sha256:{}", token_hash("y")),
                "line 2: the name \"a\" is already used on line 1",
            ),
            (
                format!("a reader sha256:{hash}\nb admin sha256:{hash}"),
                "line 2: the same token is listed twice",
            ),
            (
                format!("bad/name reader sha256:{hash}"),
                "line 1: invalid token name",
            ),
        ] {
            let error = Tokens::parse(&text).unwrap_err();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn created_tokens_are_stored_as_hashes() {
        let folder = tempfile::TempDir::new().unwrap();
        let path = folder.path().join("tokens");
        let first = create_token(&path, "crew-a", Role::Writer).unwrap();
        let second = create_token(&path, "ops", Role::Admin).unwrap();
        assert!(first.starts_with(TOKEN_PREFIX));
        assert!(first.len() > 40);
        assert_ne!(first, second);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&first));
        assert!(!text.contains(&second));
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.verify(&first).unwrap().role, Role::Writer);
        assert_eq!(tokens.verify(&second).unwrap().name, "ops");

        let error = create_token(&path, "ops", Role::Reader).unwrap_err();
        assert!(
            error.contains("already has a token named \"ops\""),
            "{error}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
