//! The hot read queries use their indexes on both backends.
//!
//! Each test calls the real storage functions on a seeded database with
//! Diesel's instrumentation capturing every statement they send, so the
//! plans checked are those of the SQL that Diesel generates, bind values
//! included. For each captured `SELECT` the test runs `EXPLAIN QUERY PLAN`
//! (SQLite) or `EXPLAIN` (PostgreSQL) with the bind values written in as
//! literals, and fails when a query reads a large table without an index.
//!
//! SQLite plans without statistics, as the server does (it never runs
//! `ANALYZE`), so its plans here are the server's plans on any size of
//! data. PostgreSQL plans from statistics: a seq scan is the cheapest plan
//! for a small table, so the test seeds tens of thousands of rows, runs
//! `ANALYZE` and checks the plans a real planner chooses from real
//! statistics. It never turns `enable_seqscan` off, which would prove only
//! that an index exists, not that the planner picks it.

mod common;

use std::sync::{Arc, Mutex};

use code_analyzer::storage::findings::{self, FindingFilter, PathCursor};
use code_analyzer::storage::history;
use code_analyzer::storage::logs::{self, LogFilter};
use code_analyzer::storage::paging::{Cursor, PageRequest};
use code_analyzer::storage::state::{self, CompareFilter};
use code_analyzer::storage::{Conn, PoolOptions, Storage};
use common::{Backend, TestDatabase};
use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::sql_types::Text;
use diesel::{Connection, QueryableByName, RunQueryDsl};

/// Findings seeded: 40 runs of 1,000, over 500 files and 40 rules.
const FINDINGS: i64 = 40_000;
/// Log entries seeded, over 8 crews, one second apart.
const LOG_ENTRIES: i64 = 60_000;
/// Fixes seeded, over the same 500 files.
const FIXES: i64 = 5_000;

/// Tables large enough in production that reading one whole is a failure.
const LARGE_TABLES: [&str; 3] = [
    "code_analysis_results",
    "log_entries",
    "error_handling_results",
];

#[derive(QueryableByName)]
struct SqlitePlanRow {
    #[diesel(sql_type = Text)]
    detail: String,
}

#[derive(QueryableByName)]
struct PostgresPlanRow {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

/// Seeds the tables with generated rows in a few statements.
fn seed(backend: Backend, conn: &mut Conn) {
    // `n` runs from 1 to the row count; SQLite gets it from a recursive
    // common table expression, PostgreSQL from generate_series.
    let series = |count: i64| match backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE series(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM series WHERE n < {count}) SELECT n FROM series"
        ),
        Backend::Postgres => format!("SELECT n FROM generate_series(1::bigint, {count}) AS n"),
    };
    let text = |expression: &str| match backend {
        Backend::Sqlite => format!("CAST({expression} AS TEXT)"),
        Backend::Postgres => format!("({expression})::text"),
    };
    let statements = [
        format!(
            "INSERT INTO crew_outputs (crew_name, output_type, status, created_at, updated_at)
             SELECT 'crew-' || {}, 'code_review', 3, n * 1000, n * 1000 FROM ({}) AS s",
            text("n % 8"),
            series(FINDINGS / 1_000)
        ),
        format!(
            "INSERT INTO code_analysis_results (crew_output_id, file_path, rule_id, message, priority,
                 status, fingerprint, fingerprint_version, created_at, updated_at)
             SELECT (n - 1) / 1000 + 1, 'lib/pkg' || {} || '/file' || {} || '.py', 'R' || {},
                 'message', n % 4 + 1, 1, 'fp' || {}, 1, n * 1000, n * 1000
             FROM ({}) AS s",
            text("n % 10"),
            text("n % 500"),
            text("n % 40"),
            text("n % 3000"),
            series(FINDINGS)
        ),
        format!(
            "INSERT INTO error_handling_results (crew_output_id, file_path, description, status,
                 created_at, updated_at)
             SELECT n % 40 + 1, 'lib/pkg' || {} || '/file' || {} || '.py', 'fix', 1, n * 8000, n * 8000
             FROM ({}) AS s",
            text("n % 10"),
            text("n % 500"),
            series(FIXES)
        ),
        format!(
            "INSERT INTO log_entries (entry_id, crew_output_id, timestamp, level, severity_number,
                 message, crew_name, created_at, updated_at)
             SELECT 'seed:' || {}, n % 40 + 1, n * 1000000, 'INFO', n % 24 + 1, 'line', 'crew-' || {},
                 n, n
             FROM ({}) AS s",
            text("n"),
            text("n % 8"),
            series(LOG_ENTRIES)
        ),
    ];
    with_raw(conn, |raw| {
        for statement in &statements {
            raw.batch_execute(statement)
                .unwrap_or_else(|error| panic!("seeding failed: {error}\n{statement}"));
        }
        if backend == Backend::Postgres {
            raw.batch_execute("ANALYZE").expect("ANALYZE failed");
        }
    });
}

