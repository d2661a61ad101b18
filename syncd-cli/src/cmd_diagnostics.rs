//! `syncd diagnostics export`: a redacted bundle for support.

use std::path::Path;

use crate::cli::{Cli, DiagnosticsExportArgs};
use crate::Failure;

pub(crate) fn export(_cli: &Cli, _home: &Path, _a: &DiagnosticsExportArgs) -> Result<u8, Failure> {
    Err(Failure::usage("diagnostics export is not available yet"))
}
