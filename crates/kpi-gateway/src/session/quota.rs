//! Distinct topics per caller: a claim per (caller, topic), counted across all of the caller's sessions.
//!
//! A caller is a token's subject, or the client's address when anonymous
//! (see [`crate::security::access::Caller::key`]). The same topic watched
//! twice by one caller (two tabs, a poll beside a socket) counts once.

use std::collections::HashMap;
use std::sync::Arc;

use kpi_core::Topic;
use parking_lot::Mutex;

/// The per-caller cap and what each caller holds now. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TopicQuota {
    max: usize,
    held: Arc<Mutex<HashMap<String, HashMap<Topic, usize>>>>,
}

impl TopicQuota {
    pub fn new(max: usize) -> Self {
        TopicQuota {
            max,
            held: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A claim on `topic` for `caller`, or `None` when the caller already
    /// holds `max` other topics.
    pub fn claim(&self, caller: &str, topic: &Topic) -> Option<Claim> {
        let mut held = self.held.lock();
        let topics = held.entry(caller.to_string()).or_default();
        if !topics.contains_key(topic) && topics.len() >= self.max {
            if topics.is_empty() {
                held.remove(caller);
            }
            return None;
        }
        *topics.entry(topic.clone()).or_default() += 1;
        Some(Claim {
            quota: self.clone(),
            caller: caller.to_string(),
            topic: topic.clone(),
        })
    }
}

/// One session's hold on a topic; dropping it gives the place back.
pub(crate) struct Claim {
    quota: TopicQuota,
    caller: String,
    topic: Topic,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock();
        let Some(topics) = held.get_mut(&self.caller) else {
            return;
        };
        if let Some(n) = topics.get_mut(&self.topic) {
            *n -= 1;
            if *n == 0 {
                topics.remove(&self.topic);
            }
        }
        if topics.is_empty() {
            held.remove(&self.caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_core::{KpiCode, Period};

    fn t(code: &str) -> Topic {
        Topic::new(KpiCode::parse(code).expect("code"), Period::Minute)
    }

    #[test]
    fn counts_distinct_topics_per_caller_and_frees_on_drop() {
        let q = TopicQuota::new(2);
        let a1 = q.claim("alice", &t("a")).expect("first");
        let a2 = q.claim("alice", &t("a")).expect("the same topic again");
        let b = q.claim("alice", &t("b")).expect("second");
        assert!(q.claim("alice", &t("c")).is_none());
        assert!(q.claim("bob", &t("c")).is_some(), "another caller");
        drop(a1);
        assert!(q.claim("alice", &t("c")).is_none(), "a is still held once");
        drop(a2);
        let _c = q.claim("alice", &t("c")).expect("a was given up");
        drop(b);
        assert_eq!(q.held.lock().get("alice").map(HashMap::len), Some(1));
    }
}