/// Runs `work` on the connection as a plain `SimpleConnection`.
fn with_raw(conn: &mut Conn, work: impl FnOnce(&mut dyn SimpleConnection)) {
    match conn {
        Conn::Sqlite(c) => work(&mut **c),
        Conn::Postgres(c) => work(&mut **c),
    }
}

/// Records the text of every statement the connection starts from now on,
/// as Diesel displays it: `SQL -- binds: [...]`.
fn capture_statements(conn: &mut Conn) -> Arc<Mutex<Vec<String>>> {
    let statements = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&statements);
    let recorder = move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            log.lock().unwrap().push(query.to_string());
        }
    };
    match conn {
        Conn::Sqlite(c) => c.set_instrumentation(recorder),
        Conn::Postgres(c) => c.set_instrumentation(recorder),
    }
    statements
}

fn stop_capture(conn: &mut Conn) {
    let silent: Option<Box<dyn Instrumentation>> = None;
    match conn {
        Conn::Sqlite(c) => c.set_instrumentation(silent),
        Conn::Postgres(c) => c.set_instrumentation(silent),
    }
}

/// Returns `value`, a bind as Diesel's debug output shows it, as an SQL literal.
fn literal(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => format!("'{}'", text.replace('\'', "''")),
        serde_json::Value::Number(number) => number.to_string(),
        serde_json::Value::Bool(flag) => flag.to_string(),
        // PostgreSQL binds the list of `eq_any` as one array.
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(literal).collect();
            format!("ARRAY[{}]", items.join(", "))
        }
        other => panic!("unexpected bind value {other}"),
    }
}

/// Turns `SQL -- binds: [...]` into SQL with the binds written in.
fn with_binds_inlined(backend: Backend, statement: &str) -> String {
    let (sql, binds) = statement
        .rsplit_once(" -- binds: ")
        .unwrap_or_else(|| panic!("statement without binds: {statement}"));
    let binds: Vec<serde_json::Value> = serde_json::from_str(binds)
        .unwrap_or_else(|error| panic!("cannot read the binds {binds}: {error}"));
    match backend {
        Backend::Sqlite => {
            let mut inlined = String::with_capacity(sql.len());
            let mut values = binds.iter();
            for ch in sql.chars() {
                if ch == '?' {
                    inlined.push_str(&literal(
                        values.next().expect("more placeholders than binds"),
                    ));
                } else {
                    inlined.push(ch);
                }
            }
            assert!(
                values.next().is_none(),
                "more binds than placeholders: {statement}"
            );
            inlined
        }
        Backend::Postgres => {
            // From the highest number down, so that $1 does not match $10.
            let mut inlined = sql.to_string();
            for (index, value) in binds.iter().enumerate().rev() {
                inlined = inlined.replace(&format!("${}", index + 1), &literal(value));
            }
            inlined
        }
    }
}

/// Returns the plan of `sql`, one line per node.
fn explain(conn: &mut Conn, sql: &str) -> Vec<String> {
    match conn {
        Conn::Sqlite(c) => diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .load::<SqlitePlanRow>(&mut **c)
            .unwrap_or_else(|error| panic!("EXPLAIN failed: {error}\n{sql}"))
            .into_iter()
            .map(|row| row.detail)
            .collect(),
        Conn::Postgres(c) => diesel::sql_query(format!("EXPLAIN {sql}"))
            .load::<PostgresPlanRow>(&mut **c)
            .unwrap_or_else(|error| panic!("EXPLAIN failed: {error}\n{sql}"))
            .into_iter()
            .map(|row| row.line)
            .collect(),
    }
}

