//! The capability ledger: which planes (config, UI, runtime, server,
//! plugin, policy, ...) declared, negotiated or rejected a capability, and
//! the effective state that follows. A capability is `enabled` only when
//! every required plane agreed and policy allowed it; a plane that claims
//! `enabled` while another rejects is split-brain, and is surfaced rather
//! than resolved (in the ledger's `conflictRefs`, in `status`, in
//! `doctor`).
//!
//! Kinds (subject: the capability ref `urn:srcos:capability:<name>@<version>`):
//! `capability.declared`, `capability.requested`, `capability.plane_reported`,
//! `capability.policy_decided`. Every one names the policy decision that
//! governs the negotiation (`policyDecisionRef`, `urn:srcos:decision:...`).
//! The fold ([`CapabilityState::apply`]) and the effective state
//! ([`CapabilityState::effective`]) are pure functions of the events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::EventDraft;
use crate::ids::Subject;
use crate::kinds::KindSpec;

/// Prefix of a capability ref.
pub const CAPABILITY_PREFIX: &str = "urn:srcos:capability:";
/// Prefix of a ledger id.
pub const LEDGER_PREFIX: &str = "urn:srcos:capability-ledger:";
/// Prefix of a split-brain conflict ref.
pub const CONFLICT_PREFIX: &str = "urn:srcos:capability-conflict:";
/// specVersion of the ledger documents syncd emits.
pub const LEDGER_SPEC_VERSION: &str = "0.1.0";
/// Evidence refs kept per capability (later ones are dropped, not stored).
pub const MAX_EVIDENCE_REFS: usize = 32;
/// Event refs kept per capability as causal refs (the latest).
pub const MAX_CAUSAL_REFS: usize = 16;
/// Owners kept per capability.
pub const MAX_OWNERS: usize = 8;
/// Length bound of identifiers and reasons inside these payloads.
pub const MAX_TEXT_BYTES: usize = 512;

/// The kinds.
pub const DECLARED: &str = "capability.declared";
/// A plane or person asks for the capability.
pub const REQUESTED: &str = "capability.requested";
/// A plane's verdict.
pub const PLANE_REPORTED: &str = "capability.plane_reported";
/// The policy decision.
pub const POLICY_DECIDED: &str = "capability.policy_decided";

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: DECLARED,
        validate,
    },
    KindSpec {
        kind: REQUESTED,
        validate,
    },
    KindSpec {
        kind: PLANE_REPORTED,
        validate,
    },
    KindSpec {
        kind: POLICY_DECIDED,
        validate,
    },
];

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The contract's spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }

            /// Parses the contract's spelling.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }

            /// Every spelling, comma-separated, for messages.
            pub fn listing() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(
    /// A plane that can claim or reject a capability.
    Plane {
        /// Configuration.
        Config = "config",
        /// The user interface.
        Ui = "ui",
        /// The local runtime.
        Runtime = "runtime",
        /// The server.
        Server = "server",
        /// A plugin.
        Plugin = "plugin",
        /// Policy.
        Policy = "policy",
        /// A schema.
        Schema = "schema",
        /// A transport.
        Transport = "transport",
        /// The user.
        User = "user",
        /// An agent.
        Agent = "agent",
        /// The workspace.
        Workspace = "workspace",
    }
);

text_enum!(
    /// What a plane says about a capability.
    Verdict {
        /// It can provide it.
        Supported = "supported",
        /// It has it turned on.
        Enabled = "enabled",
        /// It cannot provide it.
        Unsupported = "unsupported",
        /// A plugin it needs is missing.
        MissingPlugin = "missing_plugin",
        /// A schema it needs is missing.
        MissingSchema = "missing_schema",
        /// It provides it partly.
        Degraded = "degraded",
        /// It tried and failed.
        Failed = "failed",
    }
);

text_enum!(
    /// What a declaring plane wants.
    DeclaredState {
        /// Turned on.
        Enabled = "enabled",
        /// Turned off.
        Disabled = "disabled",
    }
);

