//! Appends, deletions (tombstones) and snapshots: every write is one message published against
//! the subject's expected last sequence.

use super::*;

impl NatsEventStore {
    pub(super) async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Result<u64, PublishErrorKind>, async_nats::jetstream::context::PublishError> {
        let sent = self
            .inner
            .js
            .publish_with_headers(subject, headers, payload)
            .await;
        let acked = match sent {
            Ok(future) => future.await,
            Err(error) => Err(error),
        };
        match acked {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(error) => match error.kind() {
                PublishErrorKind::WrongLastSequence => Ok(Err(PublishErrorKind::WrongLastSequence)),
                PublishErrorKind::MaxPayloadExceeded => {
                    Ok(Err(PublishErrorKind::MaxPayloadExceeded))
                }
                _ => Err(error),
            },
        }
    }

    pub(super) fn too_many_conflicts(
        &self,
        stream: &StreamName,
        conflicts: u32,
    ) -> EventStoreError {
        EventStoreError::Unavailable {
            reason: format!(
                "stream '{stream}' is being written by other writers so fast that this write lost {conflicts} races in a row; retry it"
            ),
        }
    }

    pub(super) async fn append_impl(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, EventStoreError> {
        let _gate = self.write_gate().await?;
        let payload = codec::encode_events(&events);
        let max = self.payload_bytes_max();
        if payload.len() > max {
            return Err(too_large(
                payload.len(),
                max,
                "the append's size in NATS (its events' ids, types, data and metadata, framed)",
            ));
        }
        let subject = self.subject(stream);
        let slot = self.index_lock(stream);
        let mut index = slot.index.lock().await;
        let count = events.len() as u64;
        let keys: Vec<u64> = events.iter().map(|event| id_key(&event.id)).collect();
        let mut conflicts = 0;
        loop {
            let (last_seq, actual) = match index.tail.take() {
                // The index is complete up to the cached end: nothing to read.
                Some((last_seq, last_version)) if index.seq == last_seq => {
                    (last_seq, Some(last_version))
                }
                // A stream this instance knows nothing of (new, or its index evicted), with an
                // expectation an empty stream meets: publish as its first append without
                // reading first, as a client of JetStream would. The server refuses it
                // (expected last subject sequence 0) if the subject holds anything at all,
                // events or a tombstone; then the end is read below and the append decided
                // again. An empty stream has no event ids, so nothing can be a duplicate.
                None if conflicts == 0
                    && index.seq == 0
                    && index.ids.is_empty()
                    && matches!(expected, ExpectedVersion::Any | ExpectedVersion::NoStream) =>
                {
                    (0, None)
                }
                _ => {
                    let (last_seq, actual) = match self.state(stream, &subject).await? {
                        State::Deleted { .. } => {
                            return Err(EventStoreError::StreamDeleted {
                                stream: stream.clone(),
                            });
                        }
                        State::None => {
                            *index = IdIndex::default();
                            (0, None)
                        }
                        State::Live {
                            last,
                            first_version,
                            count,
                        } => (last.seq, Some(first_version + count - 1)),
                    };
                    self.refresh_index(stream, &subject, &mut index, last_seq)
                        .await?;
                    (last_seq, actual)
                }
            };
            // An id the index does not hold is not in the stream: with none held (almost every
            // append), nothing is a retry and there is nothing to confirm or decide.
            if keys.iter().any(|key| index.ids.contains(key)) {
                let hits: Vec<bool> = keys.iter().map(|key| index.ids.contains(key)).collect();
                // (version, position) of each event the stream already holds.
                let found = self
                    .confirm_hits(stream, &subject, &events, &hits, last_seq)
                    .await?;
                let versions: Vec<Option<u64>> = found.iter().map(|f| f.map(|(v, _)| v)).collect();
                if let Idempotency::Duplicate { first_version } =
                    check_idempotency(stream, &events, &versions)?
                {
                    let position = |at: usize| found[at].map_or(0, |(_, p)| p);
                    return Ok(AppendOutcome {
                        first_version,
                        last_version: first_version + count - 1,
                        first_position: position(0),
                        last_position: position(events.len() - 1),
                        duplicate: true,
                    });
                }
            }
            check_expected_version(stream, expected, actual)?;
            let first_version = actual.map_or(0, |v| v + 1);
            let headers = codec::events_headers(first_version, events.len(), last_seq);
            match self
                .publish(subject.clone(), headers, payload.clone())
                .await
            {
                Ok(Ok(seq)) => {
                    // Grown once per append rather than doubling several times within it.
                    let before = index.ids.len();
                    index.ids.reserve(keys.len());
                    index.ids.extend(keys.iter().copied());
                    index.seq = seq;
                    index.tail = Some((seq, first_version + count - 1));
                    // What the set grew by, not the events: an id whose hash the set already
                    // held (a false hit, confirmed absent above) adds no entry.
                    self.account_ids(index.ids.len() - before);
                    let outcome = AppendOutcome {
                        first_version,
                        last_version: first_version + count - 1,
                        first_position: position_of(seq, 0),
                        last_position: position_of(seq, count - 1),
                        duplicate: false,
                    };
                    self.advance_head(seq, outcome.last_position);
                    return Ok(outcome);
                }
                Ok(Err(PublishErrorKind::WrongLastSequence)) => {
                    // Another writer changed the stream since we read its end: read it again
                    // and decide again (a retry may now be a duplicate, an Exact expectation
                    // may now fail).
                    conflicts += 1;
                    if conflicts > self.inner.config.append_conflict_retries_max {
                        return Err(self.too_many_conflicts(stream, conflicts));
                    }
                }
                Ok(Err(_)) => {
                    return Err(too_large(
                        payload.len(),
                        max,
                        "the append's size in NATS (its events' ids, types, data and metadata, framed)",
                    ));
                }
                Err(error) => {
                    let what = format!("appending to stream '{stream}'");
                    return Err(self.error(&what, error, true));
                }
            }
        }
    }

    pub(super) async fn delete_impl(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        let _gate = self.write_gate().await?;
        let subject = self.subject(stream);
        let slot = self.index_lock(stream);
        let mut index = slot.index.lock().await;
        let mut conflicts = 0;
        loop {
            let (last_seq, actual, last_position) = match self.state(stream, &subject).await? {
                State::Deleted { .. } => {
                    return Err(EventStoreError::StreamDeleted {
                        stream: stream.clone(),
                    });
                }
                State::None => (0, None, None),
                State::Live {
                    last,
                    first_version,
                    count,
                } => (
                    last.seq,
                    Some(first_version + count - 1),
                    Some(position_of(last.seq, count - 1)),
                ),
            };
            check_expected_version(stream, expected, actual)?;
            let headers = codec::tombstone_headers(actual, last_position, last_seq);
            let what = format!("deleting stream '{stream}'");
            match self.publish(subject.clone(), headers, Bytes::new()).await {
                Ok(Ok(_)) => {
                    *index = IdIndex::default();
                    return Ok(DeleteOutcome {
                        last_version: actual,
                    });
                }
                Ok(Err(PublishErrorKind::WrongLastSequence)) => {
                    conflicts += 1;
                    if conflicts > self.inner.config.append_conflict_retries_max {
                        return Err(self.too_many_conflicts(stream, conflicts));
                    }
                }
                Ok(Err(_)) => {
                    return Err(storage(format!(
                        "{what}: the tombstone was refused as too large"
                    )));
                }
                Err(error) => return Err(self.error(&what, error, true)),
            }
        }
    }

    pub(super) async fn put_snapshot_impl(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError> {
        validate_snapshot(snapshot_type, &data)?;
        let _gate = self.write_gate().await?;
        let payload = codec::encode_snapshot(version, snapshot_type, &data);
        let max = self.payload_bytes_max();
        if payload.len() > max {
            return Err(too_large(payload.len(), max, "the snapshot's size in NATS"));
        }
        let subject = self.subject(stream);
        let snapshot_subject = self.snapshot_subject(stream);
        let what = format!("storing the snapshot of stream '{stream}'");
        let mut conflicts = 0;
        loop {
            let last_version = self
                .state(stream, &subject)
                .await?
                .live(stream)?
                .last_version();
            if version > last_version {
                return Err(EventStoreError::SnapshotAheadOfStream {
                    stream: stream.clone(),
                    version,
                    last_version: Some(last_version),
                });
            }
            let stored = self
                .last_on(&self.inner.snapshots, &snapshot_subject, &what)
                .await?;
            let stored_seq = stored.as_ref().map_or(0, |m| m.seq);
            if let Some(stored) = stored {
                let (stored_version, _, _) =
                    codec::decode_snapshot(&stored.payload).map_err(|reason| {
                        corrupt(&self.inner.config.snapshots_stream(), stored.seq, reason)
                    })?;
                if stored_version > version {
                    return Err(EventStoreError::SnapshotOutdated {
                        stream: stream.clone(),
                        version,
                        stored_version,
                    });
                }
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                stored_seq.to_string().as_str(),
            );
            match self
                .publish(snapshot_subject.clone(), headers, payload.clone())
                .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(PublishErrorKind::WrongLastSequence)) => {
                    conflicts += 1;
                    if conflicts > self.inner.config.append_conflict_retries_max {
                        return Err(self.too_many_conflicts(stream, conflicts));
                    }
                }
                Ok(Err(_)) => {
                    return Err(too_large(payload.len(), max, "the snapshot's size in NATS"));
                }
                Err(error) => return Err(self.error(&what, error, true)),
            }
        }
    }
}
