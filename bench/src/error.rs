//! What can go wrong loading and driving the benchmarks' programs.

use thiserror::Error;

/// An error of the benchmarks' programs, naming the program it concerns.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A step the kernel or aya refused: loading the object, reading or
    /// writing a map, attaching, a live-frames run.
    #[error("{program}: failed to {action}")]
    Failed {
        program: &'static str,
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{program}: the object has no program or map named {name}")]
    Missing {
        program: &'static str,
        name: &'static str,
    },
    #[error("the load generator cannot send this frame: {reason}")]
    Frame { reason: String },
    #[error("batch size {size} is out of range (at most {max})")]
    BatchSize { size: u32, max: u32 },
    #[error(
        "{flows} flows from source port {base} do not fit: at least 1, and the last port at most 65535"
    )]
    Flows { flows: u32, base: u16 },
}

impl BenchError {
    /// Turns the error of `action` on `program` into a [`BenchError`].
    pub(crate) fn failed<E>(
        program: &'static str,
        action: &str,
    ) -> impl FnOnce(E) -> BenchError + use<E>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let action = action.to_owned();
        move |source| BenchError::Failed {
            program,
            action,
            source: Box::new(source),
        }
    }
}