text_enum!(
    /// The policy's effect.
    PolicyEffect {
        /// Allowed.
        Allow = "allow",
        /// Denied.
        Deny = "deny",
    }
);

text_enum!(
    /// The effective state of a capability (the contract's enumeration).
    EffectiveState {
        /// Declared, nothing more.
        Declared = "declared",
        /// Asked for, no plane has answered.
        Requested = "requested",
        /// Some planes or policy answered, not all.
        Negotiating = "negotiating",
        /// Every plane agreed and policy allows, but a declaring plane has it off.
        Available = "available",
        /// Every plane agreed, policy allows, every declaration is on.
        Enabled = "enabled",
        /// A plane provides it only partly.
        Degraded = "degraded",
        /// Policy denied it.
        BlockedByPolicy = "blocked_by_policy",
        /// A plane other than the server cannot provide it.
        UnsupportedByRuntime = "unsupported_by_runtime",
        /// The server cannot provide it.
        UnsupportedByServer = "unsupported_by_server",
        /// A plugin is missing.
        MissingPlugin = "missing_plugin",
        /// A schema is missing.
        MissingSchema = "missing_schema",
        /// A plane failed.
        Failed = "failed",
    }
);

impl Verdict {
    /// The plane agrees to provide it.
    pub fn agrees(self) -> bool {
        matches!(self, Verdict::Supported | Verdict::Enabled)
    }

    /// The plane rejects it.
    pub fn rejects(self) -> bool {
        matches!(
            self,
            Verdict::Unsupported
                | Verdict::MissingPlugin
                | Verdict::MissingSchema
                | Verdict::Failed
        )
    }
}

/// A capability ref, `urn:srcos:capability:<name>@<version>`: name of
/// lowercase letters, digits, `.`, `_`, `-`; version of letters, digits,
/// `.`, `+`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CapabilityRef(String);

impl CapabilityRef {
    /// Validates a ref.
    pub fn new(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!("{text:?} is not a capability ref ({why}); expected {CAPABILITY_PREFIX}<name>@<version>"))
        };
        if text.len() > MAX_TEXT_BYTES {
            return bad("too long");
        }
        let Some(rest) = text.strip_prefix(CAPABILITY_PREFIX) else {
            return bad("wrong prefix");
        };
        let Some((name, version)) = rest.split_once('@') else {
            return bad("no @version");
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        let version_ok = !version.is_empty()
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b));
        if !name_ok {
            return bad("bad name");
        }
        if !version_ok {
            return bad("bad version");
        }
        Ok(Self(text.to_owned()))
    }

    /// The ref.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<name>@<version>`.
    pub fn local(&self) -> &str {
        self.0.get(CAPABILITY_PREFIX.len()..).unwrap_or_default()
    }

    /// The ledger id of this capability.
    pub fn ledger_id(&self) -> String {
        format!("{LEDGER_PREFIX}{}", self.local())
    }
}

impl TryFrom<String> for CapabilityRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::new(&s)
    }
}

impl From<CapabilityRef> for String {
    fn from(c: CapabilityRef) -> String {
        c.0
    }
}

// ---- payload checks shared with the receipts ----

pub(crate) fn only_keys(m: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "payload.{k}: not a field of this kind (allowed: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

pub(crate) fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(format!("payload.{key}: must not be empty")),
        Some(Value::String(s)) if s.len() > MAX_TEXT_BYTES => {
            Err(format!("payload.{key}: longer than {MAX_TEXT_BYTES} bytes"))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("payload.{key}: must be a string")),
    }
}

pub(crate) fn required<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    text(m, key)?.ok_or_else(|| format!("payload.{key}: required"))
}

pub(crate) fn prefixed(m: &Map<String, Value>, key: &str, prefix: &str) -> Result<(), String> {
    if let Some(v) = text(m, key)? {
        if !v.starts_with(prefix) || v.len() == prefix.len() {
            return Err(format!("payload.{key}: {v:?} must start with {prefix}"));
        }
    }
    Ok(())
}

