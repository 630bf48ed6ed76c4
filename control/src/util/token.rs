//! Bearer token files. The CLI sends the one token of `--token-file`; `serve` keeps one
//! [`TokenFile`] per role, which may hold several tokens (one a line, for rotation) and
//! is read again when it changes on disk.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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

/// Most tokens one file may hold (old and new during a rotation, and some slack).
pub const MAX_TOKENS_PER_FILE: usize = 16;
/// How often a token file's modification time is looked at.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Reads the tokens of a role's file: one per line, blank lines and `#` comments
/// skipped; at least one, at most [`MAX_TOKENS_PER_FILE`], each printable ASCII.
pub fn read_tokens(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        bail!("token file {} holds no token", path.display());
    }
    if tokens.len() > MAX_TOKENS_PER_FILE {
        bail!(
            "token file {} holds {} tokens; at most {MAX_TOKENS_PER_FILE}",
            path.display(),
            tokens.len()
        );
    }
    if let Some(bad) = tokens
        .iter()
        .position(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
    {
        bail!(
            "token file {}: token {} is not printable ASCII without spaces",
            path.display(),
            bad + 1
        );
    }
    Ok(tokens)
}

struct Loaded {
    tokens: Vec<Vec<u8>>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// A role's token file, re-read when its modification time changes (looked at most
/// once per [`RECHECK`]). A file that becomes unreadable or empty keeps the tokens last
/// read (and says so on stderr), so a botched rotation locks nobody out.
pub struct TokenFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl TokenFile {
    /// Reads the file now; an unreadable or empty file is an error.
    pub fn open(path: &Path) -> anyhow::Result<TokenFile> {
        let tokens = read_tokens(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                tokens: tokens.into_iter().map(String::into_bytes).collect(),
                modified: modified(path),
                checked: Instant::now(),
            }),
        })
    }

    /// Literal tokens, never read again (tests, embedding).
    pub fn fixed(tokens: Vec<String>) -> TokenFile {
        TokenFile {
            path: PathBuf::new(),
            loaded: Mutex::new(Loaded {
                tokens: tokens.into_iter().map(String::into_bytes).collect(),
                modified: None,
                checked: Instant::now(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in force, re-reading the file if it changed.
    pub fn tokens(&self) -> Vec<Vec<u8>> {
        let mut l = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if l.checked.elapsed() >= RECHECK {
            l.checked = Instant::now();
            let m = modified(&self.path);
            if m != l.modified {
                l.modified = m;
                match read_tokens(&self.path) {
                    Ok(t) => {
                        l.tokens = t.into_iter().map(String::into_bytes).collect();
                        eprintln!(
                            "rollout-control: token file {} read again ({} tokens)",
                            self.path.display(),
                            l.tokens.len()
                        );
                    }
                    Err(e) => eprintln!("rollout-control: keeping the tokens last read: {e:#}"),
                }
            }
        }
        l.tokens.clone()
    }

    /// Forces the next [`TokenFile::tokens`] to look at the file (tests).
    #[doc(hidden)]
    pub fn recheck_now(&self) {
        let mut l = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        l.checked = Instant::now().checked_sub(RECHECK).unwrap_or(l.checked);
        l.modified = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tokens_and_reload() {
        let dir = std::env::temp_dir().join(format!("rc-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("proxy");
        std::fs::write(&f, "# the proxies\nold\n\nnew\n").unwrap();
        let t = TokenFile::open(&f).unwrap();
        assert_eq!(t.tokens(), vec![b"old".to_vec(), b"new".to_vec()]);
        std::fs::write(&f, "new\n").unwrap();
        t.recheck_now();
        assert_eq!(t.tokens(), vec![b"new".to_vec()]);
        std::fs::write(&f, "\n").unwrap();
        t.recheck_now();
        assert_eq!(
            t.tokens(),
            vec![b"new".to_vec()],
            "an emptied file keeps the last tokens"
        );
        assert!(read_tokens(&f).is_err());
        std::fs::write(&f, "a b\n").unwrap();
        assert!(read_tokens(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
