//! The one error type of the schemas crate: every variant names the field and the value
//! that was wrong, so an error reply can be read without the code at hand.

/// A value that does not fit the wire contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A required field or token is empty.
    #[error("{field} is empty")]
    Empty { field: String },
    /// A dotted subject has an empty token (`a..b`, a leading or a trailing dot).
    #[error("{field} {value:?} has an empty token")]
    EmptyToken { field: String, value: String },
    /// A subject or identity contains a NATS wildcard (`*` or `>`).
    #[error("{field} {value:?} contains the wildcard {wildcard:?}")]
    Wildcard {
        field: String,
        value: String,
        wildcard: char,
    },
    /// A subject or identity contains whitespace or a control character.
    #[error("{field} {value:?} contains whitespace or a control character")]
    Whitespace { field: String, value: String },
    /// An identity (edge or agent id) has a character outside `[A-Za-z0-9_-]`.
    #[error("{field} {value:?} has the character {ch:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar {
        field: String,
        value: String,
        ch: char,
    },
    /// A field is longer than its limit.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    /// An event's data is larger than the edge accepts.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    Oversized {
        field: String,
        len: usize,
        max: usize,
    },
    /// A batch holds more events than the edge accepts in one request.
    #[error("the batch holds {count} events, over the limit of {max}")]
    TooManyEvents { count: usize, max: usize },
    /// A batch holds no event at all.
    #[error("the batch holds no event")]
    EmptyBatch,
    /// A required header is missing from a message.
    #[error("header {name} is missing")]
    MissingHeader { name: &'static str },
    /// A header is present but its value does not parse.
    #[error("header {name} has the invalid value {value:?}: {reason}")]
    BadHeader {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// A CloudEvent names a `source` other than the one the mesh gives the agent's
    /// events (from the subject the request came on).
    #[error("{field} is {value:?}, but this agent's events have the source {expected:?}: the mesh sets it from the subject the request came on; send that or leave it out")]
    WrongSource {
        field: String,
        value: String,
        expected: String,
    },
    /// A request body could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// A value could not be encoded (only on a bug: every type here encodes).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A bundle whose ranges or events do not fit together.
    #[error("bundle from edge {edge:?} is inconsistent: {reason}")]
    BadBundle { edge: String, reason: String },
    /// An audit record of a known kind whose fields do not fit its payload.
    #[error("audit record of kind {kind} has fields of the wrong type: {reason}")]
    AuditFields { kind: String, reason: String },
}

impl SchemaError {
    /// Prefixes the field name, e.g. `subject` becomes `events[3].subject`.
    pub fn in_field(self, prefix: &str) -> Self {
        let p = |f: String| format!("{prefix}.{f}");
        match self {
            SchemaError::Empty { field } => SchemaError::Empty { field: p(field) },
            SchemaError::EmptyToken { field, value } => SchemaError::EmptyToken {
                field: p(field),
                value,
            },
            SchemaError::Wildcard {
                field,
                value,
                wildcard,
            } => SchemaError::Wildcard {
                field: p(field),
                value,
                wildcard,
            },
            SchemaError::Whitespace { field, value } => SchemaError::Whitespace {
                field: p(field),
                value,
            },
            SchemaError::BadChar { field, value, ch } => SchemaError::BadChar {
                field: p(field),
                value,
                ch,
            },
            SchemaError::TooLong { field, len, max } => SchemaError::TooLong {
                field: p(field),
                len,
                max,
            },
            SchemaError::Oversized { field, len, max } => SchemaError::Oversized {
                field: p(field),
                len,
                max,
            },
            other => other,
        }
    }
}
