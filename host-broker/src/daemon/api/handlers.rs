//! Control API handlers: JSON in, JSON out; every error is `{"error": ..., "field": ...}`
//! with a status that says whose fault it is (400 bad input, 404 unknown VM, 409 conflict,
//! 500 broker-side failure).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::daemon::persist::{Store, VmRecord};
use crate::policy::{
    CredentialSpec, HostRule, InjectRule, Location, OnViolation, Policy, PolicyError, SecretSource,
};
use crate::{Broker, BrokerError, VmSpec, VmTransport};

pub(crate) type ApiResponse = Response<Full<Bytes>>;

/// Shared by all control connections.
pub struct ApiState {
    pub broker: Arc<Broker>,
    store: Store,
    /// Serializes mutations so the persisted records follow the broker's order.
    lock: tokio::sync::Mutex<()>,
    /// Records of API-registered VMs, as stored (inline values replaced by file references).
    records: Mutex<HashMap<String, VmRecord>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// An API error: status, message, and the offending field when there is one.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }

    pub fn into_response(self) -> ApiResponse {
        let mut body = json!({ "error": self.message });
        if let Some(f) = self.field {
            body["field"] = Value::String(f);
        }
        json_response(self.status, &body)
    }
}

fn from_broker(e: BrokerError) -> ApiError {
    let status = match &e {
        BrokerError::DuplicateVm(_)
        | BrokerError::DuplicateCid { .. }
        | BrokerError::DuplicateSocket { .. } => StatusCode::CONFLICT,
        BrokerError::UnknownVm(_) => StatusCode::NOT_FOUND,
        BrokerError::BadVmId(_) => return ApiError::field("id", e.to_string()),
        BrokerError::BadCaFrom { .. } => return ApiError::field("ca_from", e.to_string()),
        BrokerError::CaConflict { .. } => {
            let mut err = ApiError::field("ca_from", e.to_string());
            err.status = StatusCode::CONFLICT;
            return err;
        }
        BrokerError::Policy { source, .. } => return policy_error("policy", source),
        BrokerError::Credentials { .. } => StatusCode::BAD_REQUEST,
        // A bind failure is nearly always the caller's path (missing directory, a
        // non-socket file in the way).
        BrokerError::Transport(_) => StatusCode::BAD_REQUEST,
        BrokerError::Ca { .. }
        | BrokerError::Trust(_)
        | BrokerError::StateDir { .. }
        | BrokerError::Placeholders { .. }
        | BrokerError::StateDirInUse(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // Out of threads or memory: the host, not the request.
        BrokerError::VmThread { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

fn policy_error(prefix: &str, e: &PolicyError) -> ApiError {
    match e {
        PolicyError::Parse { path, message } | PolicyError::Invalid { path, message } => {
            let field = if path == "(root)" {
                prefix.to_owned()
            } else if path == prefix || path.starts_with(&format!("{prefix}.")) {
                // Validation of a whole policy already names the section.
                path.clone()
            } else {
                format!("{prefix}.{path}")
            };
            ApiError::field(field, message.clone())
        }
        other => ApiError::field(prefix, other.to_string()),
    }
}

pub(crate) fn json_response(status: StatusCode, v: &impl serde::Serialize) -> ApiResponse {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn text_response(content_type: &'static str, text: String) -> ApiResponse {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

/// Deserializes `body` as `T`, naming the offending field on error (`(root)` for syntax
/// errors before any field). Messages never echo inline secret values (the policy types'
/// visitors take care of that).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." {
            "(root)".to_owned()
        } else {
            path
        };
        ApiError::field(field, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| ApiError::field("(root)", e.to_string()))?;
    Ok(v)
}

fn parse_policy(v: &Value, prefix: &str) -> Result<Policy, ApiError> {
    Policy::from_json_str(&v.to_string()).map_err(|e| policy_error(prefix, &e))
}

fn spec_of(rec: &VmRecord) -> Result<VmSpec, ApiError> {
    let transport = match (&rec.hybrid_socket, rec.cid) {
        (Some(p), None) if p.is_absolute() => VmTransport::HybridSocket(p.clone()),
        (Some(_), None) => return Err(ApiError::field("hybrid_socket", "must be absolute")),
        (None, Some(c)) if c > 2 => VmTransport::Cid(c),
        (None, Some(_)) => return Err(ApiError::field("cid", "guest CIDs start at 3")),
        _ => {
            return Err(ApiError::field(
                "hybrid_socket",
                "exactly one of hybrid_socket or cid is required",
            ))
        }
    };
    Ok(VmSpec {
        id: rec.id.clone(),
        transport,
        policy: parse_policy(&rec.policy, "policy")?,
    })
}

/// One credential in `PATCH /v1/vms/{id}/credentials`: the fields given replace the
/// credential's fields; a new credential needs at least `source` and `hosts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialPatch {
    source: Option<SecretSource>,
    hosts: Option<Vec<HostRule>>,
    placeholder: Option<String>,
    #[serde(rename = "in")]
    locations: Option<Vec<Location>>,
    inject: Option<Vec<InjectRule>>,
    on_violation: Option<OnViolation>,
    refresh_grace_secs: Option<u64>,
    scrub_retired_secs: Option<u64>,
    aws_sigv4: Option<crate::policy::SigV4Spec>,
}

fn merge(
    name: &str,
    old: Option<&CredentialSpec>,
    p: CredentialPatch,
) -> Result<CredentialSpec, ApiError> {
    let mut spec = match old {
        Some(s) => s.clone(),
        None => CredentialSpec::new(p.source.clone().ok_or_else(|| {
            ApiError::field(format!("{name}.source"), "required for a new credential")
        })?),
    };
    if let Some(v) = p.source {
        spec.source = v;
    }
    if let Some(v) = p.hosts {
        spec.hosts = Some(v);
    }
    if let Some(v) = p.placeholder {
        spec.placeholder = Some(v);
    }
    if let Some(v) = p.locations {
        spec.locations = v;
    }
    if let Some(v) = p.inject {
        spec.inject = v;
    }
    if let Some(v) = p.on_violation {
        spec.on_violation = v;
    }
    if let Some(v) = p.refresh_grace_secs {
        spec.refresh_grace_secs = Some(v);
    }
    if let Some(v) = p.scrub_retired_secs {
        spec.scrub_retired_secs = Some(v);
    }
    if let Some(v) = p.aws_sigv4 {
        spec.aws_sigv4 = Some(v);
    }
    Ok(spec)
}

impl ApiState {
    /// Restores the VMs persisted under the broker's state dir. A VM that cannot be restored
    /// (its env variable is gone, its socket directory vanished, its id is now declared in
    /// the config file) is logged and skipped; its record stays for the next start.
    pub async fn restore(broker: Arc<Broker>) -> ApiState {
        let store = Store::new(broker.state_dir());
        let mut records = HashMap::new();
        for rec in store.load_all() {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable VM record");
                    continue;
                }
            };
            if broker.has_vm(&rec.id) {
                tracing::warn!(vm = %rec.id, "persisted VM id is declared in the config file: the config wins");
                continue;
            }
            // A fork whose CA copy completed uses its own copy: the source may be gone now.
            let ca_from = rec
                .ca_from
                .as_deref()
                .filter(|_| !broker.has_persisted_ca(&rec.id));
            let result = match spec_of(&rec) {
                Ok(spec) => register(&broker, spec, ca_from).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    tracing::info!(vm = %rec.id, "restored persisted VM");
                    records.insert(rec.id.clone(), rec);
                }
                Err(e) => {
                    tracing::error!(vm = %rec.id, error = %e.message, "could not restore persisted VM")
                }
            }
        }
        ApiState {
            broker,
            store,
            lock: tokio::sync::Mutex::new(()),
            records: Mutex::new(records),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, VmRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vm_json(&self, id: &str) -> Option<Value> {
        let info = self.broker.list_vms().into_iter().find(|v| v.id == id)?;
        let mut v = serde_json::to_value(&info).ok()?;
        v["persisted"] = Value::Bool(self.records().contains_key(id));
        Some(v)
    }

    fn persist(&self, rec: &VmRecord) -> Result<(), ApiError> {
        let stored = self.store.save(rec).map_err(|e| {
            tracing::error!(vm = %rec.id, error = %e, "persisting VM failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("persisting: {e}"),
            )
        })?;
        self.records().insert(rec.id.clone(), stored);
        Ok(())
    }

    pub(crate) fn health(&self) -> ApiResponse {
        json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "vms": self.broker.list_vms().len(),
            }),
        )
    }

    pub(crate) fn list(&self) -> ApiResponse {
        let ids: Vec<String> = self.broker.list_vms().into_iter().map(|v| v.id).collect();
        let vms: Vec<Value> = ids.iter().filter_map(|id| self.vm_json(id)).collect();
        json_response(StatusCode::OK, &vms)
    }

    pub(crate) fn get(&self, id: &str) -> Result<ApiResponse, ApiError> {
        let v = self.vm_json(id).ok_or_else(|| unknown(id))?;
        Ok(json_response(StatusCode::OK, &v))
    }

    pub(crate) async fn add(&self, body: &[u8]) -> Result<ApiResponse, ApiError> {
        let rec: VmRecord = parse_json(body)?;
        let spec = spec_of(&rec)?;
        let _g = self.lock.lock().await;
        register(&self.broker, spec, rec.ca_from.as_deref()).await?;
        if let Err(e) = self.persist(&rec) {
            // Keep broker and store in step: an unpersisted VM would vanish on restart.
            let _ = self.broker.unregister_vm(&rec.id).await;
            return Err(e);
        }
        let v = self.vm_json(&rec.id).unwrap_or(Value::Null);
        Ok(json_response(StatusCode::CREATED, &v))
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<ApiResponse, ApiError> {
        let _g = self.lock.lock().await;
        self.broker.unregister_vm(id).await.map_err(from_broker)?;
        self.records().remove(id);
        if let Err(e) = self.store.remove(id) {
            tracing::error!(vm = %id, error = %e, "removing the VM record failed");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("VM unregistered but its record remains: {e}"),
            ));
        }
        Ok(json_response(StatusCode::OK, &json!({ "removed": id })))
    }

    pub(crate) async fn replace_policy(
        &self,
        id: &str,
        body: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        let raw: Value = parse_json(body)?;
        let policy = parse_policy(&raw, "(root)").map_err(|mut e| {
            if let Some(f) = e.field.as_mut() {
                *f = f.trim_start_matches("(root).").to_owned();
            }
            e
        })?;
        let _g = self.lock.lock().await;
        self.broker
            .update_vm(id, policy)
            .await
            .map_err(from_broker)?;
        let rec = self.records().get(id).cloned();
        if let Some(mut rec) = rec {
            rec.policy = raw;
            self.persist(&rec)?;
        }
        self.get(id)
    }

    pub(crate) async fn patch_credentials(
        &self,
        id: &str,
        body: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        let patch: BTreeMap<String, Option<CredentialPatch>> = parse_json(body)?;
        let raw: BTreeMap<String, Value> = parse_json(body)?;
        let _g = self.lock.lock().await;
        let current = self.broker.policy(id).ok_or_else(|| unknown(id))?;
        let mut changes = BTreeMap::new();
        for (name, p) in patch {
            let change = match p {
                None if !current.credentials.contains_key(&name) => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("VM {id:?} has no credential {name:?} to remove"),
                    ))
                }
                None => None,
                Some(p) => Some(merge(&name, current.credentials.get(&name), p)?),
            };
            changes.insert(name, change);
        }
        self.broker
            .set_credentials(id, changes)
            .await
            .map_err(|e| match e {
                BrokerError::Policy { source, .. } => policy_error("credentials", &source),
                other => from_broker(other),
            })?;
        let rec = self.records().get(id).cloned();
        if let Some(mut rec) = rec {
            merge_raw(&mut rec.policy, raw);
            self.persist(&rec)?;
        }
        self.get(id)
    }

    pub(crate) fn stats(&self, id: &str) -> Result<ApiResponse, ApiError> {
        let s = self.broker.stats(id).ok_or_else(|| unknown(id))?;
        Ok(json_response(StatusCode::OK, &s))
    }

    pub(crate) fn ca(&self, id: &str) -> Result<ApiResponse, ApiError> {
        let pem = self.broker.ca_pem(id).ok_or_else(|| unknown(id))?;
        Ok(text_response("application/x-pem-file", pem))
    }

    pub(crate) fn metrics(&self) -> ApiResponse {
        text_response(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            self.broker.metrics_text(),
        )
    }

    /// The directory of the broker's state (for tests and logs).
    pub fn state_dir(&self) -> PathBuf {
        self.broker.state_dir().to_path_buf()
    }
}

async fn register(broker: &Broker, spec: VmSpec, ca_from: Option<&str>) -> Result<(), ApiError> {
    match ca_from {
        Some(from) => broker.register_vm_with_ca_from(spec, from).await,
        None => broker.register_vm(spec).await,
    }
    .map_err(from_broker)
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("VM id {id:?} is not registered"),
    )
}

/// Applies a credentials patch to the stored policy JSON with the same semantics as the typed
/// merge: `null` removes, given fields replace, a new name adds.
fn merge_raw(policy: &mut Value, patch: BTreeMap<String, Value>) {
    if !policy.is_object() {
        *policy = json!({});
    }
    let creds = policy
        .as_object_mut()
        .map(|o| o.entry("credentials").or_insert_with(|| json!({})));
    let Some(Value::Object(creds)) = creds else {
        return;
    };
    for (name, p) in patch {
        match p {
            Value::Null => {
                creds.remove(&name);
            }
            Value::Object(fields) => {
                let entry = creds.entry(name).or_insert_with(|| json!({}));
                if let Value::Object(e) = entry {
                    for (k, v) in fields {
                        e.insert(k, v);
                    }
                }
            }
            _ => {}
        }
    }
}
