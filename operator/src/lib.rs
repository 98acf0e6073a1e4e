//! kinfer-operator: reconciles `InferenceService` (serving.kinfer.dev/v1alpha1) into a
//! Deployment, a Service, and when wanted a HorizontalPodAutoscaler and a
//! PodDisruptionBudget running the kinfer runtime.
//!
//! The reconcile is a pipeline, one module per step:
//! [`validate`] (no client) → [`build`] (pure builders) → [`controller::apply`]
//! (server-side apply) → [`status`] (computed from what the children report).

pub mod build;
pub mod canary;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod validate;

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
mod reconcile_tests;

pub use config::OperatorConfig;
pub use crd::{InferenceService, InferenceServiceSpec, InferenceServiceStatus};
pub use error::{Error, Result};
