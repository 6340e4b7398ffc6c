//! Starts the transparent half of the guest's egress: the resolver on loopback and the
//! capture device, sharing one name <-> synthetic address table.

use std::sync::Arc;

use crate::capture::{self, CaptureError};
use crate::dns::Resolver;
use crate::dns_server;
use crate::endpoint::Endpoint;

/// Brings up DNS and capture; both keep running in background tasks of the current
/// runtime. The explicit proxy (if any) is started by the caller.
pub async fn start_transparent(broker: Arc<Endpoint>) -> Result<(), CaptureError> {
    let resolver = Arc::new(Resolver::new(broker.clone()));
    dns_server::start(resolver.clone())
        .await
        .map_err(CaptureError::Dns)?;
    capture::start(broker, resolver).await?;
    Ok(())
}