/// `policyDecisionRef` is required and is `urn:srcos:decision:<id>`.
pub(crate) fn decision(m: &Map<String, Value>) -> Result<&str, String> {
    let d = text(m, "policyDecisionRef")?.ok_or_else(|| {
        "payload.policyDecisionRef: required; no capability or receipt event is accepted without a policy decision (urn:srcos:decision:<id>)".to_owned()
    })?;
    if d.starts_with("urn:srcos:policy-decision:") {
        return Err(format!(
            "payload.policyDecisionRef: {d:?} uses the prefix urn:srcos:policy-decision:; the contract's decisions are urn:srcos:decision:<id>"
        ));
    }
    prefixed(m, "policyDecisionRef", "urn:srcos:decision:")?;
    Ok(d)
}

/// An optional array of non-empty strings, at most `max` entries; entries
/// starting with `blake3:` must be canonical evidence-store refs.
pub(crate) fn string_list(
    m: &Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Vec<String>, String> {
    let Some(v) = m.get(key) else {
        return Ok(Vec::new());
    };
    let Value::Array(a) = v else {
        return Err(format!("payload.{key}: must be an array of strings"));
    };
    if a.len() > max {
        return Err(format!("payload.{key}: more than {max} entries"));
    }
    let mut out = Vec::with_capacity(a.len());
    for (i, x) in a.iter().enumerate() {
        match x {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_TEXT_BYTES => {
                if s.starts_with("blake3:") {
                    crate::evidence::EvidenceRef::parse(s)
                        .map_err(|e| format!("payload.{key}[{i}]: {e}"))?;
                }
                out.push(s.clone());
            }
            _ => {
                return Err(format!(
                "payload.{key}[{i}]: must be a non-empty string of at most {MAX_TEXT_BYTES} bytes"
            ))
            }
        }
    }
    Ok(out)
}

fn plane(m: &Map<String, Value>, key: &str) -> Result<Plane, String> {
    let p = required(m, key)?;
    Plane::parse(p).ok_or_else(|| {
        format!(
            "payload.{key}: unknown plane {p:?} (one of {})",
            Plane::listing()
        )
    })
}

/// Checks a capability event and fills in nothing: the subject must be
/// the capability ref.
fn validate(d: &mut EventDraft) -> Result<(), String> {
    let Some(subject) = &d.subject else {
        return Err(format!(
            "subject: required, the capability ref ({CAPABILITY_PREFIX}<name>@<version>)"
        ));
    };
    CapabilityRef::new(subject.as_str()).map_err(|e| format!("subject: {e}"))?;
    let Some(m) = d.payload.as_map() else {
        return Err("payload: must be an object".into());
    };
    decision(m)?;
    string_list(m, "evidenceRefs", MAX_EVIDENCE_REFS)?;
    prefixed(m, "sessionRef", "urn:srcos:session:")?;
    text(m, "ownerRef")?;
    const COMMON: [&str; 4] = [
        "policyDecisionRef",
        "evidenceRefs",
        "sessionRef",
        "ownerRef",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        COMMON.iter().chain(extra.iter()).copied().collect()
    };
    match d.kind.as_str() {
        DECLARED => {
            only_keys(m, &with(&["plane", "state"]))?;
            plane(m, "plane")?;
            let s = required(m, "state")?;
            DeclaredState::parse(s).ok_or_else(|| {
                format!(
                    "payload.state: {s:?} is not one of {}",
                    DeclaredState::listing()
                )
            })?;
        }
        REQUESTED => {
            only_keys(m, &with(&["plane", "requiredPlanes"]))?;
            plane(m, "plane")?;
            for (i, p) in string_list(m, "requiredPlanes", Plane::ALL.len())?
                .iter()
                .enumerate()
            {
                if Plane::parse(p).is_none() {
                    return Err(format!(
                        "payload.requiredPlanes[{i}]: unknown plane {p:?} (one of {})",
                        Plane::listing()
                    ));
                }
            }
        }
        PLANE_REPORTED => {
            only_keys(m, &with(&["plane", "verdict", "reason"]))?;
            plane(m, "plane")?;
            let v = required(m, "verdict")?;
            Verdict::parse(v).ok_or_else(|| {
                format!(
                    "payload.verdict: {v:?} is not one of {}",
                    Verdict::listing()
                )
            })?;
            required(m, "reason")?;
        }
        _ => {
            only_keys(m, &with(&["effect"]))?;
            let e = required(m, "effect")?;
            PolicyEffect::parse(e).ok_or_else(|| {
                format!(
                    "payload.effect: {e:?} is not one of {}",
                    PolicyEffect::listing()
                )
            })?;
        }
    }
    Ok(())
}

/// What one plane said last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Its verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// Everything the log says about one capability, folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityState {
    /// The capability.
    pub capability: CapabilityRef,
    /// Each declaring plane's last declaration.
    pub declared: BTreeMap<Plane, DeclaredState>,
    /// Planes that asked for it.
    pub requested_by: Vec<Plane>,
    /// Planes that must agree beyond the declaring ones, runtime and server.
    pub required_extra: Vec<Plane>,
    /// Each reporting plane's last report.
    pub reports: BTreeMap<Plane, Report>,
    /// The last policy decision and its effect.
    pub policy: Option<(String, PolicyEffect)>,
    /// The last policy decision named by any event.
    pub last_decision_ref: String,
    /// The session it was negotiated in, when named.
    pub session_ref: Option<String>,
    /// Owners named, first come first kept.
    pub owner_refs: Vec<String>,
    /// Evidence refs named, first come first kept.
    pub evidence_refs: Vec<String>,
    /// The latest events about it (`urn:srcos:event:<id>`).
    pub causal_refs: Vec<String>,
    /// When the latest event was recorded.
    pub captured_at: String,
}

