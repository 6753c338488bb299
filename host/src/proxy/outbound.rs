//! A plugin's requests to clusters (a handler's sub-requests, a filter's `outbound` calls):
//! sent to the generation's clusters with their balancing, retries and circuit breaking,
//! through the same [`attempts::send`] the proxy uses. The plugin runtime checks the plugin's
//! grant before a request gets here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, Version};
use http_body_util::BodyExt as _;

use super::attempts::{self, RequestBody};
use super::forward;
use crate::error::ErrorKind;
use crate::generation::Generation;
use crate::plugin::outbound::{Outbound, OutboundBody, OutboundError};
use crate::timer::Timers;

/// Sends one request's handler sub-requests.
pub(super) struct ClusterOutbound {
    pub(super) generation: Arc<Generation>,
    pub(super) request_id: HeaderValue,
}

impl Outbound for ClusterOutbound {
    fn send(
        &self,
        cluster: String,
        request: Request<bytes::Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<OutboundBody>, OutboundError>> + Send>> {
        let generation = self.generation.clone();
        let request_id = self.request_id.clone();
        Box::pin(async move {
            let index = generation
                .config
                .clusters
                .iter()
                .position(|c| c.name == cluster)
                .ok_or(OutboundError::UnknownCluster(cluster))?;
            let (mut parts, body) = request.into_parts();
            forward::strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(forward::X_REQUEST_ID.clone(), request_id.clone());
            parts.version = Version::HTTP_11;
            let exchange = attempts::Exchange {
                cluster: &generation.clusters[index],
                parts,
                body: RequestBody::Buffered(body),
                hash: None,
                retry_non_idempotent: false,
                grpc: false,
                request_id: &request_id,
                timers: &Timers::default(),
                trace: None,
                body_watch: None,
            };
            let mut progress = attempts::Progress::default();
            match attempts::send(exchange, &mut progress).await {
                Ok(answer) => Ok(answer.response.map(|body| body.boxed_unsync())),
                Err(e) => Err(match e.kind {
                    ErrorKind::UpstreamConnect | ErrorKind::NoEndpoint => {
                        OutboundError::Connect(format!("{e}"))
                    }
                    ErrorKind::UpstreamTimeout => OutboundError::Timeout,
                    _ => OutboundError::Failed(format!("{e}")),
                }),
            }
        })
    }
}
