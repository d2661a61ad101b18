//! End-to-end tests of `syncd schema list|show|validate`: every published
//! SourceOS example of the five records syncd speaks validates, each of
//! many single mutations of them is refused with the JSON path of the
//! problem, our own valid and invalid examples under `schemas/examples`
//! behave as labelled, the documents the binary prints (log, status,
//! doctor, explain) validate against our schemas, our five SourceOS
//! schemas agree with the published ones field by field, and bad input
//! (unknown schema, unreadable or non-JSON files, no `type`, a session
//! claimed by two owners) gets a clear answer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::{stderr, stdout, Home};

/// The five SourceOS records and their published example files.
const RECORDS: [(&str, &str); 5] = [
    ("CapabilityLedger", "capabilityledger.json"),
    ("BrowserAutomationReceipt", "browserautomationreceipt.json"),
    ("GitWorkspaceState", "gitworkspacestate.json"),
    ("OrphanEventReceipt", "orphaneventreceipt.json"),
    ("RuntimeInstallReceipt", "runtimeinstallreceipt.json"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec() -> PathBuf {
    repo().join("../shared/spec")
}

fn published_example(file: &str) -> Value {
    let p = spec().join("examples").join(file);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("the SourceOS spec must sit beside the repository: {p:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn published_schema(name: &str) -> Value {
    let p = spec().join("schemas").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn our_schema(name: &str) -> Value {
    let p = repo().join("schemas").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Runs `syncd schema validate --json` on one document; returns the exit
/// code and the violations.
fn validate(home: &Home, doc: &Value, schema: Option<&str>) -> (i32, Vec<Value>) {
    let file = home.path().join("doc.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let mut args = vec!["schema", "validate", "--json", file.to_str().unwrap()];
    if let Some(s) = schema {
        args.extend(["--schema", s]);
    }
    let out = home.run(&args);
    let code = out.status.code().unwrap();
    let results: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(&out), stderr(&out)));
    let violations = results[0]["violations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (code, violations)
}

#[test]
fn published_examples_validate() {
    let home = Home::empty();
    let mut args = vec!["schema".to_owned(), "validate".to_owned()];
    for (_, file) in RECORDS {
        args.push(spec().join("examples").join(file).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = home.run(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    for (name, _) in RECORDS {
        assert!(
            stdout(&out).contains(&format!("valid ({name})")),
            "{}",
            stdout(&out)
        );
    }
}

/// One single change to a valid document, and the path it must be
/// reported at.
struct Mutation {
    what: String,
    doc: Value,
    path: String,
}

fn set(doc: &Value, pointer: &str, value: Value) -> Value {
    let mut d = doc.clone();
    *d.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = value;
    d
}

fn remove(doc: &Value, pointer: &str) -> Value {
    let mut d = doc.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = if parent.is_empty() {
        &mut d
    } else {
        d.pointer_mut(parent).unwrap()
    };
    parent.as_object_mut().unwrap().remove(key).unwrap();
    d
}

/// Mutations of a published example: every required field removed (top
/// level and nested), every enumerated field set to an unknown value,
/// every `urn:srcos:` prefix changed, every const flipped, and every
/// ordered pair of timestamps reversed.
fn mutations(name: &str, doc: &Value) -> Vec<Mutation> {
    let schema = published_schema(name);
    let mut out = Vec::new();
    fn walk(schema: &Value, doc: &Value, at: &str, root: &Value, out: &mut Vec<Mutation>) {
        for r in schema["required"].as_array().into_iter().flatten() {
            let key = r.as_str().unwrap();
            let p = format!("{at}/{key}");
            if doc.get(key).is_some() {
                out.push(Mutation {
                    what: format!("{p} removed"),
                    doc: remove(root, &p),
                    path: at.to_owned(),
                });
            }
        }
        let Some(props) = schema["properties"].as_object() else {
            return;
        };
        for (key, sub) in props {
            let Some(value) = doc.get(key) else { continue };
            let p = format!("{at}/{key}");
            if sub.get("enum").is_some() && value.is_string() {
                out.push(Mutation {
                    what: format!("{p} not in its enum"),
                    doc: set(root, &p, json!("not_a_listed_value")),
                    path: p.clone(),
                });
            }
            if let Some(c) = sub.get("const") {
                if let Some(b) = c.as_bool() {
                    out.push(Mutation {
                        what: format!("{p} const flipped"),
                        doc: set(root, &p, json!(!b)),
                        path: p.clone(),
                    });
                }
            }
            if let (Some(pattern), Some(text)) = (sub["pattern"].as_str(), value.as_str()) {
                if pattern.starts_with("^urn:srcos:") {
                    let changed = text
                        .replacen("urn:srcos:", "urn:srcos:policy-decision:", 1)
                        .replacen("urn:srcos:decision:", "urn:srcos:policy-decision:", 1);
                    let changed = if changed == text {
                        format!("urn:other:{text}")
                    } else {
                        changed
                    };
                    out.push(Mutation {
                        what: format!("{p} prefix changed"),
                        doc: set(root, &p, json!(changed)),
                        path: p.clone(),
                    });
                }
            }
            if sub["type"] == "object" && value.is_object() {
                walk(sub, value, &p, root, out);
            }
        }
    }
    walk(&schema, doc, "", doc, &mut out);
    // Timestamps reversed: the later one moved a day before the earlier.
    let pairs: &[(&str, &str)] = match name {
        "BrowserAutomationReceipt" => &[("/startedAt", "/capturedAt")],
        "RuntimeInstallReceipt" => &[("/startedAt", "/capturedAt"), ("/startedAt", "/finishedAt")],
        "OrphanEventReceipt" => &[
            ("/observedAt", "/capturedAt"),
            ("/observedAt", "/sessionResolution/reconciledAt"),
        ],
        _ => &[],
    };
    for (earlier, later) in pairs {
        out.push(Mutation {
            what: format!("{later} before {earlier}"),
            doc: set(doc, later, json!("2000-01-01T00:00:00Z")),
            path: (*later).to_owned(),
        });
    }
    // Rules of the spec README that a schema cannot state.
    match name {
        "BrowserAutomationReceipt" => out.push(Mutation {
            what: "revoked without revokedAt".into(),
            doc: set(doc, "/terminalState", json!("revoked")),
            path: "/revokedAt".into(),
        }),
        "OrphanEventReceipt" => {
            out.push(Mutation {
                what: "recovered without its session".into(),
                doc: set(doc, "/sessionResolution/recoveredSessionRef", Value::Null),
                path: "/sessionResolution/recoveredSessionRef".into(),
            });
            out.push(Mutation {
                what: "quarantined without its time".into(),
                doc: set(doc, "/sessionResolution/state", json!("quarantined")),
                path: "/sessionResolution/quarantinedAt".into(),
            });
        }
        "CapabilityLedger" => out.push(Mutation {
            what: "session claimed by two owners".into(),
            doc: set(
                doc,
                "/ownerRefs",
                json!(["urn:srcos:agent:one", "urn:srcos:agent:two"]),
            ),
            path: "/ownerRefs".into(),
        }),
        _ => {}
    }
    out
}

#[test]
fn single_mutations_of_published_examples_are_refused_with_their_path() {
    let home = Home::empty();
    let mut total = 0;
    for (name, file) in RECORDS {
        let doc = published_example(file);
        let ms = mutations(name, &doc);
        assert!(ms.len() >= 10, "{name}: only {} mutations", ms.len());
        for m in ms {
            let (code, violations) = validate(&home, &m.doc, None);
            assert_eq!(code, 65, "{name}: {} was accepted", m.what);
            assert!(
                violations.iter().any(|v| v["path"] == m.path.as_str()),
                "{name}: {}: no violation at {}: {violations:?}",
                m.what,
                m.path
            );
            total += 1;
        }
    }
    assert!(total > 100, "only {total} mutations");
}

#[test]
fn our_examples_behave_as_labelled() {
    let home = Home::empty();
    let dir = repo().join("schemas/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (schema, label) = file.trim_end_matches(".json").split_once('.').unwrap();
        let out = home.run(&[
            "schema",
            "validate",
            "--schema",
            schema,
            path.to_str().unwrap(),
        ]);
        let want = if label == "valid" { 0 } else { 65 };
        assert_eq!(
            out.status.code(),
            Some(want),
            "{file}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        seen += 1;
    }
    // A valid and an invalid example per schema.
    let listed = home.run(&["schema", "list", "--json"]);
    let schemas: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(seen, schemas.len() * 2);
}

#[test]
fn emitted_documents_validate_against_our_schemas() {
    let home = Home::new();
    let lines: Vec<String> = [
        r#"{"kind":"schema.registered","actor":"actor:local-user","payload":{"schema_id":"schema:source-object:v1","object_type":"source_object","schema_version":"v1","required_fields":["object_id"]}}"#,
        r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:alpha","object_type":"file","schema_id":"schema:source-object:v1"}}"#,
        r#"{"kind":"note.added","actor":"actor:agent-one","subject":"object:alpha","session":"urn:srcos:session:s1","idempotency_key":"k1","payload":{"n":1}}"#,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for line in &lines {
        let (code, v) = validate(
            &home,
            &serde_json::from_str(line).unwrap(),
            Some("EventInput"),
        );
        assert_eq!(code, 0, "{line}: {v:?}");
    }
    assert_eq!(home.ingest(&lines).status.code(), Some(0));
    let cases: [(&[&str], &str); 4] = [
        (&["log", "--json"], "Event"),
        (&["status", "--json"], "StatusDocument"),
        (&["doctor", "--json"], "DoctorReport"),
        (&["explain", "object:alpha", "--json"], "Explanation"),
    ];
    for (args, schema) in cases {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let file = home.path().join(format!("{schema}.out"));
        std::fs::write(&file, &out.stdout).unwrap();
        let v = home.run(&[
            "schema",
            "validate",
            "--schema",
            schema,
            file.to_str().unwrap(),
        ]);
        assert_eq!(v.status.code(), Some(0), "{schema}: {}", stdout(&v));
    }
}

/// Every enum, required list, const and pattern of the published schema
/// appears the same in ours (ours may only add: stricter id patterns).
#[test]
fn our_sourceos_schemas_agree_with_the_published_ones() {
    fn compare(name: &str, at: &str, theirs: &Value, ours: &Value) {
        for key in ["enum", "const", "type", "minItems"] {
            assert_eq!(theirs.get(key), ours.get(key), "{name}{at}: {key}");
        }
        let sorted = |v: Option<&Value>| {
            let mut r: Vec<String> = v
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|x| x.to_string())
                .collect();
            r.sort();
            r
        };
        assert_eq!(
            sorted(theirs.get("required")),
            sorted(ours.get("required")),
            "{name}{at}: required"
        );
        assert_eq!(
            theirs.get("additionalProperties"),
            ours.get("additionalProperties"),
            "{name}{at}: additionalProperties"
        );
        if let Some(p) = theirs.get("pattern").and_then(Value::as_str) {
            let o = ours
                .get("pattern")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{name}{at}: no pattern"));
            assert!(
                o == p || o == format!("{p}.+"),
                "{name}{at}: pattern {o} vs {p}"
            );
        }
        if let Some(tp) = theirs.get("properties").and_then(Value::as_object) {
            let op = ours["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{name}{at}: no properties"));
            let mut a: Vec<&String> = tp.keys().collect();
            let mut b: Vec<&String> = op.keys().collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{name}{at}: properties");
            for (k, t) in tp {
                compare(
                    name,
                    &format!("{at}/{k}"),
                    t,
                    &resolve(&ours_root(name), &op[k]),
                );
            }
        }
        if let Some(ti) = theirs.get("items") {
            compare(
                name,
                &format!("{at}/items"),
                ti,
                &resolve(&ours_root(name), &ours["items"]),
            );
        }
    }
    fn ours_root(name: &str) -> Value {
        our_schema(name)
    }
    fn resolve(root: &Value, v: &Value) -> Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = root.pointer(r.trim_start_matches('#')).unwrap().clone();
                let mut merged = target.as_object().unwrap().clone();
                for (k, x) in v.as_object().unwrap() {
                    if k != "$ref" {
                        merged.insert(k.clone(), x.clone());
                    }
                }
                Value::Object(merged)
            }
            None => v.clone(),
        }
    }
    for (name, _) in RECORDS {
        compare(name, "", &published_schema(name), &our_schema(name));
    }
}

#[test]
fn bad_input_gets_a_clear_answer() {
    let home = Home::empty();
    let ex = spec().join("examples/capabilityledger.json");
    let ex = ex.to_str().unwrap();
    // Unknown schema: usage error before any file is read.
    let out = home.run(&["schema", "validate", "--schema", "Nope", ex]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no schema is named \"Nope\""),
        "{}",
        stderr(&out)
    );
    let out = home.run(&["schema", "show", "Nope"]);
    assert_eq!(out.status.code(), Some(2));
    // No file at all.
    assert_eq!(home.run(&["schema", "validate"]).status.code(), Some(2));
    // Missing, non-JSON and untyped files are reported and the others still checked.
    let junk = home.path().join("junk.json");
    std::fs::write(&junk, "{not json").unwrap();
    let untyped = home.path().join("untyped.json");
    std::fs::write(&untyped, r#"{"id":"urn:srcos:x:1"}"#).unwrap();
    let missing = home.path().join("missing.json");
    let out = home.run(&[
        "schema",
        "validate",
        missing.to_str().unwrap(),
        junk.to_str().unwrap(),
        untyped.to_str().unwrap(),
        ex,
    ]);
    assert_eq!(out.status.code(), Some(65));
    let text = stdout(&out);
    assert!(text.contains("missing.json: invalid"), "{text}");
    assert!(text.contains("cannot open"), "{text}");
    assert!(text.contains("not JSON"), "{text}");
    assert!(text.contains("pass --schema NAME"), "{text}");
    assert!(
        text.contains("capabilityledger.json: valid (CapabilityLedger)"),
        "{text}"
    );
    // The schema of a name prints and parses.
    let out = home.run(&["schema", "show", "BrowserAutomationReceipt"]);
    assert_eq!(out.status.code(), Some(0));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["title"], "BrowserAutomationReceipt");
}

#[test]
fn one_session_claimed_by_two_owners_across_files_is_refused() {
    let home = Home::empty();
    let a = published_example("browserautomationreceipt.json");
    let mut b = a.clone();
    b["id"] = json!("urn:srcos:receipt:browser-automation:other-owner");
    b["ownerRef"] = json!("urn:srcos:agent:someone-else");
    let fa = home.path().join("a.json");
    let fb = home.path().join("b.json");
    std::fs::write(&fa, a.to_string()).unwrap();
    std::fs::write(&fb, b.to_string()).unwrap();
    let out = home.run(&[
        "schema",
        "validate",
        fa.to_str().unwrap(),
        fb.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("ambiguous session ownership"),
        "{}",
        stdout(&out)
    );
    // Each alone is valid.
    for f in [&fa, &fb] {
        assert_eq!(
            home.run(&["schema", "validate", f.to_str().unwrap()])
                .status
                .code(),
            Some(0)
        );
    }
}
