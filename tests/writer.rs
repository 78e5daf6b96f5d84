//! The SQLite writer's group commit: a failing write leaves nothing behind,
//! whether it ran alone in its transaction (without savepoints) or beside
//! other writes (in a savepoint of its own), and the writes beside it stay.

mod common;

use code_analyzer::storage::models::NewCrewOutputRow;
use code_analyzer::storage::schema::crew_outputs;
use code_analyzer::storage::{
    Conn, PoolOptions, Storage, StorageError, crew_outputs as runs, transaction,
};
use common::{Backend, TestDatabase};
use diesel::prelude::*;

fn new_run(crew_name: &str) -> NewCrewOutputRow {
    NewCrewOutputRow {
        crew_name: crew_name.to_string(),
        output_type: "code_review".to_string(),
        status: 1,
        results: "{}".to_string(),
        error_message: String::new(),
        started_at: None,
        finished_at: None,
        created_at: 1,
        updated_at: 1,
        keep: 0,
    }
}

/// Stores a run, including its audit event, and then fails.
fn create_then_fail(conn: &mut Conn, crew_name: &str) -> Result<(), StorageError> {
    runs::create(conn, &new_run(crew_name))?;
    Err(StorageError::Task(format!("{crew_name} failed on purpose")))
}

async fn stored_crews(storage: &Storage) -> Vec<String> {
    storage
        .run(|conn| {
            let Conn::Sqlite(c) = conn else {
                panic!("the writer tests run on SQLite");
            };
            Ok(crew_outputs::table
                .select(crew_outputs::crew_name)
                .order(crew_outputs::crew_name)
                .load::<String>(&mut **c)?)
        })
        .await
        .expect("cannot read the runs")
}

fn open() -> Option<(TestDatabase, Storage)> {
    let database = TestDatabase::create(Backend::Sqlite)?;
    let storage = Storage::open(database.url(), &PoolOptions::default()).expect("cannot open");
    storage.migrate().expect("migrations failed");
    Some((database, storage))
}

#[tokio::test]
async fn failed_write_alone_leaves_nothing() {
    let Some((_database, storage)) = open() else {
        return;
    };

    let error = storage
        .run_write(|conn| create_then_fail(conn, "alone"))
        .await
        .expect_err("the write must fail");
    assert_eq!(
        error.to_string(),
        StorageError::Task("alone failed on purpose".into()).to_string()
    );

    // A nested transaction inside the failing write is undone with it.
    let error = storage
        .run_write(|conn| {
            transaction(conn, |conn| runs::create(conn, &new_run("nested")))?;
            Err::<(), _>(StorageError::Task("nested failed on purpose".to_string()))
        })
        .await
        .expect_err("the write must fail");
    assert_eq!(
        error.to_string(),
        StorageError::Task("nested failed on purpose".into()).to_string()
    );

    assert_eq!(stored_crews(&storage).await, Vec::<String>::new());

    storage
        .run_write(|conn| runs::create(conn, &new_run("after")))
        .await
        .expect("a write after failed ones must succeed");
    assert_eq!(stored_crews(&storage).await, vec!["after".to_string()]);
}

#[tokio::test]
async fn failed_write_in_group_keeps_others() {
    let Some((_database, storage)) = open() else {
        return;
    };

    // Sixteen writes sent at once, so most share a group commit. Every
    // third write fails.
    let writes: Vec<_> = (0..16)
        .map(|index| {
            let storage = storage.clone();
            tokio::spawn(async move {
                let crew_name = format!("crew-{index:02}");
                storage
                    .run_write(move |conn| {
                        if index % 3 == 0 {
                            create_then_fail(conn, &crew_name)
                        } else {
                            runs::create(conn, &new_run(&crew_name)).map(|_| ())
                        }
                    })
                    .await
            })
        })
        .collect();
    for (index, write) in writes.into_iter().enumerate() {
        let result = write.await.expect("a write task panicked");
        assert_eq!(result.is_err(), index % 3 == 0, "write {index}: {result:?}");
    }

    let expected: Vec<String> = (0..16)
        .filter(|index| index % 3 != 0)
        .map(|index| format!("crew-{index:02}"))
        .collect();
    assert_eq!(stored_crews(&storage).await, expected);
}
