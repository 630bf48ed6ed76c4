//! Reading a command's input file, where `-` means stdin.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// A file's bytes; `-` reads stdin.
pub fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
