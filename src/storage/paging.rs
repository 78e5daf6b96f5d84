//! Keyset paging. A cursor contains the sort key and id of the last row of
//! a page. The next page starts strictly after it, so rows inserted meanwhile
//! never shift a page and no query skips over earlier pages.

use diesel::backend::Backend;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::LimitDsl;
use diesel::sql_types::BigInt;

/// Most rows a list counts for its total. Counting stops at this many
/// matches, so the total of a filter that matches millions of rows costs no
/// more than one that matches this many; a total equal to it means "this
/// many or more".
pub const MAX_COUNTED_ROWS: i64 = 10_000;

/// Position after the last row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Sort key of the row, for listings ordered by something other than
    /// the id (a time); equal to `id` otherwise.
    pub key: i64,
    pub id: i64,
}

/// Page to read: its size, the cursor it starts after, and the total that
/// the first page of the listing counted.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub size: i64,
    pub after: Option<Cursor>,
    /// Total of the listing, counted when its first page was read. Later
    /// pages repeat it instead of counting again, so a deep page costs no
    /// count, and every page of one listing reports the same total.
    pub counted: Option<i64>,
}

/// Returns `counted`, the total that an earlier page of a listing counted,
/// or on a first page the result of `count`.
pub fn total_or_count<E>(
    counted: Option<i64>,
    count: impl FnOnce() -> Result<i64, E>,
) -> Result<i64, E> {
    match counted {
        Some(total) => Ok(total),
        None => count(),
    }
}

/// Query that counts the first `MAX_COUNTED_ROWS` rows of another query
/// with `SELECT COUNT(*)`, so the database returns one number instead of
/// the rows.
#[derive(Debug, Clone, QueryId)]
pub struct BoundedCount<Q>(Q);

/// Counts the rows of `query`, a select of one column, up to
/// `MAX_COUNTED_ROWS`.
pub fn count_bounded<Q: LimitDsl>(query: Q) -> BoundedCount<Q::Output> {
    BoundedCount(query.limit(MAX_COUNTED_ROWS))
}

impl<Q> Query for BoundedCount<Q> {
    type SqlType = BigInt;
}

impl<Q, C> RunQueryDsl<C> for BoundedCount<Q> {}

impl<Q, DB> QueryFragment<DB> for BoundedCount<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT COUNT(*) FROM (");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(") AS bounded");
        Ok(())
    }
}

/// One page of rows and the cursor of the next page, if there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
    pub total: i64,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` rows read in page order: the
    /// extra row only shows that another page exists.
    pub fn from_rows(
        mut rows: Vec<T>,
        request: PageRequest,
        total: i64,
        cursor_of: impl Fn(&T) -> Cursor,
    ) -> Page<T> {
        let size = request.size.max(0) as usize;
        let next = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(&cursor_of)
        } else {
            None
        };
        Page {
            items: rows,
            next,
            total,
        }
    }
}
