//! The build context: the files COPY and ADD may take (the environment directory minus
//! what `.dockerignore` excludes), staged for a copy and hashed for the build cache.
//!
//! Nothing outside the context is ever read: sources are cleaned lexically (a `..` above
//! the context is refused) and walked with `lstat`; symlinks are copied as symlinks, never
//! followed, so `evil -> /etc/shadow` in a context puts a link in the image, not the host's
//! file.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use envbox_rootfs::digest::Hasher;

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
    #[error("reading {path} of the build context")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io { path: path.to_path_buf(), source }
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

/// A source found in the context: its path relative to the context ("" = the context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub rel: String,
    pub is_dir: bool,
}

/// Resolves one COPY source (wildcards allowed) to the context entries it names.
pub fn find(context: &Path, ignore: &Ignore, src: &str) -> Result<Vec<Found>, ContextError> {
    let comps = clean(src)?;
    let mut found = Vec::new();
    if comps.iter().any(|c| has_glob(c)) {
        // Walk the levels the pattern has, matching component by component.
        let mut level: Vec<String> = vec![String::new()];
        for (i, pat) in comps.iter().enumerate() {
            let mut next = Vec::new();
            for dir in &level {
                let host = context.join(dir);
                let Ok(rd) = fs::read_dir(&host) else { continue };
                let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                for name in names.into_iter().filter(|n| glob(pat, n)) {
                    let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                    if i + 1 < comps.len() && !context.join(&rel).symlink_metadata().is_ok_and(|m| m.is_dir()) {
                        continue;
                    }
                    next.push(rel);
                }
            }
            level = next;
        }
        for rel in level {
            if !ignore.excluded(&rel) {
                let is_dir = context.join(&rel).symlink_metadata().is_ok_and(|m| m.is_dir());
                found.push(Found { rel, is_dir });
            }
        }
    } else {
        let rel = comps.join("/");
        match context.join(&rel).symlink_metadata() {
            Ok(md) if rel.is_empty() || !ignore.excluded(&rel) => found.push(Found { rel, is_dir: md.is_dir() }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&context.join(&rel))(e)),
        }
    }
    if found.is_empty() {
        return Err(ContextError::NotFound { src: src.to_string(), context: context.to_path_buf() });
    }
    Ok(found)
}

/// Mirrors context entries into a staging directory (hardlinks where the filesystem
/// allows, else copies; symlinks recreated; .dockerignore applied) and hashes what it
/// staged: names, kinds, modes, contents, link targets.
pub struct Stager<'a> {
    pub context: &'a Path,
    pub ignore: &'a Ignore,
    pub hash: Hasher,
}

impl Stager<'_> {
    /// Stages the context entry `rel` as `dest` (a path that does not exist yet).
    pub fn stage(&mut self, rel: &str, dest: &Path) -> Result<(), ContextError> {
        let src = self.context.join(rel);
        let md = src.symlink_metadata().map_err(io_err(&src))?;
        self.hash.update(format!("\0{rel}\0{:o}\0", md.mode()).as_bytes());
        if md.is_dir() {
            fs::create_dir(dest).map_err(io_err(dest))?;
            fs::set_permissions(dest, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io_err(dest))?;
            let mut names: Vec<String> =
                fs::read_dir(&src).map_err(io_err(&src))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for name in names {
                let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                if self.ignore.excluded(&child) && !(self.ignore.has_exceptions() && src.join(&name).is_dir()) {
                    continue;
                }
                self.stage(&child, &dest.join(&name))?;
            }
        } else if md.file_type().is_symlink() {
            let target = fs::read_link(&src).map_err(io_err(&src))?;
            self.hash.update(target.as_os_str().as_encoded_bytes());
            std::os::unix::fs::symlink(&target, dest).map_err(io_err(dest))?;
        } else if md.is_file() {
            let mut f = fs::File::open(&src).map_err(io_err(&src))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).map_err(io_err(&src))?;
                if n == 0 {
                    break;
                }
                self.hash.update(&buf[..n]);
            }
            if fs::hard_link(&src, dest).is_err() {
                fs::copy(&src, dest).map_err(io_err(dest))?;
            }
        }
        // FIFOs, sockets and devices in a context are left out, as Docker does.
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
        let ig = Ignore::parse("src/b.txt\n");
        assert!(matches!(find(c, &ig, "../etc/passwd"), Err(ContextError::Escapes { .. })));
        assert!(matches!(find(c, &ig, "src/../../x"), Err(ContextError::Escapes { .. })));
        assert_eq!(find(c, &ig, "/top.py").unwrap(), vec![Found { rel: "top.py".into(), is_dir: false }]);
        assert_eq!(find(c, &ig, "src/*").unwrap(), vec![Found { rel: "src/a.py".into(), is_dir: false }]);
        assert_eq!(find(c, &ig, "*/*.py").unwrap().len(), 1);
        assert!(matches!(find(c, &ig, "src/b.txt"), Err(ContextError::NotFound { .. })));
        assert!(matches!(find(c, &ig, "nope*"), Err(ContextError::NotFound { .. })));
        assert_eq!(find(c, &ig, ".").unwrap(), vec![Found { rel: String::new(), is_dir: true }]);
    }
}
