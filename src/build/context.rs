//! The build context: the files COPY and ADD may take (the environment directory minus
//! what `.dockerignore` excludes), staged for a copy and hashed for the build cache.
//!
//! Nothing outside the context is ever read: sources are cleaned lexically (a `..` above
//! the context is refused) and every entry is opened relative to the context's descriptor
//! without following any symlink ([`Context`]); symlinks are copied as symlinks, so
//! `evil -> /etc/shadow` in a context puts a link in the image, not the host's file, and a
//! source through a symlinked directory is an error.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use envbox_rootfs::digest::Hasher;
use nix::errno::Errno;

use crate::sandbox::files::FileKind;
use crate::sys::openat2::{openat2, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// `.dockerignore` patterns, in order; the last one that matches a path decides.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    /// Reads `<context>/.dockerignore` if there is one.
    pub fn load(context: &Path) -> io::Result<Ignore> {
        match fs::read_to_string(context.join(".dockerignore")) {
            Ok(text) => Ok(Ignore::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let segs: Vec<String> = pat.split('/').filter(|s| !s.is_empty() && *s != ".").map(str::to_string).collect();
            if !segs.is_empty() {
                patterns.push((exception, segs));
            }
        }
        Ignore { patterns }
    }

    /// Whether the context-relative path `rel` (components joined by '/') is left out. A
    /// pattern that matches a parent directory matches everything below it.
    pub fn excluded(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = false;
        for (exception, pat) in &self.patterns {
            let hit = (1..=comps.len()).any(|n| glob_path(pat, &comps[..n]));
            if hit {
                out = !exception;
            }
        }
        out
    }

    /// Whether some exception pattern could re-include something below `rel`: then an
    /// excluded directory must still be walked.
    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(e, _)| *e)
    }
}

/// Matches path components against pattern segments; `**` matches any number of them.
fn glob_path(pat: &[String], comps: &[&str]) -> bool {
    match pat.split_first() {
        None => comps.is_empty(),
        Some((p, rest)) if p == "**" => (0..=comps.len()).any(|i| glob_path(rest, &comps[i..])),
        Some((p, rest)) => comps.split_first().is_some_and(|(c, crest)| glob(p, c) && glob_path(rest, crest)),
    }
}

/// One path component against one pattern segment: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`, `\x`.
/// Linear backtracking on the last `*` only, so no pattern can make it exponential.
pub fn glob(pat: &str, name: &str) -> bool {
    let toks = tokens(pat);
    let n: Vec<char> = name.chars().collect();
    let (mut t, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < n.len() {
        match toks.get(t) {
            Some(Tok::Star) => {
                star = Some((t, i));
                t += 1;
                continue;
            }
            Some(tok) if tok.matches(n[i]) => {
                t += 1;
                i += 1;
                continue;
            }
            _ => {}
        }
        match star {
            // Let the last `*` take one more character and retry from there.
            Some((st, si)) => {
                star = Some((st, si + 1));
                t = st + 1;
                i = si + 1;
            }
            None => return false,
        }
    }
    toks[t..].iter().all(|k| matches!(k, Tok::Star))
}

enum Tok {
    Star,
    Any,
    Lit(char),
    Class { negate: bool, items: Vec<(char, char)> },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Star => false,
            Tok::Any => true,
            Tok::Lit(l) => *l == c,
            Tok::Class { negate, items } => items.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate,
        }
    }
}

fn tokens(pat: &str) -> Vec<Tok> {
    let p: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '\\' if i + 1 < p.len() => {
                i += 1;
                out.push(Tok::Lit(p[i]));
            }
            '[' => match p[i + 1..].iter().position(|c| *c == ']') {
                Some(len) => {
                    let mut class = &p[i + 1..i + 1 + len];
                    let negate = matches!(class.first(), Some('!' | '^'));
                    if negate {
                        class = &class[1..];
                    }
                    let mut items = Vec::new();
                    let mut j = 0;
                    while j < class.len() {
                        if j + 2 < class.len() && class[j + 1] == '-' {
                            items.push((class[j], class[j + 2]));
                            j += 3;
                        } else {
                            items.push((class[j], class[j]));
                            j += 1;
                        }
                    }
                    out.push(Tok::Class { negate, items });
                    i += len + 1;
                }
                // An unclosed '[' is a literal.
                None => out.push(Tok::Lit('[')),
            },
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    out
}

