//! `validate-config FILE` and `validate-plan FILE` (`-`: stdin): offline checks
//! (`crate::validate`). Valid: exit 0, `ok: plan version N, K rollout(s)` on stdout.
//! Invalid: exit 1, `FIELD: message` on stderr.

use std::io::Write;
use std::path::Path;

use crate::util::input::read_input;
use crate::validate::{check_config, check_plan};

/// What to validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Config,
    Plan,
}

/// Runs a validation command: prints the ok line, or prints `FIELD: message` on
/// stderr and exits with status 1 (an unreadable file is an ordinary error).
pub fn run(out: &mut impl Write, kind: Kind, path: &Path) -> anyhow::Result<()> {
    let bytes = read_input(path)?;
    let result = match kind {
        Kind::Config => check_config(&bytes),
        Kind::Plan => check_plan(&bytes),
    };
    match result {
        Ok(line) => {
            writeln!(out, "{line}")?;
            Ok(())
        }
        Err(e) => {
            out.flush()?;
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
