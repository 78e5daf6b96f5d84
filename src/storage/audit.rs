//! The audit trail: one append-only, hash-chained event per change of a
//! crew output, finding, fix or task, written in the transaction of the
//! change.
//!
//! Each event's hash is the SHA-256 of the previous event's hash and the
//! event's own fields, so an event changed or removed after the fact breaks
//! the chain at that point. Appends are serialized: on SQLite by its single
//! writer, on PostgreSQL by a transaction-scoped advisory lock, so two
//! replicas never chain onto the same event. A transaction that appends
//! takes that lock before anything else (see `transaction`).

use std::cell::RefCell;
use std::sync::Arc;

use diesel::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::models::{AuditEventRow, NewAuditEventRow};
use super::paging::{Cursor, Page, PageRequest, count_bounded, total_or_count};
use super::schema::audit_events;
use super::transaction as plain_transaction;
use super::{Conn, StorageError, now_micros, with_conn};

/// The actor of events written without an authenticated caller, as when
/// the server runs without a tokens file.
pub const ANONYMOUS: &str = "anonymous";

tokio::task_local! {
    /// Name of the authenticated caller of the RPC this task serves.
    static CALLER: Arc<str>;
}

thread_local! {
    /// The caller whose database work this thread is running.
    static ACTING_FOR: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `future` on behalf of `caller`: the audit events of the database
/// work it starts name `caller` as actor.
pub async fn acting_as<F: Future>(caller: Arc<str>, future: F) -> F::Output {
    CALLER.scope(caller, future).await
}

/// Returns the caller of the current task, if it runs on behalf of one.
/// Read it before handing work to another thread.
pub fn current_caller() -> Option<Arc<str>> {
    CALLER.try_with(Arc::clone).ok()
}

/// Runs `work` on this thread with `caller` as the actor of its events.
pub fn with_caller<T>(caller: Option<Arc<str>>, work: impl FnOnce() -> T) -> T {
    let previous = ACTING_FOR.with(|acting| acting.replace(caller));
    let result = work();
    ACTING_FOR.with(|acting| *acting.borrow_mut() = previous);
    result
}

fn actor() -> String {
    ACTING_FOR.with(|acting| acting.borrow().as_deref().unwrap_or(ANONYMOUS).to_string())
}

/// Key of the PostgreSQL advisory lock that serializes appends.
const APPEND_LOCK_KEY: i64 = 0x636f_6465_6175_6474;

/// Events read per query while verifying the chain.
const VERIFY_BATCH: i64 = 10_000;

/// A change to record. `before` and `after` are the record's JSON; either
/// is `None` where the record did not exist.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub action: &'a str,
    pub record_type: &'a str,
    pub record_id: i64,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl<'a> Change<'a> {
    /// A change of a record whose states serialize to JSON.
    pub fn of<T: Serialize>(
        action: &'a str,
        record_type: &'a str,
        record_id: i64,
        before: Option<&T>,
        after: Option<&T>,
    ) -> Change<'a> {
        let json = |value: &T| serde_json::to_string(value).unwrap_or_default();
        Change {
            action,
            record_type,
            record_id,
            before: before.map(json),
            after: after.map(json),
        }
    }
}

/// Filters of `list`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AuditFilter {
    pub record_type: Option<String>,
    pub record_id: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub occurred_after: Option<i64>,
    pub occurred_before: Option<i64>,
}

/// Outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub checked: i64,
    /// The first event whose stored hashes do not match, and why.
    pub broken: Option<(i64, String)>,
}

