//! The migrations of both backends produce the same logical schema (tables,
//! columns, primary keys, indexes, foreign keys), and every `down.sql`
//! reverts its `up.sql`.

mod common;

use std::collections::BTreeSet;

use code_analyzer::storage::{PoolOptions, Storage};
use common::{Backend, TestDatabase};
use diesel::pg::PgConnection;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};

/// One fact about the schema, comparable across backends.
type Fact = String;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct SqliteColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    r#type: String,
    #[diesel(sql_type = Integer)]
    notnull: i32,
    #[diesel(sql_type = Nullable<Text>)]
    dflt_value: Option<String>,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

#[derive(QueryableByName)]
struct SqliteIndex {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    unique: i32,
    #[diesel(sql_type = Text)]
    origin: String,
}

#[derive(QueryableByName)]
struct SqliteForeignKey {
    #[diesel(sql_type = Text)]
    table: String,
    #[diesel(sql_type = Text)]
    from: String,
    #[diesel(sql_type = Text)]
    to: String,
    #[diesel(sql_type = Text)]
    on_delete: String,
}

#[derive(QueryableByName)]
struct PgFact {
    #[diesel(sql_type = Text)]
    fact: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Maps a declared type to the type both backends store: SQLite's
/// `INTEGER PRIMARY KEY` is the 64-bit rowid.
fn logical_type(declared: &str, primary_key: bool) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "integer" if primary_key => "bigint",
        "integer" | "int4" => "integer",
        "bigint" | "int8" => "bigint",
        "text" => "text",
        other => panic!("unexpected column type {other:?}"),
    }
}

/// Normalises a column default: quotes, casts and parentheses differ
/// between backends, the value does not.
fn logical_default(default: Option<&str>) -> String {
    let Some(default) = default else {
        return "none".to_string();
    };
    let value = default.split("::").next().unwrap_or(default);
    value
        .trim_matches(|c| c == '(' || c == ')' || c == '\'')
        .to_string()
}

fn sqlite_facts(path: &str) -> BTreeSet<Fact> {
    let mut conn = common::open_sqlite(path);
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> '__diesel_schema_migrations' ORDER BY name",
    )
    .load(&mut conn)
    .unwrap();

    let mut facts = BTreeSet::new();
    for table in tables.iter().map(|table| table.name.as_str()) {
        facts.insert(format!("table {table}"));
        let columns: Vec<SqliteColumn> = diesel::sql_query(format!("PRAGMA table_info({table})"))
            .load(&mut conn)
            .unwrap();
        let single_key = columns.iter().filter(|column| column.pk > 0).count() == 1;
        let mut key: Vec<(i32, &str)> = Vec::new();
        for column in &columns {
            let rowid = single_key && column.pk > 0;
            let not_null = column.notnull == 1 || column.pk > 0;
            facts.insert(format!(
                "column {table}.{} {} {} default {}",
                column.name,
                logical_type(&column.r#type, rowid),
                if not_null { "not null" } else { "null" },
                if rowid {
                    "generated".to_string()
                } else {
                    logical_default(column.dflt_value.as_deref())
                },
            ));
            if column.pk > 0 {
                key.push((column.pk, column.name.as_str()));
            }
        }
        key.sort();
        let key: Vec<&str> = key.into_iter().map(|(_, name)| name).collect();
        facts.insert(format!("primary key {table} ({})", key.join(", ")));

        let indexes: Vec<SqliteIndex> = diesel::sql_query(format!("PRAGMA index_list({table})"))
            .load(&mut conn)
            .unwrap();
        for index in indexes.iter().filter(|index| index.origin != "pk") {
            let index_columns: Vec<Name> = diesel::sql_query(format!(
                "SELECT name FROM pragma_index_info('{}') ORDER BY seqno",
                index.name
            ))
            .load(&mut conn)
            .unwrap();
            let names: Vec<&str> = index_columns
                .iter()
                .map(|column| column.name.as_str())
                .collect();
            facts.insert(format!(
                "{}index {} on {table} ({})",
                if index.unique == 1 { "unique " } else { "" },
                index.name,
                names.join(", ")
            ));
        }

        let keys: Vec<SqliteForeignKey> =
            diesel::sql_query(format!("PRAGMA foreign_key_list({table})"))
                .load(&mut conn)
                .unwrap();
        for key in keys {
            facts.insert(format!(
                "foreign key {table}.{} -> {}.{} on delete {}",
                key.from,
                key.table,
                key.to,
                key.on_delete.to_ascii_lowercase()
            ));
        }
    }
    facts
}

