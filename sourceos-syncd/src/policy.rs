//! The policy decision hook and the default local policy.
//!
//! A hook answers allow, deny or review_required for an action (an object
//! mutation, a sync, an agent transaction) by a given actor on a given
//! object. Decisions that gate something are recorded in the log as
//! `policy.decided` events with ids `urn:srcos:decision:<id>`; projections
//! read those events and never call the hook, so a rebuild reproduces every
//! decision exactly.
//!
//! The default hook reads `HOME/policy.toml`: an ordered list of rules,
//! each matching on any of profile, privacy class, sync visibility, actor
//! trust level and action; the first matching rule decides; with no match
//! the action is allowed. A missing file means "allow everything".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Effect;

/// File name of the local policy inside the home.
pub const POLICY_FILE: &str = "policy.toml";
/// Most rules a policy file may hold.
pub const MAX_RULES: usize = 1_024;
/// Largest policy file accepted, in bytes.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// What is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Creating, updating, deleting or tombstoning an object.
    Mutation,
    /// An object leaving this device.
    Sync,
    /// An agent's proposed object transaction.
    AgentTransaction,
}

/// The facts a decision is made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequest {
    /// What is being decided.
    pub action: Action,
    /// Who asks.
    pub actor: String,
    /// The actor's trust level, when registered.
    pub actor_trust_level: Option<String>,
    /// The object concerned.
    pub object_id: Option<String>,
    /// The profile in force.
    pub profile: String,
    /// The object's privacy class.
    pub privacy_class: Option<String>,
    /// The object's sync visibility.
    pub sync_visibility: Option<String>,
}

/// A hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVerdict {
    /// The effect.
    pub effect: Effect,
    /// The policy that decided.
    pub policy_id: String,
    /// Its version.
    pub policy_version: String,
    /// Why, for people.
    pub rationale: String,
    /// The rule that decided; `None` for the default allow.
    pub rule: Option<String>,
}

/// Decides actions. Implementations must be deterministic for equal
/// requests; they may read configuration, never the log.
pub trait PolicyHook: Send + Sync {
    /// Decides one request.
    fn decide(&self, request: &PolicyRequest) -> PolicyVerdict;
}

/// One rule of the local policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name, shown in decisions.
    pub name: String,
    /// Matches this action only.
    #[serde(default)]
    pub action: Option<Action>,
    /// Matches this profile only.
    #[serde(default)]
    pub profile: Option<String>,
    /// Matches this privacy class only.
    #[serde(default)]
    pub privacy_class: Option<String>,
    /// Matches this sync visibility only.
    #[serde(default)]
    pub sync_visibility: Option<String>,
    /// Matches actors with this trust level only.
    #[serde(default)]
    pub actor_trust_level: Option<String>,
    /// The effect when it matches.
    pub effect: Effect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_policy_id")]
    policy_id: String,
    #[serde(default = "default_version")]
    policy_version: String,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

fn default_policy_id() -> String {
    "sourceos.policy/local".to_owned()
}

fn default_version() -> String {
    "v1".to_owned()
}

/// The local policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading failed.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
}

/// The default hook: rules from `HOME/policy.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPolicy {
    policy_id: String,
    policy_version: String,
    rules: Vec<Rule>,
}

impl Default for LocalPolicy {
    fn default() -> Self {
        Self {
            policy_id: "sourceos.policy/local-default".to_owned(),
            policy_version: default_version(),
            rules: Vec::new(),
        }
    }
}

impl LocalPolicy {
    /// Loads `HOME/policy.toml`; a missing file is the allow-all default.
    pub fn load(home: &Path) -> Result<Self, PolicyError> {
        let path = home.join(POLICY_FILE);
        let meta = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(PolicyError::Read { path, source }),
            Ok(m) => m,
        };
        if meta.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::Invalid {
                path,
                reason: format!("{} bytes; at most {MAX_POLICY_BYTES}", meta.len()),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| PolicyError::Invalid { path, reason })
    }

    /// The policy's id (the default policy's when no file exists).
    pub fn policy_id(&self) -> &str {
        &self.policy_id
    }

    /// Parses policy text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.rules.len() > MAX_RULES {
            return Err(format!("{} rules; at most {MAX_RULES}", file.rules.len()));
        }
        Ok(Self {
            policy_id: file.policy_id,
            policy_version: file.policy_version,
            rules: file.rules,
        })
    }
}

fn matches(want: &Option<String>, have: &Option<String>) -> bool {
    match want {
        None => true,
        Some(w) => have.as_deref() == Some(w.as_str()),
    }
}

impl PolicyHook for LocalPolicy {
    fn decide(&self, r: &PolicyRequest) -> PolicyVerdict {
        let hit = self.rules.iter().find(|rule| {
            rule.action.is_none_or(|a| a == r.action)
                && matches(&rule.profile, &Some(r.profile.clone()))
                && matches(&rule.privacy_class, &r.privacy_class)
                && matches(&rule.sync_visibility, &r.sync_visibility)
                && matches(&rule.actor_trust_level, &r.actor_trust_level)
        });
        match hit {
            Some(rule) => PolicyVerdict {
                effect: rule.effect,
                policy_id: self.policy_id.clone(),
                policy_version: self.policy_version.clone(),
                rationale: format!("rule {:?} of {}", rule.name, self.policy_id),
                rule: Some(rule.name.clone()),
            },
            None => PolicyVerdict {
                effect: Effect::Allow,
                policy_id: self.policy_id.clone(),
                policy_version: self.policy_version.clone(),
                rationale: "no rule matched; allowed by default".to_owned(),
                rule: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: Action, privacy: &str, trust: &str) -> PolicyRequest {
        PolicyRequest {
            action,
            actor: "actor:a".into(),
            actor_trust_level: Some(trust.into()),
            object_id: Some("object:x".into()),
            profile: "profile:work".into(),
            privacy_class: Some(privacy.into()),
            sync_visibility: None,
        }
    }

    #[test]
    fn first_matching_rule_decides_and_default_allows() {
        let p = LocalPolicy::parse(
            r#"
policy_id = "sourceos.policy/test"
[[rule]]
name = "untrusted agents need review"
action = "agent_transaction"
actor_trust_level = "untrusted"
effect = "review_required"
[[rule]]
name = "personal data is not mutated in the work profile"
profile = "profile:work"
privacy_class = "personal"
effect = "deny"
"#,
        )
        .unwrap();
        assert_eq!(
            p.decide(&req(Action::Mutation, "personal", "local")).effect,
            Effect::Deny
        );
        assert_eq!(
            p.decide(&req(Action::AgentTransaction, "work", "untrusted"))
                .effect,
            Effect::ReviewRequired
        );
        let v = p.decide(&req(Action::Mutation, "work", "local"));
        assert_eq!(v.effect, Effect::Allow);
        assert!(v.rationale.contains("no rule matched"));
    }

    #[test]
    fn bad_policy_text_names_the_problem() {
        let err = LocalPolicy::parse("[[rule]]\nname = \"x\"\neffect = \"maybe\"\n").unwrap_err();
        assert!(err.contains("maybe"), "{err}");
        let err = LocalPolicy::parse("[[rule]]\nname = \"x\"\neffect = \"deny\"\ncolour = 1\n")
            .unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }
}
