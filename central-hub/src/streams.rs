//! The JetStream streams and the KV bucket the central hub owns, created or updated on
//! start (idempotent, so several hubs may start at once).
//!
//! * `MESH_INGRESS` — `mesh.up.>`, work queue: a bundle leaves once a lander acked it.
//! * `MESH_EVENTS` — `mesh.evt.>`, limits retention, `Nats-Msg-Id` de-duplication.
//! * `MESH_AUDIT` — `mesh.audit.>`, the hash-chained audit log; denies deletes and purges.
//! * `MESH_DLQ` — `mesh.dlq.>`, dead letters.
//! * `MESH_LANDER` — KV, one key per edge: the highest edge sequence landed.

use async_nats::jetstream::{self, kv, stream};

use crate::config::CentralConfig;

pub async fn ensure(
    js: &jetstream::Context,
    cfg: &CentralConfig,
) -> Result<kv::Store, async_nats::Error> {
    use schemas::subject as s;
    js.create_or_update_stream(stream::Config {
        name: s::STREAM_INGRESS.into(),
        description: Some("agentmesh: bundles of events in transit from the edges".into()),
        subjects: vec![s::UP_ALL.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: cfg.ingress.duplicate_window,
        num_replicas: cfg.ingress.replicas,
        ..Default::default()
    })
    .await?;
    js.create_or_update_stream(stream::Config {
        name: s::STREAM_EVENTS.into(),
        description: Some("agentmesh: every accepted event, once".into()),
        subjects: vec![s::EVT_ALL.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: cfg.events.max_age,
        max_bytes: cfg.events.max_bytes,
        duplicate_window: cfg.events.duplicate_window,
        num_replicas: cfg.events.replicas,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    js.create_or_update_stream(stream::Config {
        name: s::STREAM_AUDIT.into(),
        description: Some("agentmesh: hash-chained audit log".into()),
        subjects: vec![s::AUDIT_ALL.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.events.replicas,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    js.create_or_update_stream(stream::Config {
        name: s::STREAM_DLQ.into(),
        description: Some("agentmesh: dead letters with their reason headers".into()),
        subjects: vec![s::DLQ_ALL.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.events.replicas,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    let kv = js
        .create_or_update_key_value(kv::Config {
            bucket: s::BUCKET_LANDER.into(),
            description: "agentmesh: per-edge high-water mark of the lander".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: cfg.events.replicas,
            ..Default::default()
        })
        .await?;
    Ok(kv)
}
