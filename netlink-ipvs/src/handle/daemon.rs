//! `handle.daemon()`: the equivalent of `ipvsadm --start-daemon`,
//! `--stop-daemon` and `-L --daemon`.

use crate::daemon::{Daemon, DaemonState};
use crate::error::Result;
use crate::handle::{Handle, OperationRequest};
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::Operation;

/// Connection-sync daemons.
#[derive(Debug, Clone)]
pub struct DaemonHandle(pub(crate) Handle);

impl DaemonHandle {
    /// Starts a sync daemon.
    pub fn add(&self, daemon: Daemon) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::AddDaemon(daemon))
    }

    /// Stops the master or backup daemon.
    pub fn del(&self, state: DaemonState) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::DelDaemon(state))
    }

    /// Lists the running daemons.
    pub fn get(&self) -> DaemonGetRequest {
        DaemonGetRequest(self.0.clone())
    }
}

/// A dump of the sync daemons; ends in [`DaemonGetRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct DaemonGetRequest(Handle);

impl DaemonGetRequest {
    /// Sends IPVS_CMD_GET_DAEMON.
    pub async fn execute(self) -> Result<Vec<Daemon>> {
        let request = IpvsMessage::new(IpvsCmd::GetDaemon, Vec::new());
        let reply = self
            .0
            .dump_messages(request, || "sync daemons".to_owned())
            .await?;
        reply
            .objects(
                || "sync daemons".to_owned(),
                |attr| match attr {
                    IpvsAttr::Daemon(attrs) => Some(Daemon::from_attrs(attrs)),
                    _ => None,
                },
            )
            .collect()
    }
}
