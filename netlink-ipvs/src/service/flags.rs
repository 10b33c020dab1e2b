//! Service flags (`IP_VS_SVC_F_*`) and the `struct ip_vs_flags` value that
//! carries them.

use netlink_packet_core::{emit_u32, parse_u32, DecodeError};

bitflags::bitflags! {
    /// `IP_VS_SVC_F_*`. The scheduler flags mean different things to
    /// different schedulers; the aliases name them as ipvsadm's `-b` does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ServiceFlags: u32 {
        /// `IP_VS_SVC_F_PERSISTENT`: persistent port (ipvsadm `-p`).
        const PERSISTENT = 0x0001;
        /// `IP_VS_SVC_F_HASHED`: set by the kernel on every service it holds.
        const HASHED = 0x0002;
        /// `IP_VS_SVC_F_ONEPACKET`: one-packet scheduling (ipvsadm `-o`).
        const ONEPACKET = 0x0004;
        /// `IP_VS_SVC_F_SCHED1`.
        const SCHED1 = 0x0008;
        /// `IP_VS_SVC_F_SCHED2`.
        const SCHED2 = 0x0010;
        /// `IP_VS_SVC_F_SCHED3`.
        const SCHED3 = 0x0020;
        /// `IP_VS_SVC_F_SCHED_SH_FALLBACK` (`-b sh-fallback`).
        const SH_FALLBACK = Self::SCHED1.bits();
        /// `IP_VS_SVC_F_SCHED_SH_PORT` (`-b sh-port`).
        const SH_PORT = Self::SCHED2.bits();
        /// `IP_VS_SVC_F_SCHED_MH_FALLBACK` (`-b mh-fallback`).
        const MH_FALLBACK = Self::SCHED1.bits();
        /// `IP_VS_SVC_F_SCHED_MH_PORT` (`-b mh-port`).
        const MH_PORT = Self::SCHED2.bits();
        // Bits a newer kernel may define are kept, not dropped.
        const _ = !0;
    }
}

/// `struct ip_vs_flags { __u32 flags; __u32 mask; }`: the kernel changes
/// only the bits set in `mask` (ipvsadm and the kernel's replies use all
/// ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpvsFlags {
    /// The flag values.
    pub flags: ServiceFlags,
    /// Which flags to change.
    pub mask: ServiceFlags,
}

impl IpvsFlags {
    pub(crate) const LEN: usize = 8;

    /// `flags` with every bit in the mask, as ipvsadm sends them.
    pub fn all(flags: ServiceFlags) -> Self {
        Self {
            flags,
            mask: ServiceFlags::all(),
        }
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() != Self::LEN {
            return Err(DecodeError::from(format!(
                "struct ip_vs_flags is {} bytes, {} expected",
                payload.len(),
                Self::LEN
            )));
        }
        Ok(Self {
            flags: ServiceFlags::from_bits_retain(parse_u32(&payload[..4])?),
            mask: ServiceFlags::from_bits_retain(parse_u32(&payload[4..])?),
        })
    }

    pub(crate) fn emit(&self, buffer: &mut [u8]) {
        emit_u32(&mut buffer[..4], self.flags.bits()).expect("4 bytes");
        emit_u32(&mut buffer[4..8], self.mask.bits()).expect("4 bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_vs_flags_is_two_native_u32() {
        let flags = IpvsFlags::all(ServiceFlags::SH_FALLBACK | ServiceFlags::SH_PORT);
        let mut bytes = [0u8; 8];
        flags.emit(&mut bytes);
        assert_eq!(bytes, [0x18, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(IpvsFlags::parse(&bytes).unwrap(), flags);
    }

    #[test]
    fn unknown_bits_are_kept() {
        let flags = IpvsFlags::parse(&[0, 0, 0, 0x80, 0, 0, 0, 0]).unwrap();
        assert_eq!(flags.flags.bits(), 0x8000_0000);
    }

    #[test]
    fn a_short_value_is_an_error() {
        assert!(IpvsFlags::parse(&[1, 0, 0, 0]).is_err());
    }
}
