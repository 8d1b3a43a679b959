//! The errors at the engine's ports (store, results sink, outbox, queue,
//! executor): each says what was being done, keeps its cause, and says
//! whether trying again may help — what retries, the outbox and registries
//! decide on.

use std::error::Error as StdError;

/// Whether a failed operation may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The other side is away or busy (a network failure, a timeout, a
    /// server error, throttling): try again later.
    Transient,
    /// Trying again will fail the same way (refused, not found, invalid).
    Permanent,
}

impl ErrorKind {
    /// The kind of an I/O failure: interruptions, timeouts and a full disk
    /// may pass; everything else stays.
    pub fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::StorageFull
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::ResourceBusy => Self::Transient,
            _ => Self::Permanent,
        }
    }
}

/// The cause of an error, kept as the error it was.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// The constructors every port error shares: what was being done, its
/// kind, and its cause.
macro_rules! port_error {
    ($name:ident) => {
        impl $name {
            /// A failure that will not pass by itself.
            pub fn permanent(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
                Self::new(context, ErrorKind::Permanent, cause.into())
            }

            /// A failure that may pass (the other side is away).
            pub fn transient(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
                Self::new(context, ErrorKind::Transient, cause.into())
            }

            /// A failure whose message says it all.
            pub fn said(kind: ErrorKind, message: impl Into<String>) -> Self {
                Self::new(String::new(), kind, message.into().into())
            }

            /// An I/O failure, classified by [`ErrorKind::of_io`].
            pub fn io(context: impl Into<String>, e: std::io::Error) -> Self {
                Self::new(context, ErrorKind::of_io(&e), Box::new(e))
            }

            fn new(context: impl Into<String>, kind: ErrorKind, cause: Cause) -> Self {
                Self {
                    context: context.into(),
                    kind,
                    cause,
                }
            }

            /// True when trying again may help.
            pub fn is_transient(&self) -> bool {
                self.kind == ErrorKind::Transient
            }
        }
    };
}

/// A failure of the store, the results sink or the outbox.
#[derive(Debug, thiserror::Error)]
#[error("{}{cause}", if context.is_empty() { String::new() } else { format!("{context}: ") })]
pub struct StorageError {
    /// What was being done (`put s3://bucket/key`, `read index`).
    pub context: String,
    pub kind: ErrorKind,
    #[source]
    pub cause: Cause,
}

port_error!(StorageError);

/// A failure of an executor outside a stage's own outcome: preparing the
/// workspace or the run's resources.
#[derive(Debug, thiserror::Error)]
#[error("{}{cause}", if context.is_empty() { String::new() } else { format!("{context}: ") })]
pub struct ExecError {
    pub context: String,
    pub kind: ErrorKind,
    #[source]
    pub cause: Cause,
}

port_error!(ExecError);

/// Why a queued run could not be turned into a run (the repository could
/// not be fetched, its pipeline is invalid, a secret is missing).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ResolveError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
}
