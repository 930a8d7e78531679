//! Prometheus metric names of consumer groups (labels: `topic`, `group`, and `partition` for
//! lag). Documented in docs/consumer-groups.md.

pub const DELIVERED: &str = "proteus_group_delivered_total";
pub const REDELIVERED: &str = "proteus_group_redelivered_total";
pub const ACKED: &str = "proteus_group_acked_total";
pub const NACKED: &str = "proteus_group_nacked_total";
pub const EXPIRED: &str = "proteus_group_ack_deadline_expired_total";
pub const DEAD_LETTERED: &str = "proteus_group_dead_lettered_total";
pub const ACK_LATENCY: &str = "proteus_group_ack_latency_seconds";
pub const UNACKED: &str = "proteus_group_unacked_events";
pub const MEMBERS: &str = "proteus_group_members";
pub const LAG_EVENTS: &str = "proteus_group_lag_events";
pub const LAG_SECONDS: &str = "proteus_group_lag_seconds";
pub const PUSH_REQUESTS: &str = "proteus_group_push_requests_total";
/// Partitions read again from their first event because the group's position was past their end.
pub const RESTARTED_PARTITIONS: &str = "proteus_group_partitions_restarted_total";
