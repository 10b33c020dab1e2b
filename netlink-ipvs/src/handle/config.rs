//! `handle.config()`: the equivalent of `ipvsadm --set` and `-L --timeout`.

use crate::config::Timeouts;
use crate::error::Result;
use crate::handle::{Handle, OperationRequest};
use crate::message::{IpvsCmd, IpvsMessage};
use crate::Operation;

/// Connection timeouts.
#[derive(Debug, Clone)]
pub struct ConfigHandle(pub(crate) Handle);

impl ConfigHandle {
    /// Reads the timeouts (`ipvsadm -L --timeout`).
    pub fn get(&self) -> ConfigGetRequest {
        ConfigGetRequest(self.0.clone())
    }

    /// Sets the timeouts; a zero leaves that one unchanged (`ipvsadm --set`).
    pub fn set(&self, timeouts: Timeouts) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::SetConfig(timeouts))
    }
}

/// Reads the timeouts; ends in [`ConfigGetRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct ConfigGetRequest(Handle);

impl ConfigGetRequest {
    /// Sends IPVS_CMD_GET_CONFIG.
    pub async fn execute(self) -> Result<Timeouts> {
        let request = IpvsMessage::new(IpvsCmd::GetConfig, Vec::new());
        let reply = self.0.get(request, || "timeouts".to_owned()).await?;
        let attrs: Vec<_> = reply.into_iter().flat_map(|m| m.attrs).collect();
        Timeouts::from_attrs(&attrs)
    }
}