/// One event's facts, as the fold needs them.
pub(crate) struct Fact<'a> {
    pub kind: &'a str,
    pub payload: &'a Map<String, Value>,
    pub event_id: String,
    pub recorded_at: String,
}

impl CapabilityState {
    /// The state before any event.
    pub fn new(capability: CapabilityRef) -> Self {
        Self {
            capability,
            declared: BTreeMap::new(),
            requested_by: Vec::new(),
            required_extra: Vec::new(),
            reports: BTreeMap::new(),
            policy: None,
            last_decision_ref: String::new(),
            session_ref: None,
            owner_refs: Vec::new(),
            evidence_refs: Vec::new(),
            causal_refs: Vec::new(),
            captured_at: String::new(),
        }
    }

    /// Folds one event. Events that do not decode (only possible from a
    /// peer with other rules) change only the bookkeeping.
    pub(crate) fn apply(&mut self, f: &Fact<'_>) {
        let s = |k: &str| f.payload.get(k).and_then(Value::as_str);
        let plane = s("plane").and_then(Plane::parse);
        match (f.kind, plane) {
            (DECLARED, Some(p)) => {
                if let Some(st) = s("state").and_then(DeclaredState::parse) {
                    self.declared.insert(p, st);
                }
            }
            (REQUESTED, Some(p)) => {
                if !self.requested_by.contains(&p) {
                    self.requested_by.push(p);
                }
                if let Some(Value::Array(a)) = f.payload.get("requiredPlanes") {
                    for r in a.iter().filter_map(Value::as_str).filter_map(Plane::parse) {
                        if !self.required_extra.contains(&r) {
                            self.required_extra.push(r);
                        }
                    }
                }
            }
            (PLANE_REPORTED, Some(p)) => {
                if let Some(v) = s("verdict").and_then(Verdict::parse) {
                    let reason = s("reason").unwrap_or_default().to_owned();
                    self.reports.insert(p, Report { verdict: v, reason });
                }
            }
            (POLICY_DECIDED, _) => {
                if let (Some(d), Some(e)) = (
                    s("policyDecisionRef"),
                    s("effect").and_then(PolicyEffect::parse),
                ) {
                    self.policy = Some((d.to_owned(), e));
                }
            }
            _ => {}
        }
        if let Some(d) = s("policyDecisionRef") {
            d.clone_into(&mut self.last_decision_ref);
        }
        if let Some(sr) = s("sessionRef") {
            self.session_ref = Some(sr.to_owned());
        }
        if let Some(o) = s("ownerRef") {
            if !self.owner_refs.iter().any(|x| x == o) && self.owner_refs.len() < MAX_OWNERS {
                self.owner_refs.push(o.to_owned());
            }
        }
        if let Some(Value::Array(a)) = f.payload.get("evidenceRefs") {
            for e in a.iter().filter_map(Value::as_str) {
                if !self.evidence_refs.iter().any(|x| x == e)
                    && self.evidence_refs.len() < MAX_EVIDENCE_REFS
                {
                    self.evidence_refs.push(e.to_owned());
                }
            }
        }
        if self.causal_refs.len() >= MAX_CAUSAL_REFS {
            self.causal_refs.remove(0);
        }
        self.causal_refs
            .push(format!("urn:srcos:event:{}", f.event_id));
        f.recorded_at.clone_into(&mut self.captured_at);
    }

