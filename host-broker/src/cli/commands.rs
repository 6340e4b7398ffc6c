//! Client commands: each is one control API call, printed for humans.

use std::path::Path;

use anyhow::Context;
use http::Method;
use serde_json::{json, Value};

use super::client::Client;
use crate::{CredentialsCommand, VmCommand};

/// Reads a policy file (.json or .toml), validates it locally for an early, precise error,
/// and returns it as JSON for the API.
fn policy_json(file: &Path) -> anyhow::Result<Value> {
    host_broker::policy::Policy::from_path(file)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let is_toml = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let v: Value = if is_toml {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?
    };
    Ok(v)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub async fn vm(socket: &Path, cmd: VmCommand) -> anyhow::Result<()> {
    let c = Client::new(socket);
    match cmd {
        VmCommand::Add {
            id,
            hybrid_socket,
            cid,
            policy,
            ca_from,
        } => {
            let policy = match policy {
                Some(f) => policy_json(&f)?,
                None => json!({}),
            };
            let mut body = json!({ "id": id, "policy": policy });
            if let Some(p) = hybrid_socket {
                let p = std::path::absolute(&p).unwrap_or(p);
                body["hybrid_socket"] = json!(p);
            }
            if let Some(cid) = cid {
                body["cid"] = json!(cid);
            }
            if let Some(from) = ca_from {
                body["ca_from"] = json!(from);
            }
            let r = c.call(Method::POST, "/v1/vms", Some(&body)).await?.ok()?;
            let v = r.json();
            match v.get("listen_path").and_then(Value::as_str) {
                Some(p) => println!("registered {id}: listening on {p}"),
                None => println!("registered {id}"),
            }
        }
        VmCommand::Update { id, policy } => {
            let body = policy_json(&policy)?;
            c.call(Method::PUT, &format!("/v1/vms/{id}/policy"), Some(&body))
                .await?
                .ok()?;
            println!("updated the policy of {id}");
        }
        VmCommand::Rm { id } => {
            c.call(Method::DELETE, &format!("/v1/vms/{id}"), None)
                .await?
                .ok()?;
            println!("removed {id}");
        }
        VmCommand::Ls => {
            let r = c.call(Method::GET, "/v1/vms", None).await?.ok()?;
            let vms = r.json();
            println!(
                "{:<24} {:<40} {:<9} CREDENTIALS",
                "ID", "TRANSPORT", "PERSISTED"
            );
            for vm in vms.as_array().into_iter().flatten() {
                let transport = match (vm.get("listen_path"), vm.get("cid")) {
                    (Some(p), _) => p.as_str().unwrap_or("").to_owned(),
                    (None, Some(c)) => format!("cid {c}"),
                    _ => String::new(),
                };
                let creds: Vec<&str> = vm["credentials"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<24} {:<40} {:<9} {}",
                    vm["id"].as_str().unwrap_or(""),
                    transport,
                    if vm["persisted"] == json!(true) {
                        "yes"
                    } else {
                        "no (config)"
                    },
                    creds.join(",")
                );
            }
        }
        VmCommand::Stats { id } => {
            let r = c
                .call(Method::GET, &format!("/v1/vms/{id}/stats"), None)
                .await?
                .ok()?;
            print_json(&r.json());
        }
    }
    Ok(())
}

pub async fn credentials(socket: &Path, cmd: CredentialsCommand) -> anyhow::Result<()> {
    let c = Client::new(socket);
    let (id, name, body) = match cmd {
        CredentialsCommand::Set {
            id,
            name,
            source,
            hosts,
            placeholder,
        } => {
            let mut cred = json!({ "source": source.to_source()? });
            if let Some(h) = hosts {
                cred["hosts"] = json!(h);
            }
            if let Some(p) = placeholder {
                cred["placeholder"] = json!(p);
            }
            let body = json!({ name.clone(): cred });
            (id, name, body)
        }
        CredentialsCommand::Rm { id, name } => {
            let body = json!({ name.clone(): null });
            (id, name, body)
        }
    };
    c.call(
        Method::PATCH,
        &format!("/v1/vms/{id}/credentials"),
        Some(&body),
    )
    .await?
    .ok()?;
    println!("{id}: credential {name} updated");
    Ok(())
}

pub async fn ca_show(socket: &Path, id: &str) -> anyhow::Result<()> {
    let r = Client::new(socket)
        .call(Method::GET, &format!("/v1/vms/{id}/ca"), None)
        .await?
        .ok()?;
    print!("{}", String::from_utf8_lossy(&r.body));
    Ok(())
}

pub async fn metrics(socket: &Path) -> anyhow::Result<()> {
    let r = Client::new(socket)
        .call(Method::GET, "/metrics", None)
        .await?
        .ok()?;
    print!("{}", String::from_utf8_lossy(&r.body));
    Ok(())
}
