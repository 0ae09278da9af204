//! Key partitions (migration 0011): the fixed hash, claims of one partition under the group
//! lease, and outcomes refused to a replica that lost its lease.

use super::*;
use outbox_relay::store::{self, ClaimArgs, LeaseRef, Outcome, PartitionRef};

/// The hash is part of the contract: ownership of every key depends on it, so these values
/// must never change (docs/ARCHITECTURE.md "Key partitions").
#[tokio::test]
async fn the_partition_of_a_key_is_the_documented_md5_hash() {
    let db = TestDb::new().await;
    let zero = "00000000-0000-0000-0000-000000000000";
    let cases: [(&str, i32, u32); 5] = [
        // first 32 bits of md5('order-1'): 0x6e7f85a9
        ("order-1", 8, 0x6e7f_85a9 % 8),
        ("order-1", 3, 0x6e7f_85a9 % 3),
        // md5('abc') starts 90015098: above i32::MAX, read unsigned
        ("abc", 7, 0x9001_5098 % 7),
        // md5('') starts d41d8cd9
        ("", 16, 0xd41d_8cd9 % 16),
        ("order-1", 1, 0),
    ];
    for (key, n, want) in cases {
        let got: i32 = sqlx::query_scalar("SELECT outbox.key_partition($1, $2::uuid, $3)")
            .bind(key)
            .bind(zero)
            .bind(n)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(got as u32, want, "{key:?} mod {n}");
    }
    let id = Uuid::parse_str("0190c3d2-7e4b-7a21-9c3e-5b2f1a0d8e77").unwrap();
    let keyless: i32 = sqlx::query_scalar("SELECT outbox.key_partition(NULL, $1, 5)")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let by_text: i32 = sqlx::query_scalar("SELECT outbox.key_partition($1, $2, 5)")
        .bind(id.to_string())
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(keyless, by_text, "a keyless row goes by its message id");
}

fn args<'a>(token: i64, partition: PartitionRef<'a>) -> ClaimArgs<'a> {
    ClaimArgs {
        partition,
        ..claim_args(i64::MAX, 1000, token)
    }
}

/// Each partition's claim returns exactly its rows, every key whole in one partition, and
/// nothing at all unless the group lease is held by the group's holder.
#[tokio::test]
async fn a_partition_claims_only_its_keys_and_only_under_the_group_lease() {
    let db = TestDb::new().await;
    for i in 0..60 {
        db.enqueue("d", Some(&format!("key-{}", i % 20)), json!({ "n": i }))
            .await;
    }
    for _ in 0..10 {
        db.enqueue("d", None, json!({})).await;
    }
    let token = take_lease(&db).await;
    let ttl = Duration::from_secs(10);
    store::acquire_lease(&db.pool, "g", "partitions=3", ttl)
        .await
        .unwrap()
        .expect("the group lease is free");
    let mut seen = std::collections::HashMap::new();
    let mut total = 0;
    for index in 0..3 {
        let part = PartitionRef {
            count: 3,
            index,
            group: Some(("g", "partitions=3")),
        };
        let rows = store::claim(&db.pool, &args(token, part)).await.unwrap();
        total += rows.len();
        for row in &rows {
            let want: i32 = sqlx::query_scalar("SELECT outbox.key_partition($1, $2, 3)")
                .bind(&row.message_key)
                .bind(row.message_id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(want as u32, index, "{row:?}");
            if let Some(key) = &row.message_key {
                assert_eq!(*seen.entry(key.clone()).or_insert(index), index, "{key}");
            }
        }
        assert!(
            !rows.is_empty(),
            "70 rows over 3 partitions leave none empty"
        );
    }
    assert_eq!(total, 70, "the partitions together claim every row once");

    let other_mode = PartitionRef {
        count: 3,
        index: 0,
        group: Some(("g", "partitions=4")),
    };
    assert!(
        store::claim(&db.pool, &args(token, other_mode))
            .await
            .unwrap()
            .is_empty(),
        "a replica whose partition count differs from the group lease's holder claims nothing"
    );
    store::release_lease(&db.pool, "g", "partitions=3")
        .await
        .unwrap();
    let part = PartitionRef {
        count: 3,
        index: 0,
        group: Some(("g", "partitions=3")),
    };
    assert!(
        store::claim(&db.pool, &args(token, part))
            .await
            .unwrap()
            .is_empty(),
        "without the group lease no partition is claimed"
    );
}

/// A replica paused past its lease resumes with confirms in hand: once another replica took
/// the lease, its outcome update writes nothing, so the rows are the new holder's alone.
#[tokio::test]
async fn outcomes_under_a_lease_taken_over_write_nothing() {
    let db = TestDb::new().await;
    let ttl = Duration::from_secs(10);
    for i in 0..2 {
        db.enqueue("d", Some("k"), json!({ "n": i })).await;
    }
    let old = store::acquire_lease(&db.pool, "l", "me", ttl)
        .await
        .unwrap()
        .unwrap()
        .token;
    let batch = store::claim(&db.pool, &claim_args(i64::MAX, 10, old))
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    let outcome = [
        (batch[0].id, Outcome::Published),
        (batch[1].id, failed(true)),
    ];
    // Expired but not taken: nobody else touches the rows, so the write stands. (Expired by
    // hand: the lease's own clock is the database's, and waiting for it would be a sleep.)
    sqlx::query(
        "UPDATE outbox.relay_leases SET expires_at = now() - interval '1 second' WHERE name = 'l'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let recorded = store::record_outcomes(
        &db.pool,
        me(old),
        &outcome[..1],
        10,
        store::OnPublished::Mark,
    )
    .await
    .unwrap();
    assert_eq!(
        recorded.len(),
        1,
        "an expired lease nobody took still records"
    );

    let taken = store::acquire_lease(&db.pool, "l", "other", ttl)
        .await
        .unwrap()
        .expect("the expired lease is taken over");
    assert!(
        taken.unowned().is_some(),
        "the gap is reported to the new holder"
    );
    let zombie = store::record_outcomes(
        &db.pool,
        me(old),
        &outcome[1..],
        10,
        store::OnPublished::Mark,
    )
    .await
    .unwrap();
    assert!(zombie.is_empty(), "{zombie:?}");
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM outbox.messages WHERE id = $1")
            .bind(batch[1].id.0)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        status, "committed",
        "the row stays the new holder's to publish"
    );
    let new = LeaseRef {
        name: "l",
        holder: "other",
        token: taken.token,
    };
    let recorded =
        store::record_outcomes(&db.pool, new, &outcome[1..], 10, store::OnPublished::Mark)
            .await
            .unwrap();
    assert_eq!(recorded.len(), 1, "the holder's own outcome is written");
}
