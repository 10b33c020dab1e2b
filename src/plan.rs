//! Placeholder: `ipvsadm -Sn` rendering of the desired state.
