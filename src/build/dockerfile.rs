//! The Dockerfile subset `envbox build` understands: FROM, RUN, COPY, ADD, WORKDIR, ENV,
//! ARG, USER, CMD, ENTRYPOINT, LABEL (and EXPOSE, accepted as documentation). Anything
//! else is refused with its line number and what to do instead.
//!
//! Parsing keeps the arguments as written; variables (`$NAME`, `${NAME}`,
//! `${NAME:-default}`, `${NAME:+alt}`) are expanded when the step runs, with the ENV and
//! ARG values in scope there, in the instructions Docker expands them in (FROM, COPY, ADD,
//! WORKDIR, ENV, ARG, USER, LABEL, EXPOSE), never in RUN, CMD and ENTRYPOINT (the shell
//! does that).

use std::collections::BTreeMap;

/// A Dockerfile that cannot be built, with where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Dockerfile line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// RUN, CMD and ENTRYPOINT take a shell line or an exec-form JSON array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

impl Command {
    /// The argv: a shell line runs as `/bin/sh -c LINE`, like Docker.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
    },
    Arg {
        name: String,
        default: Option<String>,
    },
    /// `KEY=value` words, or the legacy `KEY value` form as one pair.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Run(Command),
    Cmd(Command),
    Entrypoint(Command),
    /// COPY and ADD: sources (relative to the build context) and destination, as written.
    Copy {
        add: bool,
        srcs: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<u32>,
    },
    Expose,
}

/// One instruction and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (continuations joined), for progress and messages.
    pub text: String,
    pub instruction: Instruction,
}

/// A parsed Dockerfile: its steps in order (ARGs before FROM included: FROM may use them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub steps: Vec<Step>,
}