/// Returns why the plan is a failure, if it is: a large table read whole,
/// or rows sorted after they are read (a temporary B-tree on SQLite, a
/// Sort node on PostgreSQL).
fn plan_problem(backend: Backend, plan: &[String], allowed: &[&str]) -> Option<String> {
    for line in plan {
        let line = line.trim();
        if allowed.iter().any(|allowed| line.contains(allowed)) {
            continue;
        }
        match backend {
            Backend::Sqlite => {
                let scanned_whole = LARGE_TABLES.iter().any(|table| {
                    line.starts_with(&format!("SCAN {table}")) && !line.contains("USING")
                });
                if scanned_whole {
                    return Some(format!("reads a whole table: {line}"));
                }
                if line.contains("USE TEMP B-TREE FOR ORDER BY") {
                    return Some(format!("sorts every matching row: {line}"));
                }
            }
            Backend::Postgres => {
                let scanned_whole = LARGE_TABLES
                    .iter()
                    .any(|table| line.contains(&format!("Seq Scan on {table}")));
                if scanned_whole {
                    return Some(format!("reads a whole table: {line}"));
                }
                // A Sort node; an Incremental Sort only orders rows that
                // tie on an index order, which stays cheap.
                let node = line.trim_start_matches("->").trim_start();
                if node.starts_with("Sort  (") {
                    return Some(format!("sorts every matching row: {line}"));
                }
            }
        }
    }
    None
}

/// Runs `query` with statement capture on, then checks the plan of every
/// `SELECT` it sent. `expected_index` must appear in the plan of at least
/// one of them, and plan lines that contain one of `allowed` are accepted.
fn check_plans<T>(
    backend: Backend,
    conn: &mut Conn,
    name: &str,
    expected_index: &str,
    allowed: &[&str],
    query: impl FnOnce(&mut Conn) -> T,
) {
    let statements = capture_statements(conn);
    query(conn);
    stop_capture(conn);
    let statements = statements.lock().unwrap().clone();
    let selects: Vec<&String> = statements
        .iter()
        .filter(|statement| statement.trim_start().starts_with("SELECT"))
        .collect();
    assert!(!selects.is_empty(), "{name}: no SELECT captured");

    let mut index_used = false;
    for statement in selects {
        let sql = with_binds_inlined(backend, statement);
        let plan = explain(conn, &sql);
        eprintln!("{name}:\n  {}", plan.join("\n  "));
        index_used |= plan.iter().any(|line| line.contains(expected_index));
        if let Some(problem) = plan_problem(backend, &plan, allowed) {
            panic!("{name}: {problem}\nSQL: {sql}\nplan:\n{}", plan.join("\n"));
        }
    }
    assert!(index_used, "{name}: no plan uses {expected_index}");
}

/// Opens a fresh migrated database of `backend` and seeds it, or returns
/// `None` when the backend is not available.
fn seeded_database(backend: Backend) -> Option<(TestDatabase, Storage, Conn)> {
    let database = TestDatabase::create(backend)?;
    let storage = Storage::open(database.url(), &PoolOptions::default()).expect("cannot open");
    storage.migrate().expect("migrations failed");
    let mut conn = storage.get().expect("no connection");
    seed(backend, &mut conn);
    Some((database, storage, conn))
}

