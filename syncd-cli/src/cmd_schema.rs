//! `syncd schema list|show|validate`: the embedded JSON Schemas of the
//! documents syncd reads and writes, and validation of files against them
//! (schema plus the contracts' cross-field rules, and session ownership
//! and id uniqueness across all files of one run). No store is opened.
//!
//! A file holds one JSON document, an array of documents (as the listing
//! commands print), or JSON Lines (one document per line,
//! as `syncd log --json` prints). Exit 0 when every document is valid, 65
//! when any is invalid or a file cannot be read or parsed, 2 for an
//! unknown `--schema`.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sourceos_syncd as core;

use crate::cli::{SchemaCommand, SchemaShowArgs, SchemaValidateArgs};
use crate::output::Out;
use crate::{exit, Failure};

/// Largest file `validate` reads.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Documents read from one JSON Lines file.
const MAX_DOCUMENTS_PER_FILE: usize = 100_000;

/// Runs `syncd schema ...`.
pub fn schema(c: &SchemaCommand) -> Result<u8, Failure> {
    match c {
        SchemaCommand::List(a) => list(a.json),
        SchemaCommand::Show(a) => show(a),
        SchemaCommand::Validate(a) => validate(a),
    }
}

fn list(json: bool) -> Result<u8, Failure> {
    let mut out = Out::new();
    if json {
        out.json_pretty(&core::SCHEMAS)?;
    } else {
        for s in core::SCHEMAS {
            let origin = if s.sourceos { "SourceOS" } else { "syncd" };
            out.line(&format!("{:<26} {:<9} {}", s.name, origin, s.about))?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

fn show(a: &SchemaShowArgs) -> Result<u8, Failure> {
    let info = core::schema_info(&a.name).ok_or_else(|| {
        Failure::usage(format!(
            "no schema is named {:?} (see `syncd schema list`)",
            a.name
        ))
    })?;
    let mut out = Out::new();
    out.line(info.text().trim_end())?;
    out.flush()?;
    Ok(exit::OK)
}

/// The result for one document.
#[derive(Serialize)]
struct DocResult {
    file: String,
    /// Where in the file: `line N` (JSON Lines) or `[N]` (an array).
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'static str>,
    valid: bool,
    violations: Vec<core::Violation>,
    #[serde(skip_serializing_if = "is_zero")]
    not_listed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl DocResult {
    fn failed(file: &Path, at: Option<String>, message: String) -> Self {
        Self {
            file: file.display().to_string(),
            at,
            schema: None,
            valid: false,
            violations: vec![core::Violation {
                path: String::new(),
                message,
            }],
            not_listed: 0,
        }
    }
}

/// Reads a file with a bound on its size.
fn read_bounded(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut text = String::new();
    let n = f
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if n as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// The documents of a file: one document, an array of documents (as the
/// listing commands print), or JSON Lines.
fn documents(text: &str) -> Result<Vec<(Option<String>, Value)>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => {
            if items.len() > MAX_DOCUMENTS_PER_FILE {
                return Err(format!("more than {MAX_DOCUMENTS_PER_FILE} documents"));
            }
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Some(format!("[{i}]")), v))
                .collect())
        }
        Ok(v) => Ok(vec![(None, v)]),
        Err(whole) => {
            let lines: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .collect();
            if lines.len() < 2 {
                return Err(format!("not JSON: {whole}"));
            }
            if lines.len() > MAX_DOCUMENTS_PER_FILE {
                return Err(format!(
                    "more than {MAX_DOCUMENTS_PER_FILE} JSON Lines documents"
                ));
            }
            lines
                .into_iter()
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .map(|v| (Some(format!("line {}", i + 1)), v))
                        .map_err(|e| format!("line {}: not JSON: {e}", i + 1))
                })
                .collect()
        }
    }
}

fn validate(a: &SchemaValidateArgs) -> Result<u8, Failure> {
    if let Some(n) = &a.schema {
        if core::schema_info(n).is_none() {
            return Err(Failure::usage(format!(
                "--schema: no schema is named {n:?} (see `syncd schema list`)"
            )));
        }
    }
    let mut results = Vec::new();
    let mut set = core::SetRules::new();
    let mut index = 0usize;
    for file in &a.files {
        let docs = read_bounded(file).and_then(|t| documents(&t));
        let docs = match docs {
            Ok(d) => d,
            Err(e) => {
                results.push(DocResult::failed(file, None, e));
                continue;
            }
        };
        for (line, doc) in docs {
            results.push(check(
                file,
                line,
                &doc,
                a.schema.as_deref(),
                index,
                &mut set,
            ));
            index += 1;
        }
    }
    render(&results, a.json)?;
    Ok(if results.iter().all(|r| r.valid) {
        exit::OK
    } else {
        exit::DATA
    })
}

fn check(
    file: &Path,
    at: Option<String>,
    doc: &Value,
    schema: Option<&str>,
    index: usize,
    set: &mut core::SetRules,
) -> DocResult {
    match core::validate_document(doc, schema) {
        Ok(mut c) => {
            c.violations.extend(set.observe(index, doc));
            DocResult {
                file: file.display().to_string(),
                at,
                schema: Some(c.schema),
                valid: c.violations.is_empty(),
                violations: c.violations,
                not_listed: c.not_listed,
            }
        }
        Err(e) => DocResult::failed(file, at, crate::chain(&e)),
    }
}

fn render(results: &[DocResult], json: bool) -> Result<(), Failure> {
    let mut out = Out::new();
    if json {
        out.json_pretty(&results)?;
        out.flush()?;
        return Ok(());
    }
    for r in results {
        let at = match &r.at {
            Some(l) => format!("{} {l}", r.file),
            None => r.file.clone(),
        };
        let verdict = if r.valid { "valid" } else { "invalid" };
        match r.schema {
            Some(s) => out.line(&format!("{at}: {verdict} ({s})"))?,
            None => out.line(&format!("{at}: {verdict}"))?,
        }
        for v in &r.violations {
            let path = if v.path.is_empty() { "/" } else { &v.path };
            out.line(&format!("  {path}: {}", v.message))?;
        }
        if r.not_listed > 0 {
            out.line(&format!("  ... and {} more", r.not_listed))?;
        }
    }
    out.flush()?;
    Ok(())
}