/// Joins continuation lines and drops comments: (first line number, logical line).
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, ParseError> {
    let mut escape = '\\';
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut directives_done = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if !directives_done && current.is_none() {
            // Parser directives: `# escape=`` ` and `# syntax=...` before anything else.
            if let Some(d) = trimmed.strip_prefix('#') {
                let d = d.trim();
                if let Some(v) = d.strip_prefix("escape=") {
                    escape = match v.trim() {
                        "\\" => '\\',
                        "`" => '`',
                        other => return Err(ParseError { line: n, message: format!("escape character {other:?} must be \\ or `") }),
                    };
                    continue;
                }
                if d.starts_with("syntax=") || d.starts_with("check=") {
                    continue;
                }
            }
            directives_done = true;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() {
            // An empty line ends nothing: Docker keeps joining after it (with a warning).
            continue;
        }
        let line = raw.trim_end();
        let (body, continues) = match line.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (line, false),
        };
        let cur = current.get_or_insert_with(|| (n, String::new()));
        cur.1.push_str(body);
        if !continues {
            out.extend(current.take());
        }
    }
    // A trailing continuation: the instruction ends at the end of the file.
    out.extend(current.take());
    Ok(out)
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let mut steps = Vec::new();
    let mut seen_from = false;
    for (line, logical) in logical_lines(text)? {
        let err = |message: String| ParseError { line, message };
        let logical = logical.trim();
        let (word, rest) = logical.split_once(|c: char| c.is_whitespace()).unwrap_or((logical, ""));
        let rest = rest.trim();
        let keyword = word.to_ascii_uppercase();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") && is_heredoc(rest) {
            return Err(err(format!(
                "{keyword} with a heredoc (<<) is not supported: put the script in a file and COPY it, or use a shell line"
            )));
        }
        let (flags, rest) = take_flags(rest);
        let no_flags = |flags: &[(String, Option<String>)]| -> Result<(), ParseError> {
            match flags.first() {
                Some((f, _)) => Err(err(format!("{keyword} --{f} is not supported"))),
                None => Ok(()),
            }
        };
        let need = |what: &str| -> Result<(), ParseError> {
            if rest.is_empty() {
                Err(err(format!("{keyword} needs {what}")))
            } else {
                Ok(())
            }
        };
        if !seen_from && !matches!(keyword.as_str(), "FROM" | "ARG") {
            return Err(err(format!("{keyword} before FROM: a Dockerfile starts with FROM (only ARG may come first)")));
        }
        let instruction = match keyword.as_str() {
            "FROM" => {
                if seen_from {
                    return Err(err("a second FROM: multi-stage builds are not supported; build each stage as its own image and FROM it".into()));
                }
                if let Some((f, _)) = flags.first() {
                    return Err(err(format!("FROM --{f} is not supported (envbox builds for this machine's platform)")));
                }
                need("an image")?;
                seen_from = true;
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [image] | [image, _, _] if words.len() == 1 || words[1].eq_ignore_ascii_case("as") => {
                        Instruction::From { image: (*image).to_string() }
                    }
                    _ => return Err(err("FROM takes IMAGE [AS NAME]".into())),
                }
            }
            "ARG" => {
                no_flags(&flags)?;
                need("a name")?;
                if rest.split_whitespace().count() != 1 {
                    return Err(err("ARG takes one NAME[=default] per line".into()));
                }
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (rest.to_string(), None),
                };
                check_name(&name).map_err(err)?;
                Instruction::Arg { name, default }
            }
            "ENV" | "LABEL" => {
                no_flags(&flags)?;
                need("KEY=value")?;
                let pairs = key_values(rest, keyword == "ENV").map_err(err)?;
                if keyword == "ENV" {
                    for (k, _) in &pairs {
                        check_name(k).map_err(err)?;
                    }
                    Instruction::Env(pairs)
                } else {
                    Instruction::Label(pairs)
                }
            }
            "WORKDIR" => {
                no_flags(&flags)?;
                need("a directory")?;
                Instruction::Workdir(rest.to_string())
            }
            "USER" => {
                no_flags(&flags)?;
                need("a user")?;
                Instruction::User(rest.to_string())
            }
            "RUN" => {
                no_flags(&flags)?;
                need("a command")?;
                Instruction::Run(command(rest))
            }
            "CMD" => {
                no_flags(&flags)?;
                need("a command")?;
                Instruction::Cmd(command(rest))
            }
            "ENTRYPOINT" => {
                no_flags(&flags)?;
                need("a command")?;
                Instruction::Entrypoint(command(rest))
            }
            "COPY" | "ADD" => {
                let mut chown = None;
                let mut chmod = None;
                for (f, v) in &flags {
                    match (f.as_str(), v) {
                        ("chown", Some(v)) if !v.is_empty() => chown = Some(v.clone()),
                        ("chmod", Some(v)) => {
                            chmod = Some(
                                u32::from_str_radix(v, 8)
                                    .ok()
                                    .filter(|m| *m <= 0o7777)
                                    .ok_or_else(|| err(format!("--chmod={v}: give an octal mode such as 0644")))?,
                            )
                        }
                        ("link", None) => {}
                        ("from", _) => {
                            return Err(err(format!("{keyword} --from is not supported (no multi-stage builds): copy from the build context")))
                        }
                        _ => return Err(err(format!("{keyword} --{f} is not supported"))),
                    }
                }
                let words = match json_array(rest) {
                    Some(v) => v,
                    None => split_words(rest),
                };
                if words.len() < 2 {
                    return Err(err(format!("{keyword} needs at least one source and a destination")));
                }
                let (dest, srcs) = words.split_last().expect("two words");
                Instruction::Copy { add: keyword == "ADD", srcs: srcs.to_vec(), dest: dest.clone(), chown, chmod }
            }
            "EXPOSE" => Instruction::Expose,
            "MAINTAINER" => return Err(err("MAINTAINER is deprecated and not supported: use LABEL maintainer=\"...\"".into())),
            "VOLUME" | "HEALTHCHECK" | "SHELL" | "STOPSIGNAL" | "ONBUILD" => {
                return Err(err(format!(
                    "{keyword} is not supported by envbox build (supported: FROM RUN COPY ADD WORKDIR ENV ARG USER CMD ENTRYPOINT LABEL EXPOSE)"
                )))
            }
            other => return Err(err(format!("unknown instruction {other:?}"))),
        };
        steps.push(Step { line, text: logical.to_string(), instruction });
    }
    if !seen_from {
        return Err(ParseError { line: 1, message: "no FROM: a Dockerfile must start with FROM IMAGE (or FROM scratch)".into() });
    }
    Ok(Dockerfile { steps })
}

/// A word like `<<EOF`, `<<-EOF` or `<<"EOF"` (a BuildKit heredoc); `<<<` is a bash
/// here-string, which the shell handles.
fn is_heredoc(rest: &str) -> bool {
    rest.split_whitespace().any(|w| {
        w.strip_prefix("<<")
            .filter(|r| !r.starts_with('<'))
            .map(|r| r.trim_start_matches('-').trim_start_matches(['"', '\'']))
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid variable name (letters, digits and _, not starting with a digit)"))
    }
}

/// Leading `--flag[=value]` words.
fn take_flags(rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    let mut rest = rest;
    while let Some(f) = rest.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let word = &f[..end];
        match word.split_once('=') {
            Some((k, v)) => flags.push((k.to_ascii_lowercase(), Some(v.to_string()))),
            None => flags.push((word.to_ascii_lowercase(), None)),
        }
        rest = f[end..].trim_start();
    }
    (flags, rest)
}

fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// Exec form when the arguments are a JSON array of strings, else a shell line (Docker
/// falls back the same way for invalid JSON).
fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(v) => Command::Exec(v),
        None => Command::Shell(rest.to_string()),
    }
}

/// Splits on unquoted whitespace, keeping quotes and escapes (expansion removes them later).
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '\\') | (Some('"'), '\\') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
                in_word = true;
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// `KEY=value KEY2="v 2"` (or, for ENV, the legacy `KEY value with spaces`); values stay
/// unexpanded.
fn key_values(rest: &str, legacy_ok: bool) -> Result<Vec<(String, String)>, String> {
    let words = split_words(rest);
    let first_has_eq = words.first().is_some_and(|w| w.contains('='));
    if !first_has_eq {
        if !legacy_ok {
            return Err(format!("expected KEY=value, got {rest:?}"));
        }
        let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(|| format!("ENV {rest} needs a value: ENV {rest}=VALUE"))?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| format!("{w:?} is not KEY=value (mixing the two ENV forms?)"))?;
        // A quoted key (`"a b"=c` in a LABEL) loses its quotes.
        let k = expand(k, &BTreeMap::new()).map_err(|e| e.to_string())?;
        if k.is_empty() {
            return Err(format!("{w:?} has an empty key"));
        }
        out.push((k, v.to_string()));
    }
    Ok(out)
}

/// A variable reference that cannot be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ExpandError(String);

/// Expands variables and removes quotes and escapes, the way Docker processes one word:
/// nothing is expanded inside '...'; `\$` is a literal dollar; unknown variables are empty.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, ExpandError> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), c) => out.push(c),
            (None, '\'') => quote = Some('\''),
            (None, '"') => quote = Some('"'),
            (Some('"'), '"') => quote = None,
            (_, '\\') => match chars.next() {
                Some(n) if quote.is_none() || matches!(n, '"' | '\\' | '$') => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            },
            (_, '$') => out.push_str(&variable(&mut chars, vars)?),
            (_, c) => out.push(c),
        }
    }
    if quote.is_some() {
        return Err(ExpandError(format!("unmatched quote in {s:?}")));
    }
    Ok(out)
}