fn hot_queries_use_indexes(backend: Backend) {
    let Some((_database, _storage, mut conn)) = seeded_database(backend) else {
        return;
    };
    let deep_page = PageRequest {
        size: 50,
        after: Some(Cursor {
            key: 20_000,
            id: 20_000,
        }),
        counted: None,
    };
    let findings_cases = [
        (
            "ListFindings by run",
            "code_analysis_results_crew_output_idx",
            FindingFilter {
                crew_output_id: Some(21),
                ..Default::default()
            },
        ),
        (
            "ListFindings by run and priority",
            "code_analysis_results_crew_output_idx",
            FindingFilter {
                crew_output_id: Some(21),
                min_priority: Some(3),
                ..Default::default()
            },
        ),
        (
            "ListFindings by rule",
            "code_analysis_results_rule_idx",
            FindingFilter {
                rule_id: Some("R7".to_string()),
                ..Default::default()
            },
        ),
    ];
    for (name, index, filter) in findings_cases {
        check_plans(backend, &mut conn, name, index, &[], |conn| {
            findings::list(conn, &filter, deep_page).expect("list failed")
        });
    }

    // Listings filtered by path read a path index in page order from the
    // cursor on, however many findings match: a prefix that matches every
    // row, one that matches a few, one file, and a prefix within one run.
    // Counting a prefix that matches every row may scan the table, because
    // the scan stops at the count limit of 10,000 matches, which come soon
    // when matches are dense.
    let path_cursor = PathCursor {
        file_path: "lib/pkg3/file13.py".to_string(),
        created_at: 20_000_000,
        id: 20_000,
    };
    let path_cases = [
        (
            "ListFindings by common path prefix",
            "code_analysis_results_file_history_idx",
            &["Seq Scan on code_analysis_results"][..],
            FindingFilter {
                file_path_prefix: Some("lib/".to_string()),
                ..Default::default()
            },
        ),
        (
            "ListFindings by rare path prefix",
            "code_analysis_results_file_history_idx",
            &[][..],
            FindingFilter {
                file_path_prefix: Some("lib/pkg3/".to_string()),
                ..Default::default()
            },
        ),
        // PostgreSQL may sort the findings of one file after the cursor
        // (about 40 here) instead of reading the index in order. The index
        // condition bounds that sort to one file.
        (
            "ListFindings by file",
            "code_analysis_results_file_history_idx",
            &["Sort"][..],
            FindingFilter {
                file_path: Some("lib/pkg3/file13.py".to_string()),
                ..Default::default()
            },
        ),
        (
            "ListFindings by run and path prefix",
            "code_analysis_results_run_path_idx",
            &[][..],
            FindingFilter {
                crew_output_id: Some(21),
                file_path_prefix: Some("lib/pkg3/".to_string()),
                ..Default::default()
            },
        ),
    ];
    for (name, index, allowed, filter) in path_cases {
        check_plans(backend, &mut conn, name, index, allowed, |conn| {
            findings::list_by_path(conn, &filter, 50, Some(&path_cursor), None)
                .expect("list failed")
        });
    }

    let log_page = PageRequest {
        size: 100,
        after: Some(Cursor {
            key: 40_000_000_000,
            id: 40_000,
        }),
        counted: None,
    };
    let log_cases = [
        (
            "QueryLogs by crew, level and time",
            "log_entries_crew_level_idx",
            LogFilter {
                crew_name: Some("crew-3".to_string()),
                min_severity: Some(13),
                start_time: Some(10_000_000_000),
                end_time: Some(50_000_000_000),
                ..Default::default()
            },
        ),
        (
            "QueryLogs by crew",
            "log_entries_crew_level_idx",
            LogFilter {
                crew_name: Some("crew-3".to_string()),
                ..Default::default()
            },
        ),
        (
            "QueryLogs by run",
            "log_entries_crew_output_idx",
            LogFilter {
                crew_output_id: Some(7),
                ..Default::default()
            },
        ),
        (
            "QueryLogs by time",
            "log_entries_timestamp_idx",
            LogFilter {
                start_time: Some(10_000_000_000),
                end_time: Some(12_000_000_000),
                ..Default::default()
            },
        ),
    ];
    for (name, index, filter) in log_cases {
        check_plans(backend, &mut conn, name, index, &[], |conn| {
            logs::query(conn, &filter, log_page).expect("query failed")
        });
    }

    let history_page = PageRequest {
        size: 100,
        after: Some(Cursor {
            key: 30_000_000,
            id: 60_000,
        }),
        counted: None,
    };
    // As for ListFindings by file, PostgreSQL may sort the few records of
    // one file that its index condition selects.
    check_plans(
        backend,
        &mut conn,
        "GetFileHistory",
        "code_analysis_results_file_history_idx",
        &["Sort"],
        |conn| history::file_history(conn, "lib/pkg3/file13.py", history_page).expect("history"),
    );
    check_plans(
        backend,
        &mut conn,
        "CompareRuns",
        "code_analysis_results_crew_output_idx",
        &[],
        |conn| state::compare(conn, 20, 21, &CompareFilter::default()).expect("compare failed"),
    );
}

#[test]
fn hot_queries_use_indexes_sqlite() {
    hot_queries_use_indexes(Backend::Sqlite);
}

#[test]
fn hot_queries_use_indexes_postgres() {
    hot_queries_use_indexes(Backend::Postgres);
}
