//! wasm-trim: removes from a proxy-wasm module the exports of callbacks the filter
//! does not implement, then the code only they reached.
//!
//! Why: the Rust SDK (proxy-wasm 0.2.5) exports every `proxy_on_*` callback, and
//! Envoy's proxy-wasm host enters the VM for each one the module exports. For an
//! export the module lacks, the host answers itself without entering the VM
//! (`proxy_on_done` absent: "done"; trailers, network and gRPC callbacks absent:
//! continue, nothing to do). Fewer exports, fewer VM entries per request.
//!
//! The exports are listed in a spec file (`src/exports.txt`), one per line:
//!
//! ```text
//! keep proxy_on_request_headers   # the filter needs it
//! drop proxy_on_done              # the filter does not implement it
//! ```
//!
//! The tool refuses (exit 1, the file untouched) when a `keep` export is missing,
//! when the module has an export the spec does not list (a new SDK callback is
//! classified before it ships), when a name is listed twice, and when the spec
//! drops an export the proxy-wasm host itself requires ([`HOST_REQUIRED`]).
//! A `drop` export already absent is fine: re-running on a trimmed file changes
//! nothing and leaves it as it is.
//!
//! ```text
//! wasm-trim --exports src/exports.txt target/wasm32-wasip1/release/model_rollout.wasm
//! wasm-trim --check --exports src/exports.txt FILE   # verify only, never write
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exports the proxy-wasm host or the SDK cannot do without, whatever a spec says:
/// the memory, the reactor's start, the ABI marker the host reads the version from,
/// the host's allocator, and the SDK's context creation and deletion (without
/// `proxy_on_delete` the SDK would keep every request context forever).
pub const HOST_REQUIRED: &[&str] = &[
    "memory",
    "_initialize",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_delete",
];

/// The ABI marker export (`proxy_abi_version_0_2_1` and the like).
const ABI_PREFIX: &str = "proxy_abi_version_";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Spec {
    pub keep: BTreeSet<String>,
    pub drop: BTreeSet<String>,
}

impl Spec {
    /// `keep NAME` / `drop NAME` lines; `#` starts a comment; blank lines ignored.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let mut spec = Spec::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (verb, name) = match words.as_slice() {
                [verb, name] => (*verb, (*name).to_string()),
                _ => {
                    return Err(format!(
                        "line {}: expected `keep NAME` or `drop NAME`",
                        i + 1
                    ))
                }
            };
            if spec.keep.contains(&name) || spec.drop.contains(&name) {
                return Err(format!("line {}: {name} is listed twice", i + 1));
            }
            match verb {
                "keep" => spec.keep.insert(name),
                "drop" => {
                    if HOST_REQUIRED.contains(&name.as_str()) || name.starts_with(ABI_PREFIX) {
                        return Err(format!(
                            "line {}: {name} is required by the proxy-wasm host and cannot be dropped",
                            i + 1
                        ));
                    }
                    spec.drop.insert(name)
                }
                other => return Err(format!("line {}: unknown verb {other:?}", i + 1)),
            };
        }
        Ok(spec)
    }
}

/// What trimming did (or, with `--check`, would do).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub dropped: Vec<String>,
    pub kept: Vec<String>,
}

/// Checks the module's exports against the spec and deletes the dropped ones,
/// then garbage-collects what only they reached. Errors leave `module` unusable
/// for emitting (callers do not write on error).
pub fn trim(module: &mut walrus::Module, spec: &Spec) -> Result<Outcome, String> {
    let present: BTreeSet<String> = module.exports.iter().map(|e| e.name.clone()).collect();
    let unlisted: Vec<&String> = present
        .iter()
        .filter(|n| !spec.keep.contains(*n) && !spec.drop.contains(*n))
        .collect();
    if !unlisted.is_empty() {
        return Err(format!(
            "exports not classified in the spec (add `keep` or `drop` lines): {}",
            join(unlisted)
        ));
    }
    let missing: Vec<&String> = spec.keep.iter().filter(|n| !present.contains(*n)).collect();
    if !missing.is_empty() {
        return Err(format!("required exports missing: {}", join(missing)));
    }
    for required in HOST_REQUIRED {
        if !present.contains(*required) {
            return Err(format!(
                "the proxy-wasm host requires the export {required}"
            ));
        }
    }
    if !present.iter().any(|n| n.starts_with(ABI_PREFIX)) {
        return Err(format!("no {ABI_PREFIX}* export: not a proxy-wasm module"));
    }
    let doomed: Vec<walrus::ExportId> = module
        .exports
        .iter()
        .filter(|e| spec.drop.contains(&e.name))
        .map(|e| e.id())
        .collect();
    let mut dropped: Vec<String> = Vec::new();
    for id in doomed {
        dropped.push(module.exports.get(id).name.clone());
        module.exports.delete(id);
    }
    if !dropped.is_empty() {
        walrus::passes::gc::run(module);
    }
    dropped.sort();
    let kept = module.exports.iter().map(|e| e.name.clone()).collect();
    Ok(Outcome { dropped, kept })
}