/// Why a COPY source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("COPY source {src:?} is outside the build context: sources are relative to the environment directory")]
    Escapes { src: String },
    #[error("COPY source {src:?} matches nothing in the build context {context} (or .dockerignore excludes it)")]
    NotFound { src: String, context: PathBuf },
    #[error(
        "COPY source {src:?} goes through a symlink in the build context: copy the directory it points to instead \
         (symlinks are copied as links, never followed)"
    )]
    ThroughSymlink { src: String },
    #[error("reading {path:?} of the build context")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io { path: path.to_string(), source }
}

/// Cleans a source lexically into context-relative components.
fn clean(src: &str) -> Result<Vec<String>, ContextError> {
    let mut out: Vec<String> = Vec::new();
    for c in src.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ContextError::Escapes { src: src.to_string() });
                }
            }
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The build context, held open: every entry is opened relative to it with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so neither a symlink in the context
/// (`hostetc -> /etc`, then `COPY hostetc/shadow`) nor one swapped in while the build runs
/// can make the build read outside it.
pub struct Context {
    dir: OwnedFd,
    pub path: PathBuf,
}

const BENEATH: u64 = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

impl Context {
    pub fn open(path: &Path) -> io::Result<Context> {
        let dir = fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(path)?;
        Ok(Context { dir: dir.into(), path: path.to_path_buf() })
    }

    /// Opens a context-relative path ("" is the context) without following any symlink.
    fn open_rel(&self, rel: &str, flags: i32) -> Result<OwnedFd, (Errno, String)> {
        let p = if rel.is_empty() { ".".to_string() } else { rel.to_string() };
        let c = CString::new(p.clone()).map_err(|_| (Errno::EINVAL, p.clone()))?;
        openat2(self.dir.as_fd(), &c, flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0, BENEATH).map_err(|e| (e, p))
    }

    /// The kind of an entry; `None` when it does not exist.
    fn kind(&self, src: &str, rel: &str) -> Result<Option<(FileKind, fs::Metadata)>, ContextError> {
        let fd = match self.open_rel(rel, libc::O_PATH) {
            Ok(fd) => fd,
            Err((Errno::ENOENT | Errno::ENOTDIR, _)) => return Ok(None),
            Err((Errno::ELOOP | Errno::EXDEV, _)) => return Err(ContextError::ThroughSymlink { src: src.to_string() }),
            Err((e, p)) => return Err(ContextError::Io { path: p, source: e.into() }),
        };
        let md = fs::File::from(fd).metadata().map_err(io_err(rel))?;
        Ok(Some((md.file_type().into(), md)))
    }

    /// Opens a context file for reading (never through a symlink).
    pub fn open_file(&self, rel: &str) -> io::Result<fs::File> {
        let fd = self.open_rel(rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|(e, _)| io::Error::from(e))?;
        Ok(fs::File::from(fd))
    }