    /// Planes that must agree: the declaring ones, runtime, server, and
    /// any a request named.
    pub fn required_planes(&self) -> Vec<Plane> {
        let mut r: Vec<Plane> = self.declared.keys().copied().collect();
        for p in [Plane::Runtime, Plane::Server]
            .iter()
            .chain(self.required_extra.iter())
        {
            if !r.contains(p) {
                r.push(*p);
            }
        }
        r.sort();
        r
    }

    /// Split-brain: planes that claim it enabled while others reject it
    /// (or policy denies it), as `(claiming, rejecting)` pairs.
    pub fn split_brain(&self) -> Vec<(Plane, Plane)> {
        let mut claiming: Vec<Plane> = self
            .declared
            .iter()
            .filter(|(_, s)| **s == DeclaredState::Enabled)
            .map(|(p, _)| *p)
            .collect();
        for (p, r) in &self.reports {
            if r.verdict == Verdict::Enabled && !claiming.contains(p) {
                claiming.push(*p);
            }
        }
        let mut rejecting: Vec<Plane> = self
            .reports
            .iter()
            .filter(|(_, r)| r.verdict.rejects())
            .map(|(p, _)| *p)
            .collect();
        if matches!(self.policy, Some((_, PolicyEffect::Deny)))
            && !rejecting.contains(&Plane::Policy)
        {
            rejecting.push(Plane::Policy);
        }
        claiming.sort();
        rejecting.sort();
        let mut out = Vec::new();
        for c in &claiming {
            for r in &rejecting {
                if c != r {
                    out.push((*c, *r));
                }
            }
        }
        out
    }

