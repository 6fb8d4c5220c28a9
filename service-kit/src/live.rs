//! One live instance among several: a PostgreSQL session advisory lock,
//! held on a connection of its own for as long as the instance is live. The
//! others wait as hot standbys, trying again every `poll`, and one takes over
//! once the live instance's connection closes (it died, or it stopped).

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::shutdown::Shutdown;

/// Waits until this instance holds the lock `(class, hashtext(key))`;
/// `None` if `shutdown` comes first. The returned connection holds the lock
/// until it is dropped or closed. `what` names the instance in the logs.
pub async fn become_live(
    pool: &PgPool,
    (class, key): (i32, &str),
    what: &str,
    poll: Duration,
    shutdown: &Shutdown,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut connection = pool.connect_options().connect().await?;
    let mut announced = false;
    loop {
        let live: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(class)
            .bind(key)
            .fetch_one(&mut connection)
            .await?;
        if live {
            return Ok(Some(connection));
        }
        if !announced {
            tracing::info!(instance = what, key, "another instance is live; standing by");
            announced = true;
        }
        tokio::select! {
            () = shutdown.requested() => {
                let _ = connection.close().await;
                return Ok(None);
            }
            () = tokio::time::sleep(poll) => {}
        }
    }
}