fn join(names: Vec<&String>) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses without adding anything of walrus' own (no producers or name section),
/// so the output depends only on the input and the spec.
fn config() -> walrus::ModuleConfig {
    let mut c = walrus::ModuleConfig::new();
    c.generate_producers_section(false)
        .generate_name_section(false)
        .generate_synthetic_names_for_anonymous_items(false);
    c
}

/// Trims `wasm` in place (written to a temporary file, then renamed over it).
/// `check`: verify only; an export still to drop is an error.
fn run(spec_path: &Path, wasm: &Path, check: bool) -> Result<Outcome, String> {
    let text =
        std::fs::read_to_string(spec_path).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let spec = Spec::parse(&text).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let bytes = std::fs::read(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let mut module = config()
        .parse(&bytes)
        .map_err(|e| format!("{}: cannot parse: {e}", wasm.display()))?;
    let outcome = trim(&mut module, &spec).map_err(|e| format!("{}: {e}", wasm.display()))?;
    if check {
        if !outcome.dropped.is_empty() {
            return Err(format!(
                "{}: still exports {} (run wasm-trim without --check)",
                wasm.display(),
                outcome.dropped.join(", ")
            ));
        }
        return Ok(outcome);
    }
    if outcome.dropped.is_empty() {
        return Ok(outcome);
    }
    let out = module.emit_wasm();
    let mut tmp = wasm.as_os_str().to_owned();
    tmp.push(".trim-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    // A rename, not a write in place: cargo hard-links the file to its deps/ copy.
    std::fs::rename(&tmp, wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    Ok(outcome)
}

const USAGE: &str = "usage: wasm-trim [--check] --exports SPEC FILE.wasm";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut spec, mut wasm, mut check) = (None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--exports" => spec = args.next().map(PathBuf::from),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if wasm.is_none() && !a.starts_with('-') => wasm = Some(PathBuf::from(a)),
            _ => {
                eprintln!("wasm-trim: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(spec), Some(wasm)) = (spec, wasm) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(&spec, &wasm, check) {
        Ok(o) => {
            let verb = if check { "checked" } else { "trimmed" };
            let what = if o.dropped.is_empty() {
                "nothing to drop".to_string()
            } else {
                format!("dropped {}", o.dropped.join(", "))
            };
            println!(
                "wasm-trim: {verb} {}: {what}; {} exports",
                wasm.display(),
                o.kept.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasm-trim: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrus::{FunctionBuilder, Module, ValType};

    /// A module shaped like a proxy-wasm filter: the required exports, `keep_me`
    /// calling `shared`, `drop_me` calling `shared` and `only_dropped`.
    fn module() -> Module {
        let mut m = Module::with_config(config());
        let mem = m.memories.add_local(false, false, 1, None, None);
        m.exports.add("memory", mem);
        let void = |m: &mut Module| FunctionBuilder::new(&mut m.types, &[], &[]);
        let shared = {
            let mut f = void(&mut m);
            f.func_body().i32_const(1).drop();
            f.finish(vec![], &mut m.funcs)
        };
        let only_dropped = {
            let mut f = void(&mut m);
            f.func_body().i32_const(2).drop();
            f.finish(vec![], &mut m.funcs)
        };
        let keep_me = {
            let mut f = void(&mut m);
            f.func_body().call(shared);
            f.finish(vec![], &mut m.funcs)
        };
        let drop_me = {
            let mut f = void(&mut m);
            f.func_body().call(shared).call(only_dropped);
            f.finish(vec![], &mut m.funcs)
        };
        let alloc = {
            let mut f = FunctionBuilder::new(&mut m.types, &[ValType::I32], &[ValType::I32]);
            f.func_body().i32_const(0);
            let arg = m.locals.add(ValType::I32);
            f.finish(vec![arg], &mut m.funcs)
        };
        for name in [
            "_initialize",
            "proxy_abi_version_0_2_1",
            "proxy_on_context_create",
            "proxy_on_delete",
        ] {
            m.exports.add(name, keep_me);
        }
        m.exports.add("proxy_on_memory_allocate", alloc);
        m.exports.add("keep_me", keep_me);
        m.exports.add("drop_me", drop_me);
        m
    }

    const SPEC: &str = "\
        # the test module's exports\n\
        keep memory\nkeep _initialize\nkeep proxy_abi_version_0_2_1\n\
        keep proxy_on_memory_allocate\nkeep proxy_on_context_create\nkeep proxy_on_delete\n\
        keep keep_me   # used\n\
        drop drop_me   # not implemented\n";

    fn reparse(m: &mut Module) -> Module {
        config().parse(&m.emit_wasm()).unwrap()
    }

    fn names(m: &Module) -> BTreeSet<String> {
        m.exports.iter().map(|e| e.name.clone()).collect()
    }

    #[test]
    fn drops_the_export_and_what_only_it_reached() {
        let mut m = module();
        let before = m.funcs.iter().count();
        let o = trim(&mut m, &Spec::parse(SPEC).unwrap()).unwrap();
        assert_eq!(o.dropped, vec!["drop_me"]);
        let m = reparse(&mut m);
        assert!(!names(&m).contains("drop_me"));
        assert!(names(&m).contains("keep_me"));
        // drop_me and only_dropped are gone; shared stays (keep_me calls it).
        assert_eq!(m.funcs.iter().count(), before - 2);
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let mut m = module();
        let spec = Spec::parse(SPEC).unwrap();
        trim(&mut m, &spec).unwrap();
        let once = m.emit_wasm();
        let mut again = config().parse(&once).unwrap();
        let o = trim(&mut again, &spec).unwrap();
        assert!(o.dropped.is_empty());
    }

    #[test]
    fn refuses_a_missing_required_export() {
        let mut m = module();
        let spec = Spec::parse(&format!("{SPEC}keep proxy_on_log\n")).unwrap();
        let e = trim(&mut m, &spec).unwrap_err();
        assert!(e.contains("proxy_on_log"), "{e}");
        assert!(names(&m).contains("drop_me"), "nothing deleted on error");
    }

    #[test]
    fn refuses_an_unclassified_export() {
        let mut m = module();
        let spec = Spec::parse(&SPEC.replace("drop drop_me", "")).unwrap();
        let e = trim(&mut m, &spec).unwrap_err();
        assert!(e.contains("drop_me"), "{e}");
    }

    #[test]
    fn refuses_to_drop_what_the_host_requires() {
        for name in HOST_REQUIRED
            .iter()
            .copied()
            .chain(["proxy_abi_version_0_2_1"])
        {
            let text = SPEC.replace(&format!("keep {name}\n"), &format!("drop {name}\n"));
            assert!(text.contains(&format!("drop {name}")));
            assert!(Spec::parse(&text).is_err(), "{name} accepted as drop");
        }
    }

    #[test]
    fn refuses_a_name_listed_twice_or_a_bad_line() {
        assert!(Spec::parse("keep a\ndrop a\n").is_err());
        assert!(Spec::parse("keep a\nkeep a\n").is_err());
        assert!(Spec::parse("remove a\n").is_err());
        assert!(Spec::parse("keep a b\n").is_err());
    }

    #[test]
    fn the_file_is_rewritten_once_and_left_alone_after() {
        let dir = std::env::temp_dir().join(format!("wasm-trim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (wasm, spec) = (dir.join("m.wasm"), dir.join("exports.txt"));
        std::fs::write(&wasm, module().emit_wasm()).unwrap();
        std::fs::write(&spec, SPEC).unwrap();
        assert!(run(&spec, &wasm, true).is_err(), "--check sees drop_me");
        assert_eq!(run(&spec, &wasm, false).unwrap().dropped, vec!["drop_me"]);
        let first = std::fs::read(&wasm).unwrap();
        assert!(run(&spec, &wasm, false).unwrap().dropped.is_empty());
        assert_eq!(std::fs::read(&wasm).unwrap(), first);
        assert!(run(&spec, &wasm, true).is_ok());
        // A refused run leaves the file as it was.
        std::fs::write(&spec, format!("{SPEC}keep proxy_on_tick\n")).unwrap();
        assert!(run(&spec, &wasm, false).is_err());
        assert_eq!(std::fs::read(&wasm).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
