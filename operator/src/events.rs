//! Events (`events.k8s.io/v1`) about InferenceServices.
//!
//! kube's `Recorder` folds every event with the same type, reason, action and regarding object
//! into one series and keeps the first event's note: "Ready ×7: serving …/iris/1/…" after the
//! model moved to iris/2. This recorder also keys the series by the note, so an event that says
//! something new is a new event, and only a repeat of the very same message becomes a series
//! (`series.count`, `series.lastObservedTime`), as the events API intends.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Client,
    api::{Api, Patch, PatchParams, PostParams},
    runtime::events::{EventType, Reporter},
};
use serde_json::json;

/// How long a published event can still be continued as a series (kube's recorder: 6 min).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// Longest event note the events API accepts.
pub const MAX_EVENT_NOTE: usize = 1024;

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Normal or Warning.
    pub type_: EventType,
    /// Why (`Ready`, `ModelFailed`, …).
    pub reason: String,
    /// What the operator did (`Apply`, `Delete`, `Rollout`, `Validate`).
    pub action: String,
    /// What happened this time, for people.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    event: Event,
    namespace: String,
    name: String,
    uid: String,
}

struct Published {
    /// Name of the Event object.
    name: String,
    count: i32,
    last: Instant,
}

/// Publishes events, folding only exact repeats (same reason, action and note about the same
/// object) into a series.
pub struct EventRecorder {
    client: Client,
    reporter: Reporter,
    published: Mutex<HashMap<Key, Published>>,
}

impl EventRecorder {
    /// A recorder that reports as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, published: Mutex::new(HashMap::new()) }
    }

    /// Publishes `event` about `regarding` (which must be namespaced): a new Event object, or,
    /// when the same event was published within the last 6 minutes, one more in its series.
    pub async fn publish(&self, mut event: Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        event.note = truncate_note(event.note);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let key = Key {
            event: event.clone(),
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
        };
        let now = Instant::now();
        // The lock is never held across an await.
        let repeat = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.retain(|_, p| now.duration_since(p.last) < SERIES_TTL);
            published.get(&key).map(|p| (p.name.clone(), p.count + 1))
        };
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Some((name, count)) = repeat {
            let series = json!({"series": {"count": count, "lastObservedTime": MicroTime(Timestamp::now())}});
            match events.patch(&name, &PatchParams::default(), &Patch::Merge(&series)).await {
                Ok(_) => {
                    self.remember(key, name, count, now);
                    return Ok(());
                }
                // Deleted meanwhile (events expire): start a new one.
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let created = events.create(&PostParams::default(), &self.build(&event, regarding, &namespace)).await?;
        self.remember(key, created.metadata.name.unwrap_or_default(), 1, now);
        Ok(())
    }

    fn remember(&self, key: Key, name: String, count: i32, last: Instant) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        published.insert(key, Published { name, count, last });
    }

    fn build(&self, event: &Event, regarding: &ObjectReference, namespace: &str) -> K8sEvent {
        let now = Timestamp::now();
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: Some(event.note.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            metadata: ObjectMeta {
                namespace: Some(namespace.to_string()),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            ..K8sEvent::default()
        }
    }
}

/// The events API refuses notes over 1 kB.
fn truncate_note(mut note: String) -> String {
    if note.len() > MAX_EVENT_NOTE {
        let mut cut = MAX_EVENT_NOTE - '…'.len_utf8();
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    note
}
