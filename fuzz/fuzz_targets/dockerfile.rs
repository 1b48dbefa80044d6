//! `envbox build`'s Dockerfile parser, variable expansion and `.dockerignore` matcher on
//! arbitrary text.
//!
//! Invariants (besides no panic and no runaway recursion):
//! - a parsed Dockerfile has at least one step, exactly one FROM, only ARGs before it, and
//!   every step's line number is within the text;
//! - a parse error names a line within the text (or line 1 for an empty file);
//! - COPY/ADD have at least one source; exec-form commands came from a JSON array;
//! - `expand` without any `$`, quote or backslash is the identity;
//! - `expand` of a single-quoted string without quotes inside is its content, untouched;
//! - `split_words` never yields an empty word or one with unquoted whitespace at its ends;
//! - `Ignore::excluded` is total, and a pattern list without `!` never re-includes: if a
//!   path is excluded, so is every path below it.
#![no_main]

use std::collections::BTreeMap;

use envbox::build::context::Ignore;
use envbox::build::dockerfile::{expand, parse, split_words, Command, Instruction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let lines = s.lines().count().max(1);
    match parse(s) {
        Ok(df) => {
            assert!(!df.steps.is_empty());
            let froms = df.steps.iter().filter(|st| matches!(st.instruction, Instruction::From { .. })).count();
            assert_eq!(froms, 1, "{s:?}");
            let first_from = df.steps.iter().position(|st| matches!(st.instruction, Instruction::From { .. })).unwrap();
            assert!(df.steps[..first_from].iter().all(|st| matches!(st.instruction, Instruction::Arg { .. })));
            for st in &df.steps {
                assert!(st.line >= 1 && st.line <= lines, "line {} of {lines}", st.line);
                match &st.instruction {
                    Instruction::Copy { srcs, .. } => assert!(!srcs.is_empty()),
                    Instruction::Run(Command::Exec(v)) | Instruction::Cmd(Command::Exec(v)) | Instruction::Entrypoint(Command::Exec(v)) => {
                        assert!(st.text.contains('['), "exec form without a JSON array: {:?} {v:?}", st.text)
                    }
                    _ => {}
                }
            }
        }
        Err(e) => assert!(e.line >= 1 && e.line <= lines, "error line {} of {lines}: {e}", e.line),
    }

    let vars: BTreeMap<String, String> = [("A".to_string(), "x y".to_string()), ("B".to_string(), String::new())].into();
    let plain = !s.contains(['$', '\'', '"', '\\']);
    match expand(s, &vars) {
        Ok(out) if plain => assert_eq!(out, s),
        Ok(_) => {}
        Err(_) => assert!(!plain, "plain text failed to expand: {s:?}"),
    }
    if !s.contains('\'') {
        assert_eq!(expand(&format!("'{s}'"), &vars).ok().as_deref(), Some(s), "single quotes keep {s:?}");
    }
    for w in split_words(s) {
        assert!(!w.is_empty());
        assert!(!w.starts_with(char::is_whitespace), "{w:?}");
    }

    // The first line is the pattern list, the rest paths.
    let (pats, paths) = s.split_once('\n').unwrap_or((s, "a/b/c"));
    let ig = Ignore::parse(&pats.replace(';', "\n"));
    for p in paths.lines().take(8) {
        let excluded = ig.excluded(p);
        if excluded && !pats.contains('!') {
            assert!(ig.excluded(&format!("{p}/below")), "{p:?} excluded but not what is below it");
        }
    }
});
