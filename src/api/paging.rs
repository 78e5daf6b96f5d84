//! Page sizes and opaque page tokens. A token encodes the keyset cursor,
//! the total that the first page counted, and a hash of the filters it was
//! made with, so a token reused with other filters is rejected instead of
//! returning a wrong page.

use std::fmt::Debug;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Status;

use super::{invalid_argument, to_status};
use crate::storage::findings::PathCursor;
use crate::storage::paging::Page;
use crate::storage::paging::{Cursor, PageRequest};
use crate::storage::{Conn, Storage, StorageError};

/// Default and maximum page size of list RPCs.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 1_000;

/// One page of a list RPC, ready for its response.
pub struct Listed<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    pub total_size: i64,
}

/// Reads one page of a list RPC: builds the page request from its
/// `page_size` and `page_token` for `filter`, runs `query` on a read
/// connection, and encodes the token of the next page.
pub async fn list_page<F, T, Q>(
    storage: &Storage,
    filter: F,
    page_size: i32,
    page_token: &str,
    default_size: i32,
    query: Q,
) -> Result<Listed<T>, Status>
where
    F: Debug + Clone + Send + 'static,
    T: Send + 'static,
    Q: FnOnce(&mut Conn, &F, PageRequest) -> Result<Page<T>, StorageError> + Send + 'static,
{
    let page = page_request(&filter, page_size, page_token, default_size)?;
    let query_filter = filter.clone();
    let found = storage
        .run(move |conn| query(conn, &query_filter, page))
        .await
        .map_err(to_status)?;
    Ok(Listed {
        next_page_token: encode_token(&filter, found.next, Some(found.total)),
        total_size: found.total,
        items: found.items,
    })
}

/// 64-bit FNV-1a: stable across processes and builds, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn filter_hash(filter: &impl Debug) -> u64 {
    fnv1a(format!("{filter:?}").as_bytes())
}

/// Encodes the cursor of the next page and, when the listing has one, the
/// total that later pages repeat.
pub fn encode_token(filter: &impl Debug, cursor: Option<Cursor>, total: Option<i64>) -> String {
    let Some(cursor) = cursor else {
        return String::new();
    };
    let hash = filter_hash(filter);
    let raw = match total {
        Some(total) => format!("v2:{hash:016x}:{}:{}:{total}", cursor.key, cursor.id),
        None => format!("v1:{hash:016x}:{}:{}", cursor.key, cursor.id),
    };
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a token of `encode_token` into its cursor and total. A `v1`
/// token carries no total, so its page counts again.
fn decode_token(filter: &impl Debug, token: &str) -> Option<(Cursor, Option<i64>)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let mut parts = raw.split(':');
    let with_total = match parts.next()? {
        "v1" => false,
        "v2" => true,
        _ => return None,
    };
    let hash = u64::from_str_radix(parts.next()?, 16).ok()?;
    let key = parts.next()?.parse().ok()?;
    let id = parts.next()?.parse().ok()?;
    let total = match with_total {
        true => Some(parts.next()?.parse().ok()?),
        false => None,
    };
    (parts.next().is_none() && hash == filter_hash(filter)).then_some((Cursor { key, id }, total))
}

/// Encodes the last name of a page ordered by name.
pub fn encode_name_token(filter: &impl Debug, last_name: Option<&str>) -> String {
    match last_name {
        None => String::new(),
        Some(name) => URL_SAFE_NO_PAD.encode(format!("n1:{:016x}:{name}", filter_hash(filter))),
    }
}

/// Decodes a token of `encode_name_token`; `Ok(None)` for an empty token.
pub fn decode_name_token(filter: &impl Debug, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        invalid_argument(
            "page_token",
            "is not a token this server issued for the same filters",
        )
    };
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let rest = raw.strip_prefix("n1:").ok_or_else(invalid)?;
    let (hash, name) = rest.split_once(':').ok_or_else(invalid)?;
    if u64::from_str_radix(hash, 16).ok() != Some(filter_hash(filter)) {
        return Err(invalid());
    }
    Ok(Some(name.to_string()))
}

