//! The bearer token file: `serve` requires the token on writes, the CLI sends it.

use std::path::Path;

use anyhow::{bail, Context};

/// Reads a bearer token file; surrounding whitespace (the trailing newline) is dropped.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token)
}
