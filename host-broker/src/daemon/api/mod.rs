//! The daemon's control API: JSON over HTTP/1.1 on a Unix socket (see docs/openapi.json).
//!
//! Access control: the socket file is created with mode 0600, and every connection's peer
//! uid (SO_PEERCRED) must be in the allowed list (default: the daemon's own uid and root);
//! other peers get `403` to every request. Optionally the Prometheus metrics (and nothing
//! else) are also served on a TCP address.

mod handlers;
pub mod routes;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use handlers::ApiState;
use handlers::{ApiError, ApiResponse};
use routes::{match_route, Miss, Route};

/// Largest accepted request body (a policy with many rules fits easily).
const MAX_BODY: usize = 1 << 20;

/// Errors setting up the control API.
#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {0}: another broker is listening there")]
    InUse(PathBuf),
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running control API; dropping it stops nothing, call [`ControlServer::stop`].
#[derive(Debug)]
pub struct ControlServer {
    tasks: Vec<JoinHandle<()>>,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (0600; a stale socket from a crashed run is replaced, a live one is an
    /// error) and serves the API for peers whose uid is in `allowed_uids`.
    pub async fn start(
        state: Arc<ApiState>,
        path: &Path,
        allowed_uids: Vec<u32>,
        metrics_listen: Option<SocketAddr>,
    ) -> Result<ControlServer, ApiSetupError> {
        let listener = bind_private(path).await?;
        tracing::info!(path = %path.display(), uids = ?allowed_uids, "control API listening");
        let mut tasks = vec![tokio::spawn(
            accept_unix(listener, state.clone(), Arc::new(allowed_uids))
                .instrument(tracing::info_span!("api")),
        )];
        if let Some(addr) = metrics_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ApiSetupError::Metrics { addr, source })?;
            tracing::info!(%addr, "metrics listening");
            tasks.push(tokio::spawn(
                accept_metrics(l, state).instrument(tracing::info_span!("metrics")),
            ));
        }
        Ok(ControlServer {
            tasks,
            path: path.to_path_buf(),
        })
    }

    /// Stops accepting and removes the socket file.
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn bind_private(path: &Path) -> Result<UnixListener, ApiSetupError> {
    let err = |source| ApiSetupError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to remove it",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ApiSetupError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err)?;
    }
    // Bind inside a private (0700) scratch directory, make the socket 0600, then rename it
    // into place: the socket is never reachable at `path` with a looser mode.
    let scratch = dir.join(format!(".control-sock.{}.d", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&scratch)
            .map_err(err)?;
    }
    let tmp = scratch.join("s");
    let result = (|| {
        let l = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result.map_err(err)
}

async fn accept_unix(listener: UnixListener, state: Arc<ApiState>, allowed: Arc<Vec<u32>>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        let permitted = uid.is_some_and(|u| allowed.contains(&u));
        if !permitted {
            tracing::warn!(
                ?uid,
                "control connection from a uid not on the allowed list"
            );
        }
        let state = state.clone();
        tokio::spawn(
            async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move {
                        let resp = if permitted {
                            handle(&state, req, false).await
                        } else {
                            ApiError::new(
                                StatusCode::FORBIDDEN,
                                format!(
                                    "peer uid {} is not allowed on this control socket",
                                    uid.map_or("unknown".into(), |u| u.to_string())
                                ),
                            )
                            .into_response()
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "control connection ended with an error");
                }
            }
            .in_current_span(),
        );
    }
}

async fn accept_metrics(listener: TcpListener, state: Arc<ApiState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req, true).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Routes one request. `metrics_only`: the TCP listener serves `/metrics` and nothing else.
async fn handle(state: &ApiState, req: Request<Incoming>, metrics_only: bool) -> ApiResponse {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let (route, id) = match match_route(&method, &path) {
        Ok((r, _)) if metrics_only && r != Route::Metrics => {
            return ApiError::new(StatusCode::NOT_FOUND, "only /metrics is served here")
                .into_response()
        }
        Ok(r) => r,
        Err(Miss::NotFound) => {
            return ApiError::new(StatusCode::NOT_FOUND, format!("no route {path}")).into_response()
        }
        Err(Miss::MethodNotAllowed) => {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            )
            .into_response()
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body: {e} (limit {MAX_BODY} bytes)"),
            )
            .into_response()
        }
    };
    let id = id.unwrap_or_default();
    let result = dispatch(state, route, &id, &body).await;
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => e.status,
    };
    tracing::info!(%method, %path, status = status.as_u16(), "control request");
    result.unwrap_or_else(ApiError::into_response)
}

async fn dispatch(
    state: &ApiState,
    route: Route,
    id: &str,
    body: &Bytes,
) -> Result<ApiResponse, ApiError> {
    match route {
        Route::Health => Ok(state.health()),
        Route::ListVms => Ok(state.list()),
        Route::AddVm => state.add(body).await,
        Route::GetVm => state.get(id),
        Route::RemoveVm => state.remove(id).await,
        Route::ReplacePolicy => state.replace_policy(id, body).await,
        Route::PatchCredentials => state.patch_credentials(id, body).await,
        Route::Stats => state.stats(id),
        Route::Ca => state.ca(id),
        Route::Metrics => Ok(state.metrics()),
    }
}