    /// The effective state and why, by this precedence: policy deny;
    /// a failed plane; the server unsupported; another plane unsupported;
    /// a missing plugin; a missing schema; a degraded plane; then, when
    /// every required plane agreed and policy allowed, `enabled` (every
    /// declaration on) or `available`; otherwise `negotiating` once anyone
    /// answered, `requested` once asked, else `declared`.
    pub fn effective(&self) -> (EffectiveState, String) {
        if let Some((d, PolicyEffect::Deny)) = &self.policy {
            return (
                EffectiveState::BlockedByPolicy,
                format!("policy denied it ({d})"),
            );
        }
        let with = |v: Verdict| -> Option<(Plane, &Report)> {
            self.reports
                .iter()
                .find(|(_, r)| r.verdict == v)
                .map(|(p, r)| (*p, r))
        };
        let said = |p: Plane, r: &Report| format!("{p} reported {}: {}", r.verdict, r.reason);
        if let Some((p, r)) = with(Verdict::Failed) {
            return (EffectiveState::Failed, said(p, r));
        }
        if let Some(r) = self
            .reports
            .get(&Plane::Server)
            .filter(|r| r.verdict == Verdict::Unsupported)
        {
            return (EffectiveState::UnsupportedByServer, said(Plane::Server, r));
        }
        if let Some((p, r)) = with(Verdict::Unsupported) {
            return (EffectiveState::UnsupportedByRuntime, said(p, r));
        }
        if let Some((p, r)) = with(Verdict::MissingPlugin) {
            return (EffectiveState::MissingPlugin, said(p, r));
        }
        if let Some((p, r)) = with(Verdict::MissingSchema) {
            return (EffectiveState::MissingSchema, said(p, r));
        }
        if let Some((p, r)) = with(Verdict::Degraded) {
            return (EffectiveState::Degraded, said(p, r));
        }
        let waiting: Vec<Plane> = self
            .required_planes()
            .into_iter()
            .filter(|p| {
                !self.declared.contains_key(p)
                    && !self.reports.get(p).is_some_and(|r| r.verdict.agrees())
            })
            .collect();
        let allowed = matches!(self.policy, Some((_, PolicyEffect::Allow)));
        if waiting.is_empty() && allowed {
            let off: Vec<Plane> = self
                .declared
                .iter()
                .filter(|(_, s)| **s == DeclaredState::Disabled)
                .map(|(p, _)| *p)
                .collect();
            if off.is_empty() && !self.declared.is_empty() {
                return (
                    EffectiveState::Enabled,
                    "every required plane agreed and policy allowed it".into(),
                );
            }
            let names: Vec<&str> = off.iter().map(|p| p.as_str()).collect();
            return (
                EffectiveState::Available,
                format!(
                    "every plane can provide it, but {} declared it disabled",
                    names.join(", ")
                ),
            );
        }
        let mut missing: Vec<&str> = waiting.iter().map(|p| p.as_str()).collect();
        if !allowed {
            missing.push("policy decision");
        }
        if !self.reports.is_empty() || self.policy.is_some() {
            return (
                EffectiveState::Negotiating,
                format!("waiting for {}", missing.join(", ")),
            );
        }
        if !self.requested_by.is_empty() {
            return (
                EffectiveState::Requested,
                format!("requested; waiting for {}", missing.join(", ")),
            );
        }
        (
            EffectiveState::Declared,
            "declared; not requested yet".into(),
        )
    }

    /// The CapabilityLedger document.
    pub fn document(&self) -> CapabilityLedger {
        let (state, reason) = self.effective();
        let split = self.split_brain();
        let reason = if split.is_empty() {
            reason
        } else {
            let pairs: Vec<String> = split
                .iter()
                .map(|(a, b)| format!("{a} says enabled, {b} rejects"))
                .collect();
            format!("{reason}; split-brain: {}", pairs.join("; "))
        };
        let mut negotiated: Vec<Plane> = self.reports.keys().copied().collect();
        if self.policy.is_some() && !negotiated.contains(&Plane::Policy) {
            negotiated.push(Plane::Policy);
        }
        for p in &self.requested_by {
            if !negotiated.contains(p) {
                negotiated.push(*p);
            }
        }
        negotiated.sort();
        if negotiated.is_empty() {
            // The contract wants at least one: before any negotiation, the
            // declaring planes are the only ones that took part.
            negotiated = self.declared.keys().copied().collect();
        }
        let evidence = if self.evidence_refs.is_empty() {
            // The log entries themselves are the evidence.
            self.causal_refs
                .last()
                .map(|e| vec![e.replacen("urn:srcos:event:", "urn:srcos:evidence:syncd-event:", 1)])
                .unwrap_or_default()
        } else {
            self.evidence_refs.clone()
        };
        let decision = match &self.policy {
            Some((d, _)) => d.clone(),
            None => self.last_decision_ref.clone(),
        };
        CapabilityLedger {
            id: self.capability.ledger_id(),
            doc_type: "CapabilityLedger",
            spec_version: LEDGER_SPEC_VERSION,
            capability_ref: self.capability.as_str().to_owned(),
            session_ref: self.session_ref.clone(),
            declared_by: self.declared.keys().copied().collect(),
            negotiated_by: negotiated,
            effective_state: state,
            state_reason: Some(reason),
            owner_refs: self.owner_refs.clone(),
            conflict_refs: split
                .iter()
                .map(|(a, b)| format!("{CONFLICT_PREFIX}{}:{a}-vs-{b}", self.capability.local()))
                .collect(),
            causal_refs: self.causal_refs.clone(),
            policy_decision_ref: decision,
            evidence_refs: evidence,
            captured_at: self.captured_at.clone(),
        }
    }
}

