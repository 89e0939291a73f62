//! Interest announcements over a real nats-server: holders of update subscriptions announce their topics, an aggregator's feed reads them.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kpi_bus::{Bus, BusConfig, InterestFeed, Live};
use kpi_core::interest::{decode, INTEREST_QUERY_SUBJECT, INTEREST_SUBJECT, REFRESH};
use kpi_core::{KpiCode, Period, Topic};
use kpi_test_support::NatsServer;

/// "At once": well before a refresh could have sent it instead.
const AT_ONCE: Duration = Duration::from_secs(2);
/// How long to watch for something that must not arrive.
const QUIET: Duration = Duration::from_millis(500);

fn topic(code: &str, period: Period) -> Topic {
    Topic::new(KpiCode::parse(code).expect("code"), period)
}

fn set(topics: &[&Topic]) -> BTreeSet<Topic> {
    topics.iter().map(|t| (*t).clone()).collect()
}

async fn bus(server: &NatsServer) -> Bus {
    Bus::connect_nats(&server.url(), BusConfig::default())
        .await
        .unwrap_or_else(|e| panic!("connecting the bus to {}: {e}", server.url()))
}

/// A raw client seeing every announcement, subscribed before it returns.
async fn observer(server: &NatsServer) -> (async_nats::Client, async_nats::Subscriber) {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let sub = client.subscribe(INTEREST_SUBJECT).await.expect("subscribe");
    client.flush().await.expect("flush");
    (client, sub)
}

async fn announcement(sub: &mut async_nats::Subscriber, within: Duration) -> BTreeSet<Topic> {
    let m = tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no announcement within {within:?}"))
        .expect("subscription open");
    decode(&m.payload)
        .expect("a valid announcement")
        .into_iter()
        .collect()
}

async fn next_topics(feed: &mut InterestFeed, within: Duration) -> BTreeSet<Topic> {
    tokio::time::timeout(within, feed.next())
        .await
        .unwrap_or_else(|_| panic!("the feed yielded nothing within {within:?}"))
        .expect("feed open")
        .into_iter()
        .collect()
}

/// Asks every holder to announce now, as an aggregator does when it starts.
async fn ask(raw: &async_nats::Client) {
    raw.publish(INTEREST_QUERY_SUBJECT, Bytes::new())
        .await
        .expect("query");
}

/// An observer, and a bus holding one subscription to `signups/day`,
/// whose announcement on subscribing the observer has seen.
async fn holding_one(
    server: &NatsServer,
) -> (
    async_nats::Client,
    async_nats::Subscriber,
    Bus,
    Topic,
    kpi_bus::UpdateSubscription,
) {
    let (raw, mut seen) = observer(server).await;
    let holder = bus(server).await;
    let t = topic("signups", Period::Day);
    let sub = holder.subscribe_updates(&t).await.expect("subscribe");
    assert_eq!(announcement(&mut seen, AT_ONCE).await, set(&[&t]));
    (raw, seen, holder, t, sub)
}

#[tokio::test]
async fn holders_announce_on_subscribing_when_asked_and_on_every_refresh() {
    let server = NatsServer::start();
    let (raw, mut seen) = observer(&server).await;
    let holder = bus(&server).await;
    let a = topic("orders", Period::Minute);
    let b = topic("refunds", Period::Hour);

    let mut sub_a = holder.subscribe_updates(&a).await.expect("subscribe");
    assert_eq!(announcement(&mut seen, AT_ONCE).await, set(&[&a]));
    // What an aggregator publishes on hearing the announcement reaches the
    // subscription that caused it.
    raw.publish(a.updates_subject(), Bytes::from_static(b"rendered"))
        .await
        .expect("publish");
    match tokio::time::timeout(AT_ONCE, sub_a.next()).await {
        Ok(Some(Live::Message(m))) => assert_eq!(m, "rendered"),
        other => panic!("the update rendered on announcement was not delivered: {other:?}"),
    }

    let sub_b = holder.subscribe_updates(&b).await.expect("subscribe");
    let _sub_b_again = holder.subscribe_updates(&b).await.expect("subscribe");
    assert_eq!(announcement(&mut seen, AT_ONCE).await, set(&[&b]));
    assert_eq!(announcement(&mut seen, AT_ONCE).await, set(&[&b]));

    // An aggregator starting now hears of both at once, not at the next
    // refresh; its own query is not taken for an (empty) announcement.
    let aggregator = bus(&server).await;
    let mut feed = aggregator
        .interest_feed()
        .await
        .expect("interest feed")
        .expect("NATS has a feed");
    assert_eq!(next_topics(&mut feed, AT_ONCE).await, set(&[&a, &b]));
    assert_eq!(announcement(&mut seen, AT_ONCE).await, set(&[&a, &b]));

    // Released topics leave the refreshes; one of two subscriptions of a
    // topic still holds it.
    drop(sub_a);
    drop(sub_b);
    let refreshed = announcement(&mut seen, REFRESH + AT_ONCE).await;
    assert_eq!(refreshed, set(&[&b]));
    assert_eq!(next_topics(&mut feed, AT_ONCE).await, set(&[&b]));
}

#[tokio::test]
async fn nothing_held_nothing_announced_even_when_asked() {
    let server = NatsServer::start();
    let (raw, mut seen, _holder, _t, sub) = holding_one(&server).await;
    drop(sub);
    ask(&raw).await;
    if let Ok(m) = tokio::time::timeout(REFRESH + AT_ONCE, seen.next()).await {
        panic!("announced with nothing held: {m:?}");
    }
}

#[tokio::test]
async fn a_dropped_bus_stops_announcing() {
    let server = NatsServer::start();
    let (raw, mut seen, holder, t, _sub) = holding_one(&server).await;
    ask(&raw).await;
    assert_eq!(announcement(&mut seen, AT_ONCE).await, set(&[&t]));

    drop(holder);
    // Let the abort land before asking again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ask(&raw).await;
    if let Ok(m) = tokio::time::timeout(QUIET, seen.next()).await {
        panic!("a dropped bus still answered a query: {m:?}");
    }
}

#[tokio::test]
async fn an_invalid_announcement_is_skipped() {
    let server = NatsServer::start();
    let aggregator = bus(&server).await;
    let mut feed = aggregator
        .interest_feed()
        .await
        .expect("interest feed")
        .expect("NATS has a feed");
    let raw = async_nats::connect(server.url()).await.expect("connect");
    for payload in [
        &b"a*.minute\n"[..],
        b"orders.minute\nnodot\n",
        b"orders.hour\n",
    ] {
        raw.publish(INTEREST_SUBJECT, Bytes::copy_from_slice(payload))
            .await
            .expect("publish");
    }
    assert_eq!(
        next_topics(&mut feed, AT_ONCE).await,
        set(&[&topic("orders", Period::Hour)])
    );
}

#[tokio::test]
async fn the_memory_bus_has_no_interest_feed() {
    let bus = Bus::memory(BusConfig::default());
    assert!(bus.interest_feed().await.expect("interest feed").is_none());
}
