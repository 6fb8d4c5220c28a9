//! Test and benchmark helpers (feature `testing`): a deterministic shop
//! history to replay, ways to write it, and a row-for-row snapshot of a table.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use domain::inventory::InventoryEvent;
use domain::order::{CancelledBy, OrderEvent, OrderLine};
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

/// Events for one stream, appended at once.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream_id: String,
    pub events: Vec<NewEvent>,
}

const SKUS: usize = 50;

/// The stock received, then `orders` orders with the saga's outcomes mixed:
/// confirmed, rejected for want of stock, declined and cancelled, confirmed
/// then cancelled and refunded, still pending. The same seed gives the same
/// history (ids included).
pub fn shop_history(orders: usize, seed: u64) -> Vec<Append> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut history = Vec::with_capacity(orders * 3 + SKUS);
    for sku in 0..SKUS {
        let sku = format!("SKU-{sku}");
        history.push(append(
            &mut rng,
            format!("inventory-{sku}"),
            &[InventoryEvent::StockReceived { sku, quantity: 1_000_000 }],
        ));
    }
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for n in 0..orders {
        let order_id = Uuid::from_u128(rng.gen());
        let placed_at = start + Duration::seconds(n as i64);
        let mut skus: Vec<usize> = (0..SKUS).collect();
        skus.shuffle(&mut rng);
        let lines: Vec<OrderLine> = skus[..rng.gen_range(1..=3)]
            .iter()
            .map(|sku| OrderLine {
                sku: format!("SKU-{sku}"),
                quantity: rng.gen_range(1..=5),
                unit_price_cents: rng.gen_range(100..10_000),
            })
            .collect();
        let total_cents: u64 = lines.iter().map(|l| u64::from(l.quantity) * l.unit_price_cents).sum();
        let mut order = vec![OrderEvent::OrderPlaced {
            order_id,
            customer_id: format!("c-{}", rng.gen_range(0..1_000)),
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            lines: lines.clone(),
            total_cents,
            placed_at,
            deadline: placed_at + Duration::minutes(15),
            contact_email: None,
        }];
        let mut stock: Vec<(String, InventoryEvent)> = Vec::new();
        let mut payment = Vec::new();
        let reserve = |line: &OrderLine| InventoryEvent::StockReserved {
            sku: line.sku.clone(),
            order_id,
            quantity: line.quantity,
        };
        let release = |line: &OrderLine| InventoryEvent::StockReleased {
            sku: line.sku.clone(),
            order_id,
            quantity: line.quantity,
        };
        let outcome = rng.gen_range(0..10);
        if outcome == 9 {
            // Still pending.
        } else if outcome == 8 {
            // The last line is out of stock: the others are released.
            let (last, reserved) = lines.split_last().expect("an order has a line");
            for line in reserved {
                stock.push((line.sku.clone(), reserve(line)));
                order.push(OrderEvent::OrderLineReserved { sku: line.sku.clone() });
            }
            let rejected = InventoryEvent::StockReservationRejected {
                sku: last.sku.clone(),
                order_id,
                requested: last.quantity,
                available: 0,
            };
            stock.push((last.sku.clone(), rejected));
            order.push(OrderEvent::OrderRejected { reason: "out of stock".into(), sku: last.sku.clone() });
            stock.extend(reserved.iter().map(|line| (line.sku.clone(), release(line))));
        } else {
            for line in &lines {
                stock.push((line.sku.clone(), reserve(line)));
                order.push(OrderEvent::OrderLineReserved { sku: line.sku.clone() });
            }
            order.push(OrderEvent::OrderReadyForPayment {
                amount_cents: total_cents,
                currency: "EUR".into(),
                payment_token: "tok_visa".into(),
            });
            payment.push(PaymentEvent::PaymentRequested {
                order_id,
                amount_cents: total_cents,
                currency: "EUR".into(),
                payment_token: "tok_visa".into(),
            });
            if outcome == 7 {
                payment.push(PaymentEvent::PaymentDeclined { order_id, reason: "card declined".into() });
                order.push(OrderEvent::OrderCancelled {
                    reason: "payment declined".into(),
                    by: CancelledBy::PaymentDeclined,
                    payment_refund_due: false,
                });
                stock.extend(lines.iter().map(|line| (line.sku.clone(), release(line))));
            } else {
                let provider_ref = format!("pay_{n}");
                payment.push(PaymentEvent::PaymentCaptured {
                    order_id,
                    amount_cents: total_cents,
                    provider_ref: provider_ref.clone(),
                });
                order.push(OrderEvent::OrderConfirmed { provider_ref });
                if outcome == 6 {
                    order.push(OrderEvent::OrderCancelled {
                        reason: "changed my mind".into(),
                        by: CancelledBy::Customer,
                        payment_refund_due: true,
                    });
                    payment.push(PaymentEvent::PaymentRefunded {
                        order_id,
                        amount_cents: total_cents,
                        reason: "order cancelled".into(),
                    });
                    stock.extend(lines.iter().map(|line| (line.sku.clone(), release(line))));
                }
            }
        }
        history.push(append(&mut rng, format!("order-{order_id}"), &order));
        if !payment.is_empty() {
            history.push(append(&mut rng, format!("payment-{order_id}"), &payment));
        }
        for (sku, event) in stock {
            history.push(append(&mut rng, format!("inventory-{sku}"), &[event]));
        }
    }
    history
}