/// A CapabilityLedger document (`schemas/CapabilityLedger.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityLedger {
    /// `urn:srcos:capability-ledger:<name>@<version>`.
    pub id: String,
    /// `CapabilityLedger`.
    #[serde(rename = "type")]
    pub doc_type: &'static str,
    /// [`LEDGER_SPEC_VERSION`].
    pub spec_version: &'static str,
    /// The capability.
    pub capability_ref: String,
    /// The session it was negotiated in.
    pub session_ref: Option<String>,
    /// Planes that declared it.
    pub declared_by: Vec<Plane>,
    /// Planes that negotiated it.
    pub negotiated_by: Vec<Plane>,
    /// The effective state.
    pub effective_state: EffectiveState,
    /// Why.
    pub state_reason: Option<String>,
    /// Owners.
    pub owner_refs: Vec<String>,
    /// Split-brain pairs (`urn:srcos:capability-conflict:<name>@<version>:<a>-vs-<b>`).
    pub conflict_refs: Vec<String>,
    /// The latest events about it.
    pub causal_refs: Vec<String>,
    /// The governing policy decision.
    pub policy_decision_ref: String,
    /// Evidence.
    pub evidence_refs: Vec<String>,
    /// When the latest event was recorded.
    pub captured_at: String,
}

/// A subject that is a capability ref, for the fold.
pub(crate) fn capability_of(subject: Option<&Subject>) -> Option<CapabilityRef> {
    subject.and_then(|s| CapabilityRef::new(s.as_str()).ok())
}

/// Every capability's ledger document, in ref order, at most
/// [`crate::MAX_LISTED`].
pub fn capabilities(
    store: &crate::store::Store,
) -> Result<Vec<CapabilityLedger>, crate::projection::ProjectionError> {
    let states = store.with_projection(crate::projection::ledger::NAME, |s| {
        crate::projection::ledger::capabilities(s, crate::explain::MAX_LISTED)
    })??;
    Ok(states.iter().map(CapabilityState::document).collect())
}