fn variable(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, vars: &BTreeMap<String, String>) -> Result<String, ExpandError> {
    let get = |name: &str| vars.get(name).cloned();
    if chars.peek() == Some(&'{') {
        chars.next();
        let mut inner = String::new();
        let mut depth = 1;
        for c in chars.by_ref() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            inner.push(c);
        }
        if depth != 0 {
            return Err(ExpandError(format!("missing '}}' in ${{{inner}")));
        }
        let name_end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
        let (name, op) = inner.split_at(name_end);
        if name.is_empty() {
            return Err(ExpandError(format!("bad substitution ${{{inner}}}")));
        }
        return match op {
            "" => Ok(get(name).unwrap_or_default()),
            _ if op.starts_with(":-") => match get(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None => expand(&op[2..], vars),
            },
            _ if op.starts_with(":+") => match get(name).filter(|v| !v.is_empty()) {
                Some(_) => expand(&op[2..], vars),
                None => Ok(String::new()),
            },
            _ => Err(ExpandError(format!("unsupported substitution ${{{inner}}}: use ${{NAME}}, ${{NAME:-default}} or ${{NAME:+alt}}"))),
        };
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if name.is_empty() {
        return Ok("$".into());
    }
    Ok(get(&name).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_typical_dockerfile_parses() {
        let df = parse(
            "# syntax=docker/dockerfile:1\nARG BASE=python:3.12-slim\nFROM ${BASE} AS app\n\
             # a comment\nENV A=1 B=\"two words\"\nENV LEGACY some value\nWORKDIR /app\n\
             COPY --chown=1000:1000 --chmod=0644 requirements.txt ./\nRUN pip install \\\n    -r requirements.txt \\\n\
             # comment inside a continuation\n    && echo done\nUSER 1000\nLABEL org.x=\"y z\" k=v\nEXPOSE 8000\n\
             CMD [\"python\", \"-m\", \"app\"]\nENTRYPOINT python app.py\nADD [\"a b\", \"/dst/\"]\n",
        )
        .unwrap();
        let kinds: Vec<_> = df.steps.iter().map(|s| s.instruction.clone()).collect();
        assert_eq!(kinds[0], Instruction::Arg { name: "BASE".into(), default: Some("python:3.12-slim".into()) });
        assert_eq!(kinds[1], Instruction::From { image: "${BASE}".into() });
        assert_eq!(kinds[2], Instruction::Env(vec![("A".into(), "1".into()), ("B".into(), "\"two words\"".into())]));
        assert_eq!(kinds[3], Instruction::Env(vec![("LEGACY".into(), "some value".into())]));
        assert_eq!(
            kinds[5],
            Instruction::Copy {
                add: false,
                srcs: vec!["requirements.txt".into()],
                dest: "./".into(),
                chown: Some("1000:1000".into()),
                chmod: Some(0o644)
            }
        );
        assert_eq!(kinds[6], Instruction::Run(Command::Shell("pip install     -r requirements.txt     && echo done".into())));
        assert_eq!(df.steps[6].line, 9);
        assert_eq!(kinds[9], Instruction::Expose);
        assert_eq!(kinds[10], Instruction::Cmd(Command::Exec(vec!["python".into(), "-m".into(), "app".into()])));
        assert_eq!(kinds[11], Instruction::Entrypoint(Command::Shell("python app.py".into())));
        assert_eq!(kinds[12], Instruction::Copy { add: true, srcs: vec!["a b".into()], dest: "/dst/".into(), chown: None, chmod: None });
        assert_eq!(Command::Shell("x y".into()).argv(), vec!["/bin/sh", "-c", "x y"]);
        // a bash here-string is the shell's business
        assert!(parse("FROM a\nRUN cat <<< hi\n").is_ok());
    }

    #[test]
    fn unsupported_and_malformed_input_names_the_line_and_the_fix() {
        let cases: &[(&str, usize, &str)] = &[
            ("FROM a\nVOLUME /data\n", 2, "VOLUME is not supported"),
            ("FROM a\nHEALTHCHECK CMD true\n", 2, "HEALTHCHECK is not supported"),
            ("FROM a\nFROM b\n", 2, "multi-stage"),
            ("FROM a\nCOPY --from=build /x /y\n", 2, "--from is not supported"),
            ("FROM a\nRUN --mount=type=cache,target=/x true\n", 2, "RUN --mount"),
            ("FROM --platform=linux/arm64 a\n", 1, "--platform"),
            ("RUN true\n", 1, "before FROM"),
            ("# only a comment\n", 1, "no FROM"),
            ("FROM a\nFROBNICATE x\n", 2, "unknown instruction \"FROBNICATE\""),
            ("FROM a\nCOPY onlyone\n", 2, "at least one source"),
            ("FROM a\nENV 1BAD=x\n", 2, "not a valid variable name"),
            ("FROM a\nCOPY --chmod=999 a b\n", 2, "octal"),
            ("FROM a\nRUN <<EOF\necho hi\nEOF\n", 2, "heredoc"),
            ("FROM a\nRUN cat <<-\"END\" > /x\n", 2, "heredoc"),
            ("FROM a\nLABEL novalue\n", 2, "KEY=value"),
            ("FROM a\nMAINTAINER me\n", 2, "LABEL maintainer"),
            ("FROM a b c d\n", 1, "IMAGE [AS NAME]"),
        ];
        for (text, line, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn escape_directive_and_trailing_continuation() {
        let df = parse("# escape=`\nFROM a\nRUN echo \\ `\n  done\nRUN last `").unwrap();
        assert_eq!(df.steps[1].instruction, Instruction::Run(Command::Shell("echo \\   done".into())));
        assert_eq!(df.steps[2].instruction, Instruction::Run(Command::Shell("last".into())));
    }

    #[test]
    fn expansion_follows_docker() {
        let v = vars(&[("A", "x y"), ("EMPTY", ""), ("P", "/app")]);
        assert_eq!(expand("$A", &v).unwrap(), "x y");
        assert_eq!(expand("${A}-z", &v).unwrap(), "x y-z");
        assert_eq!(expand("${EMPTY:-def}", &v).unwrap(), "def");
        assert_eq!(expand("${MISSING:-${P}/d}", &v).unwrap(), "/app/d");
        assert_eq!(expand("${A:+set}", &v).unwrap(), "set");
        assert_eq!(expand("${MISSING:+set}", &v).unwrap(), "");
        assert_eq!(expand("'$A'", &v).unwrap(), "$A");
        assert_eq!(expand("\"$A\"", &v).unwrap(), "x y");
        assert_eq!(expand("\\$A", &v).unwrap(), "$A");
        assert_eq!(expand("a\\ b", &v).unwrap(), "a b");
        assert_eq!(expand("$", &v).unwrap(), "$");
        assert_eq!(expand("$MISSING", &v).unwrap(), "");
        assert!(expand("${A", &v).is_err());
        assert!(expand("${A%%x}", &v).unwrap_err().to_string().contains("unsupported substitution"));
        assert!(expand("\"open", &v).is_err());
        assert_eq!(split_words("a \"b c\" 'd e'  f\\ g"), vec!["a", "\"b c\"", "'d e'", "f\\ g"]);
    }
}
