//! The books, checked once the system has settled: every figure printed,
//! every broken invariant named.
//!
//! - Orders: every acknowledged order reached a final state (confirmed,
//!   rejected, cancelled), none is pending, and the log holds no order the
//!   clients did not get an answer for (no retry placed one twice).
//! - Stock, per sku: on hand is what was received, reserved is what the
//!   confirmed orders hold, never more than on hand.
//! - Money: each confirmed order was captured exactly its total, once, and
//!   not refunded; each cancelled order that was ever captured is refunded
//!   in full; nothing else was captured; the gateway's ledger (captured
//!   minus refunded) equals the sum of the confirmed orders.
//! - The log: no event twice, no stream with a gap in its versions.
//! - The read models agree with the aggregates (and, separately, a rebuild
//!   from scratch gives the same rows as the live ones: see `rebuilds_match`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use domain::inventory::{Inventory, InventoryState};
use domain::order::{Order, OrderState, OrderStatus};
use domain::payment::{Payment, PaymentState, PaymentStatus};
use domain::{Aggregate, EventPayload};
use event_store::{EventStore, PgEventStore};
use payment_gateway::{ChargeStatus, KeyedCharge};
use serde_json::Value;
use sqlx::PgPool;

use crate::system::System;
use crate::workload::{Placed, Records, Shared};

/// Figures and broken invariants.
#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<(String, String)>,
    pub violations: Vec<String>,
}

impl Report {
    fn figure(&mut self, name: &str, value: impl std::fmt::Display) {
        self.figures.push((name.to_owned(), value.to_string()));
    }

    fn check(&mut self, holds: bool, violation: impl FnOnce() -> String) {
        if !holds {
            self.violations.push(violation());
        }
    }

    pub fn print(&self, title: &str) {
        eprintln!("== {title}");
        for (name, value) in &self.figures {
            eprintln!("   {name}: {value}");
        }
        if self.violations.is_empty() {
            eprintln!("   violations: 0");
        } else {
            eprintln!("   violations: {}", self.violations.len());
            for violation in self.violations.iter().take(30) {
                eprintln!("   - {violation}");
            }
        }
    }
}

/// The state of an aggregate, folded from its stream.
pub async fn state_of<A: Aggregate>(store: &PgEventStore, id: impl std::fmt::Display) -> Result<A::State, String> {
    let stream_id = A::stream_id(id);
    let stored = store.read_stream(&stream_id, 1).await.map_err(|e| format!("{stream_id}: {e}"))?;
    let mut state = A::State::default();
    for event in &stored {
        let decoded = A::Event::from_stored(&event.event_type, event.schema_version, event.payload.clone())
            .map_err(|e| format!("{stream_id} v{}: {e}", event.stream_version))?;
        state = A::evolve(state, &decoded);
    }
    Ok(state)
}

/// Checks the books against what the clients were told.
pub async fn check(pool: &PgPool, records: &Records, charges: &[KeyedCharge]) -> Report {
    let mut report = Report::default();
    let store = PgEventStore::new(pool.clone());
    let charges: HashMap<&str, &KeyedCharge> = charges.iter().map(|c| (c.idempotency_key.as_str(), c)).collect();
    let mut statuses: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut confirmed_cents = 0u64;
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    let mut shipped: BTreeMap<&str, u64> = BTreeMap::new();
    let mut order_rows = 0;
    for placed in &records.orders {
        match orders_books(&store, pool, placed, &charges, &mut report).await {
            Ok(status) => {
                *statuses.entry(status_name(status)).or_default() += 1;
                if matches!(status, OrderStatus::Confirmed | OrderStatus::Shipped) {
                    confirmed_cents += placed.total_cents;
                    let gone = if status == OrderStatus::Shipped { &mut shipped } else { &mut held };
                    for (sku, quantity, _) in &placed.lines {
                        *gone.entry(sku.as_str()).or_default() += u64::from(*quantity);
                    }
                }
                order_rows += 1;
            }
            Err(error) => report.violations.push(error),
        }
    }
    report.figure("orders acknowledged", records.orders.len());
    for (status, count) in &statuses {
        report.figure(&format!("orders {status}"), count);
    }
    report.check(!statuses.contains_key("pending"), || format!("{} orders still pending", statuses["pending"]));
    report.figure(
        "cancels accepted / refused (already ended)",
        format!("{} / {}", records.cancels_accepted, records.cancels_refused),
    );
    report.figure(
        "shipments accepted / refused (not confirmed)",
        format!("{} / {}", records.ships_accepted, records.ships_refused),
    );
    report.figure("requests / retries", format!("{} / {}", records.requests, records.retries));
    report.figure("orders sent again after their answer, answered the same", records.resent);
    for unexpected in &records.unexpected {
        report.violations.push(format!("unexpected answer: {unexpected}"));
    }

    // Every order in the log was acknowledged once: no retry placed another.
    let in_log: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT stream_id) FROM es_events WHERE stream_id LIKE 'order-%'")
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
    report.figure("orders in the log", in_log);
    report.check(in_log == order_rows, || {
        format!("the log holds {in_log} orders, the clients were told of {order_rows}")
    });

    stock_books(&store, pool, records, &held, &shipped, &mut report).await;
    money_books(&records.orders, &charges, confirmed_cents, &mut report);
    log_books(pool, &mut report).await;
    report
}

fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Pending => "pending",
        OrderStatus::Confirmed => "confirmed",
        OrderStatus::Shipped => "shipped",
        OrderStatus::Rejected => "rejected",
        OrderStatus::Cancelled => "cancelled",
    }
}

/// One order: its final state, its payment against the gateway, its rows.
async fn orders_books(
    store: &PgEventStore,
    pool: &PgPool,
    placed: &Placed,
    charges: &HashMap<&str, &KeyedCharge>,
    report: &mut Report,
) -> Result<OrderStatus, String> {
    let id = placed.order_id;
    let OrderState::Placed(order) = state_of::<Order>(store, id).await? else {
        return Err(format!("order {id} was acknowledged but is not in the log"));
    };
    let payment: PaymentState = state_of::<Payment>(store, id).await?;
    let charge = charges.get(id.to_string().as_str()).map(|c| &c.charge);
    let captured = charge.filter(|c| c.status == ChargeStatus::Captured);
    match order.status {
        OrderStatus::Pending => {}
        OrderStatus::Confirmed | OrderStatus::Shipped => {
            report.check(order.total_cents == placed.total_cents, || {
                format!("order {id}: total {} of {}", order.total_cents, placed.total_cents)
            });
            report.check(
                payment.status == PaymentStatus::Captured && payment.captured_cents == placed.total_cents,
                || {
                    format!(
                        "order {id} confirmed, its payment {:?} captured {}",
                        payment.status, payment.captured_cents
                    )
                },
            );
            report
                .check(captured.is_some_and(|c| c.amount_cents == placed.total_cents && c.refunded_cents == 0), || {
                    format!("order {id} confirmed, the gateway has {charge:?}")
                });
        }
        OrderStatus::Cancelled | OrderStatus::Rejected => {
            report.check(payment.status != PaymentStatus::Captured, || {
                format!("order {id} ended, its payment is captured")
            });
            report.check(payment.status != PaymentStatus::Requested, || {
                format!("order {id} ended, its payment is still requested")
            });
            report.check(captured.is_none_or(|c| c.refunded_cents == c.amount_cents), || {
                format!("order {id} {:?}: captured at the gateway and not refunded: {charge:?}", order.status)
            });
            report.check(!payment.voided_with_charge_unknown() || charge.is_some(), || {
                format!("order {id} ended: its payment was voided, and the gateway was never asked about its charge")
            });
        }
    }
    // The read model agrees.
    let row: Option<String> = sqlx::query_scalar("SELECT status FROM rm_orders WHERE order_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
    report.check(row.as_deref() == Some(status_name(order.status)), || {
        format!("order {id} is {:?}, its read model row says {row:?}", order.status)
    });
    let payment_row: Option<String> = sqlx::query_scalar("SELECT status FROM rm_payments WHERE order_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
    let payment_expected = match payment.status {
        PaymentStatus::NotRequested => None,
        PaymentStatus::Requested => Some("pending"),
        PaymentStatus::Captured => Some("captured"),
        PaymentStatus::Declined => Some("declined"),
        PaymentStatus::Refunded => Some("refunded"),
        PaymentStatus::Voided => Some("voided"),
    };
    report.check(payment_row.as_deref() == payment_expected, || {
        format!("payment {id} is {:?}, its read model row says {payment_row:?}", payment.status)
    });
    Ok(order.status)
}

async fn stock_books(
    store: &PgEventStore,
    pool: &PgPool,
    records: &Records,
    held: &BTreeMap<&str, u64>,
    shipped: &BTreeMap<&str, u64>,
    report: &mut Report,
) {
    for (sku, received) in &records.received {
        let inventory: InventoryState = match state_of::<Inventory>(store, sku).await {
            Ok(state) => state,
            Err(error) => {
                report.violations.push(error);
                continue;
            }
        };
        let held = held.get(sku.as_str()).copied().unwrap_or(0);
        let shipped = shipped.get(sku.as_str()).copied().unwrap_or(0);
        report.figure(
            &format!("stock {sku}: received / shipped / on hand / reserved / held by confirmed orders"),
            format!("{received} / {shipped} / {} / {} / {held}", inventory.on_hand, inventory.reserved),
        );
        report.check(inventory.on_hand + shipped == *received, || {
            format!("{sku}: on hand {} and {shipped} shipped, but {received} received", inventory.on_hand)
        });
        // Bounded by the open orders: once every order has ended, the item
        // remembers only the confirmed orders' holds (ADR 0011).
        report.figure(
            &format!("stock {sku}: orders remembered (holds / awaiting a message)"),
            format!("{} / {}", inventory.holds.len(), inventory.awaiting.len()),
        );
        report.check(inventory.awaiting.is_empty(), || {
            format!("{sku}: still awaits a message for {} ended orders", inventory.awaiting.len())
        });
        report.check(inventory.reserved == held, || {
            format!("{sku}: reserved {} but confirmed orders hold {held}", inventory.reserved)
        });
        report.check(inventory.reserved <= inventory.on_hand, || {
            format!("{sku}: oversold: {} reserved of {}", inventory.reserved, inventory.on_hand)
        });
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT on_hand, reserved FROM rm_inventory WHERE sku = $1")
            .bind(sku)
            .fetch_optional(pool)
            .await
            .unwrap_or(None);
        let expected = (inventory.on_hand as i64, inventory.reserved as i64);
        report.check(row == Some(expected), || format!("{sku}: read model {row:?}, aggregate {expected:?}"));
    }
}

fn money_books(orders: &[Placed], charges: &HashMap<&str, &KeyedCharge>, confirmed_cents: u64, report: &mut Report) {
    let known: std::collections::HashSet<String> = orders.iter().map(|o| o.order_id.to_string()).collect();
    let (mut captured, mut refunded, mut declined, mut voided) = (0u64, 0u64, 0u64, 0u64);
    for charge in charges.values() {
        match charge.charge.status {
            ChargeStatus::Captured => {
                captured += charge.charge.amount_cents;
                refunded += charge.charge.refunded_cents;
            }
            ChargeStatus::Declined => declined += 1,
            ChargeStatus::Voided => voided += 1,
        }
        report.check(known.contains(&charge.idempotency_key) || charge.charge.status != ChargeStatus::Captured, || {
            format!(
                "the gateway captured {} under key {}, which is no order's",
                charge.charge.amount_cents, charge.idempotency_key
            )
        });
    }
    report.figure("gateway: captured / refunded cents", format!("{captured} / {refunded}"));
    report.figure("gateway: charges declined / keys voided before any charge", format!("{declined} / {voided}"));
    report.figure("confirmed orders' total cents", confirmed_cents);
    report.check(captured - refunded == confirmed_cents, || {
        format!("the gateway kept {} cents, the confirmed orders total {confirmed_cents}", captured - refunded)
    });
}

async fn log_books(pool: &PgPool, report: &mut Report) {
    let (events, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM es_events")
        .fetch_one(pool)
        .await
        .unwrap_or((-1, -2));
    report.figure("events in the log", events);
    report.check(events == distinct, || format!("{} events are in the log twice", events - distinct));
    let gaps: Vec<String> = sqlx::query_scalar(
        "SELECT stream_id FROM es_events GROUP BY stream_id HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| vec![format!("(the check failed: {e})")]);
    report.figure("streams with a version gap", gaps.len());
    for stream in gaps {
        report.violations.push(format!("stream {stream} has a gap in its versions"));
    }
}

/// Checks the books until they balance, or until `within` has passed:
/// the last report, and how long it took. The workload has ended, so what
/// it recorded is final.
pub async fn settle(system: &mut System, records: &Shared, within: Duration) -> (Report, Duration) {
    let started = Instant::now();
    let pool = system.pool().await;
    let records = records.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    loop {
        let charges = system.client.charges().await;
        let report = check(&pool, &records, &charges).await;
        if report.violations.is_empty() || started.elapsed() > within {
            return (report, started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The rows of every read model, in key order, as JSON.
pub async fn read_models(pool: &PgPool) -> BTreeMap<&'static str, Vec<Value>> {
    let mut tables = BTreeMap::new();
    for (name, sql) in [
        ("orders", "SELECT to_jsonb(t) FROM rm_orders t ORDER BY order_id"),
        ("inventory", "SELECT to_jsonb(t) FROM rm_inventory t ORDER BY sku"),
        ("payments", "SELECT to_jsonb(t) FROM rm_payments t ORDER BY order_id"),
        ("story", "SELECT to_jsonb(t) FROM rm_story t ORDER BY position"),
    ] {
        tables.insert(name, sqlx::query_scalar(sql).fetch_all(pool).await.unwrap_or_default());
    }
    tables
}

/// A rebuild from scratch gives the rows the live projection has.
pub fn rebuilds_match(live: &BTreeMap<&str, Vec<Value>>, rebuilt: &BTreeMap<&str, Vec<Value>>, report: &mut Report) {
    for (name, rows) in live {
        let again = &rebuilt[name];
        report.figure(&format!("read model {name}: rows live / rebuilt"), format!("{} / {}", rows.len(), again.len()));
        let differing = rows.iter().zip(again).filter(|(a, b)| a != b).count() + rows.len().abs_diff(again.len());
        report.check(differing == 0, || {
            let first = rows.iter().zip(again).find(|(a, b)| a != b);
            format!("read model {name}: {differing} rows differ after a rebuild from scratch; first: {first:?}")
        });
    }
}