/// Capabilities in split-brain (at most `limit`), read from the ledger
/// projection: a cost that grows with the number of split capabilities,
/// not with the log.
pub fn split_brain_capabilities(
    store: &crate::store::Store,
    limit: usize,
) -> Result<Vec<String>, crate::projection::ProjectionError> {
    store.with_projection(crate::projection::ledger::NAME, |s| {
        crate::projection::ledger::split_brain(s, limit)
    })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use serde_json::json;

    fn state(events: &[(&str, Value)]) -> CapabilityState {
        let mut s = CapabilityState::new(CapabilityRef::new("urn:srcos:capability:x@1").unwrap());
        for (i, (kind, p)) in events.iter().enumerate() {
            let mut p = p.as_object().unwrap().clone();
            p.insert("policyDecisionRef".into(), json!("urn:srcos:decision:d"));
            s.apply(&Fact {
                kind,
                payload: &p,
                event_id: format!("e{i}"),
                recorded_at: format!("2026-01-01T00:00:0{i}.000000Z"),
            });
        }
        s
    }

    fn declared(p: &str, st: &str) -> (&'static str, Value) {
        (DECLARED, json!({"plane": p, "state": st}))
    }

    fn report(p: &str, v: &str) -> (&'static str, Value) {
        (
            PLANE_REPORTED,
            json!({"plane": p, "verdict": v, "reason": "r"}),
        )
    }

    fn policy(e: &str) -> (&'static str, Value) {
        (POLICY_DECIDED, json!({"effect": e}))
    }

    #[test]
    fn enabled_needs_every_required_plane_and_policy() {
        let base = vec![
            declared("config", "enabled"),
            declared("ui", "enabled"),
            report("runtime", "supported"),
        ];
        assert_eq!(state(&base).effective().0, EffectiveState::Negotiating);
        let mut more = base.clone();
        more.push(report("server", "enabled"));
        assert_eq!(
            state(&more).effective().0,
            EffectiveState::Negotiating,
            "no policy yet"
        );
        more.push(policy("allow"));
        assert_eq!(state(&more).effective().0, EffectiveState::Enabled);
        more.push(declared("ui", "disabled"));
        assert_eq!(state(&more).effective().0, EffectiveState::Available);
    }

    #[test]
    fn server_rejection_is_split_brain_and_never_enabled() {
        let s = state(&[
            declared("config", "enabled"),
            declared("ui", "enabled"),
            report("runtime", "enabled"),
            report("server", "unsupported"),
            policy("allow"),
        ]);
        assert_eq!(s.effective().0, EffectiveState::UnsupportedByServer);
        let split = s.split_brain();
        assert!(split.contains(&(Plane::Config, Plane::Server)));
        assert!(split.contains(&(Plane::Ui, Plane::Server)));
        let doc = s.document();
        assert!(doc
            .conflict_refs
            .iter()
            .any(|c| c.ends_with(":config-vs-server")));
    }

    #[test]
    fn precedence_is_as_documented() {
        let all = |extra: Vec<(&'static str, Value)>| {
            let mut e = vec![
                declared("config", "enabled"),
                report("runtime", "supported"),
                report("server", "supported"),
                policy("allow"),
            ];
            e.extend(extra);
            state(&e).effective().0
        };
        assert_eq!(
            all(vec![policy("deny"), report("plugin", "failed")]),
            EffectiveState::BlockedByPolicy
        );
        assert_eq!(
            all(vec![
                report("plugin", "failed"),
                report("server", "unsupported")
            ]),
            EffectiveState::Failed
        );
        assert_eq!(
            all(vec![
                report("server", "unsupported"),
                report("runtime", "unsupported")
            ]),
            EffectiveState::UnsupportedByServer
        );
        assert_eq!(
            all(vec![
                report("runtime", "unsupported"),
                report("plugin", "missing_plugin")
            ]),
            EffectiveState::UnsupportedByRuntime
        );
        assert_eq!(
            all(vec![
                report("plugin", "missing_plugin"),
                report("schema", "missing_schema")
            ]),
            EffectiveState::MissingPlugin
        );
        assert_eq!(
            all(vec![
                report("schema", "missing_schema"),
                report("ui", "degraded")
            ]),
            EffectiveState::MissingSchema
        );
        assert_eq!(
            all(vec![report("ui", "degraded")]),
            EffectiveState::Degraded
        );
        assert_eq!(all(vec![]), EffectiveState::Enabled);
        assert_eq!(
            state(&[declared("config", "enabled")]).effective().0,
            EffectiveState::Declared
        );
        assert_eq!(
            state(&[
                declared("config", "enabled"),
                (REQUESTED, json!({"plane": "user"}))
            ])
            .effective()
            .0,
            EffectiveState::Requested
        );
        // A plane a request names must agree too.
        let mut e = vec![
            declared("config", "enabled"),
            (
                REQUESTED,
                json!({"plane": "user", "requiredPlanes": ["plugin"]}),
            ),
        ];
        e.extend([
            report("runtime", "supported"),
            report("server", "supported"),
            policy("allow"),
        ]);
        assert_eq!(state(&e).effective().0, EffectiveState::Negotiating);
        e.push(report("plugin", "supported"));
        assert_eq!(state(&e).effective().0, EffectiveState::Enabled);
    }

    #[test]
    fn refs_are_validated() {
        assert!(CapabilityRef::new("urn:srcos:capability:browser-automation@0.1.0").is_ok());
        for bad in [
            "urn:srcos:capability:x",
            "urn:srcos:capability:@1",
            "urn:srcos:capability:X@1",
            "urn:other:x@1",
            "urn:srcos:capability:x@",
        ] {
            assert!(CapabilityRef::new(bad).is_err(), "{bad}");
        }
    }
}