    /// The names in a context directory, sorted.
    fn list(&self, rel: &str) -> Result<Vec<String>, ContextError> {
        let fd = self.open_rel(rel, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|(e, p)| ContextError::Io { path: p, source: e.into() })?;
        let mut names: Vec<String> = crate::sandbox::files::list_dir(fd.as_fd())
            .map_err(|e| io_err(rel)(e.into()))?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A source found in the context: its path relative to the context ("" = the context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub rel: String,
    pub is_dir: bool,
}

/// Resolves one COPY source (wildcards allowed) to the context entries it names.
pub fn find(ctx: &Context, ignore: &Ignore, src: &str) -> Result<Vec<Found>, ContextError> {
    let comps = clean(src)?;
    let mut found = Vec::new();
    if comps.iter().any(|c| has_glob(c)) {
        // Walk the levels the pattern has, matching component by component.
        let mut level: Vec<String> = vec![String::new()];
        for (i, pat) in comps.iter().enumerate() {
            let mut next = Vec::new();
            for dir in &level {
                let Ok(names) = ctx.list(dir) else { continue };
                for name in names.into_iter().filter(|n| glob(pat, n)) {
                    let rel = join(dir, &name);
                    let last = i + 1 == comps.len();
                    if !last && !matches!(ctx.kind(src, &rel)?, Some((FileKind::Directory, _))) {
                        continue;
                    }
                    next.push(rel);
                }
            }
            level = next;
        }
        for rel in level {
            if !ignore.excluded(&rel) {
                let is_dir = matches!(ctx.kind(src, &rel)?, Some((FileKind::Directory, _)));
                found.push(Found { rel, is_dir });
            }
        }
    } else {
        let rel = comps.join("/");
        if let Some((kind, _)) = ctx.kind(src, &rel)? {
            if rel.is_empty() || !ignore.excluded(&rel) {
                found.push(Found { rel, is_dir: kind == FileKind::Directory });
            }
        }
    }
    if found.is_empty() {
        return Err(ContextError::NotFound { src: src.to_string(), context: ctx.path.clone() });
    }
    Ok(found)
}

/// Copies context entries into a staging directory (.dockerignore applied; symlinks
/// recreated, never followed; regular files copied from the very descriptor whose bytes
/// are hashed) and hashes what it staged: names, kinds, modes, contents and link targets,
/// each record length-prefixed.
pub struct Stager<'a> {
    pub context: &'a Context,
    pub ignore: &'a Ignore,
    pub hash: Hasher,
}

fn record(h: &mut Hasher, tag: &str, bytes: &[u8]) {
    h.update(tag.as_bytes());
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Makes room for `dest` in the staging directory: a later source wins over an earlier one
/// of the same name (directories merge). The staging directory is ours alone.
fn clear(dest: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() && keep_dir => Ok(()),
        Ok(md) if md.is_dir() => fs::remove_dir_all(dest),
        Ok(_) => fs::remove_file(dest),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Stager<'_> {
    /// Stages the context entry `rel` as `dest` (in the staging directory).
    pub fn stage(&mut self, src: &str, rel: &str, dest: &Path) -> Result<(), ContextError> {
        let Some((kind, md)) = self.context.kind(src, rel)? else {
            return Err(ContextError::NotFound { src: src.to_string(), context: self.context.path.clone() });
        };
        let dest_err = |e: io::Error| ContextError::Io { path: dest.display().to_string(), source: e };
        record(&mut self.hash, "name", rel.as_bytes());
        record(&mut self.hash, "mode", &md.mode().to_le_bytes());
        match kind {
            FileKind::Directory => {
                clear(dest, true).map_err(dest_err)?;
                if !dest.is_dir() {
                    fs::create_dir(dest).map_err(dest_err)?;
                }
                fs::set_permissions(dest, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(dest_err)?;
                for name in self.context.list(rel)? {
                    let child = join(rel, &name);
                    // An excluded directory is still walked when a `!` pattern may bring
                    // back something below it.
                    if self.ignore.excluded(&child)
                        && (!self.ignore.has_exceptions() || !matches!(self.context.kind(src, &child)?, Some((FileKind::Directory, _))))
                    {
                        continue;
                    }
                    self.stage(src, &child, &dest.join(&name))?;
                }
            }
            FileKind::Symlink => {
                let fd = self.context.open_rel(rel, libc::O_PATH).map_err(|(e, p)| ContextError::Io { path: p, source: e.into() })?;
                let target = nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "").map_err(|e| io_err(rel)(e.into()))?;
                record(&mut self.hash, "link", target.as_bytes());
                clear(dest, false).map_err(dest_err)?;
                std::os::unix::fs::symlink(&target, dest).map_err(dest_err)?;
            }
            FileKind::File => {
                let mut from = self.context.open_file(rel).map_err(io_err(rel))?;
                // It may have been swapped since it was looked at: check what was opened.
                let opened = from.metadata().map_err(io_err(rel))?;
                if !opened.is_file() {
                    return Err(ContextError::Io { path: rel.to_string(), source: io::Error::other("changed while the build read it") });
                }
                clear(dest, false).map_err(dest_err)?;
                let mut to = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(dest)
                    .map_err(dest_err)?;
                let mut buf = vec![0u8; 1 << 16];
                let mut total: u64 = 0;
                loop {
                    let n = from.read(&mut buf).map_err(io_err(rel))?;
                    if n == 0 {
                        break;
                    }
                    self.hash.update(&buf[..n]);
                    to.write_all(&buf[..n]).map_err(dest_err)?;
                    total += n as u64;
                }
                record(&mut self.hash, "size", &total.to_le_bytes());
                to.set_permissions(fs::Permissions::from_mode(opened.mode() & 0o7777)).map_err(dest_err)?;
            }
            // FIFOs, sockets and devices in a context are left out, as Docker does.
            FileKind::Other => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*.py", "env.py"));
        assert!(!glob("*.py", "env.pyc"));
        assert!(glob("a?c", "abc"));
        assert!(glob("[a-c]x", "bx"));
        assert!(!glob("[!a-c]x", "bx"));
        assert!(glob("\\*", "*"));
        assert!(!glob("\\*", "a"));
        assert!(glob("*a*b", "xxaxxb"));
        assert!(!glob("*a*b", "xxaxxc"));
        assert!(glob("[", "["));
        assert!(glob("**", ""));
        // No exponential backtracking.
        let long = "a".repeat(5000);
        assert!(!glob("*a*a*a*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn dockerignore_semantics() {
        let ig = Ignore::parse("# comment\n*.pyc\n/build\n**/__pycache__\nsecrets/\n!secrets/public.txt\n./logs/*.log\n");
        assert!(ig.excluded("x.pyc"));
        assert!(!ig.excluded("sub/x.pyc"), "*.pyc matches at the top only, like Docker");
        assert!(ig.excluded("build"));
        assert!(ig.excluded("build/out/a"), "a matching directory excludes what is below it");
        assert!(ig.excluded("a/b/__pycache__/m.pyc"));
        assert!(ig.excluded("secrets/key"));
        assert!(!ig.excluded("secrets/public.txt"));
        assert!(ig.excluded("logs/a.log"));
        assert!(!ig.excluded("logs/a.txt"));
        assert!(!ig.excluded("env.py"));
    }

    #[test]
    fn sources_stay_in_the_context() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path();
        fs::create_dir(c.join("src")).unwrap();
        fs::write(c.join("src/a.py"), "a").unwrap();
        fs::write(c.join("src/b.txt"), "b").unwrap();
        fs::write(c.join("top.py"), "t").unwrap();
        std::os::unix::fs::symlink("/etc", c.join("hostetc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", c.join("hostpw")).unwrap();
        let ctx = Context::open(c).unwrap();
        let ig = Ignore::parse("src/b.txt\n");
        assert!(matches!(find(&ctx, &ig, "../etc/passwd"), Err(ContextError::Escapes { .. })));
        assert!(matches!(find(&ctx, &ig, "src/../../x"), Err(ContextError::Escapes { .. })));
        assert_eq!(find(&ctx, &ig, "/top.py").unwrap(), vec![Found { rel: "top.py".into(), is_dir: false }]);
        assert_eq!(find(&ctx, &ig, "src/*").unwrap(), vec![Found { rel: "src/a.py".into(), is_dir: false }]);
        assert_eq!(find(&ctx, &ig, "*/*.py").unwrap().len(), 1);
        assert!(matches!(find(&ctx, &ig, "src/b.txt"), Err(ContextError::NotFound { .. })));
        assert!(matches!(find(&ctx, &ig, "nope*"), Err(ContextError::NotFound { .. })));
        assert_eq!(find(&ctx, &ig, ".").unwrap().len(), 1);
        // A symlinked directory is never gone through; a symlink itself is a link.
        assert!(matches!(find(&ctx, &ig, "hostetc/passwd"), Err(ContextError::ThroughSymlink { .. })));
        assert!(find(&ctx, &ig, "hostetc/*").is_err());
        assert_eq!(find(&ctx, &ig, "hostpw").unwrap(), vec![Found { rel: "hostpw".into(), is_dir: false }]);

        // Staging: a later source of the same name replaces an earlier one (never writing
        // through it), and the link is recreated, not read.
        fs::create_dir(c.join("a")).unwrap();
        fs::create_dir(c.join("b")).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "host file").unwrap();
        std::os::unix::fs::symlink(&victim, c.join("a/x.txt")).unwrap();
        fs::write(c.join("b/x.txt"), "from b").unwrap();
        let stage = t.path().join("stage");
        fs::create_dir(&stage).unwrap();
        let mut st = Stager { context: &ctx, ignore: &ig, hash: Hasher::default() };
        st.stage("a/x.txt", "a/x.txt", &stage.join("x.txt")).unwrap();
        st.stage("b/x.txt", "b/x.txt", &stage.join("x.txt")).unwrap();
        st.stage("hostpw", "hostpw", &stage.join("hostpw")).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host file");
        assert_eq!(fs::read_to_string(stage.join("x.txt")).unwrap(), "from b");
        assert_eq!(fs::read_to_string(c.join("b/x.txt")).unwrap(), "from b");
        assert!(fs::symlink_metadata(stage.join("hostpw")).unwrap().file_type().is_symlink());
    }
}
