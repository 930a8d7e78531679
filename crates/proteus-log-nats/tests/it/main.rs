//! Integration tests of the NATS JetStream log against a real server (`PROTEUS_TEST_NATS_URL`,
//! default `nats://127.0.0.1:4222`): the whole log conformance suite, concurrent writers of one
//! partition, appends across a connection outage and across a crash of a server of the
//! test's own, a replicated topic on a cluster of three whose stream leaders are killed and
//! whose reads go on while a restarted replica catches up, keyless retries through another instance,
//! a topic's cached settings kept current across instances,
//! reads that reuse the previous read's consumer, and the refusal of old-layout topics. Each
//! test works under its own stream and subject prefixes and deletes its streams when it ends,
//! even when it fails.

mod cluster;
mod conformance;
mod instances;
mod layout;
mod native_consumers;
mod reads;
mod reconnect;
mod server_crash;
mod support;
mod writers;
