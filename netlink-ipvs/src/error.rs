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

    /// The kernel refused a request. [`Error::is_exists`],
    /// [`Error::is_not_found`], [`Error::is_unknown_scheduler`] and
    /// [`Error::is_invalid`] tell the usual cases apart. They read the
    /// command as well as the errno, because IPVS answers ENOENT both for a
    /// missing destination and for an unknown scheduler.
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
    /// that is there, or starting a sync daemon that runs.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object the request names does not exist. In ip_vs_ctl.c that is
    /// ESRCH for a missing service (every command that names one except
    /// NEW_SERVICE, and for a stopped sync daemon) and ENOENT for a missing
    /// destination of SET_DEST or DEL_DEST.
    ///
    /// ENOENT from NEW_SERVICE or SET_SERVICE does not count: it means an
    /// unknown scheduler or persistence engine, see
    /// [`Error::is_unknown_scheduler`]. Treating "not found" as "already
    /// gone" is therefore safe: it never swallows a misspelled scheduler.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Kernel { errno, cmd, .. } => match *errno {
                libc::ESRCH => true,
                libc::ENOENT => matches!(cmd, IpvsCmd::SetDest | IpvsCmd::DelDest),
                _ => false,
            },
            _ => false,
        }
    }

    /// NEW_SERVICE or SET_SERVICE named a scheduler or persistence engine
    /// the kernel has not got: no module `ip_vs_<name>` (or
    /// `ip_vs_pe_<name>`) is loaded or loadable. The kernel answers ENOENT,
    /// sends no extended ACK, and only logs `Scheduler module ip_vs_<name>
    /// not found`.
    pub fn is_unknown_scheduler(&self) -> bool {
        matches!(
            self,
            Self::Kernel {
                errno: libc::ENOENT,
                cmd: IpvsCmd::NewService | IpvsCmd::SetService,
                ..
            }
        )
    }

    /// The kernel rejected the request's contents: EINVAL (a required
    /// attribute missing, an IPv6 persistence netmask outside 1..=128, a GUE
    /// tunnel without a port, a destination address that is not unicast) or
    /// ERANGE (a weight above `i32::MAX`, a lower threshold above the upper
    /// one). An unknown scheduler is not among them: see
    /// [`Error::is_unknown_scheduler`].
    pub fn is_invalid(&self) -> bool {
        matches!(self.errno(), Some(libc::EINVAL | libc::ERANGE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(cmd: IpvsCmd, errno: i32) -> Error {
        Error::Kernel {
            errno,
            cmd,
            object: "TCP 10.0.0.1:80".into(),
            extack: None,
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Class {
        Exists,
        NotFound,
        UnknownScheduler,
        Invalid,
        Unclassified,
    }

    fn class(err: &Error) -> Class {
        let classes = [
            (err.is_exists(), Class::Exists),
            (err.is_not_found(), Class::NotFound),
            (err.is_unknown_scheduler(), Class::UnknownScheduler),
            (err.is_invalid(), Class::Invalid),
        ];
        let mut matching = classes.into_iter().filter(|(hit, _)| *hit);
        let class = matching.next().map_or(Class::Unclassified, |(_, c)| c);
        assert!(matching.next().is_none(), "{err} is in two classes");
        class
    }

    /// Every errno/command pair ip_vs_ctl.c answers for the usual
    /// mistakes (ip_vs_genl_set_cmd, ip_vs_add_service, ip_vs_edit_service,
    /// ip_vs_add_dest, ip_vs_edit_dest, ip_vs_del_dest).
    #[test]
    fn errno_and_command_classes() {
        use Class::*;
        use IpvsCmd::*;
        #[rustfmt::skip]
        let cases = [
            (NewService, libc::EEXIST, Exists,           "duplicate service"),
            (NewDest,    libc::EEXIST, Exists,           "duplicate destination"),
            (NewDaemon,  libc::EEXIST, Exists,           "running sync daemon"),
            (NewService, libc::ENOENT, UnknownScheduler, "unknown scheduler or engine on add"),
            (SetService, libc::ENOENT, UnknownScheduler, "unknown scheduler or engine on edit"),
            (SetService, libc::ESRCH,  NotFound,         "missing service on edit"),
            (DelService, libc::ESRCH,  NotFound,         "missing service on delete"),
            (Zero,       libc::ESRCH,  NotFound,         "missing service on zero"),
            (NewDest,    libc::ESRCH,  NotFound,         "missing service of a new destination"),
            (SetDest,    libc::ESRCH,  NotFound,         "missing service of an edited destination"),
            (DelDest,    libc::ESRCH,  NotFound,         "missing service of a deleted destination"),
            (SetDest,    libc::ENOENT, NotFound,         "missing destination on edit"),
            (DelDest,    libc::ENOENT, NotFound,         "missing destination on delete"),
            (DelDaemon,  libc::ESRCH,  NotFound,         "stopped sync daemon"),
            (NewService, libc::EINVAL, Invalid,          "missing attribute"),
            (SetService, libc::EINVAL, Invalid,          "IPv6 netmask out of range on edit"),
            (NewDest,    libc::EINVAL, Invalid,          "GUE tunnel without a port"),
            (SetDest,    libc::ERANGE, Invalid,          "lower threshold above upper"),
            (NewDest,    libc::ENOENT, Unclassified,     "ENOENT where ip_vs_ctl.c never answers it"),
            (NewService, libc::EPERM,  Unclassified,     "no CAP_NET_ADMIN"),
        ];
        for (cmd, errno, expected, name) in cases {
            assert_eq!(class(&kernel(cmd, errno)), expected, "{name}");
        }
    }

    #[test]
    fn kernel_errors_name_the_command_the_object_and_the_extack() {
        let mut err = kernel(IpvsCmd::NewService, libc::EEXIST);
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