/// Hashes an event with the hash of the event before it; every field of
/// the event is part of the hash.
#[allow(clippy::too_many_arguments)]
fn event_hash(
    previous_hash: &str,
    occurred_at: i64,
    actor: &str,
    action: &str,
    record_type: &str,
    record_id: i64,
    before: Option<&str>,
    after: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    let fields: [&[u8]; 8] = [
        previous_hash.as_bytes(),
        &occurred_at.to_le_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        record_type.as_bytes(),
        &record_id.to_le_bytes(),
        before.unwrap_or("\u{0}none").as_bytes(),
        after.unwrap_or("\u{0}none").as_bytes(),
    ];
    for field in fields {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn row_hash(row: &AuditEventRow) -> String {
    event_hash(
        &row.previous_hash,
        row.occurred_at,
        &row.actor,
        &row.action,
        &row.record_type,
        row.record_id,
        row.before.as_deref(),
        row.after.as_deref(),
    )
}

/// Runs `work` in a transaction (see `storage::transaction`) that may
/// append events. On PostgreSQL it takes the chain's lock first, so every
/// audited transaction locks the chain before any row. In any other order,
/// an update of a finding could hold the finding's row and wait for the
/// chain while the analysis of a finished run holds the chain and waits for
/// that row: a deadlock.
pub fn transaction<T>(
    conn: &mut Conn,
    work: impl FnOnce(&mut Conn) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    plain_transaction(conn, |conn| {
        lock_chain(conn)?;
        work(conn)
    })
}

/// Takes the chain's advisory lock on PostgreSQL until the transaction
/// ends. Taking it again in the same transaction returns at once.
fn lock_chain(conn: &mut Conn) -> Result<(), StorageError> {
    if let Conn::Postgres(c) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(APPEND_LOCK_KEY)
            .execute(&mut **c)?;
    }
    Ok(())
}

/// Appends one event. Call it inside the transaction of the change, which
/// `transaction` opens.
pub fn append(conn: &mut Conn, change: Change<'_>) -> Result<(), StorageError> {
    lock_chain(conn)?;
    let previous_hash: Option<String> = with_conn!(conn, c => {
        audit_events::table
            .order(audit_events::id.desc())
            .select(audit_events::hash)
            .first(c)
            .optional()?
    });
    let previous_hash = previous_hash.unwrap_or_default();
    let occurred_at = now_micros();
    let actor = actor();
    let hash = event_hash(
        &previous_hash,
        occurred_at,
        &actor,
        change.action,
        change.record_type,
        change.record_id,
        change.before.as_deref(),
        change.after.as_deref(),
    );
    let row = NewAuditEventRow {
        occurred_at,
        actor,
        action: change.action.to_string(),
        record_type: change.record_type.to_string(),
        record_id: change.record_id,
        before: change.before,
        after: change.after,
        previous_hash,
        hash,
    };
    with_conn!(conn, c => {
        diesel::insert_into(audit_events::table).values(&row).execute(c)?;
    });
    Ok(())
}

macro_rules! filtered {
    ($filter:expr) => {{
        let filter = $filter;
        let mut query = audit_events::table.into_boxed();
        if let Some(record_type) = &filter.record_type {
            query = query.filter(audit_events::record_type.eq(record_type));
        }
        if let Some(record_id) = filter.record_id {
            query = query.filter(audit_events::record_id.eq(record_id));
        }
        if let Some(actor) = &filter.actor {
            query = query.filter(audit_events::actor.eq(actor));
        }
        if let Some(action) = &filter.action {
            query = query.filter(audit_events::action.eq(action));
        }
        if let Some(after) = filter.occurred_after {
            query = query.filter(audit_events::occurred_at.ge(after));
        }
        if let Some(before) = filter.occurred_before {
            query = query.filter(audit_events::occurred_at.lt(before));
        }
        query
    }};
}

/// Lists events newest first (by id).
pub fn list(
    conn: &mut Conn,
    filter: &AuditFilter,
    page: PageRequest,
) -> Result<Page<AuditEventRow>, StorageError> {
    with_conn!(conn, c => {
        let total = total_or_count(page.counted, || {
            count_bounded(filtered!(filter).select(audit_events::id)).get_result(c)
        })?;
        let mut query = filtered!(filter);
        if let Some(after) = page.after {
            query = query.filter(audit_events::id.lt(after.id));
        }
        let rows = query
            .order(audit_events::id.desc())
            .limit(page.size + 1)
            .select(AuditEventRow::as_select())
            .load(c)?;
        Ok(Page::from_rows(rows, page, total, |row: &AuditEventRow| Cursor {
            key: row.id,
            id: row.id,
        }))
    })
}

/// Walks the whole chain in id order and reports the first event whose
/// link to the previous event or whose own hash does not match.
pub fn verify(conn: &mut Conn) -> Result<Verification, StorageError> {
    let mut checked = 0;
    let mut previous_hash = String::new();
    let mut after_id = 0;
    loop {
        let rows: Vec<AuditEventRow> = with_conn!(conn, c => {
            audit_events::table
                .filter(audit_events::id.gt(after_id))
                .order(audit_events::id.asc())
                .limit(VERIFY_BATCH)
                .select(AuditEventRow::as_select())
                .load(c)?
        });
        if rows.is_empty() {
            return Ok(Verification {
                checked,
                broken: None,
            });
        }
        for row in rows {
            if row.previous_hash != previous_hash {
                let reason = "its previous_hash is not the hash of the event before it".to_string();
                return Ok(Verification {
                    checked,
                    broken: Some((row.id, reason)),
                });
            }
            if row_hash(&row) != row.hash {
                let reason = "its hash does not match its fields".to_string();
                return Ok(Verification {
                    checked,
                    broken: Some((row.id, reason)),
                });
            }
            checked += 1;
            after_id = row.id;
            previous_hash = row.hash;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_hash;

    #[test]
    fn hash_covers_every_field() {
        let base = event_hash("p", 1, "a", "x", "t", 1, Some("{}"), None);
        assert_eq!(base.len(), 64);
        assert_ne!(base, event_hash("q", 1, "a", "x", "t", 1, Some("{}"), None));
        assert_ne!(base, event_hash("p", 2, "a", "x", "t", 1, Some("{}"), None));
        assert_ne!(base, event_hash("p", 1, "a", "x", "t", 1, None, Some("{}")));
        assert_ne!(base, event_hash("p", 1, "a", "x", "t", 2, Some("{}"), None));
    }
}
