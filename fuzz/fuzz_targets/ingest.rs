//! What the sidecar ingests from the filter (`wire::ShadowRecordBatch`,
//! `wire::AssignmentBatch`): any bytes through serde and the sidecar's `validate`,
//! never a panic. And what the filter sends: any record is cut to
//! `MAX_RECORD_BYTES` by `fit`, and batches split by `batch_len` stay under
//! `MAX_POST_BYTES`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_core::wire::{
    batch_len, json_len, AssignmentBatch, ShadowRecordBatch, MAX_POST_BYTES, MAX_PROXY_ID_LEN,
    MAX_RECORD_BYTES,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<AssignmentBatch>(data) {
        let _ = batch.validate();
    }
    let Ok(batch) = serde_json::from_slice::<ShadowRecordBatch>(data) else {
        return;
    };
    let valid = batch.validate().is_ok();
    let mut records = batch.records;
    let mut sizes = Vec::with_capacity(records.len());
    for r in &mut records {
        // As the filter builds them: the sidecar adds the proxy.
        r.proxy = None;
        let (size, _) = r.fit(MAX_RECORD_BYTES);
        assert_eq!(size, json_len(r));
        assert_eq!(
            size,
            serde_json::to_vec(r).map(|v| v.len()).unwrap_or(usize::MAX)
        );
        if valid {
            // Valid records have bounded fields: their predictions are what is cut.
            assert!(size <= MAX_RECORD_BYTES, "{size}");
        }
        sizes.push(size);
    }
    if !valid {
        return;
    }
    let mut rest = records.as_slice();
    let mut sizes = sizes.as_slice();
    while !rest.is_empty() {
        let n = batch_len(sizes.iter().copied());
        assert!(n >= 1 && n <= rest.len());
        let (head, tail) = rest.split_at(n);
        let body = ShadowRecordBatch {
            proxy: Some("p".repeat(MAX_PROXY_ID_LEN)),
            records: head.to_vec(),
        };
        assert!(json_len(&body) <= MAX_POST_BYTES);
        rest = tail;
        sizes = &sizes[n..];
    }
});
