//! Protocol negotiation on the control stream.
//!
//! The framing every stream starts with never changes: the [`crate::PREFACE`] carries
//! version 1, stream headers keep their v1 bytes (kinds are only appended) and tunnel chunks
//! keep their layout. What evolves is the control conversation:
//!
//! 1. The agent's [`AgentHello`] (v1 bytes, understood by every broker) states in
//!    `protocol_version` the newest version it speaks ([`MAX_PROTOCOL_VERSION`]).
//! 2. The broker answers in the newest version both speak ([`choose`]): 1 gets the frozen
//!    positional [`BrokerMessage::Config`]; 2 and later get [`BrokerMessage::Negotiated`]
//!    holding [`GuestSettings`] as JSON, where unknown fields are ignored and absent optional
//!    fields default, so either side can add fields without breaking the other.
//! 3. An agent facing a broker that only speaks 1 (which refuses any other hello version
//!    with the reason [`V1_ONLY_REFUSAL`]) retries once with a v1 hello.
//!
//! The v1 bytes are pinned by golden tests (tests/golden_v1.rs) that a newer broker must
//! keep serving.

use serde::{Deserialize, Serialize};

use crate::{AgentHello, AgentMessage, BootMode, BrokerMessage, GuestConfig, NegotiatedConfig};

/// Oldest control protocol version this build serves.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
/// Newest control protocol version this build speaks.
pub const MAX_PROTOCOL_VERSION: u8 = 2;

/// The reason a v1-only broker gives when it refuses a hello of another version (the
/// agent's cue to retry with v1).
pub const V1_ONLY_REFUSAL: &str = "broker speaks 1";

/// Optional broker capabilities an agent may rely on only when they are announced.
pub mod feature {
    /// `StreamKind::Tcp` streams (transparent TCP capture).
    pub const TCP_CAPTURE: &str = "tcp-capture";
    /// `StreamKind::Dns` streams (the agent's resolver asks the broker per name).
    pub const DNS: &str = "dns";
}

/// Features a broker that answered in v1 is assumed to have (v1 brokers of this project
/// served both stream kinds before negotiation existed).
pub const V1_FEATURES: &[&str] = &[feature::TCP_CAPTURE, feature::DNS];

/// Everything the broker tells the guest, in any protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestSettings {
    /// The v1 fields (the JSON object carries them at the top level).
    #[serde(flatten)]
    pub config: GuestConfig,
    /// The version this configuration was sent in.
    pub protocol_version: u8,
    /// The broker's build version, for the console (informational; empty from v1 brokers).
    pub broker_version: String,
    /// Optional capabilities the broker serves (see [`feature`]).
    pub features: Vec<String>,
}

impl GuestSettings {
    /// Whether the broker announced `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// Why negotiation failed.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// The agent's newest version is older than anything this build serves.
    #[error(
        "agent speaks protocol up to {agent}, this broker serves {MIN_PROTOCOL_VERSION} to {MAX_PROTOCOL_VERSION}"
    )]
    TooOld { agent: u8 },
    /// A v2+ configuration whose JSON does not parse.
    #[error("negotiated config (protocol {version}) is not valid: {reason}")]
    BadConfig { version: u8, reason: String },
    /// The broker claims a version this agent never asked for.
    #[error("broker answered in protocol {got}, agent asked for at most {asked}")]
    Unrequested { got: u8, asked: u8 },
}

/// The hello an agent sends, asking for protocol `max_version` at most.
pub fn hello(agent_version: &str, boot_mode: BootMode, max_version: u8) -> AgentMessage {
    AgentMessage::Hello(AgentHello {
        protocol_version: max_version,
        agent_version: agent_version.into(),
        boot_mode,
    })
}

/// Broker side: the version to answer an agent whose newest is `agent_max`.
pub fn choose(agent_max: u8) -> Result<u8, NegotiateError> {
    if agent_max < MIN_PROTOCOL_VERSION {
        return Err(NegotiateError::TooOld { agent: agent_max });
    }
    Ok(agent_max.min(MAX_PROTOCOL_VERSION))
}

/// Broker side: the configuration message in `version` (from [`choose`]).
pub fn config_message(version: u8, settings: &GuestSettings) -> BrokerMessage {
    if version <= 1 {
        return BrokerMessage::Config(settings.config.clone());
    }
    let mut s = settings.clone();
    s.protocol_version = version;
    BrokerMessage::Negotiated(NegotiatedConfig {
        protocol_version: version,
        // Serializing plain strings, maps and integers to JSON cannot fail.
        config_json: serde_json::to_string(&s).unwrap_or_default(),
    })
}