/// Encodes the position after the last finding of a page listed by path,
/// and the total that later pages repeat. The path comes last because it
/// may contain colons.
pub fn encode_path_token(filter: &impl Debug, last: Option<&PathCursor>, total: i64) -> String {
    let Some(cursor) = last else {
        return String::new();
    };
    let raw = format!(
        "p1:{:016x}:{}:{}:{total}:{}",
        filter_hash(filter),
        cursor.created_at,
        cursor.id,
        cursor.file_path
    );
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a token of `encode_path_token` into its cursor and total, or
/// returns `Ok(None)` for an empty token. A name token with the position,
/// as earlier servers issued, has no total.
pub fn decode_path_token(
    filter: &impl Debug,
    token: &str,
) -> Result<Option<(PathCursor, Option<i64>)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        invalid_argument(
            "page_token",
            "is not a token this server issued for the same filters",
        )
    };
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let (with_total, rest) = if let Some(rest) = raw.strip_prefix("p1:") {
        (true, rest)
    } else if let Some(rest) = raw.strip_prefix("n1:") {
        (false, rest)
    } else {
        return Err(invalid());
    };
    let (hash, position) = rest.split_once(':').ok_or_else(invalid)?;
    if u64::from_str_radix(hash, 16).ok() != Some(filter_hash(filter)) {
        return Err(invalid());
    }
    let fields = if with_total { 4 } else { 3 };
    let mut parts = position.splitn(fields, ':');
    let decoded = (|| {
        let created_at = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let total = match with_total {
            true => Some(parts.next()?.parse().ok()?),
            false => None,
        };
        let cursor = PathCursor {
            file_path: parts.next()?.to_string(),
            created_at,
            id,
        };
        Some((cursor, total))
    })();
    decoded.map(Some).ok_or_else(invalid)
}

/// Returns the page size of a list RPC from its `page_size` field.
pub fn page_size(page_size: i32, default_size: i32) -> Result<i64, Status> {
    if page_size < 0 {
        return Err(invalid_argument(
            "page_size",
            format!("must not be negative, got {page_size}"),
        ));
    }
    Ok(i64::from(match page_size {
        0 => default_size,
        size => size.min(MAX_PAGE_SIZE),
    }))
}

/// Builds the page request of a list RPC from its `page_size` and
/// `page_token` fields.
pub fn page_request(
    filter: &impl Debug,
    page_size: i32,
    page_token: &str,
    default_size: i32,
) -> Result<PageRequest, Status> {
    let size = self::page_size(page_size, default_size)?;
    if page_token.is_empty() {
        return Ok(PageRequest {
            size,
            after: None,
            counted: None,
        });
    }
    let (after, counted) = decode_token(filter, page_token).ok_or_else(|| {
        invalid_argument(
            "page_token",
            "is not a token this server issued for the same filters",
        )
    })?;
    Ok(PageRequest {
        size,
        after: Some(after),
        counted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_with_same_filter() {
        let cursor = Cursor {
            key: 1_700_000_000_000_000,
            id: 42,
        };
        let token = encode_token(&("crew", 3), Some(cursor), Some(1_234));
        let request = page_request(&("crew", 3), 10, &token, 50).unwrap();
        assert_eq!(request.after, Some(cursor));
        assert_eq!(request.counted, Some(1_234));
        assert_eq!(request.size, 10);
    }

    #[test]
    fn token_without_total_counts_again() {
        let cursor = Cursor { key: 7, id: 9 };
        let token = encode_token(&"file.py", Some(cursor), None);
        let request = page_request(&"file.py", 10, &token, 50).unwrap();
        assert_eq!(request.after, Some(cursor));
        assert_eq!(request.counted, None);

        let first_page = page_request(&"file.py", 10, "", 50).unwrap();
        assert_eq!(first_page.after, None);
        assert_eq!(first_page.counted, None);
    }

    #[test]
    fn token_with_other_filter_is_rejected() {
        let token = encode_token(&("crew", 3), Some(Cursor { key: 1, id: 1 }), Some(5));
        let error = page_request(&("crew", 4), 10, &token, 50).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().starts_with("page_token:"),
            "{}",
            error.message()
        );
        assert!(page_request(&(), 10, "garbage!", 50).is_err());
    }

    #[test]
    fn path_token_round_trips_paths_with_colons() {
        let cursor = PathCursor {
            file_path: "C:/src/a:b.py".to_string(),
            created_at: 1_700_000_000_000_000,
            id: 42,
        };
        let token = encode_path_token(&("prefix", "C:/"), Some(&cursor), 321);
        let decoded = decode_path_token(&("prefix", "C:/"), &token).unwrap();
        assert_eq!(decoded, Some((cursor.clone(), Some(321))));
        assert_eq!(decode_path_token(&("prefix", "C:/"), "").unwrap(), None);

        // A name token with the position, as earlier servers issued, has no total.
        let position = format!("{}:{}:{}", cursor.created_at, cursor.id, cursor.file_path);
        let earlier = encode_name_token(&("prefix", "C:/"), Some(&position));
        let decoded = decode_path_token(&("prefix", "C:/"), &earlier).unwrap();
        assert_eq!(decoded, Some((cursor, None)));

        let error = decode_path_token(&("prefix", "D:/"), &token).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let name_only = encode_name_token(&("prefix", "C:/"), Some("crew-a"));
        assert!(decode_path_token(&("prefix", "C:/"), &name_only).is_err());
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_request(&(), 0, "", 50).unwrap().size, 50);
        assert_eq!(page_request(&(), 5_000, "", 50).unwrap().size, 1_000);
        assert!(page_request(&(), -1, "", 50).is_err());
    }
}