fn postgres_facts(url: &str) -> BTreeSet<Fact> {
    let mut conn = PgConnection::establish(url).expect("cannot connect to the test database");
    let queries = [
        // Tables.
        "SELECT 'table ' || table_name AS fact FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'",
        // Columns: identity columns are the counterpart of SQLite's rowid.
        "SELECT 'column ' || c.table_name || '.' || c.column_name || ' ' || c.data_type || ' ' || \
         CASE WHEN c.is_nullable = 'NO' THEN 'not null' ELSE 'null' END || ' default ' || \
         CASE WHEN c.is_identity = 'YES' THEN 'generated' ELSE coalesce(c.column_default, 'none') END AS fact \
         FROM information_schema.columns c \
         WHERE c.table_schema = 'public' AND c.table_name <> '__diesel_schema_migrations'",
        // Primary keys, columns in key order.
        "SELECT 'primary key ' || t.relname || ' (' || \
         string_agg(a.attname, ', ' ORDER BY array_position(i.indkey, a.attnum)) || ')' AS fact \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey) \
         WHERE i.indisprimary AND n.nspname = 'public' AND t.relname <> '__diesel_schema_migrations' \
         GROUP BY t.relname",
        // Indexes other than primary keys.
        "SELECT CASE WHEN i.indisunique THEN 'unique ' ELSE '' END || 'index ' || ic.relname || \
         ' on ' || t.relname || ' (' || \
         string_agg(a.attname, ', ' ORDER BY array_position(i.indkey, a.attnum)) || ')' AS fact \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey) \
         WHERE NOT i.indisprimary AND n.nspname = 'public' \
         GROUP BY i.indisunique, ic.relname, t.relname",
        // Foreign keys.
        "SELECT 'foreign key ' || tc.table_name || '.' || kcu.column_name || ' -> ' || \
         ccu.table_name || '.' || ccu.column_name || ' on delete ' || lower(rc.delete_rule) AS fact \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name \
         JOIN information_schema.constraint_column_usage ccu ON ccu.constraint_name = tc.constraint_name \
         JOIN information_schema.referential_constraints rc ON rc.constraint_name = tc.constraint_name \
         WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = 'public'",
    ];
    let mut facts = BTreeSet::new();
    for sql in queries {
        let rows: Vec<PgFact> = diesel::sql_query(sql).load(&mut conn).unwrap();
        facts.extend(rows.into_iter().map(|row| normalise_pg_fact(row.fact)));
    }
    facts
}

/// Brings PostgreSQL's spelling of a column fact to the logical one.
fn normalise_pg_fact(fact: String) -> String {
    if !fact.starts_with("column ") {
        return fact;
    }
    let (head, default) = fact
        .split_once(" default ")
        .expect("column facts have a default");
    let head = head.replace(" character varying ", " text ");
    let default = if default == "generated" || default == "none" {
        default.to_string()
    } else {
        logical_default(Some(default))
    };
    format!("{head} default {default}")
}

fn migrate(database: &TestDatabase) {
    let storage = Storage::open(database.url(), &PoolOptions::default()).unwrap();
    storage.migrate().unwrap();
}

fn sqlite_path(database: &TestDatabase) -> String {
    database.url().trim_start_matches("sqlite://").to_string()
}

#[test]
fn migrations_match_across_backends() {
    let sqlite = TestDatabase::create(Backend::Sqlite).unwrap();
    let Some(postgres) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    migrate(&sqlite);
    migrate(&postgres);

    let sqlite_schema = sqlite_facts(&sqlite_path(&sqlite));
    let postgres_schema = postgres_facts(postgres.url());
    assert!(
        sqlite_schema.len() > 40,
        "too few facts read: {sqlite_schema:#?}"
    );

    let only_sqlite: Vec<&Fact> = sqlite_schema.difference(&postgres_schema).collect();
    let only_postgres: Vec<&Fact> = postgres_schema.difference(&sqlite_schema).collect();
    assert!(only_sqlite.is_empty(), "only in SQLite: {only_sqlite:#?}");
    assert!(
        only_postgres.is_empty(),
        "only in PostgreSQL: {only_postgres:#?}"
    );
}

#[test]
fn sqlite_down_migrations_revert_everything() {
    let database = TestDatabase::create(Backend::Sqlite).unwrap();
    migrate(&database);
    let mut conn = common::open_sqlite(&sqlite_path(&database));
    let migrations =
        FileBasedMigrations::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap();
    conn.revert_all_migrations(migrations.clone()).unwrap();

    let left: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM sqlite_master WHERE type IN ('table', 'index') \
         AND name NOT LIKE 'sqlite_%' AND name <> '__diesel_schema_migrations'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(left.count, 0);

    // Up again after down: the migrations are repeatable.
    conn.run_pending_migrations(migrations).unwrap();
    assert!(sqlite_facts(&sqlite_path(&database)).contains("table log_entries"));
}

#[test]
fn postgres_down_migrations_revert_everything() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    migrate(&database);
    let mut conn = PgConnection::establish(database.url()).unwrap();
    let migrations =
        FileBasedMigrations::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
            .unwrap();
    conn.revert_all_migrations(migrations.clone()).unwrap();

    let left: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') \
         AND c.relname NOT LIKE '__diesel_schema_migrations%'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(left.count, 0);

    conn.run_pending_migrations(migrations).unwrap();
    assert!(postgres_facts(database.url()).contains("table log_entries"));
}

/// The pool opens its first connection in the background while migrations
/// run on their own connection; both switch a new file to WAL at once.
#[test]
fn fresh_sqlite_migrates_while_pool_connects() {
    for _ in 0..30 {
        let database = TestDatabase::create(Backend::Sqlite).unwrap();
        let storage = Storage::open(database.url(), &PoolOptions::default()).unwrap();
        let applied = storage.migrate().expect("migrations failed on a fresh file");
        assert!(!applied.is_empty());
    }
}
