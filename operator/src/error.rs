//! Typed errors of the reconciler, each with a bounded `category()` label for metrics and
//! events.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be served as written; waiting for the user to change it.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// The API server refused a child object built from the spec (HTTP 400/422).
    #[error("the API server rejected {kind} {name}: {source}")]
    Rejected {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// Server-side apply of a child failed.
    #[error("failed to apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// Deleting a child no longer wanted failed.
    #[error("failed to delete {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// Reading children (or their pods) failed.
    #[error("failed to read {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: kube::Error,
    },

    /// Writing the status subresource failed.
    #[error("failed to patch status: {0}")]
    Status(#[source] kube::Error),

    /// The object lacks a field the API server always sets (namespace, uid).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A bounded label for metrics (`errors_total{category}`) and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Rejected { .. } => "rejected",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Read { .. } => "read",
            Error::Status(_) => "status",
            Error::MissingObjectKey(_) => "missing_object_key",
        }
    }

    /// Whether retrying without a spec change cannot help (the controller then waits for a
    /// change instead of requeueing).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_) | Error::Rejected { .. } | Error::MissingObjectKey(_))
    }
}

/// Whether a kube error means the request itself was refused as invalid.
pub(crate) fn is_rejection(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.is_invalid() || s.code == 400)
}
