//! Fan-out: the topics this gateway follows upstream and the bounded queues that carry them to clients.
//!
//! [`hub`] owns which topics are held and for whom (interest, linger, the
//! per-gateway cap, the upstream subscriptions); [`topic`] is one topic's
//! recent updates and subscribers under one lock; [`outbox`] is one
//! connection's conflating queue, which reads a subscription's newest value
//! through [`outbox::Source`] and so knows nothing of topics.

pub mod hub;
pub mod outbox;
pub mod topic;
