//! The crate's one error type.

use std::fmt;

use netlink_packet_core::DecodeError;

use crate::message::IpvsCmd;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to IPVS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The generic netlink controller does not know the "IPVS" family.
    #[error("IPVS generic netlink family not found: is the ip_vs module loaded? (modprobe ip_vs)")]
    FamilyNotFound,

    /// The kernel refused a request. Use [`Error::is_exists`],
    /// [`Error::is_not_found`] and [`Error::is_invalid`] to tell the usual
    /// cases apart.
    #[error("{cmd} {object}: {}{}", std::io::Error::from_raw_os_error(*errno), extack_suffix(extack))]
    Kernel {
        /// The positive errno (EEXIST, ESRCH, ...).
        errno: i32,
        /// The command that failed.
        cmd: IpvsCmd,
        /// What the command was about, e.g. "TCP 10.0.0.1:80".
        object: String,
        /// The kernel's extended-ACK message, when it sent one.
        extack: Option<String>,
    },

    /// A message or attribute from the kernel could not be decoded.
    #[error("failed to decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The parser's explanation, naming the attribute.
        #[source]
        source: DecodeError,
    },

    /// A typed object was built from attributes that lack a required one.
    #[error("{object}: missing {attribute}")]
    MissingAttribute {
        /// The object being built ("service", "destination").
        object: &'static str,
        /// The attribute, spelled as in linux/ip_vs.h.
        attribute: &'static str,
    },

    /// An attribute has a value the typed object cannot hold.
    #[error("{object}: invalid {attribute} value {value}")]
    InvalidAttribute {
        /// The object being built.
        object: &'static str,
        /// The attribute, spelled as in linux/ip_vs.h.
        attribute: &'static str,
        /// The offending value.
        value: String,
    },

    /// The socket's receive buffer overflowed (ENOBUFS): replies were lost,
    /// so the outcome of the requests in flight is unknown.
    #[error("netlink receive buffer overflowed (ENOBUFS): the outcome of {cmd} {object} is unknown; dump the table to resynchronise")]
    Overrun {
        /// The command whose reply may have been lost.
        cmd: IpvsCmd,
        /// What the command was about.
        object: String,
    },

    /// The kernel marked a dump NLM_F_DUMP_INTR (the table changed while it
    /// was being dumped) on every attempt.
    #[error("{cmd} dump was interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        /// The dump command.
        cmd: IpvsCmd,
        /// How many attempts were made.
        attempts: u32,
    },

    /// The connection task has stopped (dropped, or its socket failed).
    #[error("the netlink connection is closed")]
    ConnectionClosed,

    /// A socket operation failed.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
}

fn extack_suffix(extack: &Option<String>) -> ExtackSuffix<'_> {
    ExtackSuffix(extack.as_deref())
}

struct ExtackSuffix<'a>(Option<&'a str>);

impl fmt::Display for ExtackSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(message) => write!(f, " ({message})"),
            None => Ok(()),
        }
    }
}

impl Error {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object already exists (EEXIST): adding a service or destination
    /// that is there.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object does not exist: IPVS answers ESRCH for a missing service
    /// and ENOENT for a missing destination; both count.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ESRCH) | Some(libc::ENOENT))
    }

    /// The kernel rejected the request's contents (EINVAL), e.g. an unknown
    /// scheduler or an out-of-range value.
    pub fn is_invalid(&self) -> bool {
        self.errno() == Some(libc::EINVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(errno: i32) -> Error {
        Error::Kernel {
            errno,
            cmd: IpvsCmd::NewService,
            object: "TCP 10.0.0.1:80".into(),
            extack: None,
        }
    }

    #[test]
    fn errno_classes() {
        struct Case {
            name: &'static str,
            errno: i32,
            exists: bool,
            not_found: bool,
            invalid: bool,
        }
        let cases = [
            Case {
                name: "duplicate add",
                errno: libc::EEXIST,
                exists: true,
                not_found: false,
                invalid: false,
            },
            Case {
                name: "missing service",
                errno: libc::ESRCH,
                exists: false,
                not_found: true,
                invalid: false,
            },
            Case {
                name: "missing destination",
                errno: libc::ENOENT,
                exists: false,
                not_found: true,
                invalid: false,
            },
            Case {
                name: "bad argument",
                errno: libc::EINVAL,
                exists: false,
                not_found: false,
                invalid: true,
            },
            Case {
                name: "permission",
                errno: libc::EPERM,
                exists: false,
                not_found: false,
                invalid: false,
            },
        ];
        for case in cases {
            let err = kernel(case.errno);
            assert_eq!(err.is_exists(), case.exists, "{}", case.name);
            assert_eq!(err.is_not_found(), case.not_found, "{}", case.name);
            assert_eq!(err.is_invalid(), case.invalid, "{}", case.name);
        }
    }

    #[test]
    fn kernel_errors_name_the_command_the_object_and_the_extack() {
        let mut err = kernel(libc::EEXIST);
        assert_eq!(
            err.to_string(),
            "IPVS_CMD_NEW_SERVICE TCP 10.0.0.1:80: File exists (os error 17)"
        );
        if let Error::Kernel { extack, .. } = &mut err {
            *extack = Some("service exists".into());
        }
        assert!(err.to_string().ends_with("(os error 17) (service exists)"));
    }
}