fn append(rng: &mut StdRng, stream_id: String, events: &[impl EventPayload]) -> Append {
    let events = events
        .iter()
        .map(|event| NewEvent {
            event_id: Uuid::from_u128(rng.gen()),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata: Metadata { actor: "test".into(), ..Metadata::default() },
        })
        .collect();
    Append { stream_id, events }
}

/// The number of events in `history`.
pub fn event_count(history: &[Append]) -> usize {
    history.iter().map(|append| append.events.len()).sum()
}

/// Appends `history` through the store, with `writers` concurrent writers
/// (each stream's appends stay in order: a stream belongs to one writer).
pub async fn write(store: Arc<dyn EventStore>, history: Vec<Append>, writers: usize) {
    let mut shares: Vec<Vec<Append>> = (0..writers.max(1)).map(|_| Vec::new()).collect();
    for append in history {
        let writer = (fnv1a(&append.stream_id) % shares.len() as u64) as usize;
        shares[writer].push(append);
    }
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let store = store.clone();
            tokio::spawn(async move {
                for Append { stream_id, events } in share {
                    store.append(&stream_id, ExpectedVersion::Any, events).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
}

/// Writes `history` straight into `es_events`, 10,000 rows per statement:
/// a fast way to a large log for benchmarks. Stream versions are counted here.
pub async fn bulk_load(pool: &PgPool, history: &[Append]) -> Result<(), sqlx::Error> {
    let mut versions = std::collections::HashMap::<&str, i64>::new();
    let rows: Vec<_> = history
        .iter()
        .flat_map(|append| append.events.iter().map(move |event| (append.stream_id.as_str(), event)))
        .map(|(stream_id, event)| {
            let version = versions.entry(stream_id).or_default();
            *version += 1;
            (stream_id, *version, event)
        })
        .collect();
    for chunk in rows.chunks(10_000) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (stream_id, version, event) in chunk {
            columns.0.push(event.event_id);
            columns.1.push(*stream_id);
            columns.2.push(*version);
            columns.3.push(event.event_type.as_str());
            columns.4.push(i32::from(event.schema_version));
            columns.5.push(&event.payload);
            columns.6.push(serde_json::to_value(&event.metadata).expect("metadata serialises"));
        }
        sqlx::query(
            "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])",
        )
        .bind(columns.0)
        .bind(columns.1)
        .bind(columns.2)
        .bind(columns.3)
        .bind(columns.4)
        .bind(columns.5)
        .bind(columns.6)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Every row of `table`, as JSON, in primary-key order: two snapshots are
/// equal when the tables are, row for row.
pub async fn snapshot(pool: &PgPool, table: &str, key: &str) -> Vec<serde_json::Value> {
    sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {key}"))
        .fetch_all(pool)
        .await
        .expect("snapshot")
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// An order of customer `customer` placed `minute` minutes after noon on
/// 2026-01-01: two of `SKU-1` at 19.99 (39.98 in all), a 15-minute deadline.
pub fn placed(order_id: Uuid, customer: &str, minute: u32) -> OrderEvent {
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 12, minute, 0).unwrap();
    OrderEvent::OrderPlaced {
        order_id,
        customer_id: customer.into(),
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        lines: vec![OrderLine { sku: "SKU-1".into(), quantity: 2, unit_price_cents: 1999 }],
        total_cents: 3998,
        placed_at: at,
        deadline: at + Duration::minutes(15),
        contact_email: None,
    }
}
