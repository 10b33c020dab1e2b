//! Why an API object could not be folded into the model.

use std::fmt;

use crate::desired::ServiceName;

/// The kind of API object an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Endpoints,
    Node,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Endpoints => "Endpoints",
            ObjectKind::Node => "Node",
        })
    }
}

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The field is required and absent or empty.
    Missing,
    /// A value outside the set the proxy understands (a protocol, a type, a policy).
    Unsupported(String),
    /// Not an IP address.
    InvalidIp(String),
    /// Not a CIDR (address/prefix length).
    InvalidCidr(String),
    /// A number outside its allowed range.
    OutOfRange(i64),
    /// An address whose family contradicts the slice's addressType.
    WrongFamily(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::Unsupported(v) => write!(f, "unsupported value {v:?}"),
            Problem::InvalidIp(v) => write!(f, "invalid IP {v:?}"),
            Problem::InvalidCidr(v) => write!(f, "invalid CIDR {v:?}"),
            Problem::OutOfRange(v) => write!(f, "value {v} out of range"),
            Problem::WrongFamily(v) => write!(f, "address {v:?} does not match addressType"),
        }
    }
}

/// An API object the model rejected: names the object, the field and the
/// value, e.g. `Service default/web: spec.ports[1].protocol: unsupported value "HTTP"`.
///
/// The model keeps the last good version of a rejected object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {problem}")]
pub struct ModelError {
    pub kind: ObjectKind,
    /// `namespace/name` (or the name alone for a Node).
    pub object: String,
    /// The field path as in the API, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub problem: Problem,
    /// The Service the object belongs to: itself, the Service an Endpoints
    /// shares its name with, or an EndpointSlice's
    /// `kubernetes.io/service-name`. `None` for a Node, or when unknown.
    /// Boxed: errors are rare, and results carrying one stay small.
    pub service: Option<Box<ServiceOf>>,
}

/// The Service a rejected object belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOf {
    pub name: ServiceName,
    /// Its `metadata.uid`, when the object is the Service.
    pub uid: Option<super::Uid>,
}

/// Builds errors about one object without repeating its identity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectRef<'a> {
    pub kind: ObjectKind,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// The name of the Service the object belongs to, in its namespace.
    pub service: Option<&'a str>,
    /// The object's own `metadata.uid`.
    pub uid: Option<&'a str>,
}

impl ObjectRef<'_> {
    pub fn error(&self, field: impl Into<String>, problem: Problem) -> ModelError {
        let object = match self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.to_owned(),
        };
        let own_uid = self.kind == ObjectKind::Service;
        let service = self.service.map(|name| {
            Box::new(ServiceOf {
                name: ServiceName::new(self.namespace.unwrap_or_default(), name),
                uid: self.uid.filter(|_| own_uid).and_then(super::Uid::parse),
            })
        });
        ModelError {
            kind: self.kind,
            object,
            field: field.into(),
            problem,
            service,
        }
    }
}