/// Agent side: the settings a configuration message carries, whatever its version; `None`
/// for messages that are not a configuration. `asked` is the version the hello asked for.
pub fn settings_from(
    msg: &BrokerMessage,
    asked: u8,
) -> Result<Option<GuestSettings>, NegotiateError> {
    match msg {
        BrokerMessage::Config(config) => Ok(Some(GuestSettings {
            config: config.clone(),
            protocol_version: 1,
            broker_version: String::new(),
            features: V1_FEATURES.iter().map(|f| f.to_string()).collect(),
        })),
        BrokerMessage::Negotiated(n) => {
            if n.protocol_version > asked || n.protocol_version < 2 {
                return Err(NegotiateError::Unrequested {
                    got: n.protocol_version,
                    asked,
                });
            }
            let mut s: GuestSettings =
                serde_json::from_str(&n.config_json).map_err(|e| NegotiateError::BadConfig {
                    version: n.protocol_version,
                    reason: e.to_string(),
                })?;
            s.protocol_version = n.protocol_version;
            Ok(Some(s))
        }
        BrokerMessage::Refused { .. } | BrokerMessage::Ack => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GuestSettings {
        GuestSettings {
            config: GuestConfig {
                vm_id: "vm1".into(),
                ca_certs_pem: vec!["PEM".into()],
                env: [("API_KEY".to_string(), "ph".to_string())].into(),
                proxy_port: 3128,
                no_proxy: vec!["internal".into()],
            },
            protocol_version: 0,
            broker_version: "0.1.0".into(),
            features: vec![feature::TCP_CAPTURE.into()],
        }
    }

    #[test]
    fn the_newest_common_version_is_chosen() {
        assert_eq!(choose(1).unwrap(), 1);
        assert_eq!(choose(2).unwrap(), 2);
        assert_eq!(choose(200).unwrap(), MAX_PROTOCOL_VERSION);
        let e = choose(0).unwrap_err().to_string();
        assert!(e.contains("up to 0"), "{e}");
    }

    #[test]
    fn v1_answers_are_the_frozen_positional_config() {
        let m = config_message(1, &settings());
        assert_eq!(m, BrokerMessage::Config(settings().config));
        let back = settings_from(&m, 2).unwrap().unwrap();
        assert_eq!(back.protocol_version, 1);
        assert!(back.has(feature::TCP_CAPTURE) && back.has(feature::DNS));
    }

    #[test]
    fn v2_answers_round_trip_as_json() {
        let m = config_message(2, &settings());
        let BrokerMessage::Negotiated(ref n) = m else {
            panic!("{m:?}")
        };
        assert_eq!(n.protocol_version, 2);
        assert!(
            n.config_json.contains("\"vm_id\":\"vm1\""),
            "{}",
            n.config_json
        );
        let back = settings_from(&m, 2).unwrap().unwrap();
        assert_eq!(back.config, settings().config);
        assert_eq!(back.protocol_version, 2);
        assert!(back.has(feature::TCP_CAPTURE) && !back.has(feature::DNS));
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        // A newer broker adds fields this agent does not know, and leaves out optional ones.
        let json = r#"{"vm_id":"vm9","proxy_port":3128,"quantum_tunnels":{"x":1},"features":["dns","teleport"]}"#;
        let m = BrokerMessage::Negotiated(NegotiatedConfig {
            protocol_version: 2,
            config_json: json.into(),
        });
        let s = settings_from(&m, 2).unwrap().unwrap();
        assert_eq!(s.config.vm_id, "vm9");
        assert_eq!(s.config.proxy_port, 3128);
        assert!(s.config.ca_certs_pem.is_empty() && s.config.env.is_empty());
        assert!(s.has(feature::DNS) && !s.has(feature::TCP_CAPTURE));
    }

    #[test]
    fn answers_the_agent_never_asked_for_or_garbage_are_errors() {
        let m = config_message(2, &settings());
        assert!(matches!(
            settings_from(&m, 1),
            Err(NegotiateError::Unrequested { got: 2, asked: 1 })
        ));
        let bad = BrokerMessage::Negotiated(NegotiatedConfig {
            protocol_version: 2,
            config_json: "{not json".into(),
        });
        assert!(matches!(
            settings_from(&bad, 2),
            Err(NegotiateError::BadConfig { version: 2, .. })
        ));
        assert!(settings_from(&BrokerMessage::Ack, 2).unwrap().is_none());
    }
}
